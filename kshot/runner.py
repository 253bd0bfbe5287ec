"""The pipeline's stages: each reads its input files, calls the algorithms, writes its output files.

One function per stage, called by :mod:`kshot.cli` (one command each) with typed configuration and
paths. The algorithms below take tensors and dataclasses; the stage files (:mod:`kshot.files`)
read and write what the stages pass between them. Nothing here reads ``params.yaml``.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from kshot.activations import episode_patterns
from kshot.config import (
    ActivationSpec,
    BenchmarkConfig,
    DataConfig,
    EpisodeConfig,
    FinetuneConfig,
    MethodSpec,
    SearchConfig,
    SourceConfig,
)
from kshot.data.prepare import prepare_source, prepare_target, source_geometry
from kshot.episodes import (
    Episode,
    episode_indices,
    episode_seed,
    make_episodes,
    role_seed,
    seed_name,
    select,
)
from kshot.errors import ConfigError, DataError
from kshot.files import activations as activation_file
from kshot.files import groups as group_file
from kshot.files import runs as run_files
from kshot.files.checkpoint import check_geometry, load_checkpoint, read_weights, save_checkpoint
from kshot.files.episodes import read_episodes, write_episodes
from kshot.files.prepared import load_prepared, load_target, save_prepared
from kshot.files.search import read_chosen_counts, save_trace
from kshot.files.tuning import read_chosen, save_tuning
from kshot.grouping import layer_sizes
from kshot.io import sha256, write_json
from kshot.methods import METHODS, EpisodeData, EpisodeResult
from kshot.methods.base import check_probed
from kshot.methods.grouped import GROUPED_KINDS
from kshot.pretrain import pretrain
from kshot.runtime import numerics
from kshot.search import search_episodes, search_group_counts
from kshot.similarity import task_similarity
from kshot.tuning import Reward, default_candidate, method_reward, tune, tuned_name, with_candidate


@dataclass(frozen=True)
class StageInputs:
    """What every stage after pre-training reads of a benchmark at one k: the source network's
    checkpoint, the prepared target and its episodes file."""

    checkpoint: Path
    target: Path
    episodes: Path


def prepare_source_stage(
    name: str, src: SourceConfig, data: DataConfig, raw: Path, out: Path, seed: int
) -> None:
    save_prepared(out, prepare_source(name, src, data, raw, seed))


def prepare_target_stage(
    name: str, bench: BenchmarkConfig, src: SourceConfig, data: DataConfig, raw: Path, out: Path
) -> None:
    save_prepared(out, prepare_target(name, bench, source_geometry(src, data), data, raw))


def episodes_stage(
    benchmark: str,
    k: int,
    cfg: EpisodeConfig,
    seed: int,
    target: Path,
    out: Path,
    draw_as: str | None = None,
    test_field: str = "episodes.test_per_class",
) -> None:
    """The episodes of ``benchmark`` at ``k``; ``draw_as``: draw those of that benchmark instead
    (the same target and classes from another source: the same support, validation and test images);
    ``test_field``: the params field ``cfg.test_per_class`` comes from, named by a size error."""
    data = load_target(target, benchmark, ("pool_y", "test_y"))
    episodes = make_episodes(data["pool_y"], data["test_y"], k, cfg, seed, benchmark, draw_as, test_field)
    write_episodes(out, episodes)


def pretrain_stage(
    name: str,
    src: SourceConfig,
    seed: int,
    data_path: Path,
    out: Path,
    metrics_path: Path,
    device: torch.device,
    threads: int,
) -> float:
    """Pre-train source ``name`` with ``threads`` torch threads; returns the wall time (which goes
    to the log alone: the checkpoint and its metrics are the same bytes on every run with the same
    params, and so are the activations and groups that hash it)."""
    data = load_prepared(data_path, ("train_x", "train_y", "test_x", "test_y"))
    torch.set_num_threads(threads)
    start = time.perf_counter()
    weights = read_weights(Path(src.weights_file())) if src.weights_file() else None
    model, metrics = pretrain(
        src, data["train_x"], data["train_y"], data["test_x"], data["test_y"], seed, device, weights
    )
    metrics["numerics"] = numerics(device, threads)
    save_checkpoint(out, model, src, int(data["train_x"].shape[-1]), metrics)
    write_json(metrics_path, {"source": name, "backbone": src.backbone, **metrics})
    return time.perf_counter() - start


def _episodes_of(
    benchmark: str, k: int | None, inputs: StageInputs, keys: tuple[str, ...]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The prepared target of ``benchmark`` (with ``keys``) and its episodes file at ``k`` (any k
    for ``None``), checked against each other."""
    data = load_target(inputs.target, benchmark, keys)
    return data, read_episodes(inputs.episodes, benchmark, k, data["meta"])


