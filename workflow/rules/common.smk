# Validation of the config and the input functions every rule shares.
import functools
import json
import os
import sys
from pathlib import Path

import torch

from kshot.config import (
    BENCHMARK_STUDIES,
    REPLICATE_STUDIES,
    TAG_PATTERN,
    TUNED,
    replicate_benchmarks,
    source_effect_benchmarks,
    with_replicates,
    with_source_effect,
)
from kshot.episodes import check_sizes
from kshot.errors import ConfigError, unknown
from kshot.files.prepared import target_labels
from kshot.methods.grouped import GROUPED_KINDS
from kshot.data.datasets import acquired_from, check_acquirable
from kshot.jobs import acquire_entry, check_device, job_params
from kshot.tuning import tunable
from kshot.params import params_from_dict
from kshot.settle import agree_with_dvc, write_stamp

# the replicate study's sources and benchmarks (<name>_seed<s>)
config.update(with_replicates(config))
# the source-effect study's benchmarks (<benchmark>_from_<source>)
config.update(with_source_effect(config))
# kshot's validator, the one the command line uses too: one line naming the field, what was
# expected and what was found, the nearest valid name. The rules read the validated PARAMS, and
# pass each job exactly what it reads (kshot.jobs), which is also its rerun fingerprint.
PARAMS = params_from_dict(config)
# The device the jobs run on, resolved here: `auto` and `cpu` on a CPU machine are the same jobs,
# and `cuda` without a GPU stops the run before any job. Jobs sent to a cluster resolve it where
# they run.
DEVICE = (
    check_device(PARAMS.device, torch.cuda.is_available())
    if workflow.local_exec
    else PARAMS.device
)


# Rules run `python -m kshot`: the interpreter that runs Snakemake comes first on the jobs' PATH,
# so its environment is kshot's, activated or not (with --sdm conda, the job's own environment is
# activated over it). The interpreter's path is no part of any job's fingerprint.
envvars:
    "PATH",


os.environ["PATH"] = os.pathsep.join(
    [os.path.dirname(sys.executable), os.environ["PATH"]]
)

RAW = PARAMS.data.raw_dir
# the default run's k: run.k, else every k of episodes.k
RUN_K = PARAMS.shots(PARAMS.run)
LOGS = "data/logs"  # the rules with a {root} wildcard log under {root}/logs: data/logs for the default run
# Files that only the regime study needs live under data/regime/, outside the DVC stages' outputs
# (data/prepared, data/runs, ...), so running it leaves `dvc status` of the default run as it was.
REGIME_ROOT = "data/regime"


wildcard_constraints:
    k=r"\d+",
    dataset=r"[A-Za-z0-9_\-]+",
    source=r"[A-Za-z0-9_\-]+",
    benchmark=r"[A-Za-z0-9_\-]+",
    method=r"[A-Za-z0-9_\-]+(\+tuned)?",
    strategy=r"reinforce|random",
    tag=TAG_PATTERN,
    root=f"data|{REGIME_ROOT}",


def job_json(command, wildcards):
    """What job ``command`` with ``wildcards`` reads of the params, as JSON: the job reruns exactly
    when this changes (kshot.jobs.job_params)."""
    keys = dict(wildcards.items())
    return json.dumps(job_params(PARAMS, command, DEVICE, **keys), sort_keys=True)


def acquire_json(wildcards, folder):
    """The acquisition's params; when it will run (no dataset in ``folder`` yet, or one acquired
    with other ``data`` fields), a missing or empty source stops the run here, before Snakemake
    deletes the folder it would replace."""
    source = acquire_entry(PARAMS.data, wildcards.dataset)
    if acquired_from(folder) != source:
        check_acquirable(wildcards.dataset, PARAMS.data)
    return json.dumps({"data": source}, sort_keys=True)


def episodes_json(wildcards, target):
    """The episodes job's params; sizes its existing prepared ``target`` cannot satisfy (k,
    val_per_class, test_per_class) stop the run here, before Snakemake deletes the episodes.
    """
    labels = target_labels(Path(target))
    if labels is not None:
        check_sizes(*labels, int(wildcards.k), *PARAMS.episodes_of(wildcards.benchmark))
    return job_json("episodes", wildcards)


