import copy

import pytest
import torch
from tiny_nets import tiny_lenet, tiny_task

from kshot.config import FinetuneConfig
from kshot.errors import DataError
from kshot.finetune import train
from kshot.population import train_members, train_population
from kshot.shared_grad import GroupedGradient

CPU = torch.device("cpu")


def members_and_data(n: int = 3):
    models = [tiny_lenet(n_classes=3, seed=s) for s in range(n)]
    supports = [tiny_task(3, 2, seed=10 + s) for s in range(n)]
    vals = [tiny_task(3, 3, seed=20 + s) for s in range(n)]
    return models, supports, vals


GROUPINGS = [
    None,
    {"conv2": torch.arange(12) % 3, "fc1": torch.arange(125) // 5},
    {"conv1": torch.tensor([0, 0, 1, 1, 1]), "fc1": torch.arange(125) % 7},
]


def sequential(models, supports, vals, cfg, groupings):
    out = []
    for m, s, v, g in zip(models, supports, vals, groupings, strict=True):
        m = copy.deepcopy(m)
        hooks = [GroupedGradient(m, g)] if g else []
        out.append((m, train(m, list(m.parameters()), s, v, cfg, CPU, hooks=hooks)))
    return out


@pytest.mark.parametrize("weight_decay", [0.0, 1e-3])
def test_population_matches_sequential_finetuning_after_several_steps(weight_decay):
    models, supports, vals = members_and_data()
    cfg = FinetuneConfig(steps=6, lr=0.05, momentum=0.9, weight_decay=weight_decay, eval_every=100)
    seq = sequential(models, supports, vals, cfg, GROUPINGS)
    pop = train_population(models, supports, vals, cfg, CPU, groupings=GROUPINGS)
    for p, (model, res) in enumerate(seq):
        for name, w in model.named_parameters():
            torch.testing.assert_close(pop.params[name][p], w, atol=2e-5, rtol=1e-4)
        assert pop.val_acc[p] == pytest.approx(res.val_acc)
        assert pop.steps_run[p] == res.steps_run == 6


def test_population_validation_selection_matches_sequential():
    models, supports, vals = members_and_data()
    cfg = FinetuneConfig(steps=8, lr=0.1, momentum=0.9, eval_every=2)
    seq = sequential(models, supports, vals, cfg, GROUPINGS)
    pop = train_population(models, supports, vals, cfg, CPU, groupings=GROUPINGS)
    for p, (model, res) in enumerate(seq):
        assert pop.val_curves[p] == res.val_curve
        assert pop.best_step[p] == res.best_step
        for (s1, l1), (s2, l2) in zip(pop.loss_curves[p], res.loss_curve, strict=True):
            assert s1 == s2 and l1 == pytest.approx(l2, rel=1e-4)
        restored = pop.load_into(copy.deepcopy(models[p]), p)
        for name, w in model.state_dict().items():
            torch.testing.assert_close(restored.state_dict()[name], w, atol=2e-5, rtol=1e-4)


def test_members_do_not_influence_each_other():
    models, supports, vals = members_and_data()
    cfg = FinetuneConfig(steps=3, lr=0.05, eval_every=100)
    trio = train_population(models, supports, vals, cfg, CPU, groupings=GROUPINGS)
    solo = train_population(models[1:2], supports[1:2], vals[1:2], cfg, CPU, GROUPINGS[1:2])
    for name, w in solo.params.items():
        torch.testing.assert_close(trio.params[name][1], w[0], atol=1e-6, rtol=1e-5)


def test_a_diverging_member_stops_and_keeps_its_last_finite_state():
    models, supports, vals = members_and_data(2)
    cfg = FinetuneConfig(steps=4, lr=1e30, momentum=0.0, eval_every=100)
    pop = train_population(models, supports, vals, cfg, CPU)
    assert all(d is not None and d <= 4 for d in pop.diverged_step)
    assert all(torch.isfinite(t).all() for t in pop.params.values())


def test_mismatched_members_are_data_errors():
    models, supports, vals = members_and_data(2)
    cfg = FinetuneConfig(steps=1)
    with pytest.raises(DataError, match="members"):
        train_population([models[0], tiny_lenet(n_classes=4)], supports, vals, cfg, CPU)
    with pytest.raises(DataError, match="supports"):
        train_population(models, [supports[0], tiny_task(3, 1)], vals, cfg, CPU)


def test_members_one_after_another_equal_their_own_seeded_runs_bitwise():
    models, supports, vals = members_and_data()
    cfg = FinetuneConfig(steps=6, lr=0.05, momentum=0.9, eval_every=2)
    members = train_members(
        [copy.deepcopy(m) for m in models], supports, vals, cfg, CPU, GROUPINGS, [0, 1, 2]
    )
    for seed, (model, res) in enumerate(sequential(models, supports, vals, cfg, GROUPINGS)):
        assert members[seed].val_curve == res.val_curve and members[seed].loss_curve == res.loss_curve
        for name, w in model.state_dict().items():
            assert torch.equal(members[seed].model.state_dict()[name], w), name
