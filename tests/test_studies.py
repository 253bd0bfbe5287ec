"""The source-effect and alignment studies: their benchmarks, episodes, tables, verdicts and a
run of both on the tiny pipeline."""

import copy
import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from kshot.alignment import RELATIONS
from kshot.alignment_report import write_alignment_report
from kshot.config import SourceConfig, source_effect_benchmarks, with_source_effect
from kshot.episodes import make_episodes, seed_name
from kshot.errors import ConfigError, DataError
from kshot.jobs import job_params
from kshot.maps import mapper_graph
from kshot.models import build_backbone
from kshot.params import params_from_dict
from kshot.pretrain import pretrain
from kshot.similarity import task_similarity
from kshot.source_effect import effects, findings_markdown, verdicts, write_source_effect
from tests.conftest import TINY_PARAMS, make_images, run_snakemake
from tests.test_pipeline import planned_outputs

RANDOM = {**TINY_PARAMS["sources"]["digits04"], "epochs": 0}


def study_params(**block):
    params = copy.deepcopy(TINY_PARAMS)
    params["sources"]["random"] = copy.deepcopy(RANDOM)
    params["sources"]["digits59"] = {**params["sources"]["digits04"], "classes": [5, 6, 7, 8, 9]}
    params["source_effect"] = {
        "benchmarks": ["tiny"],
        "sources": ["digits04", "digits59", "random"],
        "methods": ["linear", "full"],
        "control": "random",
        **block,
    }
    return params


def test_each_source_gets_a_benchmark_of_the_target_but_one_trained_on_the_targets_classes():
    raw = with_source_effect(study_params())
    assert raw["benchmarks"]["tiny_from_random"] == {**TINY_PARAMS["benchmarks"]["tiny"], "source": "random"}
    assert "tiny_from_digits59" not in raw["benchmarks"]  # digits 5-9 are the target's classes
    cells = source_effect_benchmarks(params_from_dict(raw))
    assert cells == {"tiny": ("tiny", "digits04"), "tiny_from_random": ("tiny", "random")}


def test_a_study_benchmark_name_taken_by_another_benchmark_and_an_unknown_control_are_errors():
    raw = study_params()
    raw["benchmarks"]["tiny_from_random"] = {**raw["benchmarks"]["tiny"], "target_classes": [5, 6]}
    with pytest.raises(ConfigError, match=r"^source_effect: expected the name 'tiny_from_random' free"):
        with_source_effect(raw)
    raw = study_params(control=None)
    with pytest.raises(
        ConfigError, match=r"^source_effect.control: expected the source the others are compared"
    ):
        params_from_dict(with_source_effect(raw))
    raw = study_params(control="randon")
    with pytest.raises(
        ConfigError, match=r"^source_effect.control: unknown value 'randon' \(did you mean 'random'\?\)"
    ):
        params_from_dict(with_source_effect(raw))


def test_a_study_benchmark_draws_the_episodes_of_its_target_benchmark():
    params = params_from_dict(with_source_effect(study_params()))
    job = job_params(params, "episodes", benchmark="tiny_from_random", k="1")
    assert job["draw_as"] == "tiny"
    assert "draw_as" not in job_params(params, "episodes", benchmark="tiny", k="1")
    labels = torch.arange(5).repeat_interleave(20)
    own = make_episodes(labels, labels, 2, params.episodes, 0, "tiny")
    drawn = make_episodes(labels, labels, 2, params.episodes, 0, "tiny_from_random", draw_as="tiny")
    other = make_episodes(labels, labels, 2, params.episodes, 0, "tiny_from_random")
    assert drawn["eval"] == own["eval"] and drawn["benchmark"] == "tiny_from_random"
    assert other["eval"] != own["eval"]
    # and their fine-tuning, head and grouping seeds: those of the base benchmark
    assert seed_name(drawn, "tiny_from_random") == "tiny" and seed_name(own, "tiny") == "tiny"
    assert "drawn_as" not in own


def test_zero_epochs_without_weights_keeps_the_seeded_random_initialisation():
    src = SourceConfig(dataset="digits", classes=[0, 1, 2], backbone="lenet", epochs=0, batch_size=8)
    x, y = make_images(8, 3)
    model, metrics = pretrain(src, x, y, x, y, seed=5, device=torch.device("cpu"))
    torch.manual_seed(5)
    fresh = build_backbone("lenet", 1, 28, 3, 1.0)
    torch.testing.assert_close(model.conv1.weight, fresh.conv1.weight)
    torch.testing.assert_close(model.fc1.weight, fresh.fc1.weight)
    assert metrics["source_test_acc"] >= 0.0