def entry(table, name):
    """``PARAMS.<table>[name]``; a name the params do not define (e.g. in a target path asked for
    on the command line) is an error naming the table and the nearest defined name. A method
    ``<name>+tuned`` is method ``<name>`` run with the options its tune stage chose."""
    if table == "methods":
        return PARAMS.method(name)
    entries = getattr(PARAMS, table)
    if name not in entries:
        raise unknown(table, name, entries)
    return entries[name]


def source_of(benchmark):
    return entry("benchmarks", benchmark).source


def source_config(source):
    return entry("sources", source)


def source_dataset(source):
    return entry("sources", source).dataset


def target_dataset(benchmark):
    return entry("benchmarks", benchmark).target


def is_grouped(method):
    return entry("methods", method).kind in GROUPED_KINDS


def activation_tag(method=None):
    """The activation file (tag) a grouped ``method`` clusters; for ``None``, the search's."""
    if method is None:
        return PARAMS.search.activation_spec.tag
    spec = entry("methods", method)
    if spec.kind not in GROUPED_KINDS:
        raise ConfigError(
            f"methods.{method}.kind: groups and activations are made for grouped kinds "
            f"{sorted(GROUPED_KINDS)}, found '{spec.kind}'"
        )
    return spec.options.activation_spec.tag


@functools.cache
def default_outputs():
    """Every file under data/ that the default run (``run:``) makes."""
    grouped = [m for m in PARAMS.run.methods if is_grouped(m)]
    groups = expand(
        "data/groups/{benchmark}/{method}/k{k}.{ext}",
        benchmark=PARAMS.run.benchmarks,
        method=grouped,
        k=RUN_K,
        ext=["pt", "json"],
    )
    return frozenset(
        data_targets()
        + pretrain_targets()
        + activation_targets()
        + search_targets()
        + tune_targets()
        + run_metrics()
        + groups
    )


def home(rel):
    """Where the file ``data/<rel>`` is: under data/ when the default run makes it, else under
    data/regime/ (a file only the regime study needs, e.g. a wide backbone's checkpoint).
    """
    path = f"data/{rel}"
    return path if path in default_outputs() else f"{REGIME_ROOT}/{rel}"


def default_datasets():
    """The datasets the default run reads: its sources' and its benchmarks' targets."""
    return {source_dataset(s) for s in used_sources()} | {
        target_dataset(b) for b in PARAMS.run.benchmarks
    }


def raw_home(dataset):
    """The raw files of ``dataset``: under ``data.raw_dir`` when the default run reads it, else
    under data/regime/raw/."""
    if dataset in default_datasets():
        return f"{RAW}/{dataset}"
    return f"{REGIME_ROOT}/raw/{dataset}"


def inputs_of(w):
    """The checkpoint, prepared target and episodes of benchmark ``w.benchmark`` at ``w.k``."""
    return {
        "ckpt": home(f"checkpoints/{source_of(w.benchmark)}/source.pt"),
        "target": home(f"prepared/targets/{w.benchmark}.pt"),
        "episodes": home(f"episodes/{w.benchmark}/k{w.k}.json"),
    }


def activations_file(benchmark, k, tag):
    return home(f"activations/{benchmark}/k{k}/{tag}.pt")


def groups_input(wildcards):
    """The group stage's file a grouped method reads (none for other kinds)."""
    if not is_grouped(wildcards.method):
        return []
    return home(f"groups/{wildcards.benchmark}/{wildcards.method}/k{wildcards.k}.pt")


def activation_targets():
    """Every activation file the run's grouped methods and searches read."""
    methods = [m for m in PARAMS.run.methods if is_grouped(m)]
    tags = {activation_tag(m) for m in methods}
    if search_targets():
        tags.add(activation_tag())
    return expand(
        "data/activations/{benchmark}/k{k}/{tag}.pt",
        benchmark=PARAMS.run.benchmarks,
        k=RUN_K,
        tag=sorted(tags),
    )


def search_input(wildcards):
    """The search result a ``grouped_rl`` method reads (none for other kinds)."""
    spec = entry("methods", wildcards.method)
    if spec.kind != "grouped_rl":
        return []
    return home(
        f"search/{wildcards.benchmark}/k{wildcards.k}/{spec.options.search}.json"
    )


