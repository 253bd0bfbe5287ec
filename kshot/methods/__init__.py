"""Registry of k-shot method kinds. To add a method, write a :class:`Method` subclass in its own
module and list it here; ``params.yaml`` then refers to it by ``kind``."""

from kshot.methods.base import EpisodeData, EpisodeResult, GradientMethod, Method
from kshot.methods.centroid import NearestCentroid
from kshot.methods.full import FullFinetune
from kshot.methods.grouped import GROUPED_METHODS
from kshot.methods.l2sp import L2SP
from kshot.methods.linear import LinearProbe

METHODS: dict[str, type[Method]] = {
    cls.kind: cls for cls in (FullFinetune, LinearProbe, NearestCentroid, L2SP, *GROUPED_METHODS)
}

__all__ = ["METHODS", "EpisodeData", "EpisodeResult", "GradientMethod", "Method"]
