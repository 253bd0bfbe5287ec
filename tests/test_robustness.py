"""Determinism of the pipeline's numbers and atomicity of every writer in kshot/."""

from __future__ import annotations

import ast
import copy

import pytest
import torch
from conftest import REPO, TINY_PARAMS
from upstream import build_upstream

from kshot.params import params_from_dict, parse_method
from kshot.runner import StageInputs, run_episodes

# Method calls that write a file (and ``open`` for writing): each must target a path from
# kshot.io.atomic_path, or write inside an acquisition's temporary folder (renamed into place whole by
# kshot.data.datasets.acquire). kshot.io's own helpers (write_json, save_tensors, ...) are atomic.
WRITERS = {"save", "savez", "savez_compressed", "savefig", "to_csv", "write_text", "write_bytes", "dump"}
ACQUISITION_FETCHERS = {"_fetch_fashion", "_fetch_digits", "fetch"}


def unguarded_writes(source: str) -> list[str]:
    """``function:line`` of writer calls neither inside ``with atomic_path(...)`` nor in a fetcher."""
    found = []

    def visit(node: ast.AST, function: str, guarded: bool) -> None:
        if isinstance(node, ast.FunctionDef):
            function = node.name
        if isinstance(node, ast.With) and any(
            isinstance(i.context_expr, ast.Call) and getattr(i.context_expr.func, "id", "") == "atomic_path"
            for i in node.items
        ):
            guarded = True
        if isinstance(node, ast.Call) and not guarded and function not in ACQUISITION_FETCHERS:
            name = getattr(node.func, "attr", getattr(node.func, "id", ""))
            modes = [a.value for a in node.args[1:2] if isinstance(a, ast.Constant)]
            modes += [
                k.value.value for k in node.keywords if k.arg == "mode" and isinstance(k.value, ast.Constant)
            ]
            method = isinstance(node.func, ast.Attribute)  # torch.save, path.write_text; not io's helpers
            if (method and name in WRITERS) or (
                name == "open" and any(set(str(m)) & set("wax") for m in modes)
            ):
                found.append(f"{function}:{node.lineno}")
        for child in ast.iter_child_nodes(node):
            visit(child, function, guarded)

    visit(ast.parse(source), "<module>", False)
    return found


def test_every_writer_in_kshot_is_atomic():
    offenders = {}
    for path in sorted((REPO / "kshot").rglob("*.py")):
        if path.name == "io.py":
            continue  # the atomic helpers themselves
        bad = unguarded_writes(path.read_text())
        if bad:
            offenders[str(path.relative_to(REPO))] = bad
    assert offenders == {}


def test_the_writer_scan_catches_a_plain_torch_save():
    assert unguarded_writes("def f(m, p):\n    torch.save(m, p)\n") == ["f:2"]
    assert unguarded_writes("def f(p):\n    with open(p, 'wb') as fh:\n        fh.write(b'')\n") == ["f:2"]
    assert unguarded_writes("def f(p):\n    with open(p) as fh:\n        fh.read()\n") == []
    assert unguarded_writes("def f(m, p):\n    with atomic_path(p) as t:\n        torch.save(m, t)\n") == []


@pytest.fixture(scope="module")
def upstream(tmp_path_factory) -> dict:
    return build_upstream(tmp_path_factory.mktemp("upstream"), copy.deepcopy(TINY_PARAMS))


@pytest.mark.parametrize("method", ["full", "l2sp"])
def test_two_runs_with_the_same_params_write_byte_identical_metrics(tmp_path, upstream, method):
    params = params_from_dict(TINY_PARAMS)
    outs = []
    for name in ("a", "b"):
        run_episodes(
            benchmark="tiny",
            method_name=method,
            spec=parse_method(method, TINY_PARAMS["methods"][method]),
            finetune=params.finetune,
            k=1,
            inputs=StageInputs(upstream["ckpt"], upstream["target"], upstream["episodes"]),
            out_dir=tmp_path / name,
            seed=params.seed,
            device=torch.device("cpu"),
        )
        outs.append((tmp_path / name / "metrics.json").read_bytes())
    assert outs[0] == outs[1]
    assert b'"test_acc"' in outs[0]


