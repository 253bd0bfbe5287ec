"""Bad input: every case raises (or, through the CLI, prints one line and exits 2) with a message naming
the field or file, what was expected and what was found, and leaves no output behind.

Cases already covered elsewhere (unknown key/method/kind/backbone/target, k <= 0 or non-integer in
params, empty/duplicate target classes, missing or truncated Fashion-MNIST files, corrupt gzip,
truncated or mismatched checkpoints, group counts out of range) are not repeated here.
"""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import REPO, TINY_PARAMS
from PIL import Image
from upstream import build_upstream

from kshot.cli import main
from kshot.config import DataConfig, FinetuneConfig
from kshot.data.datasets import FASHION_FILES, acquire, check_acquirable, load_split
from kshot.data.prepare import select_classes
from kshot.episodes import make_episodes
from kshot.errors import CheckpointError, ConfigError, DataError
from kshot.jobs import check_device, job_params
from kshot.models import LeNet
from kshot.params import params_from_dict, parse_method
from kshot.report import load_runs, summarise
from kshot.runner import StageInputs, prepare_target_stage, run_episodes
from kshot.tables import main_tables


@pytest.fixture(scope="module")
def upstream(tmp_path_factory) -> dict:
    """Prepared target, checkpoint and k=1 episodes of the tiny params (built once)."""
    return build_upstream(tmp_path_factory.mktemp("upstream"), copy.deepcopy(TINY_PARAMS))


