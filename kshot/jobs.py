"""What each pipeline job reads of the params: its rerun fingerprint and its whole input of params.

A Snakemake rule passes :func:`job_params` to its job as ``--params-json``, and Snakemake reruns the
job when that value changes. So it holds exactly what the job reads, no more: the entry of the
job's own dataset, source, benchmark or method (not the whole table), its own ``k`` (not the list),
and the device resolved (``auto`` becomes ``cpu`` or ``cuda``). Adding a dataset or method,
narrowing ``episodes.k`` or writing ``device: cpu`` for ``auto`` on a CPU machine then reruns no
finished job, and a job never reads a value its fingerprint lacks: the command line parses only
this mapping, and the sections it leaves out take their defaults, which no job reads.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from kshot.config import DataConfig, Params, source_effect_benchmarks
from kshot.data.datasets import DATASETS, local_dir_datasets
from kshot.errors import ConfigError, unknown
from kshot.methods import METHODS, GradientMethod
from kshot.tuning import base_name

COMMANDS = (
    "acquire",
    "prepare-source",
    "prepare-target",
    "episodes",
    "pretrain",
    "cka",
    "activations",
    "group",
    "search",
    "tune",
    "finetune",
)


def acquire_entry(data: DataConfig, dataset: str) -> dict[str, Any]:
    """The ``data`` fields that acquiring ``dataset`` reads."""
    if dataset in data.image_folders:
        return {
            "image_folders": {dataset: data.image_folders[dataset]},
            "image_folder_side": data.image_folder_side,
        }
    if dataset == "fashion_mnist":
        return {"fashion_mnist_dir": data.fashion_mnist_dir, "download": data.download}
    if dataset in local_dir_datasets():
        out: dict[str, Any] = {"download": data.download}
        if dataset in data.local_dirs:
            out["local_dirs"] = {dataset: data.local_dirs[dataset]}
        return out
    if dataset in DATASETS:
        return {}  # scikit-learn's digits: nothing to choose
    raise unknown("dataset", dataset, set(DATASETS) | set(data.image_folders))


def load_entry(data: DataConfig, dataset: str) -> dict[str, Any]:
    """The ``data`` fields that reading an acquired ``dataset`` reads: which tree it is, and the
    test fraction of datasets split here (digits, image folders without train/ and test/)."""
    if dataset in data.image_folders:
        return {
            "image_folders": {dataset: data.image_folders[dataset]},
            "image_folder_side": data.image_folder_side,
            "digits_test_fraction": data.digits_test_fraction,
        }
    if dataset == "digits":
        return {"digits_test_fraction": data.digits_test_fraction}
    return {}


def _entry(params: Params, table: str, name: str) -> Any:
    entries = getattr(params, table)
    if name not in entries:
        raise unknown(table, name, entries)
    value = entries[name]
    return value.to_raw() if table == "methods" else dataclasses.asdict(value)


def _reads_finetune(params: Params, method: str) -> bool:
    spec = params.methods[method]
    return issubclass(METHODS[spec.kind], GradientMethod)


def job_params(params: Params, command: str, device: str = "cpu", **keys: Any) -> dict[str, Any]:
    """The params mapping job ``command`` reads, for the job named by ``keys`` (its wildcards:
    ``dataset``, ``source``, ``benchmark``, ``method``, ``k``, ``strategy``); ``device`` is the
    resolved device (``cpu`` or ``cuda``) of the jobs that run torch on it.

    >>> from kshot.params import params_from_dict
    >>> p = params_from_dict({"episodes": {"k": [1, 5]}})
    >>> job_params(p, "episodes", benchmark="fashion", k=5)["episodes"]["k"]
    [5]
    """
    if command not in COMMANDS:
        raise unknown("command", command, COMMANDS)
    if command == "acquire":
        return {"data": acquire_entry(params.data, keys["dataset"])}
    if command == "prepare-source":
        src = _entry(params, "sources", keys["source"])
        return {
            "seed": params.seed,
            "sources": {keys["source"]: src},
            "data": load_entry(params.data, src["dataset"]),
        }
    if command == "prepare-target":
        bench = _entry(params, "benchmarks", keys["benchmark"])
        del bench["episodes"]  # the episodes job reads its own episode sizes
        src = _entry(params, "sources", bench["source"])
        # of its source, the target reads the input geometry (dataset, image size); the classes
        # make the entry a valid source, and changing them changes every job after it anyway
        geometry = {"dataset": src["dataset"], "classes": src["classes"], "image_size": src["image_size"]}
        return {
            "benchmarks": {keys["benchmark"]: bench},
            "sources": {bench["source"]: geometry},
            "data": {**load_entry(params.data, src["dataset"]), **load_entry(params.data, bench["target"])},
        }
    if command == "episodes":
        cfg, test_field = params.episodes_of(keys["benchmark"])
        episodes = dataclasses.asdict(cfg)
        episodes["k"] = [int(keys["k"])]
        out = {"seed": params.seed, "episodes": episodes}
        if test_field != "episodes.test_per_class":  # the benchmark's own test size, named by errors
            out["test_field"] = test_field
        # the source-effect study's benchmarks draw their base benchmark's episodes (paired cells)
        base = source_effect_benchmarks(params).get(keys["benchmark"], (keys["benchmark"],))[0]
        if base != keys["benchmark"]:
            out["draw_as"] = base
        return out
    if command == "pretrain":
        return {
            "seed": params.seed,
            "device": device,
            "sources": {keys["source"]: _entry(params, "sources", keys["source"])},
        }
    if command == "cka":
        return {
            "seed": params.seed,
            "device": device,
            "source_effect": {"cka_images": params.source_effect.cka_images},
        }
    if command == "activations":
        return {"seed": params.seed, "device": device}
    if command == "group":
        return {
            "seed": params.seed,
            "device": device,
            "methods": {keys["method"]: _entry(params, "methods", keys["method"])},
        }
    if command == "search":
        search = dataclasses.asdict(params.search)
        search["strategy"] = keys["strategy"]
        return {
            "seed": params.seed,
            "device": device,
            "finetune": dataclasses.asdict(params.finetune),
            "search": search,
        }
    if command == "tune":
        method = keys["method"]
        search = {name: getattr(params.search, name) for name in ("budget", "steps", "finalists")}
        out = {
            "seed": params.seed,
            "device": device,
            "methods": {method: _entry(params, "methods", method)},
            "search": search,
        }
        if _reads_finetune(params, method):
            out["finetune"] = dataclasses.asdict(params.finetune)
        return out
    # finetune: of a method as written, or (<method>+tuned) with the options its tune stage chose,
    # which are the job's input file; the grid is the tune stage's business, not the runs'
    method = base_name(keys["method"])
    entry = _entry(params, "methods", method)
    entry.pop("tune", None)
    out = {"seed": params.seed, "device": device, "methods": {method: entry}}
    if _reads_finetune(params, method):
        out["finetune"] = dataclasses.asdict(params.finetune)
    return out


def check_device(choice: str, cuda_available: bool) -> str:
    """The device ``choice`` resolves to on a machine with or without CUDA; ``cuda`` without it is
    an error, raised while the DAG is built, before any job runs."""
    if choice == "auto":
        return "cuda" if cuda_available else "cpu"
    if choice == "cuda" and not cuda_available:
        raise ConfigError("device: expected a CUDA GPU for 'cuda', found none; use 'auto' or 'cpu'")
    return choice
