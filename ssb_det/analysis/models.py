"""Configs and models for the analysis tools: an SSB config and its plain twin, the parts of a
model that are counted and timed (bottom-up, backbone with FPN, whole detector).
"""
import copy
import os
from typing import Dict, Optional, Sequence

import torch
from detectron2.modeling import build_model
from torch import nn

from ..config import load_config

__all__ = [
    "BASE_DETECTOR_CONFIG",
    "SSB_BACKBONE_NAMES",
    "load_cfg",
    "baseline_twin",
    "cfg_label",
    "build_detector",
    "random_image",
    "DetectorOutputs",
    "stage_names",
    "capture_inputs",
    "stage_feature_inputs",
    "fpn_head_only",
]

# Detectron2 model-zoo config every default analysis starts from.
BASE_DETECTOR_CONFIG = "COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml"
# Backbone builders whose MODEL.SSB.ENABLED switches sampling on and off.
SSB_BACKBONE_NAMES = (
    "build_ssb_resnet_backbone",
    "build_ssb_resnet_fpn_backbone",
    "build_ssb_retinanet_resnet_fpn_backbone",
)


def load_cfg(config_file: Optional[str] = None, opts: Sequence[str] = (), defaults=None):
    """A frozen CPU config: ``config_file`` (a project or Detectron2 YAML) or, when None,
    Detectron2's Faster R-CNN R50-FPN with the SSB-R50-FPN backbone; then ``opts``.

    Args:
        config_file (str or None): path of a YAML config; a model-zoo name such as
            ``"COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml"`` works too.
        opts (Sequence[str]): ``KEY VALUE`` overrides, as on Detectron2's command lines.
        defaults (CfgNode or None): the defaults to merge into, for a project with keys of
            its own (``MODEL.SSB`` present); None: :func:`~ssb_det.config.load_config`'s.
    """
    if config_file is None:
        cfg = load_config(_zoo_file(BASE_DETECTOR_CONFIG), cfg=defaults)
        cfg.MODEL.BACKBONE.NAME = "build_ssb_resnet_fpn_backbone"
        cfg = load_config(None, opts, cfg=cfg)
    else:
        path = config_file if os.path.isfile(config_file) else _zoo_file(config_file)
        cfg = load_config(path, opts, cfg=defaults)
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    cfg.freeze()
    return cfg


def _zoo_file(name: str) -> str:
    from detectron2 import model_zoo

    try:
        return model_zoo.get_config_file(name)
    except RuntimeError as e:
        raise FileNotFoundError(
            f"config {name!r} is neither a file nor a Detectron2 model-zoo config") from e


def baseline_twin(cfg):
    """The plain twin of an SSB config: the same config with ``MODEL.SSB.ENABLED False``.

    Raises:
        ValueError: if ``cfg``'s backbone is not an SSB builder (no twin to derive).
    """
    if cfg.MODEL.BACKBONE.NAME not in SSB_BACKBONE_NAMES:
        raise ValueError(
            f"cannot derive a baseline from MODEL.BACKBONE.NAME={cfg.MODEL.BACKBONE.NAME!r}: "
            f"it is not one of {SSB_BACKBONE_NAMES}; pass a baseline config explicitly")
    twin = copy.deepcopy(cfg)
    twin.defrost()
    twin.MODEL.SSB.ENABLED = False
    twin.freeze()
    return twin


def cfg_label(cfg) -> str:
    """Short human name of a config's backbone, e.g. ``SSB-R50-FPN``, ``R50-FPN`` or
    ``SSB-BoT50-FPN``."""
    name = cfg.MODEL.BACKBONE.NAME
    ssb = name in SSB_BACKBONE_NAMES and cfg.MODEL.SSB.ENABLED
    host = cfg.MODEL.SSB.HOST if name in SSB_BACKBONE_NAMES else "resnet"
    prefix = {"resnet-rs": "RS", "botnet": "BoT"}.get(host, "R")
    label = ("SSB-" if ssb else "") + prefix + str(cfg.MODEL.RESNETS.DEPTH)
    return label + ("-FPN" if "fpn" in name else "")