def run_cli(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    """``python -m kshot ARGS`` in ``cwd``, as the Snakemake rules call it."""
    return subprocess.run(
        [sys.executable, "-m", "kshot", *args], cwd=cwd, capture_output=True, text=True, timeout=120
    )


def assert_one_line_error(proc: subprocess.CompletedProcess, *fragments: str) -> str:
    """Exit status 2, a single stderr line with every fragment, and no traceback."""
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def params_json(**changes) -> str:
    raw = copy.deepcopy(TINY_PARAMS)
    raw.update(changes)
    return json.dumps(raw)


def finetune_args(upstream: dict, out_dir: Path, method: str = "full", ckpt: Path | None = None) -> list[str]:
    return [
        "finetune",
        "--benchmark",
        "tiny",
        "--method",
        method,
        "--k",
        "1",
        "--checkpoint",
        str(ckpt or upstream["ckpt"]),
        "--target",
        str(upstream["target"]),
        "--episodes",
        str(upstream["episodes"]),
        "--out-dir",
        str(out_dir),
    ]


def assert_no_run_output(out_dir: Path) -> None:
    assert not (out_dir / "metrics.json").exists()
    assert not (out_dir / "timings.json").exists()
    assert not list(out_dir.rglob("ep*.json"))


# --- through the command line: exit status 2, one line, no traceback, nothing written ---------------


def test_cli_invalid_yaml_names_the_file_and_writes_nothing(tmp_path, upstream):
    (tmp_path / "params.yaml").write_text("seed: 0\nepisodes: {k: [1, 5\n")
    out = tmp_path / "k1.json"
    proc = run_cli(
        tmp_path, "episodes", "--benchmark", "tiny", "--k", "1", "--target", str(upstream["target"]),
        "--out", str(out),
    )  # fmt: skip
    assert_one_line_error(
        proc,
        "kshot episodes: error:",
        "params file 'params.yaml'",
        "valid YAML",
        "found a syntax error at line 3",
    )
    assert not out.exists()


def test_cli_unknown_dataset_suggests_the_nearest_and_leaves_no_folder(tmp_path):
    out = tmp_path / "raw" / "digitz"
    proc = run_cli(tmp_path, "acquire", "--dataset", "digitz", "--out", str(out), "--params-json", "{}")
    assert_one_line_error(proc, "dataset: unknown value 'digitz'", "did you mean 'digits'", "expected one of")
    assert not out.exists()


@pytest.mark.parametrize("k", ["0", "-2"])
def test_cli_k_below_one_is_refused_before_drawing_episodes(tmp_path, upstream, k):
    out = tmp_path / "k.json"
    proc = run_cli(
        tmp_path, "episodes", "--benchmark", "tiny", "--k", k, "--target", str(upstream["target"]),
        "--out", str(out), "--params-json", params_json(),
    )  # fmt: skip
    assert_one_line_error(proc, "k: expected an integer number of shots >= 1", f"found {k}")
    assert not out.exists()


def test_cli_non_integer_k_is_an_argument_error_without_traceback(tmp_path, upstream):
    proc = run_cli(
        tmp_path, "episodes", "--benchmark", "tiny", "--k", "1.5", "--target", str(upstream["target"]),
        "--out", str(tmp_path / "k.json"), "--params-json", params_json(),
    )  # fmt: skip
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "argument --k: invalid int value: '1.5'" in proc.stderr
    assert not (tmp_path / "k.json").exists()


def test_cli_k_plus_validation_beyond_the_smallest_class_names_both_fields(tmp_path, upstream):
    out = tmp_path / "k.json"
    proc = run_cli(
        tmp_path, "episodes", "--benchmark", "tiny", "--k", "100", "--target", str(upstream["target"]),
        "--out", str(out), "--params-json", params_json(),
    )  # fmt: skip
    line = assert_one_line_error(proc, "episodes.k: k=100", "episodes.val_per_class=2", "needs 102")
    assert "has only" in line
    assert not out.exists()


def test_cli_corrupt_checkpoint_names_the_file_and_writes_no_run(tmp_path, upstream):
    bad = tmp_path / "garbage.pt"
    bad.write_bytes(os.urandom(4096))
    out_dir = tmp_path / "run"
    proc = run_cli(tmp_path, *finetune_args(upstream, out_dir, ckpt=bad), "--params-json", params_json())
    assert_one_line_error(proc, f"checkpoint '{bad}'", "expected a torch checkpoint", "corrupt or truncated")
    assert_no_run_output(out_dir)


# --- the same entry point in-process (same code path, no interpreter start-up) ---------------------


def test_unknown_key_in_a_params_file_suggests_the_nearest(tmp_path, upstream, capsys):
    raw = copy.deepcopy(TINY_PARAMS)
    raw["episodes"]["val_per_clas"] = raw["episodes"].pop("val_per_class")
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(raw))
    out = tmp_path / "k1.json"
    argv = ["episodes", "--params", str(tmp_path / "p.yaml"), "--benchmark", "tiny", "--k", "1"]
    assert main([*argv, "--target", str(upstream["target"]), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "episodes: unknown key 'val_per_clas' (did you mean 'val_per_class'?)" in err
    assert not out.exists()


def test_unknown_method_on_the_command_line_suggests_the_nearest(tmp_path, upstream, capsys):
    out_dir = tmp_path / "run"
    assert main([*finetune_args(upstream, out_dir, method="fulll"), "--params-json", params_json()]) == 2
    assert "methods: unknown value 'fulll' (did you mean 'full'?)" in capsys.readouterr().err
    assert not out_dir.exists()


def test_missing_dataset_files_through_the_cli_name_the_setting(tmp_path, capsys):
    out = tmp_path / "raw" / "fashion_mnist"
    cfg = json.dumps({"data": {"fashion_mnist_dir": str(tmp_path / "nowhere")}})
    assert main(["acquire", "--dataset", "fashion_mnist", "--out", str(out), "--params-json", cfg]) == 2
    err = capsys.readouterr().err
    assert f"data.fashion_mnist_dir '{tmp_path / 'nowhere'}'" in err and "found no such folder" in err
    assert not out.exists() and list(out.parent.iterdir()) == []


def test_checkpoint_for_other_input_geometry_is_refused_before_any_episode(tmp_path, upstream, capsys):
    ckpt = tmp_path / "rgb32.pt"
    arch = {"backbone": "lenet", "in_channels": 3, "image_size": 32, "n_classes": 5, "width": 0.5}
    torch.save({"arch": arch, "state_dict": LeNet(3, 32, 5, width=0.5).state_dict()}, ckpt)
    out_dir = tmp_path / "run"
    assert main([*finetune_args(upstream, out_dir, ckpt=ckpt), "--params-json", params_json()]) == 2
    err = capsys.readouterr().err
    assert f"checkpoint '{ckpt}'" in err and "1-channel 28x28" in err
    assert "found one for in_channels=3, image_size=32" in err
    assert_no_run_output(out_dir)


# --- params ----------------------------------------------------------------------------------------


def test_unknown_source_dataset_suggests_the_nearest(tiny_params):
    tiny_params["sources"]["digits04"]["dataset"] = "fashion_mnst"
    with pytest.raises(
        ConfigError, match=r"sources.digits04.dataset: unknown value 'fashion_mnst'.*'fashion_mnist'"
    ):
        params_from_dict(tiny_params)


def test_empty_source_class_list_is_rejected(tiny_params):
    tiny_params["sources"]["digits04"]["classes"] = []
    with pytest.raises(
        ConfigError, match=r"sources.digits04.classes: expected at least 2 classes, found \[\]"
    ):
        params_from_dict(tiny_params)


def test_target_classes_overlapping_the_source_classes_of_the_same_dataset_are_rejected(tiny_params):
    tiny_params["benchmarks"]["tiny"]["target_classes"] = [3, 4, 5]  # digits04 trains on 0..4
    with pytest.raises(ConfigError, match=r"benchmarks.tiny.target_classes.*disjoint.*\[3, 4\]"):
        params_from_dict(tiny_params)


# --- data ------------------------------------------------------------------------------------------


def test_target_class_absent_from_the_dataset_names_the_field_and_writes_nothing(
    tmp_path, upstream, tiny_params
):
    tiny_params["benchmarks"]["tiny"]["target_classes"] = [5, 12]
    params = params_from_dict(tiny_params)
    out = tmp_path / "tiny.pt"
    with pytest.raises(
        DataError, match=r"benchmarks.tiny.target_classes: expected classes present in digits.*\[12\] absent"
    ):
        bench = params.benchmarks["tiny"]
        prepare_target_stage("tiny", bench, params.sources[bench.source], params.data, upstream["raw"], out)
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_truncated_digits_file_names_the_file(tmp_path):
    acquire("digits", DataConfig(), tmp_path / "digits")
    npz = tmp_path / "digits" / "digits.npz"
    npz.write_bytes(npz.read_bytes()[:3000])
    with pytest.raises(DataError, match=r"digits.npz': expected an npz.*corrupt or truncated"):
        load_split("digits", "train", DataConfig(), tmp_path / "digits")


def write_tree(root: Path, files: dict[str, bytes | None]) -> Path:
    """An ImageFolder tree; a ``None`` value is a small valid PNG."""
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if content is None:
            Image.fromarray(np.full((6, 6, 3), 99, dtype=np.uint8)).save(path)
        else:
            path.write_bytes(content)
    return root


@pytest.mark.parametrize(
    ("files", "pattern"),
    [
        ({"cats/a.png": None, "dogs/.keep": b""}, r"image folder '.*tree'.*one sub-folder per class.*dogs"),
        (
            {"cats/a.png": None, "dogs/notes.txt": b"hello"},
            r"image folder '.*tree'.*each with at least one.*dogs",
        ),
        (
            {"cats/a.png": None, "dogs/b.png": b"not a png"},
            r"image file '.*b.png': expected a readable image.*non-image",
        ),
        (  # ImageNet's layout: read as a tree of classes it would give two classes, train and val
            {
                "train/cats/a.png": None,
                "train/dogs/b.png": None,
                "val/cats/c.png": None,
                "val/dogs/d.png": None,
            },
            r"image folder '.*tree': expected train/ and test/ .*or class folders only, "
            r"found train/ and val/$",
        ),
        (  # each split numbers its classes alphabetically: test's dogs would be train's cows
            {
                "train/cats/a.png": None,
                "train/dogs/b.png": None,
                "test/cats/c.png": None,
                "test/cows/d.png": None,
                "test/dogs/e.png": None,
            },
            r"image folder '.*tree': expected the same class folders in train/ and test/, found "
            r"\[\] only in train/ and \['cows'\] only in test/$",
        ),
    ],
    ids=["empty-class", "class-of-non-images", "corrupt-image", "train-and-val", "other-test-classes"],
)
def test_bad_image_folder_is_reported_and_leaves_no_acquired_folder(tmp_path, files, pattern):
    root = write_tree(tmp_path / "tree", files)
    cfg = DataConfig(image_folders={"pets": str(root)})
    out = tmp_path / "raw" / "pets"
    with pytest.raises(DataError, match=pattern):
        acquire("pets", cfg, out)
    assert list((tmp_path / "raw").iterdir()) == []


def test_an_image_over_pils_pixel_limit_is_an_error_naming_the_file(tmp_path, monkeypatch):
    root = write_tree(tmp_path / "tree", {"cats/a.png": None, "dogs/b.png": None})
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10)  # twice over it (36 > 20) PIL refuses to decode
    with pytest.raises(
        DataError, match=r"image file '.*a.png': expected a photo-sized image, found .*36 pixels"
    ):
        acquire("pets", DataConfig(image_folders={"pets": str(root)}), tmp_path / "raw" / "pets")
    assert list((tmp_path / "raw").iterdir()) == []


def test_a_split_without_images_of_the_classes_is_a_named_error(tmp_path):
    root = write_tree(tmp_path / "tree", {"cats/a.png": None, "dogs/b.png": None})
    cfg = DataConfig(image_folders={"pets": str(root)})  # one image a class: half of it rounds to none
    acquire("pets", cfg, tmp_path / "raw" / "pets")
    test = load_split("pets", "test", cfg, tmp_path / "raw" / "pets")
    with pytest.raises(
        DataError,
        match=r"^benchmarks.b.target_classes: expected images of classes \[0, 1\] in .*found no images$",
    ):
        select_classes(test, [0, 1], "benchmarks.b.target_classes", "the test split")


def test_a_class_named_like_a_split_is_a_class(tmp_path):
    root = write_tree(tmp_path / "tree", {"train/a.png": None, "tree/b.png": None})  # CIFAR-100 has both
    cfg = DataConfig(image_folders={"pets": str(root)})
    acquire("pets", cfg, tmp_path / "raw" / "pets")
    assert (tmp_path / "raw" / "pets" / "all_classes.txt").read_text() == "train\ntree\n"


def test_good_image_folder_is_acquired_and_split(tmp_path):
    root = write_tree(tmp_path / "tree", {f"{c}/{i}.png": None for c in ("cats", "dogs") for i in range(4)})
    cfg = DataConfig(image_folders={"pets": str(root)})
    acquire("pets", cfg, tmp_path / "raw" / "pets")
    train = load_split("pets", "train", cfg, tmp_path / "raw" / "pets")
    assert train.images.shape == (4, 3, 64, 64) and sorted(train.labels.tolist()) == [0, 0, 1, 1]


# --- fine-tuning runs ------------------------------------------------------------------------------

INPUTS = {"checkpoint": "ckpt", "target": "target", "episodes": "episodes"}  # upstream's keys


def run(upstream: dict, out_dir: Path, method: str = "full", finetune: FinetuneConfig | None = None, **kw):
    """``run_episodes`` of the tiny params on the upstream files; ``kw`` overrides arguments and
    the input files (``checkpoint``, ``target``, ``episodes``)."""
    files = {name: kw.pop(name, upstream[key]) for name, key in INPUTS.items()}
    args = {
        "benchmark": "tiny",
        "method_name": method,
        "spec": parse_method(method, TINY_PARAMS["methods"][method]),
        "finetune": finetune or params_from_dict(TINY_PARAMS).finetune,
        "k": 1,
        "inputs": StageInputs(**files),
        "out_dir": out_dir,
        "seed": 0,
        "device": torch.device("cpu"),
    }
    return run_episodes(**{**args, **kw})


def test_checkpoint_of_another_architecture_writes_no_episode(tmp_path, upstream):
    ckpt = tmp_path / "wide.pt"
    arch = {"backbone": "lenet", "in_channels": 1, "image_size": 28, "n_classes": 5, "width": 0.5}
    torch.save({"arch": arch, "state_dict": LeNet(1, 28, 5, width=1.0).state_dict()}, ckpt)
    with pytest.raises(CheckpointError, match=r"wide.pt': expected weights matching.*another architecture"):
        run(upstream, tmp_path / "run", checkpoint=ckpt)
    assert_no_run_output(tmp_path / "run")


def test_episodes_file_of_another_k_is_refused(tmp_path, upstream):
    with pytest.raises(DataError, match=r"episodes file '.*k1.json': expected episodes for k=5, found k=1"):
        run(upstream, tmp_path / "run", k=5)
    assert_no_run_output(tmp_path / "run")


def test_divergent_learning_rate_marks_every_episode_and_the_report_counts_it(tmp_path, upstream):
    cfg = FinetuneConfig(steps=6, lr=1e8, momentum=0.0, eval_every=2)
    summary = run(upstream, tmp_path / "run", finetune=cfg)
    steps = [ep["diverged_step"] for ep in summary["episodes"]]
    assert all(s is not None and 1 <= s <= 6 for s in steps), steps
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())  # valid JSON: no NaN written
    assert [ep["diverged_step"] for ep in saved["episodes"]] == steps
    table = summarise(load_runs([tmp_path / "run" / "metrics.json"]), "full")
    assert table.loc[0, "n_diverged"] == len(steps) == 2
    (caption,) = [t.note for t in main_tables(table, "full")]
    assert "**Diverged**" in caption and "full k=1 (2/2)" in caption


