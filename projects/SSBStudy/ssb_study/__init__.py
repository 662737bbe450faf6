"""The SSB accuracy study: does adaptive sampling pay for itself?

A Detectron2 project on top of ``ssb_det`` (imports it, is never imported by it). Importing
``ssb_study`` registers its two meta-architectures, ``SaliencySupervisedRCNN`` (a box loss on
the saliency) and ``OracleSamplingRCNN`` (sampling at the ground-truth boxes); its keys are
``add_study_config``'s ``MODEL.SSB_STUDY`` node. See the project's README.md.
"""
from .config import add_study_config, load_study_cfg, study_defaults
from .meta_arch import SaliencySupervisedRCNN
from .oracle import OracleSamplingRCNN

__all__ = ["add_study_config", "load_study_cfg", "study_defaults", "SaliencySupervisedRCNN",
           "OracleSamplingRCNN"]
