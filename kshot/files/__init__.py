"""Stage files: every file format the pipeline writes, with its readers, writers and provenance.

One module per kind of file. Each writer goes through :mod:`kshot.io` (atomic, byte-identical for
equal content); each reader checks what the file must hold and what it was made from, and raises
:class:`kshot.errors.DataError` (or :class:`~kshot.errors.CheckpointError`) naming the file, what
was expected and what was found, so a file made for other inputs is refused rather than used.

- :mod:`~kshot.files.prepared`: a source's or a benchmark target's prepared tensors;
- :mod:`~kshot.files.episodes`: a benchmark's episodes at one k;
- :mod:`~kshot.files.checkpoint`: a source network;
- :mod:`~kshot.files.activations`: activation patterns of every episode;
- :mod:`~kshot.files.groups`: a grouped method's assignments on every evaluation episode;
- :mod:`~kshot.files.search`: a search's trace and chosen counts;
- :mod:`~kshot.files.tuning`: a method's tuning trace and chosen options;
- :mod:`~kshot.files.runs`: a method's per-episode records (the resume points) and summary.

The algorithms below this layer take and return tensors and dataclasses and never open a
pipeline file; :mod:`kshot.runner` and :mod:`kshot.cli` above it join the two.
"""