def tuning_input(wildcards):
    """The tune stage's file a tuned method (``<method>+tuned``) reads (none for others)."""
    if not wildcards.method.endswith(TUNED):
        return []
    base = wildcards.method.removesuffix(TUNED)
    return home(f"tune/{wildcards.benchmark}/{base}/k{wildcards.k}.json")


def tune_targets():
    """The tune stage's file of every tuned method of the default run, benchmark and k."""
    tuned = [m.removesuffix(TUNED) for m in PARAMS.run.methods if m.endswith(TUNED)]
    return expand(
        "data/tune/{benchmark}/{method}/k{k}.json",
        benchmark=PARAMS.run.benchmarks,
        method=tuned,
        k=RUN_K,
    )


def tuned_block(methods=None):
    """The methods (the default run's by default) that the results' tuned block shows as they
    are: the searched ones (grouped_rl, grouping's tuner) and those whose kind has no option a
    grid could tune."""
    return [
        m
        for m in methods or PARAMS.run.methods
        if not m.endswith(TUNED)
        and (
            entry("methods", m).kind == "grouped_rl"
            or not tunable(entry("methods", m).kind)
        )
    ]


def search_targets(benchmarks=None, methods=None, ks=None):
    """Both strategies for every benchmark and k that a grouped_rl method runs on (the default
    run's benchmarks, methods and k unless given; a study's files are where home() puts them).
    """
    methods = PARAMS.run.methods if methods is None else methods
    kinds = {entry("methods", m).kind for m in methods}
    if "grouped_rl" not in kinds:
        return []
    paths = expand(
        "search/{benchmark}/k{k}/{strategy}.json",
        benchmark=PARAMS.run.benchmarks if benchmarks is None else benchmarks,
        k=RUN_K if ks is None else ks,
        strategy=["reinforce", "random"],
    )
    if benchmarks is None:
        return [f"data/{p}" for p in paths]
    return [home(p) for p in paths]


def run_metrics(benchmarks=None, methods=None, ks=None):
    """Run metrics of ``benchmarks`` x ``methods`` x ``ks`` (``None``: the default run's; an
    empty list: none; a study passes its k, ``PARAMS.shots(block)``)."""
    return expand(
        "data/runs/{benchmark}/{method}/k{k}/metrics.json",
        benchmark=PARAMS.run.benchmarks if benchmarks is None else benchmarks,
        method=PARAMS.run.methods if methods is None else methods,
        k=RUN_K if ks is None else ks,
    )


def used_sources():
    return sorted({source_of(b) for b in PARAMS.run.benchmarks})


def regime_runs():
    """Metrics of every run of the regime study (regime.runs blocks): the default run's where it
    has them, the others under data/regime/."""
    out = []
    for block in PARAMS.regime.runs:
        out += run_metrics(block.benchmarks, block.methods, PARAMS.shots(block))
    return sorted({home(path.removeprefix("data/")) for path in out})


def regime_backbone_args():
    """``kshot compare``'s ``--backbone-of`` arguments of the regime study: each benchmark=its
    source's backbone, so that its findings give LeNet's and ResNet-18's cells apart."""
    benchmarks = sorted({b for block in PARAMS.regime.runs for b in block.benchmarks})
    return ["--backbone-of"] + [
        f"{b}={source_config(source_of(b)).backbone}" for b in benchmarks
    ]


def replicate_runs(study="replicates"):
    """Metrics of every run of replicate study ``study``: the default run's where it has them (its
    own source is one replicate), the others under data/regime/."""
    block = getattr(PARAMS, study)
    if not block.seeds or not block.methods:
        return []
    out = run_metrics(
        list(replicate_benchmarks(PARAMS, study)), block.methods, PARAMS.shots(block)
    )
    return sorted({home(path.removeprefix("data/")) for path in out})


def peer_runs():
    """Metrics of every run of the peers study (the default run's benchmarks at every k of
    episodes.k): the default run's where it has them, the others under data/regime/."""
    if not PARAMS.peers.methods:
        return []
    out = run_metrics(PARAMS.run.benchmarks, PARAMS.peers.methods, PARAMS.episodes.k)
    return sorted({home(path.removeprefix("data/")) for path in out})


