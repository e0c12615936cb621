"""MutualNet-Det: one Mask R-CNN that runs at any backbone width and input scale.

Importing the package registers its backbones, meta-architecture and embedded datasets.
"""
from .compat import install_standin_if_needed

install_standin_if_needed()  # before anything imports detectron2._C

from .config import add_mutualnet_config, validate_mutualnet_config  # noqa: E402
from .width import get_width, round_channels, set_width, using_width, validate_width  # noqa: E402
from .evaluation.query_table import best_config, pareto_front  # noqa: E402
from . import modeling  # noqa: E402,F401  (registration)
from . import data  # noqa: E402,F401  (registration)
from .deploy.freeze import freeze_width  # noqa: E402  (also registers build_frozen_resnet_fpn_backbone)
from .runtime.latency import load_latency_table, profile_latency  # noqa: E402
from .runtime.adaptive import AdaptivePredictor  # noqa: E402

__all__ = [
    "AdaptivePredictor",
    "add_mutualnet_config",
    "best_config",
    "freeze_width",
    "load_latency_table",
    "pareto_front",
    "profile_latency",
    "validate_mutualnet_config",
    "get_width",
    "round_channels",
    "set_width",
    "using_width",
    "validate_width",
]