def test_damaged_episode_file_is_recomputed_not_trusted(tmp_path, upstream):
    first = run(upstream, tmp_path / "run")
    ep0 = tmp_path / "run" / "episodes" / "ep000.json"
    ep0.write_text('{"stamp": "x", "metr')
    assert run(upstream, tmp_path / "run") == first
    assert json.loads(ep0.read_text())["metrics"] == first["episodes"][0]


def test_run_outputs_are_written_only_as_whole_files(tmp_path, upstream, monkeypatch):
    """A crash while the summary is being written leaves no metrics.json, only finished episodes."""
    import kshot.io

    real_dumps = json.dumps

    def dumps(obj, **kw):
        if isinstance(obj, dict) and obj.get("role") == "eval":
            raise OSError("disk full")
        return real_dumps(obj, **kw)

    monkeypatch.setattr(kshot.io.json, "dumps", dumps)
    with pytest.raises(OSError, match="disk full"):
        run(upstream, tmp_path / "run")
    assert not (tmp_path / "run" / "metrics.json").exists()
    assert sorted(p.name for p in (tmp_path / "run").rglob("*")) == ["ep000.json", "ep001.json", "episodes"]


# --- the activation and group stages ----------------------------------------------------------


def stage_args(upstream: dict, tmp_path: Path, method: str = "grouped") -> tuple[list[str], list[str]]:
    common = [
        "--benchmark",
        "tiny",
        "--checkpoint",
        str(upstream["ckpt"]),
        "--target",
        str(upstream["target"]),
    ]
    common += ["--episodes", str(upstream["episodes"])]
    acts = ["activations", *common, "--k", "1", "--out", str(tmp_path / "acts.pt")]
    group = ["group", *common, "--method", method, "--k", "1", "--activations", str(tmp_path / "acts.pt")]
    group += ["--out", str(tmp_path / "g.pt"), "--summary", str(tmp_path / "g.json")]
    return acts, group


