"""The classifier: the detection backbone (``ssb_resnet``) + global pooling, dropout and FC."""
from typing import Sequence

import torch
from torch import nn

from ..modeling import ssb_resnet, ssb_resnet_kwargs_from_cfg

__all__ = ["SSBResNetClassifier", "build_classifier", "zero_init_residual", "BACKBONE_PREFIX"]

# State-dict prefix of the backbone inside the classifier: stripping it gives Detectron2's
# ResNet names (``stem.conv1.weight``, ``res2.0.conv1.norm.weight``, ...).
BACKBONE_PREFIX = "backbone."


class SSBResNetClassifier(nn.Module):
    """Image classifier on a Detectron2 ``ResNet`` built by :func:`ssb_det.modeling.ssb_resnet`.

    ``logits = fc(dropout(mean_hw(backbone(normalise(images))["res5"])))``. The input is
    normalised inside the model as in Detectron2's ``GeneralizedRCNN``: images arrive as
    0-255 tensors (uint8 or float) in the channel order of ``INPUT.FORMAT`` and are
    normalised by ``pixel_mean`` / ``pixel_std``, so the backbone sees exactly what it will see
    in a detector configured with the same three keys.

    Args:
        backbone (nn.Module): a Detectron2 ``ResNet`` whose ``out_features`` include ``res5``.
        num_classes (int): classes of the FC layer.
        dropout (float): dropout probability before the FC layer.
        pixel_mean (Sequence[float]): per-channel mean, 0-255 scale.
        pixel_std (Sequence[float]): per-channel standard deviation, 0-255 scale.
    """

    def __init__(self, backbone: nn.Module, num_classes: int, *, dropout: float = 0.25,
                 pixel_mean: Sequence[float] = (0.0, 0.0, 0.0),
                 pixel_std: Sequence[float] = (1.0, 1.0, 1.0)):
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if "res5" not in backbone.output_shape():
            raise ValueError("the classifier needs the backbone's 'res5' output "
                             "(MODEL.RESNETS.OUT_FEATURES must contain 'res5')")
        if len(pixel_mean) != len(pixel_std):
            raise ValueError(f"pixel_mean {list(pixel_mean)} and pixel_std {list(pixel_std)} "
                             "must have one value per channel")
        self.backbone = backbone
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(backbone.output_shape()["res5"].channels, num_classes)
        # ResNet-RS / timm initialisation of the classifier layer.
        nn.init.normal_(self.fc.weight, std=0.01)
        nn.init.zeros_(self.fc.bias)
        # Not persistent: they come from the config, as in GeneralizedRCNN.
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean, dtype=torch.float32)
                             .view(-1, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std, dtype=torch.float32)
                             .view(-1, 1, 1), persistent=False)

    @property
    def num_classes(self) -> int:
        return self.fc.out_features

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Globally pooled ``res5`` features, (N, C)."""
        x = (images.to(self.pixel_mean.dtype) - self.pixel_mean) / self.pixel_std
        return self.backbone(x)["res5"].mean(dim=(2, 3))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits (N, num_classes) of images (N, C, H, W) in 0-255, ``INPUT.FORMAT`` order."""
        return self.fc(self.dropout(self.features(images)))


def build_classifier(cfg, num_classes: int) -> SSBResNetClassifier:
    """The classifier a pretraining config describes.

    The backbone is built by ``ssb_resnet`` from the same keys as the detection backbone
    (``MODEL.RESNETS``, ``MODEL.SSB``, ``MODEL.BACKBONE.FREEZE_AT``), with ``res5`` added to
    its outputs if ``OUT_FEATURES`` lacks it.

    Args:
        cfg (CfgNode): a pretraining config (see :func:`get_pretrain_cfg`).
        num_classes (int): classes of the FC layer.

    Returns:
        SSBResNetClassifier: on the CPU; move it with ``.to(cfg.MODEL.DEVICE)``.
    """
    kwargs = ssb_resnet_kwargs_from_cfg(cfg, in_channels=len(cfg.MODEL.PIXEL_MEAN))
    if "res5" not in kwargs["out_features"]:
        kwargs["out_features"] = list(kwargs["out_features"]) + ["res5"]
    backbone = ssb_resnet(**kwargs)
    if cfg.CLS.ZERO_INIT_RESIDUAL:
        zero_init_residual(backbone)
    return SSBResNetClassifier(
        backbone, num_classes, dropout=cfg.CLS.DROPOUT,
        pixel_mean=cfg.MODEL.PIXEL_MEAN, pixel_std=cfg.MODEL.PIXEL_STD,
    )


def zero_init_residual(backbone: nn.Module) -> int:
    """Set the trainable scale of every block's last norm (``conv3.norm``) to zero.

    Each residual block then starts as the identity (ResNet-RS initialisation). Frozen norms
    (``FrozenBN``, whose scale is a buffer) are left alone: zeroing them would disable the
    block for good.

    Args:
        backbone (nn.Module): a Detectron2 ``ResNet``.

    Returns:
        int: number of norms changed.
    """
    changed = 0
    for name, module in backbone.named_modules():
        if not name.endswith("conv3"):
            continue
        norm = getattr(module, "norm", None)
        weight = getattr(norm, "weight", None)
        if isinstance(weight, nn.Parameter):
            nn.init.zeros_(weight)
            changed += 1
    return changed
