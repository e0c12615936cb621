"""`SlimmableRCNN`: Detectron2's GeneralizedRCNN that carries its BN stats bank.

The forward pass is GeneralizedRCNN's; the only addition is `bn_stats_bank`, a child module so
calibrated statistics per (width, resolution scale) are saved and loaded with the weights.
"""
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, GeneralizedRCNN

from ..bn_calibration import BNStatsBank


@META_ARCH_REGISTRY.register()
class SlimmableRCNN(GeneralizedRCNN):
    @configurable
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.bn_stats_bank = BNStatsBank()