def test_staged_grouping_through_the_cli_equals_grouping_inside_the_run(tmp_path, upstream, capsys):
    acts, group = stage_args(upstream, tmp_path)
    p, one = params_json(), ["--threads", "1"]
    # one thread everywhere, as the rules run: float sums in another order move the last bits
    threads = torch.get_num_threads()
    try:
        assert main([*acts, "--params-json", p, *one]) == 0
        assert main([*group, "--params-json", p, *one]) == 0
        staged, direct = tmp_path / "staged", tmp_path / "direct"
        args = finetune_args(upstream, staged, method="grouped")
        assert main([*args, "--groups", str(tmp_path / "g.pt"), "--params-json", p, *one]) == 0
        assert main([*finetune_args(upstream, direct, method="grouped"), "--params-json", p, *one]) == 0
    finally:
        torch.set_num_threads(threads)
    assert (staged / "metrics.json").read_bytes() == (direct / "metrics.json").read_bytes()
    summary = json.loads((tmp_path / "g.json").read_text())
    assert summary["method"] == "grouped" and summary["activations"] == "support"
    assert set(summary["mean_quality"]["fc1"]) == {"silhouette", "intra_corr", "inter_corr"}
    # the group file belongs to one method: another method's run refuses it and writes nothing
    out = tmp_path / "other"
    args = finetune_args(upstream, out, method="grouped_random")
    assert main([*args, "--groups", str(tmp_path / "g.pt"), "--params-json", p]) == 2
    assert "expected a file made from method 'grouped_random' (found 'grouped')" in capsys.readouterr().err
    assert_no_run_output(out)