def test_task_similarity_measures_each_layer_and_the_features_and_drops_for_shuffled_labels(tiny_model):
    x, y = make_images(20, 3, seed=4)
    cpu = torch.device("cpu")
    true = task_similarity(tiny_model, x, y, cpu)
    shuffled = task_similarity(
        tiny_model, x, y[torch.randperm(len(y), generator=torch.Generator().manual_seed(0))], cpu
    )
    assert set(true) == {*tiny_model.groupable(), "features"}
    assert all(0.0 <= v <= 1.0 for v in true.values())
    assert true["features"] > 0.5 > shuffled["features"]


def _runs(accs):
    """Per-episode rows of load_runs' frame plus target and source: accs {(source, method): [acc]}."""
    rows = []
    for (source, method), values in accs.items():
        for i, acc in enumerate(values):
            rows.append(
                {"target": "t", "k": 5, "source": source, "method": method, "episode": i, "test_acc": acc}
            )
    return pd.DataFrame(rows)


def test_a_source_whose_frozen_effect_vanishes_with_fine_tuning_is_masked_and_one_that_keeps_it_effective():
    noise = np.array([0.0, 0.01, -0.01, 0.005, -0.005])
    df = _runs(
        {
            ("random", "linear"): 0.40 + noise,
            ("random", "full"): 0.70 + noise,
            ("masked", "linear"): 0.60 + noise[::-1],
            ("masked", "full"): 0.70 + noise[::-1],
            ("good", "linear"): 0.60 + noise,
            ("good", "full"): 0.80 + noise,
        }
    )
    effect = effects(df, "random")
    assert set(effect.source) == {"masked", "good"}
    with pytest.raises(
        DataError, match=r"^source-effect runs: expected runs from the control source 'random' for target 't'"
    ):
        effects(df[df.source != "random"], "random")
    row = effect[(effect.source == "good") & (effect.method == "full")].iloc[0]
    assert row["diff"] == pytest.approx(10.0) and row.significant
    verdict = verdicts(effect).set_index("source")
    assert verdict.loc["masked", "masked"] and not verdict.loc["masked", "effective"]
    assert verdict.loc["good", "effective"] and not verdict.loc["good", "masked"]
    text = findings_markdown(verdicts(effect), [], "random")
    assert "`good` is effective at k = 5; `masked` is not effective; its frozen features are " in text
    assert "significantly better than `random`'s at k = 5, a difference full fine-tuning hides" in text
    assert "worse than from" not in text


def test_a_source_that_fine_tunes_significantly_worse_than_the_control_is_named_harmful():
    noise = np.array([0.0, 0.01, -0.01, 0.005, -0.005])
    df = _runs({("random", "full"): 0.70 + noise, ("bad", "full"): 0.65 + noise[::-1]})
    verdict = verdicts(effects(df, "random")).set_index("source")
    assert verdict.loc["bad", "harmful"] and not verdict.loc["bad", "effective"]
    text = findings_markdown(verdicts(effects(df, "random")), [], "random")
    assert (
        "`bad` is not effective; transfer from it is significantly worse than from `random` at k = 5." in text
    )


def _write_run(path, benchmark, method, k, accs, extra=None):
    episodes = [
        {
            "benchmark": benchmark,
            "method": method,
            "kind": method,
            "k": k,
            "episode": i,
            "test_acc": a,
            "val_acc": a,
            "extra": (extra(i) if extra else {}),
        }
        for i, a in enumerate(accs)
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"benchmark": benchmark, "method": method, "k": k, "episodes": episodes}))
    return path


def test_the_source_effect_report_writes_its_tables_figure_metrics_and_findings(tmp_path):
    runs, cka = [], []
    for bench, shift in (("t", 0.2), ("t_from_rand", 0.0)):
        for method in ("linear", "full"):
            accs = [0.5 + shift + 0.01 * i for i in range(4)]
            runs.append(_write_run(tmp_path / bench / method / "m.json", bench, method, 5, accs))
        path = tmp_path / f"{bench}.json"
        path.write_text(json.dumps({"benchmark": bench, "cka": {"conv1": 0.1, "features": 0.3 + shift}}))
        cka.append(path)
    cells = {"t": ("t", "pre"), "t_from_rand": ("t", "rand")}
    out = tmp_path / "reports"
    write_source_effect(runs, cka, cells, "rand", out)
    table = (out / "source_effect.md").read_text()
    assert "t k=5, pre" in table and "0.500" in table
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["verdicts"] == [
        {
            "target": "t",
            "k": 5,
            "source": "pre",
            "effective": True,
            "harmful": False,
            "masked": False,
            "frozen_effect": pytest.approx(20.0),
            "fine_tuned_effect": pytest.approx(20.0),
        }
    ]
    assert "`pre` is effective at k = 5" in (out / "findings.md").read_text()
    assert (out / "source_effect.png").stat().st_size > 10_000
    with pytest.raises(DataError, match=r"--cells: expected every run's benchmark among the study's cells"):
        write_source_effect(runs, cka, {"t": ("t", "pre")}, "pre", out)


