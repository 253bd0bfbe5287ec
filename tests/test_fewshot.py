import pytest
import torch
import torch.nn.functional as F
from easyfsl.methods import SimpleShot
from torch import nn

from kshot.config import FinetuneConfig
from kshot.errors import ConfigError, DataError
from kshot.finetune import class_centroids, predict
from kshot.methods.base import EpisodeData
from kshot.methods.centroid import NearestCentroid
from kshot.methods.fewshot import FEWSHOT_METHODS
from tests.conftest import make_images
from tests.test_methods import episode

CLASSES = {cls.kind: cls for cls in (*FEWSHOT_METHODS, NearestCentroid)}
KINDS = sorted(CLASSES)


def make(kind, **options):
    cls = CLASSES[kind]
    return cls(cls.parse_options(options, f"methods.{kind}"), FinetuneConfig(steps=6, eval_every=2))


def probes_predicted_as_0(method, model, crowd_class: int) -> int:
    """How many of 10 ambiguous probes (half class 0, half class 1) ``method`` puts in class 0 when
    they are classified together with 20 clean images of ``crowd_class``. The crowd is labelled
    -1, never a prediction, so the test accuracy counts the probes alone."""
    x, y = make_images(10, 3, seed=9)
    probes = ((x[y == 0].float() + x[y == 1].float()) / 2).to(torch.uint8)
    crowd = x[y == crowd_class].repeat(2, 1, 1, 1)
    ep = episode(model)
    ep.test = (
        torch.cat([probes, crowd]),
        torch.cat([torch.zeros(len(probes), dtype=torch.long), torch.full((len(crowd),), -1)]),
    )
    return round(method.run(ep).test_acc * len(ep.test[1]))


@pytest.mark.parametrize("kind", KINDS)
def test_every_fewshot_method_runs_and_reports_accuracies_in_range(tiny_model, kind):
    res = make(kind).run(episode(tiny_model))
    assert 0.0 <= res.test_acc <= 1.0 and 0.0 <= res.val_acc <= 1.0
    assert res.test_acc > 0.5, "separable synthetic classes should be told apart by a good source"


@pytest.mark.parametrize("kind", KINDS)
def test_fewshot_methods_are_deterministic(tiny_model, kind):
    a = make(kind).run(episode(tiny_model, seed=3))
    b = make(kind).run(episode(tiny_model, seed=3))
    assert a.metrics() == b.metrics()


def test_only_pt_map_and_tim_are_marked_transductive():
    assert {kind: CLASSES[kind].transductive for kind in KINDS} == {
        "centroid": False,
        "pt_map": True,
        "simpleshot": False,
        "tim": True,
    }


@pytest.mark.parametrize("kind", KINDS)
def test_predictions_depend_on_the_other_query_images_exactly_when_transductive(tiny_model, kind):
    method = make(kind)
    counts = {c: probes_predicted_as_0(method, tiny_model, c) for c in (0, 1)}
    if CLASSES[kind].transductive:
        # a crowd of class 0 pushes the probes to class 1, a crowd of class 1 to class 0
        assert counts[0] < counts[1], counts
    else:
        assert counts[0] == counts[1], counts


@pytest.mark.parametrize("kind", KINDS)
def test_validation_and_test_are_separate_query_sets_each_with_a_fresh_classifier(tiny_model, kind):
    method, ep = make(kind), episode(tiny_model)
    build, queries = method.classifier, []

    def spied(support):
        clf = build(support)
        forward = clf.forward

        def spy(query):
            queries.append((clf, len(query)))
            return forward(query)

        clf.forward = spy
        return clf

    method.classifier = spied
    method.run(ep)
    assert sorted(n for _, n in queries) == sorted([len(ep.val[1]), len(ep.test[1])])
    assert queries[0][0] is not queries[1][0]


@pytest.mark.parametrize("kind", KINDS)
def test_fewshot_methods_leave_the_backbone_untouched(tiny_model, kind):
    ep = episode(tiny_model)
    before = {n: p.clone() for n, p in ep.model.state_dict().items()}
    make(kind).run(ep)
    after = ep.model.state_dict()
    assert all(torch.equal(before[n], after[n]) for n in before)
    assert all(p.requires_grad for p in ep.model.parameters())


