import copy

import pytest
import torch

from kshot.config import FinetuneConfig
from kshot.finetune import train
from kshot.methods import METHODS, EpisodeData
from tests.conftest import make_images


def episode(model, seed=0, k=2):
    x, y = make_images(k + 4, 3, seed=seed + 1)
    support_idx = torch.cat([torch.nonzero(y == c).flatten()[:k] for c in range(3)])
    val_idx = torch.cat([torch.nonzero(y == c).flatten()[k:] for c in range(3)])
    tx, ty = make_images(10, 3, seed=seed + 2)
    return EpisodeData(
        model=copy.deepcopy(model),
        support=(x[support_idx], y[support_idx]),
        val=(x[val_idx], y[val_idx]),
        test=(tx, ty),
        n_classes=3,
        seed=seed,
        device=torch.device("cpu"),
    )


def make(kind, **options):
    cls = METHODS[kind]
    return cls(cls.parse_options(options, f"methods.{kind}"), FinetuneConfig(steps=6, eval_every=2))


@pytest.mark.parametrize("kind", ["full", "linear", "centroid", "l2sp"])
def test_every_baseline_runs_and_reports_accuracies_in_range(tiny_model, kind):
    res = make(kind).run(episode(tiny_model))
    assert 0.0 <= res.test_acc <= 1.0 and 0.0 <= res.val_acc <= 1.0
    assert res.test_acc > 0.5, "separable synthetic classes should be learned from a good source"


def test_full_finetuning_is_deterministic_for_a_seed(tiny_model):
    a = make("full").run(episode(tiny_model, seed=3))
    b = make("full").run(episode(tiny_model, seed=3))
    assert a.metrics() == b.metrics()


def test_linear_probe_leaves_the_backbone_untouched(tiny_model):
    ep = episode(tiny_model)
    before = {n: p.clone() for n, p in ep.model.named_parameters() if not n.startswith("head")}
    make("linear").run(ep)
    for n, p in ep.model.named_parameters():
        if not n.startswith("head"):
            assert torch.equal(before[n], p), n


def test_full_finetuning_changes_the_backbone(tiny_model):
    ep = episode(tiny_model)
    before = ep.model.conv1.weight.clone()
    make("full", lr=0.1).run(ep)
    assert not torch.equal(before, ep.model.conv1.weight)


def test_l2sp_with_a_strong_anchor_stays_closer_to_the_source_than_full(tiny_model):
    drift = {}
    for kind, opts in (("full", {}), ("l2sp", {"alpha": 5.0})):
        ep = episode(tiny_model)
        make(kind, lr=0.05, **opts).run(ep)
        drift[kind] = sum(
            float((p - q).detach().pow(2).sum())
            for (n, p), q in zip(ep.model.named_parameters(), tiny_model.parameters(), strict=True)
            if not n.startswith("head")
        )
    assert drift["l2sp"] < 0.5 * drift["full"]


def test_divergent_learning_rate_is_recorded_with_its_step(tiny_model):
    res = make("full", lr=1e6, momentum=0.0).run(episode(tiny_model))
    assert res.diverged_step is not None and res.diverged_step <= 6


def test_validation_selects_the_step_and_test_is_not_consulted(tiny_model):
    ep = episode(tiny_model)
    x, y = ep.support
    res = train(
        ep.model,
        list(ep.model.parameters()),
        (x, y),
        ep.val,
        FinetuneConfig(steps=6, eval_every=2),
        torch.device("cpu"),
    )
    steps = [s for s, _ in res.val_curve]
    assert steps == [2, 4, 6]
    best = max(acc for _, acc in res.val_curve)
    assert res.val_acc == best
    assert res.best_step == max(s for s, acc in res.val_curve if acc == best)


def test_centroid_method_rejects_options():
    from kshot.errors import ConfigError

    with pytest.raises(ConfigError, match=r"methods.centroid: unknown key 'lr'"):
        METHODS["centroid"].parse_options({"lr": 0.1}, "methods.centroid")
