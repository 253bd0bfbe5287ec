"""The package's shape: dependencies point one way, the training loop knows no method, one params
validator, and DVC stages that depend on the code they run."""

from __future__ import annotations

import ast
import copy
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from kshot.cli import main
from tests.conftest import REPO, TINY_PARAMS

PACKAGE = REPO / "kshot"

# Layers, bottom to top: a module may import modules of its own layer or below, never above.
LAYERS = [
    {"kshot", "kshot.errors", "kshot.config", "kshot.io", "kshot.runtime", "kshot.stats"},
    {
        "kshot.models",
        "kshot.optim",
        "kshot.data",
        "kshot.data.base",
        "kshot.data.imagefolder",
        "kshot.data.datasets",
    },
    {
        "kshot.finetune",
        "kshot.episodes",
        "kshot.data.prepare",
        "kshot.pretrain",
        "kshot.grouping",
        "kshot.shared_grad",
        "kshot.activations",
        "kshot.controller",
        "kshot.population",
        "kshot.search",
        "kshot.methods",
        "kshot.methods.base",
        "kshot.methods.centroid",
        "kshot.methods.full",
        "kshot.methods.grouped",
        "kshot.methods.l2sp",
        "kshot.methods.linear",
        "kshot.methods.adafilter",
        "kshot.methods.bitfit",
        "kshot.methods.bss",
        "kshot.methods.delta",
        "kshot.methods.fewshot",
        "kshot.methods.lpft",
        "kshot.methods.surgical",
        "kshot.tuning",
        "kshot.similarity",
        "kshot.alignment",
        "kshot.maps",
    },
    {"kshot.params", "kshot.jobs"},
    {
        "kshot.files",
        "kshot.files.common",
        "kshot.files.prepared",
        "kshot.files.episodes",
        "kshot.files.checkpoint",
        "kshot.files.activations",
        "kshot.files.groups",
        "kshot.files.search",
        "kshot.files.tuning",
        "kshot.files.runs",
    },
    {
        "kshot.tables",
        "kshot.figures",
        "kshot.report",
        "kshot.regime",
        "kshot.notebook",
        "kshot.source_effect",
        "kshot.alignment_report",
        "kshot.maps_report",
    },
    {"kshot.runner", "kshot.cli", "kshot.__main__", "kshot.settle"},
]

# Imports made inside a function on purpose, each with its reason (none to dodge a cycle).
LAZY = {
    ("kshot.cli", "kshot.regime"): "report commands: pandas is not loaded by every stage job",
    ("kshot.cli", "kshot.report"): "report commands: pandas and matplotlib likewise",
    ("kshot.cli", "kshot.notebook"): "report commands: nbclient likewise",
    ("kshot.cli", "kshot.tables"): "report commands: pandas likewise (the README's headline table)",
    ("kshot.report", "kshot.figures"): "matplotlib only where a figure is drawn",
    ("kshot.cli", "kshot.source_effect"): "report commands: pandas and matplotlib likewise",
    ("kshot.cli", "kshot.alignment_report"): "report commands: pandas and matplotlib likewise",
    ("kshot.cli", "kshot.maps_report"): "report commands: kmapper, networkx and matplotlib likewise",
}


def module_name(path: Path) -> str:
    rel = path.relative_to(REPO).with_suffix("")
    return ".".join(rel.parts).removesuffix(".__init__")


def imports_of(path: Path) -> list[tuple[str, bool]]:
    """The kshot modules ``path`` imports, each with whether the import is inside a function."""
    modules = {module_name(p) for p in PACKAGE.rglob("*.py")}
    me = module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    found = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
            names: list[str] = []
            if isinstance(child, ast.Import):
                names = [a.name for a in child.names]
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    parts = package.split(".")[: len(package.split(".")) - child.level + 1]
                    base = ".".join(parts + ([base] if base else []))
                names = [f"{base}.{a.name}" for a in child.names] + [base]
            for name in names:
                while name and name not in modules:
                    name = name.rpartition(".")[0]
                if name and name != me and name.startswith("kshot") and not me.startswith(name + "."):
                    found.append((name, inner))
            visit(child, inner)

    visit(ast.parse(path.read_text()), False)
    return sorted(set(found))


def import_graph() -> dict[str, set[str]]:
    return {module_name(p): {m for m, _ in imports_of(p)} for p in PACKAGE.rglob("*.py")}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, ()):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            strong(v)
    return out


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycle_among_kshots_modules_counting_imports_inside_functions():
    assert cycles(import_graph()) == []


def test_every_module_has_a_layer_and_imports_point_down():
    layer = {m: i for i, group in enumerate(LAYERS) for m in group}
    graph = import_graph()
    assert set(graph) == set(layer), "a module was added or removed: place it in LAYERS"
    upward = [(m, d) for m, deps in graph.items() for d in deps if layer[d] > layer[m]]
    assert upward == []