def _log(level):
    """An alignment log whose every relation moves from 0.2 to ``level`` over two logged steps."""
    return lambda i: {
        "alignment": {"steps": [0, 5], "layers": {"fc1": {rel: [0.2, level + 0.01 * i] for rel in RELATIONS}}}
    }


def test_the_alignment_report_compares_each_method_with_the_baseline_at_the_last_step(tmp_path):
    runs = [
        _write_run(tmp_path / "full.json", "b", "full", 5, [0.5] * 4, _log(0.4)),
        _write_run(tmp_path / "grouped.json", "b", "grouped", 5, [0.5] * 4, _log(0.6)),
    ]
    out = tmp_path / "reports"
    comp = write_alignment_report(runs, "full", out)
    assert len(comp) == len(RELATIONS)
    assert comp["diff"].to_numpy() == pytest.approx(0.2) and comp.significant.all()
    assert comp.change.to_numpy() == pytest.approx(0.4 + 0.015)
    assert comp.baseline_change.to_numpy() == pytest.approx(0.2 + 0.015)
    findings = (out / "findings.md").read_text()
    assert "`grouped` ends significantly more aligned than `full` in 6 and less in 0" in findings
    assert (out / "alignment.png").stat().st_size > 10_000


def test_a_benchmark_study_plans_its_runs_and_searches_at_its_own_k_only(tmp_path):
    params = copy.deepcopy(TINY_PARAMS)
    params["episodes"]["k"] = [1, 2]
    params["resnet"] = {"benchmarks": ["tiny"], "methods": ["full", "grouped_rl"], "k": [2]}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    planned = planned_outputs(tmp_path, "resnet")
    runs = [p for p in planned if p.startswith("data/runs/") and p.endswith("metrics.json")]
    assert sorted(runs) == [
        "data/runs/tiny/full/k2/metrics.json",
        "data/runs/tiny/grouped_rl/k2/metrics.json",
    ]
    searches = [p for p in planned if p.startswith("data/search/")]
    assert searches and all("/k2/" in p for p in searches)
    assert not [p for p in planned if p.endswith("/k1.json")]  # no episodes at a k it does not run


def test_the_default_run_plans_its_own_k_only_and_the_peers_study_every_k(tmp_path):
    """``run.k`` narrows the default run (its runs, searches, tunings and episodes); the peers
    study still runs every k of ``episodes.k``, the default run's k under data/ and the others
    under data/regime/, outside the default run's DVC outputs."""
    params = copy.deepcopy(TINY_PARAMS)
    params["episodes"]["k"] = [1, 2]
    params["run"]["k"] = [2]
    params["peers"] = {"methods": ["full", "full+tuned", "grouped_rl"]}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    planned = planned_outputs(tmp_path)
    made = [
        p for p in planned if p.startswith(("data/runs/", "data/search/", "data/tune/", "data/episodes/"))
    ]
    assert made and all("/k2/" in p or p.endswith("/k2.json") for p in made), made
    assert "data/runs/tiny/grouped_rl/k2/metrics.json" in planned
    peers = [p for p in planned_outputs(tmp_path, "peers") if "/runs/" in p and p.endswith("metrics.json")]
    assert "data/runs/tiny/full/k2/metrics.json" in peers
    assert "data/regime/runs/tiny/full+tuned/k1/metrics.json" in peers
    assert "data/regime/runs/tiny/grouped_rl/k1/metrics.json" in peers
    assert not [p for p in peers if p.startswith("data/runs/") and "/k1/" in p]


def test_a_replicate_study_plans_every_seeds_runs_at_its_own_k_only(tmp_path):
    params = copy.deepcopy(TINY_PARAMS)
    params["episodes"]["k"] = [1, 2]
    block = {"seeds": [3], "benchmarks": ["tiny"], "methods": ["full"], "pairs": [], "k": [2]}
    params["resnet_replicates"] = block
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    planned = planned_outputs(tmp_path, "resnet_replicates")
    runs = [p for p in planned if p.endswith("metrics.json") and "/runs/" in p]
    assert sorted(runs) == [
        "data/regime/runs/tiny_seed3/full/k2/metrics.json",
        "data/runs/tiny/full/k2/metrics.json",
    ]


