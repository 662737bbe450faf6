"""SSB-ResNet and SSB-BoTNet blocks, Detectron2 backbones and meta-architecture (registered on import)."""
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
from .meta_arch import SaliencySupervisedRCNN
from .oracle import OracleSamplingRCNN

__all__ = [
    "BLOCKS_PER_STAGE",
    "BoTBlock",
    "DeepLabStem",
    "OracleSamplingRCNN",
    "RSBottleneckBlock",
    "RSStem",
    "SSBBoTBlock",
    "SSBBottleneckBlock",
    "SSBResNet",
    "SaliencySupervisedRCNN",
    "build_ssb_resnet_backbone",
    "build_ssb_resnet_fpn_backbone",
    "build_ssb_retinanet_resnet_fpn_backbone",
    "image_sizes_from_padding",
    "ssb_resnet",
    "ssb_resnet_kwargs_from_cfg",
]