def activations_stage(
    benchmark: str,
    k: int,
    spec: ActivationSpec,
    seed: int,
    inputs: StageInputs,
    out: Path,
    device: torch.device,
) -> None:
    """The activation patterns of every groupable layer on every episode of every role
    (:func:`kshot.activations.episode_patterns`)."""
    data, ep_file = _episodes_of(benchmark, k, inputs, ("pool_x",))
    check_geometry(inputs.checkpoint, inputs.target, data["meta"])
    model, _ = load_checkpoint(inputs.checkpoint)
    model = model.to(device)
    layers = model.groupable()
    roles = episode_patterns(model, ep_file, data["pool_x"], spec, layers, device, seed)
    ckpt_sha, target_sha = sha256(inputs.checkpoint), data["meta"]["sha256"]
    provenance = activation_file.made_from(ckpt_sha, target_sha, seed, benchmark, k, spec.tag)
    activation_file.save_activations(out, provenance, layers, roles)


def cka_stage(
    benchmark: str, n_images: int, seed: int, checkpoint: Path, target: Path, out: Path, device: torch.device
) -> None:
    """How alike the source network's features are to the target task: linear CKA with the labels
    (:func:`kshot.similarity.task_similarity`) on up to ``n_images`` of the target's training pool,
    drawn with ``seed`` (the pool only: the test split never feeds the study)."""
    data = load_target(target, benchmark, ("pool_x", "pool_y"))
    check_geometry(checkpoint, target, data["meta"])
    model, _ = load_checkpoint(checkpoint)
    pick = torch.randperm(len(data["pool_y"]), generator=torch.Generator().manual_seed(seed))[:n_images]
    pick = pick.sort().values
    cka = task_similarity(model.to(device), data["pool_x"][pick], data["pool_y"][pick], device)
    write_json(
        out,
        {
            "benchmark": benchmark,
            "n_images": len(pick),
            "checkpoint": sha256(checkpoint),
            "target": data["meta"]["sha256"],
            "cka": cka,
        },
    )


def _grouped_method(name: str, spec: MethodSpec, stage: str) -> Any:
    if spec.kind not in GROUPED_KINDS:
        raise ConfigError(
            f"methods.{name}.kind: the {stage} stage expected a grouped kind "
            f"{sorted(GROUPED_KINDS)}, found '{spec.kind}'"
        )
    return METHODS[spec.kind](spec.options, FinetuneConfig(), name)


def group_stage(
    benchmark: str,
    k: int,
    method_name: str,
    spec: MethodSpec,
    seed: int,
    inputs: StageInputs,
    activations: Path,
    out: Path,
    summary: Path,
    device: torch.device,
    search: Path | None = None,
) -> None:
    """A grouped method's groups on every evaluation episode, from the activation file: what a
    grouping may use of an episode is its support images, seed and the searched counts."""
    method = _grouped_method(method_name, spec, "group")
    artifacts = {"search_counts": read_chosen_counts(search)} if search is not None else {}
    data, ep_file = _episodes_of(benchmark, k, inputs, ("pool_x", "pool_y"))
    model, _ = load_checkpoint(inputs.checkpoint)
    entries = ep_file.get("eval") or []
    n_classes = int(ep_file["n_classes"])
    tag = method.options.activation_spec.tag
    ckpt_sha = sha256(inputs.checkpoint)  # the activations' and the groups' provenance
    provenance = activation_file.made_from(ckpt_sha, data["meta"]["sha256"], seed, benchmark, k, tag)
    sizes = layer_sizes(model, model.groupable())
    patterns = activation_file.read_activations(activations, provenance, "eval", entries, sizes)
    results = []
    for e, acts in zip(entries, patterns, strict=True):
        support = select(data["pool_x"], data["pool_y"], e["support"])
        empty = (support[0][:0], support[1][:0])
        ep_seed = role_seed(seed, seed_name(ep_file, benchmark), "eval", k, int(e["id"]))
        ep = EpisodeData(model, support, empty, empty, n_classes, ep_seed, device, artifacts)
        results.append((e, *method.grouping(model, ep, acts)))
    made = group_file.groups_made_from(spec.kind, method.options, method_name, ckpt_sha)
    group_file.save_groups(out, summary, made, benchmark, k, tag, results)


