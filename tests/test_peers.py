"""The peer methods of regularised fine-tuning: BitFit, surgical fine-tuning, LP-FT, DELTA, BSS."""

import copy

import pytest
import torch

import kshot.methods.delta as delta_module
import kshot.methods.lpft as lpft_module
from kshot.config import FinetuneConfig
from kshot.errors import ConfigError
from kshot.finetune import init_head, to_input
from kshot.methods.adafilter import AdaFilter
from kshot.methods.bitfit import BitFit
from kshot.methods.bss import BSS, spectral_shrinkage
from kshot.methods.delta import Delta, attention_weights, conv_layers, feature_maps, supervised_attention
from kshot.methods.full import FullFinetune
from kshot.methods.lpft import LPFT, probe
from kshot.methods.surgical import Surgical, surgical_parameters
from tests.test_methods import episode

PEERS = {cls.kind: cls for cls in (BitFit, Surgical, LPFT, Delta, BSS)}


def make(cls, **options):
    """``cls`` with ``options``, named by its kind (errors name ``methods.<kind>.<field>``)."""
    return cls(
        cls.parse_options(options, f"methods.{cls.kind}"), FinetuneConfig(steps=6, eval_every=2), cls.kind
    )


def backbone_state(model):
    return {n: p.detach().clone() for n, p in model.named_parameters() if not n.startswith("head.")}


@pytest.mark.parametrize("kind", sorted(PEERS))
def test_every_peer_method_runs_and_learns_the_separable_classes(tiny_model, kind):
    res = make(PEERS[kind], lr=0.05).run(episode(tiny_model))
    assert 0.0 <= res.val_acc <= 1.0 and res.steps == 6
    assert res.test_acc > 0.5, "separable synthetic classes should be learned from a good source"


@pytest.mark.parametrize("kind", sorted(PEERS))
def test_every_peer_method_fine_tunes_resnet18_with_its_batchnorm_statistics_frozen(kind):
    from tests.test_adafilter import small_episode, tiny_resnet

    model = tiny_resnet()
    stats = {n: b.clone() for n, b in model.named_buffers() if "running" in n}
    before = backbone_state(model)
    ep = small_episode(model)
    cls = PEERS[kind]
    # DELTA's supervised attention is one forward pass per channel removed (4,800 on ResNet-18):
    # tested on LeNet above; uniform attention here keeps the test fast
    options = {"lr": 0.01} | ({"attention": "uniform"} if kind == "delta" else {})
    method = cls(cls.parse_options(options, f"methods.{kind}"), FinetuneConfig(steps=2, eval_every=1), kind)
    res = method.run(ep)
    assert 0.0 <= res.test_acc <= 1.0 and res.steps == 2
    after = ep.model
    assert all(torch.equal(b, stats[n]) for n, b in after.named_buffers() if n in stats)
    moved = [n for n, p in after.named_parameters() if n in before and not torch.equal(p, before[n])]
    assert moved, f"{kind} changed no backbone parameter of ResNet-18"


@pytest.mark.parametrize("kind", [*sorted(PEERS), "adafilter"])
def test_every_peer_method_fine_tunes_the_wide_cnn(kind):
    from tests.test_adafilter import small_episode, tiny_widecnn

    model = tiny_widecnn()
    before = backbone_state(model)
    ep = small_episode(model)
    cls = {**PEERS, "adafilter": AdaFilter}[kind]
    options = {"lr": 0.05} | ({"probe_steps": 3} if kind == "lpft" else {})
    method = cls(cls.parse_options(options, f"methods.{kind}"), FinetuneConfig(steps=3, eval_every=1), kind)
    res = method.run(ep)
    assert 0.0 <= res.test_acc <= 1.0 and res.steps == 3 and res.diverged_step is None
    moved = [n for n, p in ep.model.named_parameters() if n in before and not torch.equal(p, before[n])]
    assert moved, f"{kind} changed no backbone parameter of the wide CNN"