def test_a_support_set_missing_a_class_is_an_error_naming_the_method(tiny_model):
    ep = episode(tiny_model)
    keep = ep.support[1] != 2
    ep.support = (ep.support[0][keep], ep.support[1][keep])
    with pytest.raises(DataError, match=r"^pt_map: expected support images of every class 0..2"):
        make("pt_map").run(ep)


@pytest.mark.parametrize(
    ("kind", "options", "field"),
    [
        ("simpleshot", {"feature_normalization": 0}, "feature_normalization"),
        ("simpleshot", {"feature_centering": "query"}, "feature_centering"),
        ("pt_map", {"fine_tuning_steps": -1}, "fine_tuning_steps"),
        ("pt_map", {"fine_tuning_lr": 0}, "fine_tuning_lr"),
        ("pt_map", {"lambda_regularization": -1.0}, "lambda_regularization"),
        ("pt_map", {"power_factor": 0}, "power_factor"),
        ("tim", {"fine_tuning_steps": 1.5}, "fine_tuning_steps"),
        ("tim", {"conditional_entropy_weight": -0.1}, "conditional_entropy_weight"),
        ("tim", {"temperature": 0}, "temperature"),
    ],
)
def test_bad_options_are_a_one_line_error_naming_the_field(kind, options, field):
    with pytest.raises(ConfigError) as err:
        CLASSES[kind].parse_options(options, f"methods.{kind}")
    message = str(err.value)
    assert message.startswith(f"methods.{kind}.{field}: expected ")
    assert "found" in message and "\n" not in message


class FeaturesAre(nn.Module):
    """A stand-in network whose penultimate features are its inputs."""

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return x


def kshot_centroid_predictions(support: torch.Tensor, labels: torch.Tensor, query: torch.Tensor):
    """kshot's own nearest centroid maths (:func:`class_centroids`, cosine) on features."""
    centroids = class_centroids(FeaturesAre(), (support, labels), int(labels.max()) + 1, torch.device("cpu"))
    return (F.normalize(query, dim=1) @ centroids.T).argmax(1)


def simpleshot_predictions(support, labels, query, feature_normalization):
    clf = SimpleShot(nn.Identity(), feature_normalization=feature_normalization)
    with torch.no_grad():
        clf.process_support_set(support, labels)
        return clf(query).argmax(1)


def test_kshot_centroids_and_easyfsl_simpleshot_agree_on_identical_features(tiny_model):
    ep = episode(tiny_model)
    support, query = (predict(ep.model.eval().features, x, ep.device) for x in (ep.support[0], ep.test[0]))
    g = torch.Generator().manual_seed(0)
    # the constructed case: without normalisation the long support vector [10, 0] pulls class 0's
    # mean to the x axis and the query [0.6, 1] goes to class 1; normalised, it stays in class 0
    constructed = (
        torch.tensor([[10.0, 0.0], [0.0, 1.0], [1.0, 0.2], [1.0, 0.2]]),
        torch.tensor([0, 0, 1, 1]),
        torch.tensor([[0.6, 1.0]]),
    )
    cases = {
        "tiny model": (support, ep.support[1], query),
        "random": (
            torch.rand(20, 64, generator=g),
            torch.arange(5).repeat(4),
            torch.rand(500, 64, generator=g),
        ),
        "constructed": constructed,
    }
    for name, (s, y, q) in cases.items():
        expected = kshot_centroid_predictions(s, y, q)
        assert torch.equal(simpleshot_predictions(s, y, q, 2), expected), name
        # the centroid method on these features: every query predicted as kshot's maths predicts
        on_features = EpisodeData(
            FeaturesAre(), (s, y), (q, expected), (q, expected), int(y.max()) + 1, 0, ep.device
        )
        res = make("centroid").run(on_features)
        assert (res.test_acc, res.val_acc) == (1.0, 1.0), name
    assert kshot_centroid_predictions(*constructed).tolist() == [0]
    assert simpleshot_predictions(*constructed, None).tolist() == [1]  # negative control
