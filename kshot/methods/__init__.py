"""Registry of k-shot method kinds. To add a method, write a :class:`Method` subclass in its own
module and list it here; ``params.yaml`` then refers to it by ``kind``."""

from kshot.methods.adafilter import AdaFilter
from kshot.methods.base import EpisodeData, EpisodeResult, GradientMethod, Method
from kshot.methods.bitfit import BitFit
from kshot.methods.bss import BSS
from kshot.methods.centroid import NearestCentroid
from kshot.methods.delta import Delta
from kshot.methods.fewshot import FEWSHOT_METHODS
from kshot.methods.full import FullFinetune
from kshot.methods.grouped import GROUPED_METHODS
from kshot.methods.l2sp import L2SP
from kshot.methods.linear import LinearProbe
from kshot.methods.lpft import LPFT
from kshot.methods.surgical import Surgical

METHODS: dict[str, type[Method]] = {
    cls.kind: cls
    for cls in (
        FullFinetune,
        LinearProbe,
        NearestCentroid,
        L2SP,
        *GROUPED_METHODS,
        LPFT,
        AdaFilter,
        Delta,
        BSS,
        BitFit,
        Surgical,
        *FEWSHOT_METHODS,
    )
}

__all__ = ["METHODS", "EpisodeData", "EpisodeResult", "GradientMethod", "Method"]