def test_bitfit_changes_only_the_biases_and_the_head(tiny_model):
    ep = episode(tiny_model)
    before = backbone_state(ep.model)
    make(BitFit, lr=0.1).run(ep)
    after = backbone_state(ep.model)
    for n in before:
        if n.endswith("weight"):
            assert torch.equal(before[n], after[n]), n
    assert any(not torch.equal(before[n], after[n]) for n in before if n.endswith("bias"))


def test_surgical_by_default_changes_only_fc1_and_the_head(tiny_model):
    ep = episode(tiny_model)
    before = backbone_state(ep.model)
    make(Surgical, lr=0.1).run(ep)
    after = backbone_state(ep.model)
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert changed == {"fc1.weight", "fc1.bias"}


def test_surgical_unknown_layer_is_a_config_error_naming_the_field_and_the_valid_names(tiny_model):
    with pytest.raises(ConfigError, match=r"methods\.surgical\.layers: unknown value 'fc2'") as err:
        make(Surgical, layers=["conv1", "fc2"]).run(episode(tiny_model))
    assert "'fc1'" in str(err.value) and "'last'" in str(err.value)
    assert "\n" not in str(err.value)


def test_surgical_accepts_a_resnet_block_and_trains_its_batchnorm_too():
    from kshot.models import ResNet18

    model = ResNet18(3, 32, 5)
    picked = {id(p) for p in surgical_parameters(model, ["body.layer4"], "layers")}
    expected = [p for n, p in model.named_parameters() if n.startswith(("body.layer4.", "head."))]
    assert picked == {id(p) for p in expected}
    assert any(n.startswith("body.layer4.") and ".bn" in n for n, _ in model.named_parameters())


def test_lpft_fine_tunes_from_the_probed_head_and_then_moves_the_backbone(tiny_model, monkeypatch):
    # a gentle probe: on these separable images a long one drives the loss, and every gradient, to 0
    method = make(LPFT, probe_steps=4, probe_lr=0.001, lr=0.01)
    reference = episode(tiny_model)
    init_head(reference.model, 3, reference.seed, "random", reference.support, reference.device)
    probed = probe(reference.model, reference, method.probe_config())
    fresh = episode(tiny_model)
    init_head(fresh.model, 3, fresh.seed, "random", fresh.support, fresh.device)
    assert not torch.equal(fresh.model.head.weight, reference.model.head.weight), "the probe must train"

    heads_at_start = []
    real_train = lpft_module.train

    def recording_train(model, *args, **kwargs):
        heads_at_start.append(copy.deepcopy(getattr(model, "head", model).state_dict()))
        return real_train(model, *args, **kwargs)

    monkeypatch.setattr(lpft_module, "train", recording_train)
    ep = episode(tiny_model)
    before = backbone_state(ep.model)
    res = method.run(ep)
    assert len(heads_at_start) == 2
    for name, value in reference.model.head.state_dict().items():
        assert torch.equal(heads_at_start[1][name], value), name
    assert res.extra["probe_val_acc"] == probed.val_acc
    assert not torch.equal(before["conv1.weight"], ep.model.conv1.weight)


@pytest.mark.parametrize("method", [Delta, BSS])
def test_penalty_methods_with_zero_strength_equal_full_finetuning(tiny_model, method):
    zero = {"alpha": 0.0, "beta": 0.0} if method is Delta else {"eta": 0.0}
    full = make(FullFinetune, lr=0.05).run(episode(tiny_model, seed=4))
    peer = make(method, lr=0.05, **zero).run(episode(tiny_model, seed=4))
    assert peer.metrics() == full.metrics()


@pytest.mark.parametrize("method", [Delta, BSS])
def test_penalty_methods_leave_no_forward_hook_on_the_model(tiny_model, method):
    ep = episode(tiny_model)
    make(method).run(ep)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in ep.model.modules())


def conv_map_distance(model, source, images):
    x = to_input(images, torch.device("cpu"))
    layers = conv_layers(source)
    ours, theirs = feature_maps(model, layers, x), feature_maps(source, layers, x)
    return sum(float((ours[n] - theirs[n]).pow(2).sum()) for n in layers)