def test_group_stage_refuses_a_method_that_does_not_group(tmp_path, upstream, capsys):
    _, group = stage_args(upstream, tmp_path, method="full")
    assert main([*group, "--params-json", params_json()]) == 2
    err = capsys.readouterr().err
    assert "methods.full.kind: the group stage expected a grouped kind" in err and "found 'full'" in err
    assert not (tmp_path / "g.pt").exists() and not (tmp_path / "g.json").exists()


def test_group_stage_refuses_activations_of_another_spec_and_writes_nothing(tmp_path, upstream, capsys):
    acts, group = stage_args(upstream, tmp_path)
    assert main([*acts, "--tag", "support-raw", "--params-json", params_json()]) == 0
    assert main([*group, "--params-json", params_json()]) == 2
    err = capsys.readouterr().err
    assert f"activation file '{tmp_path / 'acts.pt'}': expected a file made from tag 'support'" in err
    assert "(found 'support-raw')" in err
    assert not (tmp_path / "g.pt").exists() and not (tmp_path / "g.json").exists()


# --- found by an audit of bad input (session 10): each was accepted silently or ended in a traceback


def edited_episodes(tmp_path: Path, upstream: dict, edit) -> Path:
    """A copy of the upstream episodes file changed by ``edit(content)``."""
    content = json.loads(Path(upstream["episodes"]).read_text())
    edit(content)
    path = tmp_path / "k1.json"
    path.write_text(json.dumps(content))
    return path


def test_checkpoint_with_damaged_bytes_fails_its_crc_check(tmp_path, upstream):
    data = bytearray(Path(upstream["ckpt"]).read_bytes())
    middle = len(data) // 2
    data[middle : middle + 64] = bytes(b ^ 0xFF for b in data[middle : middle + 64])
    ckpt = tmp_path / "damaged.pt"
    ckpt.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"damaged.pt': expected a torch checkpoint.*CRC-32"):
        run(upstream, tmp_path / "run", checkpoint=ckpt)
    assert_no_run_output(tmp_path / "run")


@pytest.mark.parametrize(
    ("edit", "pattern"),
    [
        (
            lambda c: c.update(benchmark="other"),
            r"expected the episodes of benchmark 'tiny', found those of 'other'",
        ),
        (lambda c: c.update(n_classes=3), r"expected n_classes=5 \(the target's classes \[5, 6, 7, 8, 9\]\)"),
        (lambda c: c["eval"][0]["support"].append(10**7), r"'eval' episode #0: .*found a bad 'support'"),
        (lambda c: c["eval"][1].pop("val"), r"'eval' episode #1: .*found a bad 'val'"),
        (lambda c: c["eval"][0].update(test=[-1]), r"'eval' episode #0: .*found a bad 'test'"),
    ],
    ids=["other-benchmark", "class-count", "index-beyond-pool", "missing-val", "negative-test-index"],
)
def test_episodes_file_that_does_not_fit_the_target_is_refused(tmp_path, upstream, edit, pattern):
    episodes = edited_episodes(tmp_path, upstream, edit)
    with pytest.raises(DataError, match=rf"episodes file '.*k1.json': {pattern}"):
        run(upstream, tmp_path / "run", episodes=episodes)
    assert_no_run_output(tmp_path / "run")


def test_target_of_another_benchmark_is_refused_by_episodes_and_finetune(tmp_path, upstream, capsys):
    out = tmp_path / "k1.json"
    argv = ["episodes", "--benchmark", "tinny", "--k", "1", "--target", str(upstream["target"])]
    assert main([*argv, "--out", str(out), "--params-json", params_json()]) == 2
    err = capsys.readouterr().err
    assert "expected the target of benchmark 'tinny', found that of 'tiny'" in err
    assert not out.exists()
    with pytest.raises(DataError, match=r"expected the target of benchmark 'tinny', found that of 'tiny'"):
        run(upstream, tmp_path / "run", benchmark="tinny")


def test_more_test_images_per_class_than_the_target_has_is_refused(upstream):
    t = torch.load(upstream["target"], weights_only=True)
    cfg = params_from_dict({**TINY_PARAMS, "episodes": {**TINY_PARAMS["episodes"], "test_per_class": 10**5}})
    with pytest.raises(DataError, match=r"episodes.test_per_class: expected at most \d+ .*found 100000"):
        make_episodes(t["pool_y"], t["test_y"], 1, cfg.episodes, 0, "tiny")