def study_runs(study):
    """Metrics of every run of benchmark study ``study`` (BENCHMARK_STUDIES; under data/regime/)."""
    block = getattr(PARAMS, study)
    if not block.benchmarks or not block.methods:
        return []
    out = run_metrics(block.benchmarks, block.methods, PARAMS.shots(block))
    return sorted({home(path.removeprefix("data/")) for path in out})


def study_episodes(study):
    """An episodes file per benchmark of benchmark study ``study``, at its first k (what its
    report reads them for: each benchmark's classes, the chance level)."""
    block = getattr(PARAMS, study)
    k = PARAMS.shots(block)[0]
    return [home(f"episodes/{b}/k{k}.json") for b in block.benchmarks]


def source_effect_cells():
    """``{benchmark: (target benchmark, source)}`` of the source-effect study's cells."""
    study = PARAMS.source_effect
    if not study.sources or not study.methods:
        return {}
    return source_effect_benchmarks(PARAMS)


def source_effect_runs():
    """Metrics of every run of the source-effect study: the default run's where it has them, the
    others under data/regime/."""
    cells = source_effect_cells()
    if not cells:
        return []
    out = run_metrics(list(cells), PARAMS.source_effect.methods, PARAMS.episodes.k)
    return sorted({home(path.removeprefix("data/")) for path in out})


def alignment_runs():
    """The alignment study's runs (with the probe's logs; under data/regime/)."""
    study = PARAMS.alignment
    if not study.benchmarks or not study.methods:
        return []
    return expand(
        f"{REGIME_ROOT}/alignment/{{benchmark}}/{{method}}/k{{k}}/metrics.json",
        benchmark=study.benchmarks,
        method=study.methods,
        k=PARAMS.shots(study),
    )


def study_sources(benchmarks):
    """The pre-training metrics of the sources of ``benchmarks``."""
    sources = sorted({source_of(b) for b in benchmarks})
    return [home(f"checkpoints/{s}/metrics.json") for s in sources]


def replicate_of_args(study):
    """``kshot compare``'s ``--replicate-of`` arguments of replicate study ``study``: each run's
    benchmark=base:seed."""
    return ["--replicate-of"] + [
        f"{b}={base}:{seed}"
        for b, (base, seed) in replicate_benchmarks(PARAMS, study).items()
    ]


def comparison_pairs(kind):
    """[a, b] pairs of the ablation table (those whose methods both run), the regime study's or
    a replicate study's."""
    if kind == "regime" or kind in REPLICATE_STUDIES:
        return getattr(PARAMS, kind).pairs
    ran = set(PARAMS.run.methods)
    return [p for p in PARAMS.ablation if set(p) <= ran]


def data_targets():
    benches = PARAMS.run.benchmarks
    return (
        expand("data/prepared/sources/{source}.pt", source=used_sources())
        + expand("data/prepared/targets/{benchmark}.pt", benchmark=benches)
        + expand(
            "data/episodes/{benchmark}/k{k}.json",
            benchmark=benches,
            k=RUN_K,
        )
    )


def pretrain_targets():
    return expand(
        "data/checkpoints/{source}/{file}",
        source=used_sources(),
        file=["source.pt", "metrics.json"],
    )


def finetune_targets():
    return run_metrics() + search_targets() + tune_targets()


def final_outputs():
    out = report_targets() + search_targets()
    return out + ablation_outputs()


def ablation_outputs():
    """The ablation table and its forest plot, where the params have ablation pairs that ran."""
    if not comparison_pairs("ablation"):
        return []
    return [
        "reports/tables/ablation.md",
        "reports/tables/ablation.html",
        "reports/figures/ablation_forest.png",
    ]


def stamped_outputs():
    """The default run's outputs, whose times kshot.settle compares with the last run's."""
    return sorted(set(default_outputs()) | set(final_outputs()))


def settle_wanted():
    """Whether this Snakemake, reading params.yaml alone on this machine, should check DVC's
    restored outputs (not with --config or --configfile: DVC's params are the file's).
    """
    return (
        workflow.is_main_process
        and workflow.local_exec
        and not workflow.config_settings.overwrite_config
        and not workflow.overwrite_configfiles
    )
