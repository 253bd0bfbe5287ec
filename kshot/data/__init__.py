"""Datasets: acquisition of raw files, loading of splits, and preparation of source/target tensors."""