def test_a_benchmarks_own_test_size_is_its_episodes_and_is_named_when_too_large(tmp_path, upstream):
    """A benchmark's own ``episodes.test_per_class`` replaces ``episodes.test_per_class`` in its
    episodes job (and only there: its prepared target's fingerprint does not change); one larger
    than its test split is an error naming the benchmark's field, and no episodes file is written."""
    bench = {**TINY_PARAMS["benchmarks"]["tiny"], "episodes": {"test_per_class": 3}}
    base = params_from_dict(TINY_PARAMS)
    own = params_from_dict({**TINY_PARAMS, "benchmarks": {"tiny": bench}})
    assert job_params(own, "episodes", benchmark="tiny", k=1)["episodes"]["test_per_class"] == 3
    assert job_params(own, "prepare-target", benchmark="tiny") == job_params(
        base, "prepare-target", benchmark="tiny"
    )
    plain = job_params(base, "episodes", benchmark="tiny", k=1)
    assert plain["episodes"]["test_per_class"] == 6 and "test_field" not in plain
    too_many = params_from_dict(
        {**TINY_PARAMS, "benchmarks": {"tiny": {**bench, "episodes": {"test_per_class": 999}}}}
    )
    raw = job_params(too_many, "episodes", benchmark="tiny", k=1)
    out = tmp_path / "k1.json"
    proc = run_cli(
        tmp_path, "episodes", "--benchmark", "tiny", "--k", "1", "--target", str(upstream["target"]),
        "--out", str(out), "--params-json", json.dumps(raw),
    )  # fmt: skip
    assert_one_line_error(
        proc, "kshot episodes: error: benchmarks.tiny.episodes.test_per_class: expected at most"
    )
    assert not out.exists()


def test_a_benchmarks_own_search_and_selection_episodes_are_drawn_by_its_episodes_job():
    """A benchmark's ``episodes.search_episodes`` and ``select_episodes`` replace the global ones in
    its episodes job only; the evaluation episodes are drawn as without them (paired cells); a
    count below 1 is refused by name when the params load."""
    bench = {**TINY_PARAMS["benchmarks"]["tiny"], "episodes": {"search_episodes": 2, "select_episodes": 3}}
    own = params_from_dict({**TINY_PARAMS, "benchmarks": {"tiny": bench}})
    cfg, test_field = own.episodes_of("tiny")
    assert (cfg.search_episodes, cfg.select_episodes, test_field) == (2, 3, "episodes.test_per_class")
    assert cfg.test_per_class == TINY_PARAMS["episodes"]["test_per_class"]
    labels = torch.arange(60) % 3
    base_eps = make_episodes(labels, labels, 1, params_from_dict(TINY_PARAMS).episodes, 0, "tiny")
    own_eps = make_episodes(labels, labels, 1, cfg, 0, "tiny")
    assert (len(own_eps["search"]), len(own_eps["select"])) == (2, 3)
    assert own_eps["eval"] == base_eps["eval"]
    zero = {"tiny": {**bench, "episodes": {"select_episodes": 0}}}
    with pytest.raises(
        ConfigError, match=r"^benchmarks.tiny.episodes.select_episodes: expected a number > 0, found 0$"
    ):
        params_from_dict({**TINY_PARAMS, "benchmarks": zero})


def test_checkpoint_without_its_description_names_the_missing_keys(tmp_path, upstream):
    ckpt = tmp_path / "bare.pt"
    torch.save({"state_dict": LeNet(1, 28, 5, width=0.5).state_dict()}, ckpt)
    with pytest.raises(CheckpointError, match=r"bare.pt': expected keys 'arch' and 'state_dict', found"):
        run(upstream, tmp_path / "run", checkpoint=ckpt)


def test_grouped_layer_that_the_backbone_lacks_names_the_method_field(tmp_path, upstream):
    spec = parse_method("grouped", {"kind": "grouped", "groups": 0.5, "layers": ["conv9"]})
    with pytest.raises(ConfigError, match=r"methods.grouped.layers: 'conv9' is not a groupable layer"):
        run(upstream, tmp_path / "run", method_name="grouped", spec=spec)
    spec = parse_method("grouped", {"kind": "grouped", "groups": 100000})
    with pytest.raises(ConfigError, match=r"methods.grouped.groups \(for layer conv1\): expected a group"):
        run(upstream, tmp_path / "run2", method_name="grouped", spec=spec)


@pytest.mark.parametrize(
    ("change", "pattern"),
    [
        ({"seed": -1}, r"seed: expected an integer >= 0, found -1"),
        ({"top": 1}, r"params: unknown key 'top'"),
        (
            {"episodes": {**TINY_PARAMS["episodes"], "search_episodes": 0}},
            r"episodes.search_episodes: expected >= 1, since the searched or tuned methods "
            r"\['full\+tuned', 'grouped_rl'\] run",
        ),
    ],
    ids=["negative-seed", "unknown-top-level-key", "search-without-search-episodes"],
)
def test_params_checked_before_any_stage_runs(change, pattern):
    with pytest.raises(ConfigError, match=pattern):
        params_from_dict({**copy.deepcopy(TINY_PARAMS), **change})


