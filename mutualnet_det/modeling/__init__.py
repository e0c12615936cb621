from .backbone import (  # noqa: F401
    build_slimmable_resnet_backbone,
    build_slimmable_resnet_fpn_backbone,
    make_fpn_slimmable,
    make_resnet_slimmable,
)
from .meta_arch import SlimmableRCNN  # noqa: F401