def test_function_local_imports_are_the_deliberate_lazy_ones():
    lazy = {(module_name(p), m) for p in PACKAGE.rglob("*.py") for m, inner in imports_of(p) if inner}
    assert lazy == set(LAZY)


def test_the_training_loop_imports_nothing_of_grouping():
    deps = {m for m, _ in imports_of(PACKAGE / "finetune.py")}
    assert not deps & {"kshot.grouping", "kshot.shared_grad", "kshot.methods"}
    assert "GroupedGradient" not in (PACKAGE / "finetune.py").read_text()


def test_config_imports_nothing_of_kshot_but_its_errors():
    assert {m for m, _ in imports_of(PACKAGE / "config.py")} == {"kshot.errors"}


def test_algorithms_never_open_a_pipeline_file():
    layer = {m: i for i, group in enumerate(LAYERS) for m in group}
    for path in PACKAGE.rglob("*.py"):
        if layer[module_name(path)] == 2:
            deps = {m for m, _ in imports_of(path)}
            assert not any(m.startswith("kshot.files") for m in deps), module_name(path)
            text = path.read_text()
            for call in ("save_tensors(", "write_json(", "load_tensors(", "read_json("):
                assert call not in text, f"{module_name(path)} calls {call}"


# --- one validator -----------------------------------------------------------------------------

BIN = Path(sys.executable).parent


def test_params_mapping_round_trips_through_the_validator():
    from kshot.params import load_params, params_from_dict, params_to_dict

    params = load_params(REPO / "params.yaml")
    again = params_from_dict(params_to_dict(params))
    assert again == params
    assert type(again.methods["grouped"].options).__name__ == "GroupedOptions"


def _workflow_copy(root: Path, params: dict) -> Path:
    for name in ("Snakefile", "dvc.yaml", ".dvcignore", "workflow", "kshot", "reports/analysis.ipynb"):
        src, dst = REPO / name, root / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, dst)
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    return root


def _run(workdir: Path, *argv: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run(
        [str(BIN / argv[0]), *argv[1:]], cwd=workdir, env=env, capture_output=True, text=True, timeout=600
    )


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda p: p["finetune"].update(head_init="centroids"),
            "finetune.head_init: expected one of ['centroid', 'random', 'zero'], found 'centroids' "
            "(did you mean 'centroid'?)",
        ),
        (
            lambda p: p["methods"]["grouped"].update(groups=1.5),
            "methods.grouped.groups: expected a fraction of the neurons in (0, 1], found 1.5",
        ),
        (
            lambda p: p["sources"]["digits04"].update(backbone="lenet5"),
            "sources.digits04.backbone: unknown value 'lenet5' (did you mean 'lenet'?)",
        ),
    ],
)
@pytest.mark.slow
def test_a_wrong_value_gets_the_same_message_from_the_cli_snakemake_and_dvc(tmp_path, capsys, edit, message):
    if shutil.which("dvc", path=str(BIN)) is None:
        pytest.skip("dvc is not installed in this environment")
    params = copy.deepcopy(TINY_PARAMS)
    edit(params)
    root = _workflow_copy(tmp_path, params)

    assert main(["episodes", "--params", str(root / "params.yaml"), "--benchmark", "tiny", "--k", "1",
                 "--target", "t.pt", "--out", str(tmp_path / "e.json")]) == 2  # fmt: skip
    assert message in capsys.readouterr().err
    snake = _run(root, "snakemake", "-n", "--cores", "1")
    assert snake.returncode != 0 and message in snake.stdout + snake.stderr
    assert _run(root, "dvc", "init", "--no-scm", "-q").returncode == 0
    repro = _run(root, "dvc", "repro")
    assert repro.returncode != 0 and message in repro.stdout + repro.stderr
    assert not (root / "data").exists()


# --- DVC stages depend on their code --------------------------------------------------------------


def test_every_dvc_stage_depends_on_the_whole_package_and_workflow():
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    for name, stage in stages.items():
        deps = set(stage["deps"])
        assert {"kshot", "workflow", "Snakefile"} <= deps, name
        assert not [d for d in deps if d.startswith(("kshot/", "workflow/"))], f"{name}: a hand-kept list"


def test_dvc_ignores_bytecode_so_the_package_hash_is_its_source():
    assert "**/__pycache__" in (REPO / ".dvcignore").read_text().split()


def test_a_stage_job_starts_without_torchvision_or_easyfsl():
    """Every pipeline job imports kshot.cli; torchvision (and easyfsl, which loads it) cost about
    2 s per job, so they are imported where a dataset, a ResNet or a classifier needs them."""
    import subprocess
    import sys

    code = "import sys, kshot.cli; print(sorted(m for m in ('torchvision', 'easyfsl') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