def test_params_file_errors_name_the_file(tmp_path, upstream, capsys):
    (tmp_path / "p.yaml").write_text(yaml.safe_dump({**TINY_PARAMS, "seed": -1}))
    argv = ["episodes", "--params", str(tmp_path / "p.yaml"), "--benchmark", "tiny", "--k", "1"]
    assert main([*argv, "--target", str(upstream["target"]), "--out", str(tmp_path / "k1.json")]) == 2
    assert f"params file '{tmp_path / 'p.yaml'}': seed: expected an integer >= 0" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--params-json", '{"episodes": '], "--params-json: expected a JSON object, found invalid JSON"),
        (
            ["--threads", "-2"],
            "argument --threads: expected a positive integer number of threads, found '-2'",
        ),
    ],
    ids=["invalid-json", "negative-threads"],
)
def test_bad_command_line_values_give_one_error_without_traceback(tmp_path, upstream, args, message):
    out = tmp_path / "k1.json"
    argv = [
        "episodes",
        "--benchmark",
        "tiny",
        "--k",
        "1",
        "--target",
        str(upstream["target"]),
        "--out",
        str(out),
    ]
    if "--params-json" not in args:
        args = [*args, "--params-json", params_json()]
    proc = run_cli(tmp_path, *argv, *args)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert message in proc.stderr
    assert not out.exists()


def test_output_path_that_is_a_directory_is_refused(tmp_path, upstream, capsys):
    out = tmp_path / "k1.json"
    out.mkdir()
    argv = ["episodes", "--benchmark", "tiny", "--k", "1", "--target", str(upstream["target"])]
    assert main([*argv, "--out", str(out), "--params-json", params_json()]) == 2
    assert f"output '{out}': expected a file path, found a directory" in capsys.readouterr().err
    assert list(out.iterdir()) == [] and [p.name for p in tmp_path.iterdir()] == ["k1.json"]


def test_compare_refuses_a_malformed_pair_or_a_method_without_runs(tmp_path, capsys):
    from test_report import write_runs

    runs = [str(p) for p in write_runs(tmp_path)]
    stem = tmp_path / "out" / "ablation"
    base = ["compare", "--kind", "ablation", "--runs", *runs, "--out-stem", str(stem)]
    assert main([*base, "--pairs", "grouped"]) == 2
    assert "--pairs: expected comparisons written a:b" in capsys.readouterr().err
    assert main([*base, "--pairs", "better:fulll"]) == 2
    err = capsys.readouterr().err
    assert "pair better:fulll: expected methods of the given runs, found no run of 'fulll'" in err
    assert "did you mean 'full'" in err
    assert not stem.parent.exists() or list(stem.parent.iterdir()) == []
    replicates = [*base[:2], "replicates", *base[3:], "--pairs", "better:full"]
    assert main(replicates) == 2
    assert "--replicate-of: expected it with --kind replicates and only then" in capsys.readouterr().err
    assert main([*replicates, "--replicate-of", "b=b"]) == 2
    assert (
        "--replicate-of: expected entries written benchmark=base:seed, found 'b=b'" in capsys.readouterr().err
    )
    assert main([*base, "--pairs", "better:full", "--replicate-of", "b=b:0"]) == 2
    assert "found kind 'ablation' and 1 entries" in capsys.readouterr().err
    assert main([*base, "--pairs", "better:full", "--backbone-of", "b=lenet", "resnet18"]) == 2
    assert (
        "--backbone-of: expected entries written benchmark=backbone, found ['resnet18']"
        in capsys.readouterr().err
    )
    assert not stem.parent.exists() or list(stem.parent.iterdir()) == []


def test_run_metrics_without_episodes_are_refused(tmp_path):
    bad = tmp_path / "metrics.json"
    bad.write_text(json.dumps({"benchmark": "b", "method": "m", "k": 1}))
    with pytest.raises(DataError, match=r"run metrics '.*metrics.json': expected an 'episodes' list"):
        load_runs([bad])


# --- issue 19: errors raised while the DAG is built, on the console, and numbers YAML 1.1 misreads ---


def _default_params() -> dict:
    return yaml.safe_load((REPO / "params.yaml").read_text())


def test_an_exponent_without_a_dot_is_a_number_not_a_string():
    raw = _default_params()
    raw["finetune"]["lr"] = "1e-2"  # what PyYAML (YAML 1.1) makes of `lr: 1e-2`
    raw["methods"]["grouped"]["groups"] = "2.5e-1"
    params = params_from_dict(raw)
    assert params.finetune.lr == 0.01 and params.methods["grouped"].options.groups == 0.25


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("lr", "1e", "finetune.lr: expected a number, found '1e'"),
        ("steps", "1e3", "finetune.steps: expected an integer, found '1e3'"),
        ("eval_every", 200, "finetune.eval_every: expected at most the 100 fine-tuning steps"),
    ],
    ids=["not-a-number", "exponent-for-an-integer", "eval-every-over-steps"],
)
def test_finetune_values_refused_by_name(field, value, message):
    raw = _default_params()
    raw["finetune"][field] = value
    with pytest.raises(ConfigError, match=re.escape(message)):
        params_from_dict(raw)


