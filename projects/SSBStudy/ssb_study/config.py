"""The study's config keys: ``add_study_config(cfg)`` adds the ``MODEL.SSB_STUDY`` node, read by
its meta-architectures only (``SaliencySupervisedRCNN``, ``OracleSamplingRCNN``).

The library's keys (``MODEL.SSB``) are ``ssb_det.add_ssb_config``'s; this node holds what only
the study needs.
"""
from typing import Optional, Sequence

from detectron2.config import CfgNode as CN
from detectron2.config import get_cfg

from ssb_det.analysis.models import load_cfg
from ssb_det.config import add_ssb_config

__all__ = ["add_study_config", "study_defaults", "load_study_cfg"]

# Keys the library held before the study became a project: an old config names them.
_MOVED = ("BOX_SALIENCY_WEIGHT", "BOX_SALIENCY_MASS", "BOX_SALIENCY_DETACH", "BOX_SALIENCY_HEAD")


def add_study_config(cfg):
    """Add ``MODEL.SSB_STUDY`` to ``cfg`` (which has ``MODEL.SSB``). Idempotent.

    Returns:
        CfgNode: ``cfg`` itself.
    """
    if "SSB_STUDY" in cfg.MODEL:
        return cfg
    _C = cfg
    _C.MODEL.SSB_STUDY = CN()
    # Box-supervised saliency (MODEL.META_ARCHITECTURE "SaliencySupervisedRCNN"): the weight
    # of its training loss pulling each SSB block's saliency toward one with a share
    # BOX_SALIENCY_MASS on the ground-truth boxes, the rest uniform (docs/accuracy.md).
    _C.MODEL.SSB_STUDY.BOX_SALIENCY_WEIGHT = 1.0
    # Share of that target saliency on the boxes, in [0, 1); the rest is uniform. Also the
    # share the oracle (OracleSamplingRCNN) samples with.
    _C.MODEL.SSB_STUDY.BOX_SALIENCY_MASS = 0.5
    # True: that loss trains the saliency convs only, not the backbone features they read.
    _C.MODEL.SSB_STUDY.BOX_SALIENCY_DETACH = False
    # Whose saliency that loss supervises: "sampler" (the one each block samples with) or
    # "auxiliary" (a separate head on the same features of each block an SSB network samples,
    # sampling nothing; also with MODEL.SSB.UNIFORM True, and on the plain host with
    # MODEL.SSB.ENABLED False).
    _C.MODEL.SSB_STUDY.BOX_SALIENCY_HEAD = "sampler"
    for key in _MOVED:
        _C.register_renamed_key(f"MODEL.SSB.{key}", f"MODEL.SSB_STUDY.{key}")
    return cfg


def study_defaults():
    """Detectron2's defaults with ``MODEL.SSB`` and ``MODEL.SSB_STUDY``."""
    return add_study_config(add_ssb_config(get_cfg()))


def load_study_cfg(config_file: Optional[str] = None, opts: Sequence[str] = ()):
    """:func:`ssb_det.analysis.models.load_cfg` (a frozen CPU config) with the study's keys."""
    return load_cfg(config_file, opts, defaults=study_defaults())