@pytest.mark.slow
def test_the_studies_run_on_the_tiny_pipeline_apart_from_the_default_run(tiny_run, tmp_path):
    """source_effect, alignment, maps and a benchmark study (resnet_peers, as resnet: its methods
    tabled in reports/resnet_peers/) write only their own folders and reuse the default run's runs."""
    work = tmp_path / "copy"
    shutil.copytree(tiny_run, work, symlinks=True)
    params = study_params(methods=["linear", "full", "grouped"])
    params["alignment"] = {"benchmarks": ["tiny"], "methods": ["full", "grouped"], "k": [1], "every": 2}
    params["maps"] = {"benchmarks": ["tiny"], "images": 60, "cubes": 4}
    params["methods"]["bitfit"] = {"kind": "bitfit"}
    params["resnet_peers"] = {"benchmarks": ["tiny"], "methods": ["full", "centroid", "bitfit"]}
    (work / "params.yaml").write_text(yaml.safe_dump(params))
    targets = ("source_effect", "alignment", "maps", "resnet_peers")
    planned = planned_outputs(work, *targets)
    studies = (
        "data/regime/",
        "reports/sources/",
        "reports/alignment/",
        "reports/maps/",
        "reports/resnet_peers/",
    )
    outside = [p for p in planned if not p.startswith(studies)]
    assert not outside, f"study jobs writing into the default run's folders: {outside}"
    assert "data/regime/runs/tiny/full/k1/metrics.json" not in planned  # the default run's, reused
    assert "data/regime/runs/tiny/bitfit/k1/metrics.json" in planned
    run_snakemake(work, *targets, quiet=False)
    by_cell = json.loads((work / "reports/resnet_peers/metrics_by_cell.json").read_text())
    assert set(by_cell["test_acc"]["tiny"]["k1"]) == {"full", "centroid", "bitfit"}
    assert not (work / "reports/resnet").exists()
    ours = json.loads((work / "data/regime/episodes/tiny_from_random/k1.json").read_text())
    base = json.loads((work / "data/episodes/tiny/k1.json").read_text())
    assert ours["eval"] == base["eval"]
    metrics = json.loads((work / "reports/sources/metrics.json").read_text())
    assert {r["source"] for r in metrics["accuracy"]} == {"digits04", "random"}
    assert {r["source"] for r in metrics["cka"]} == {"digits04", "random"}
    comp = pd.read_csv(work / "reports/alignment/alignment.csv")
    assert set(comp.method) == {"grouped"} and set(comp.relation) == set(RELATIONS)
    summary = json.loads((work / "reports/maps/tiny.json").read_text())
    assert summary["layer"] == "fc1" and summary["images"]["points"] == 60 and summary["neurons"]["nodes"] > 0
    assert "**tiny**, layer `fc1`" in (work / "reports/maps/findings.md").read_text()
    assert "kmapper" in (work / "reports/maps/tiny_neurons.html").read_text().lower()
    again = run_snakemake(work, "-n", *targets)
    assert "Nothing to be done" in again.stdout + again.stderr


def test_a_mapper_graph_of_two_separated_blobs_keeps_their_labels_apart():
    rng = np.random.default_rng(0)
    points = np.concatenate([rng.normal(0, 1, (80, 6)), rng.normal(8, 1, (80, 6))])
    labels = np.repeat([0, 1], 80)
    graph = mapper_graph(points, labels, cubes=5, overlap=0.3)
    assert graph.summary()["nodes"] >= 2 and graph.purity() == 1.0
    assert 0.5 <= graph.chance_purity() < 0.8  # the same nodes, labels shuffled
    mixed = mapper_graph(points, rng.permutation(labels), cubes=5, overlap=0.3)
    assert mixed.purity() < 0.9


def test_mapper_inputs_it_cannot_map_are_errors_naming_the_field():
    with pytest.raises(
        ConfigError, match=r"^points: expected a matrix \[n, d\] with one label per row \(3\)"
    ):
        mapper_graph(np.zeros((4, 2)), np.zeros(3, dtype=int))
    with pytest.raises(
        ConfigError, match=r"^maps: expected cubes >= 1 and 0 < overlap < 1, found cubes=3, overlap=1.0"
    ):
        mapper_graph(np.zeros((10, 2)), np.zeros(10, dtype=int), cubes=3, overlap=1.0)