def test_delta_with_a_strong_penalty_keeps_conv_maps_closer_to_the_source_than_full(tiny_model):
    distance = {}
    for name, method, opts in (("full", FullFinetune, {}), ("delta", Delta, {"alpha": 0.1})):
        ep = episode(tiny_model)
        make(method, lr=0.01, eval_every=6, **opts).run(ep)
        distance[name] = conv_map_distance(ep.model, tiny_model, ep.support[0])
    assert distance["delta"] < 0.2 * distance["full"]


def test_delta_differs_from_full_finetuning_when_the_penalty_is_on(tiny_model):
    full = make(FullFinetune, lr=0.05).run(episode(tiny_model))
    delta = make(Delta, lr=0.05, alpha=0.01).run(episode(tiny_model))
    assert delta.loss_curve != full.loss_curve


@pytest.mark.parametrize("attention", ["supervised", "uniform"])
def test_delta_attention_weights_are_non_negative_and_sum_to_one_per_layer(tiny_model, attention):
    ep = episode(tiny_model)
    init_head(ep.model, 3, 0, "random", ep.support, ep.device)
    layers = conv_layers(ep.model)
    weights = make(Delta, attention=attention).channel_weights(ep.model, layers, ep)
    assert [len(w) for w in weights] == [ep.model.conv1.out_channels, ep.model.conv2.out_channels]
    for w in weights:
        assert bool((w >= 0).all()) and float(w.sum()) == pytest.approx(1.0, abs=1e-6)


def test_delta_supervised_attention_favours_channels_whose_removal_hurts_most(tiny_model):
    rises = torch.tensor([0.0, 0.5, 0.1, 2.0])
    w = attention_weights(rises)
    assert torch.equal(w.argsort(), rises.argsort())
    assert torch.equal(attention_weights(torch.full((3,), 0.2)), torch.full((3,), 1 / 3))


def test_delta_supervised_attention_is_computed_once_per_episode_and_reused(tiny_model, monkeypatch):
    """A tuning job runs every candidate on the same episodes: the attention (independent of alpha
    and the learning rate) is computed once per episode, and what is reused equals a fresh one."""
    calls = []
    real = delta_module.supervised_attention
    monkeypatch.setattr(delta_module, "ATTENTION_CACHE", type(delta_module.ATTENTION_CACHE)())
    monkeypatch.setattr(delta_module, "supervised_attention", lambda *a: calls.append(1) or real(*a))
    ep = episode(tiny_model)
    init_head(ep.model, 3, 0, "random", ep.support, ep.device)
    layers = conv_layers(ep.model)
    first = make(Delta, alpha=0.1).channel_weights(ep.model, layers, ep)
    again = make(Delta, alpha=1.0, lr=0.3).channel_weights(copy.deepcopy(ep.model), layers, ep)
    assert len(calls) == 1 and all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(ep.seed)
        fresh = real(ep.model, layers, ep.support, make(Delta).channel_probe(), ep.device)
    assert all(torch.equal(a, b) for a, b in zip(first, fresh, strict=True))
    other = copy.deepcopy(ep)
    other.support = (ep.support[0].flip(0), ep.support[1].flip(0))  # another support set
    make(Delta).channel_weights(ep.model, layers, other)
    moved = copy.deepcopy(ep.model)
    with torch.no_grad():
        moved.head.bias.add_(1.0)  # another head: another probe start
    make(Delta).channel_weights(moved, layers, ep)
    assert len(calls) == 3


def test_delta_channel_removals_resumed_at_a_resnet_stage_equal_the_whole_forward(monkeypatch):
    """On ResNet-18 a removal reruns only the stages from the removed layer's on: each resume
    point gives the whole forward's logits, and the loss rises equal those of whole forwards."""
    from tests.test_adafilter import small_episode, tiny_resnet

    model = tiny_resnet().eval()
    ep = small_episode(model)
    x, y = to_input(ep.support[0], ep.device), ep.support[1]
    seen = {}
    modules = dict(model.named_modules())
    for name in model.resume_points():
        modules[name].register_forward_pre_hook(lambda m, args, name=name: seen.__setitem__(name, args[0]))
    with torch.no_grad():
        logits = model(x)
        for name, rest in model.resume_points().items():
            torch.testing.assert_close(rest(seen[name]), logits, rtol=0, atol=1e-5)
    for layer in ("body.layer2.0.downsample.0", "body.layer4.1.conv2", "body.conv1"):
        resumed = delta_module.removal_losses(model, layer, x, y)
        with monkeypatch.context() as m:
            m.setattr(type(model), "resume_points", lambda self: {})
            whole = delta_module.removal_losses(model, layer, x, y)
        assert len(resumed) == modules[layer].out_channels and bool(whole.abs().max() > 0)
        torch.testing.assert_close(resumed, whole, rtol=0, atol=1e-5)


