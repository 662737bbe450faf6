"""ssb_det: SSB-ResNet (SSBNet, Kwan & Song, ECCV 2022) backbones for Detectron2.

Importing the package registers the backbones ``build_ssb_resnet_backbone``,
``build_ssb_resnet_fpn_backbone`` and ``build_ssb_retinanet_resnet_fpn_backbone`` in
Detectron2's ``BACKBONE_REGISTRY``.
"""
from .compat import apply_runtime_patches

apply_runtime_patches()  # before anything imports detectron2.data

from .config import add_ssb_config  # noqa: E402
from .modeling import (  # noqa: E402
    SSBBottleneckBlock,
    build_ssb_resnet_backbone,
    build_ssb_resnet_fpn_backbone,
    build_ssb_retinanet_resnet_fpn_backbone,
    ssb_resnet,
)
from . import data  # noqa: F401,E402  registers ssb_shapes_train/val

__version__ = "0.1.0"

__all__ = [
    "add_ssb_config",
    "SSBBottleneckBlock",
    "build_ssb_resnet_backbone",
    "build_ssb_resnet_fpn_backbone",
    "build_ssb_retinanet_resnet_fpn_backbone",
    "ssb_resnet",
]