def test_eval_every_over_a_methods_own_steps_names_the_method():
    raw = _default_params()
    raw["methods"]["short"] = {"kind": "full", "steps": 5}
    with pytest.raises(
        ConfigError, match=r"methods\.short \(with finetune\)\.eval_every: expected at most the 5"
    ):
        params_from_dict(raw)


def test_cuda_without_a_gpu_is_refused_and_auto_resolves():
    assert check_device("auto", cuda_available=False) == "cpu"
    assert check_device("auto", cuda_available=True) == "cuda"
    with pytest.raises(ConfigError, match=r"device: expected a CUDA GPU for 'cuda', found none"):
        check_device("cuda", cuda_available=False)


def _fashion_dir(root: Path, truncate: str | None = None, empty: str | None = None) -> Path:
    import gzip

    root.mkdir(parents=True, exist_ok=True)
    for name in FASHION_FILES:
        path = root / f"{name}.gz"
        path.write_bytes(gzip.compress(bytes(4096)))
        if name == truncate:
            path.write_bytes(path.read_bytes()[:-20])
        if name == empty:
            path.write_bytes(b"")
    return root


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda d: d, "found no such folder"),
        (lambda d: (d.mkdir(), d)[1], "found them missing or empty"),
        (
            lambda d: _fashion_dir(d, empty="t10k-images-idx3-ubyte"),
            "t10k-images-idx3-ubyte.gz), found them missing",
        ),
        (
            lambda d: _fashion_dir(d, truncate="train-labels-idx1-ubyte"),
            "train-labels-idx1-ubyte.gz': expected a gzipped",
        ),
    ],
    ids=["no-folder", "empty-folder", "empty-file", "truncated-file"],
)
def test_fashion_source_problems_are_found_without_acquiring(tmp_path, setup, message):
    folder = setup(tmp_path / "fm")
    with pytest.raises(DataError, match=re.escape(message)):
        check_acquirable("fashion_mnist", DataConfig(fashion_mnist_dir=str(folder)))
    assert not (tmp_path / "raw").exists()


def test_a_complete_fashion_source_passes_the_check(tmp_path):
    check_acquirable("fashion_mnist", DataConfig(fashion_mnist_dir=str(_fashion_dir(tmp_path / "fm"))))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            {"local_dirs": {"mnist": "/nowhere/mnist"}},
            "data.local_dirs.mnist: expected a folder holding the MNIST files",
        ),
        ({}, "data.local_dirs.mnist or data.download: expected a folder"),
    ],
    ids=["local-folder-missing", "no-folder-no-download"],
)
def test_a_torchvision_dataset_without_its_files_is_refused_before_acquiring(data, message):
    with pytest.raises(DataError, match=re.escape(message)):
        check_acquirable("mnist", DataConfig(**data))


def test_an_image_folder_without_class_folders_is_refused_before_acquiring(tmp_path):
    (tmp_path / "tree").mkdir()
    (tmp_path / "tree" / "loose.png").write_bytes(b"x")
    cfg = DataConfig(image_folders={"tree": str(tmp_path / "tree")})
    with pytest.raises(
        DataError, match=r"image folder '.*tree': expected one sub-folder per class.*found no sub-folder"
    ):
        check_acquirable("tree", cfg)


def test_an_image_folder_with_an_empty_class_never_says_found_found(tmp_path):
    (tmp_path / "tree" / "a").mkdir(parents=True)
    cfg = DataConfig(image_folders={"tree": str(tmp_path / "tree")})
    with pytest.raises(DataError) as err:
        acquire("tree", cfg, tmp_path / "raw" / "tree")
    assert "found no valid file" in str(err.value) and "found Found" not in str(err.value)
    assert not (tmp_path / "raw" / "tree").exists()


def test_a_job_logging_to_a_file_prints_its_error_on_the_console_too(tmp_path, upstream):
    out, log = tmp_path / "k1.json", tmp_path / "logs" / "episodes.log"
    proc = run_cli(
        tmp_path, "episodes", "--benchmark", "tiny", "--k", "1", "--target", str(upstream["target"]),
        "--out", str(out), "--params-json", params_json(episodes={"test_per_class": 999}),
        "--log", str(log),
    )  # fmt: skip
    line = assert_one_line_error(proc, "kshot episodes: error: episodes.test_per_class: expected at most")
    assert log.read_text().strip() == line
    assert not out.exists()


def test_an_internal_error_in_a_logged_job_names_its_log_and_keeps_the_traceback_there(tmp_path):
    log = tmp_path / "acquire.log"
    # --out under a file: mkdir fails with an OSError that is no user-input error kshot knows
    (tmp_path / "file").write_text("")
    proc = run_cli(
        tmp_path, "acquire", "--dataset", "digits", "--out", str(tmp_path / "file" / "digits"),
        "--params-json", "{}", "--log", str(log),
    )  # fmt: skip
    assert proc.returncode == 1
    assert proc.stderr.strip().startswith("kshot acquire: internal error")
    assert f"(traceback in {log})" in proc.stderr
    assert "Traceback" in log.read_text()