def search_stage(
    benchmark: str,
    cfg: SearchConfig,
    finetune: FinetuneConfig,
    seed: int,
    inputs: StageInputs,
    out: Path,
    device: torch.device,
    activations: Path | None = None,
) -> None:
    """The search of group counts per layer (:func:`kshot.search.search_group_counts`) on the
    search episodes, its finalists compared on the selection episodes; patterns from the
    activation file, or computed here without one."""
    data, ep_file = _episodes_of(benchmark, None, inputs, ("pool_x", "pool_y"))
    where = f"episodes file '{inputs.episodes}'"
    search, select_eps = (
        search_episodes(ep_file, data["pool_x"], data["pool_y"], benchmark, seed, role, where)
        for role in ("search", "select")
    )
    model, _ = load_checkpoint(inputs.checkpoint)
    patterns = None
    if activations is not None:
        k = int(ep_file["k"])
        ckpt_sha, tag = sha256(inputs.checkpoint), cfg.activation_spec.tag
        provenance = activation_file.made_from(ckpt_sha, data["meta"]["sha256"], seed, benchmark, k, tag)
        sizes = layer_sizes(model, model.groupable())
        patterns = {
            role: activation_file.read_activations(
                activations, provenance, role, ep_file.get(role) or [], sizes
            )
            for role in ("search", "select")
        }
    n_classes = int(ep_file["n_classes"])
    trace = search_group_counts(model, search, n_classes, cfg, finetune, device, seed, select_eps, patterns)
    save_trace(out, trace)


def tune_stage(
    benchmark: str,
    method_name: str,
    spec: MethodSpec,
    finetune: FinetuneConfig,
    search: SearchConfig,
    seed: int,
    k: int,
    inputs: StageInputs,
    out: Path,
    device: torch.device,
) -> None:
    """The tuning at ``k`` of ``method_name``'s grid (``spec.tune``, :func:`kshot.tuning.tune`) on the search
    episodes, its finalists and defaults compared on the selection episodes, with the grouped
    search's budget, low-fidelity steps and finalists (``search``)."""
    data, ep_file = _episodes_of(benchmark, k, inputs, ("pool_x", "pool_y"))
    where = f"episodes file '{inputs.episodes}'"
    episodes = {
        role: search_episodes(ep_file, data["pool_x"], data["pool_y"], benchmark, seed, role, where)
        for role in ("search", "select")
    }
    if search.finalists > 0 and not episodes["select"]:
        raise DataError(
            f"search.finalists: {search.finalists} needs selection episodes (episodes.select_episodes "
            ">= 1), found none in the episodes file"
        )
    model, _ = load_checkpoint(inputs.checkpoint)
    n_classes = int(ep_file["n_classes"])

    def reward(options: Any, role: str, low_fidelity: bool) -> Reward:
        steps = search.steps if low_fidelity else None
        return method_reward(
            method_name, spec.kind, options, finetune, model, episodes[role], n_classes, device, steps
        )

    trace = tune(
        method_name,
        spec.kind,
        spec.options,
        spec.tune,
        search.budget,
        search.finalists,
        reward,
        default_candidate(spec.options, spec.tune, finetune),
    )
    save_tuning(out, trace)