def build_detector(cfg, seed: int = 0) -> nn.Module:
    """The detector of ``cfg`` on CPU, randomly initialised with ``seed``, in eval mode."""
    torch.manual_seed(seed)
    model = build_model(cfg)
    return model.eval()


def random_image(height: int, width: int, seed: int = 0, batch: int = 1) -> torch.Tensor:
    """A reproducible ``(batch, 3, height, width)`` input with roughly image statistics
    (0-255 pixel values, so the detector's normalisation sees what it expects)."""
    if height < 1 or width < 1:
        raise ValueError(f"input size must be positive, got {height}x{width}")
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, height, width, generator=gen) * 255.0


class DetectorOutputs(nn.Module):
    """Runs a Detectron2 detector (eval mode) on a batch tensor and returns plain tensors,
    so fvcore's tracer can follow it (it needs tensors in and tensors out).

    Args:
        detector (nn.Module): a Detectron2 meta-architecture taking ``list[dict]``.
    """

    def __init__(self, detector: nn.Module):
        super().__init__()
        self.detector = detector

    def forward(self, images: torch.Tensor):
        outputs = self.detector([{"image": img} for img in images])
        tensors = []
        for out in outputs:
            instances = out["instances"]
            for name in sorted(instances.get_fields()):
                value = instances.get(name)
                tensors.append(value.tensor if hasattr(value, "tensor") else value)
        return tuple(tensors)


def stage_names(bottom_up: nn.Module):
    """Names of the counted parts of a Detectron2 ResNet: ``stem``, ``res2``.. in order."""
    return ["stem"] + list(bottom_up.stage_names)


def capture_inputs(model: nn.Module, names: Sequence[str], *inputs) -> Dict[str, tuple]:
    """Run ``model(*inputs)`` once and return the positional inputs each named submodule
    received (forward pre-hooks; gradients off)."""
    seen, handles = {}, []
    modules = dict(model.named_modules())
    for name in names:
        def hook(module, args, name=name):
            seen[name] = tuple(a.detach() if torch.is_tensor(a) else a for a in args)

        handles.append(modules[name].register_forward_pre_hook(hook))
    try:
        with torch.no_grad():
            model(*inputs)
    finally:
        for h in handles:
            h.remove()
    missing = [n for n in names if n not in seen]
    if missing:
        raise RuntimeError(f"submodules never called during the forward pass: {missing}")
    return seen


def stage_feature_inputs(bottom_up: nn.Module, x: torch.Tensor) -> Dict[str, tuple]:
    """``{stage: args}``: what each stage of ``bottom_up`` is called with on ``x``: the
    feature map and, in an :class:`~ssb_det.modeling.SSBResNet`, the image sizes it passes
    its stages. A trace of the whole network records the same calls, so counts of the
    stages add up to the count of the network."""
    return capture_inputs(bottom_up, stage_names(bottom_up), x)


class _Replay(nn.Module):
    """Stands in for a bottom-up network: returns features computed beforehand."""

    def __init__(self, features: Dict[str, torch.Tensor], shapes):
        super().__init__()
        self.features = features
        self._shapes = shapes

    def output_shape(self):
        return self._shapes

    def forward(self, x):
        return dict(self.features)


class fpn_head_only:
    """Context manager: inside it, ``fpn(x)`` runs only the FPN's own layers on the given
    bottom-up features (the bottom-up network is replaced by a replay of them).

    Args:
        fpn (nn.Module): a Detectron2 ``FPN``.
        features (dict[str, Tensor]): the bottom-up features ``fpn.bottom_up(x)`` returned.
    """

    def __init__(self, fpn: nn.Module, features: Dict[str, torch.Tensor]):
        self.fpn, self.features = fpn, features

    def __enter__(self):
        self.bottom_up = self.fpn.bottom_up
        self.fpn.bottom_up = _Replay(self.features, self.bottom_up.output_shape())
        return self.fpn

    def __exit__(self, *exc):
        self.fpn.bottom_up = self.bottom_up
        return False
