"""SSB-ResNet and SSB-BoTNet blocks and Detectron2 backbones (registered on import)."""
from .blocks import RSBottleneckBlock, SSBBottleneckBlock
from .bot_blocks import BoTBlock, SSBBoTBlock
from .stems import DeepLabStem, RSStem
from .backbone import (
    BLOCKS_PER_STAGE,
    SSBResNet,
    image_sizes_from_padding,
    build_ssb_resnet_backbone,
    build_ssb_resnet_fpn_backbone,
    build_ssb_retinanet_resnet_fpn_backbone,
    ssb_resnet,
    ssb_resnet_kwargs_from_cfg,
)

__all__ = [
    "BLOCKS_PER_STAGE",
    "BoTBlock",
    "DeepLabStem",
    "RSBottleneckBlock",
    "RSStem",
    "SSBBoTBlock",
    "SSBBottleneckBlock",
    "SSBResNet",
    "build_ssb_resnet_backbone",
    "build_ssb_resnet_fpn_backbone",
    "build_ssb_retinanet_resnet_fpn_backbone",
    "image_sizes_from_padding",
    "ssb_resnet",
    "ssb_resnet_kwargs_from_cfg",
]
