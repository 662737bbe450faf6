"""Classification pretraining of SSB-ResNet(-RS) and its plain host (``tools/pretrain_cls.py``).

The classifier is the detection backbone built by :func:`ssb_det.modeling.ssb_resnet` (same
blocks, same builder, same ``MODEL.RESNETS`` / ``MODEL.SSB`` keys) plus global pooling,
dropout and an FC layer; its backbone is the ``backbone.`` sub-module, so exporting to
Detectron2 is a prefix strip (:func:`export_d2_backbone`).
"""
from .config import add_pretrain_config, get_pretrain_cfg
from .data import (ImageFolderDataset, InfiniteShardedSampler, ShardedEvalSampler,
                   build_datasets, build_embedded_split)
from .ema import ModelEMA
from .engine import (ClassificationTrainer, evaluate, export_d2_backbone, last_checkpoint,
                     load_classifier_weights)
from .model import SSBResNetClassifier, build_classifier

__all__ = [
    "add_pretrain_config",
    "get_pretrain_cfg",
    "ImageFolderDataset",
    "InfiniteShardedSampler",
    "ShardedEvalSampler",
    "build_datasets",
    "build_embedded_split",
    "ModelEMA",
    "ClassificationTrainer",
    "evaluate",
    "export_d2_backbone",
    "last_checkpoint",
    "load_classifier_weights",
    "SSBResNetClassifier",
    "build_classifier",
]