def run_episodes(
    *,
    benchmark: str,
    method_name: str,
    spec: MethodSpec,
    finetune: FinetuneConfig,
    k: int,
    inputs: StageInputs,
    out_dir: Path,
    seed: int,
    device: torch.device,
    role: str = "eval",
    artifacts: dict[str, Any] | None = None,
    groups: Path | None = None,
    search: Path | None = None,
    tuning: Path | None = None,
) -> dict[str, Any]:
    """Run ``method_name`` on each episode of ``role`` in the episodes file; write and return the
    summary.

    Finished episodes are kept as they finish and reused by a rerun with the same inputs
    (:mod:`kshot.files.runs`). ``spec``: the method's parsed spec (:func:`kshot.params.parse_method`);
    ``groups``: the group stage's file for a grouped method (its assignments are used instead of
    clustering here); ``search``: the search file whose chosen counts ``grouped_rl`` uses;
    ``tuning``: the tune stage's file of ``method_name``, whose chosen options are run (as
    ``<method_name>+tuned``) instead of the options as written.
    """
    data, ep_file = _episodes_of(benchmark, k, inputs, ("pool_x", "pool_y", "test_x", "test_y"))
    if role not in ep_file:
        raise DataError(
            f"episodes file '{inputs.episodes}': expected a '{role}' list, found {sorted(ep_file)}"
        )
    check_geometry(inputs.checkpoint, inputs.target, data["meta"])
    if tuning is not None:
        chosen = read_chosen(tuning, method_name)
        where = f"tuning result '{tuning}'"
        spec = MethodSpec(spec.kind, with_candidate(spec.kind, spec.options, chosen, where))
        method_name = tuned_name(method_name)
    method = METHODS[spec.kind](spec.options, finetune, method_name)
    artifacts = dict(artifacts or {})
    if artifacts.get("alignment_every") is not None:
        check_probed(method)
    if search is not None:
        artifacts["search_counts"] = read_chosen_counts(search)
    ckpt_sha = sha256(inputs.checkpoint)
    given = None
    if groups is not None:
        made = group_file.groups_made_from(spec.kind, method.options, method_name, ckpt_sha)
        given = group_file.read_groups(groups, made, ep_file[role])
    key = run_files.run_key(
        {
            "spec": {"kind": spec.kind, "options": dataclasses.asdict(spec.options)},
            "finetune": dataclasses.asdict(method.cfg),
            "seed": seed,
            "target": data["meta"]["sha256"],
            "checkpoint": ckpt_sha,
            "groups": sha256(groups) if groups is not None else None,
            "episodes": ep_file[role],
            "artifacts": artifacts,
        }
    )
    records, timings, resumed = [], [], []
    for raw in ep_file[role]:
        ep = Episode.from_dict(raw)
        path = run_files.episode_path(out_dir, ep.id)
        done = run_files.read_finished(path, key)
        if done is not None:
            records.append(done[0])
            timings.append(done[1])
            resumed.append(ep.id)
            continue
        start = time.perf_counter()
        model, _ = load_checkpoint(inputs.checkpoint)
        ep_data = EpisodeData(
            model=model,
            support=select(data["pool_x"], data["pool_y"], ep.support),
            val=select(data["pool_x"], data["pool_y"], ep.val),
            test=select(data["test_x"], data["test_y"], ep.test),
            n_classes=int(ep_file["n_classes"]),
            seed=episode_seed(seed, seed_name(ep_file, benchmark), k, ep.id),
            device=device,
            artifacts={
                **artifacts,
                "unlabeled": data["pool_x"],
                "unlabeled_exclude": episode_indices(raw),
                **({"groups": given[ep.id]} if given is not None else {}),
            },
        )
        result: EpisodeResult = method.run(ep_data)
        metrics = {
            "benchmark": benchmark,
            "method": method_name,
            "kind": spec.kind,
            "k": k,
            "episode": ep.id,
            **result.metrics(),
        }
        timing = {
            "episode": ep.id,
            "wall_time_s": time.perf_counter() - start,
            "train_time_s": result.train_time_s,
        }
        run_files.save_episode(path, key, metrics, timing)
        records.append(metrics)
        timings.append(timing)
    summary = {
        "benchmark": benchmark,
        "method": method_name,
        "kind": spec.kind,
        "k": k,
        "role": role,
        "episodes": records,
    }
    run_files.save_run(out_dir, summary, timings)
    if resumed:
        print(
            f"{method_name} k={k}: resumed {len(resumed)} of {len(records)} episodes finished by an "
            f"earlier run with the same inputs ({run_files.episode_path(out_dir, resumed[0]).parent})"
        )
    return summary