def test_pretraining_twice_gives_identical_weights_and_metrics(tmp_path, upstream):
    raw = copy.deepcopy(TINY_PARAMS)
    other = build_upstream(tmp_path, raw, episodes=False)
    a, b = torch.load(upstream["ckpt"]), torch.load(other["ckpt"])
    assert a["arch"] == b["arch"]
    for key, tensor in a["state_dict"].items():
        assert torch.equal(tensor, b["state_dict"][key]), key
    assert a["metrics"] == b["metrics"] and "train_time_s" not in a["metrics"]
    # byte for byte: the activations and groups record the checkpoint's sha256 (no wall time inside)
    assert upstream["ckpt"].read_bytes() == other["ckpt"].read_bytes()
    assert upstream["source_metrics"].read_bytes() == other["source_metrics"].read_bytes()


def test_pretraining_threads_are_the_recipes_and_are_recorded(tmp_path, upstream):
    """The float rounding of CPU pre-training depends on the thread count, so the rule passes none:
    ``sources.<name>.threads`` decides (not ``--cores``), and the checkpoint records what decided
    its numerics. By hand, ``--threads`` overrides the recipe, and the record says so."""
    import json

    from kshot.cli import main
    from kshot.files.checkpoint import load_checkpoint

    raw = copy.deepcopy(TINY_PARAMS)
    raw["sources"]["digits04"]["threads"] = 1
    before = torch.get_num_threads()
    records = []
    try:
        for name, extra in (("recipe", []), ("by_hand", ["--threads", "3"])):
            out, metrics = tmp_path / f"{name}.pt", tmp_path / f"{name}.json"
            argv = ["pretrain", "--source", "digits04", "--data", str(upstream["source"])]
            argv += ["--out", str(out), "--metrics", str(metrics), "--params-json", json.dumps(raw), *extra]
            assert main(argv) == 0
            records.append(json.loads(metrics.read_text())["numerics"])
            assert load_checkpoint(out)[1]["numerics"] == records[-1]
    finally:
        torch.set_num_threads(before)
    assert [r["threads"] for r in records] == [1, 3]
    assert records[0]["torch"] == torch.__version__ and records[0]["device"] == "cpu"
    assert records[0]["cpu_capability"] == torch.backends.cpu.get_cpu_capability()


@pytest.mark.parametrize(
    ("threads", "message"), [(0, "sources.digits04.threads"), (-1, "sources.digits04.seed")]
)
def test_bad_pretraining_threads_or_seed_is_refused_by_name(threads, message):
    from kshot.errors import ConfigError

    raw = copy.deepcopy(TINY_PARAMS)
    if message.endswith("seed"):
        raw["sources"]["digits04"]["seed"] = threads
    else:
        raw["sources"]["digits04"]["threads"] = threads
    with pytest.raises(ConfigError, match=message):
        params_from_dict(raw)


def test_a_sources_seed_replaces_the_top_level_seed_for_its_pretraining(upstream):
    import dataclasses

    from kshot.files.prepared import load_prepared
    from kshot.pretrain import pretrain

    src = params_from_dict(TINY_PARAMS).sources["digits04"]
    d = load_prepared(upstream["source"], ("train_x", "train_y", "test_x", "test_y"))
    data = (d["train_x"], d["train_y"], d["test_x"], d["test_y"])
    cpu = torch.device("cpu")
    own = pretrain(dataclasses.replace(src, seed=7), *data, 0, cpu)[0].state_dict()
    top = pretrain(src, *data, 7, cpu)[0].state_dict()
    other = pretrain(src, *data, 0, cpu)[0].state_dict()
    assert all(torch.equal(own[k], top[k]) for k in own)
    assert not torch.equal(own["conv1.weight"], other["conv1.weight"])
