from .backbone import (  # noqa: F401
    build_slimmable_resnet_backbone,
    build_slimmable_resnet_fpn_backbone,
    make_fpn_slimmable,
    make_resnet_slimmable,
)
from .heads import head_channels_at, make_heads_slimmable  # noqa: F401
from .meta_arch import SlimmableRCNN  # noqa: F401