def test_delta_attention_leaves_the_model_and_the_random_state_untouched(tiny_model):
    ep = episode(tiny_model)
    init_head(ep.model, 3, 0, "random", ep.support, ep.device)
    state = copy.deepcopy(ep.model.state_dict())
    torch.manual_seed(11)
    supervised_attention(
        ep.model, conv_layers(ep.model), ep.support, FinetuneConfig(steps=5, eval_every=5), ep.device
    )
    drawn = torch.rand(3)
    torch.manual_seed(11)
    assert torch.equal(drawn, torch.rand(3))
    for name, value in ep.model.state_dict().items():
        assert torch.equal(state[name], value), name


def test_spectral_shrinkage_sums_the_squares_of_the_k_smallest_singular_values():
    diagonal = torch.zeros(3, 5)
    diagonal[0, 0], diagonal[1, 1], diagonal[2, 2] = 3.0, 1.0, 2.0
    assert float(spectral_shrinkage(diagonal, 1)) == pytest.approx(1.0)
    assert float(spectral_shrinkage(diagonal, 2)) == pytest.approx(1.0 + 4.0)
    rotation, _ = torch.linalg.qr(torch.randn(5, 5, generator=torch.Generator().manual_seed(0)))
    assert float(spectral_shrinkage(diagonal @ rotation, 2)) == pytest.approx(5.0, rel=1e-5)


def test_bss_with_a_penalty_trains_differently_from_full_finetuning(tiny_model):
    full = make(FullFinetune, lr=0.05).run(episode(tiny_model))
    bss = make(BSS, lr=0.05, eta=1.0, k=2).run(episode(tiny_model))
    assert bss.loss_curve != full.loss_curve


@pytest.mark.parametrize("cls", [BSS, Delta])
def test_a_penalised_run_whose_features_overflow_is_recorded_as_diverged_not_an_error(tiny_model, cls):
    # BSS's singular values of non-finite features raised (a ResNet-18 tuning candidate's
    # overflow crashed its tune job): the loop stops on the task loss before any penalty sees them
    res = make(cls, lr=1e20).run(episode(tiny_model))
    assert res.diverged_step is not None and res.steps < res.diverged_step


def test_bss_k_of_at_least_the_number_of_singular_values_is_an_error_naming_k(tiny_model):
    ep = episode(tiny_model)  # 6 support images: 6 singular values
    with pytest.raises(ConfigError, match=r"methods\.bss\.k: expected fewer than the 6 singular values"):
        make(BSS, k=6).run(ep)


@pytest.mark.parametrize(
    ("method", "options", "field"),
    [
        (Delta, {"alpha": -1.0}, "alpha"),
        (Delta, {"beta": -0.1}, "beta"),
        (Delta, {"attention": "suprevised"}, "attention"),
        (Delta, {"attention_steps": 0}, "attention_steps"),
        (BSS, {"eta": -0.001}, "eta"),
        (BSS, {"k": 0}, "k"),
        (LPFT, {"probe_steps": 0}, "probe_steps"),
        (LPFT, {"probe_lr": 0.0}, "probe_lr"),
        (Surgical, {"layers": []}, "layers"),
        (BitFit, {"alpha": 1.0}, ""),
    ],
)
def test_bad_options_are_one_line_config_errors_naming_the_field(method, options, field):
    with pytest.raises(ConfigError) as err:
        method.parse_options(options, f"methods.{method.kind}")
    message = str(err.value)
    assert message.startswith(f"methods.{method.kind}{'.' + field if field else ''}:")
    assert "\n" not in message
