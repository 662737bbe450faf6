"""``torch.compile`` for SSB detectors: the bottom-up compiled in place.

The SSB bottom-up compiles to one graph (``fullgraph=True``) for any input size
(``dynamic=True``), in inference and in training; Detectron2's heads (proposal sampling,
NMS, ROI pooling) have data-dependent shapes and stay eager. ``nn.Module.compile`` compiles
in place: parameter names, checkpoints and DDP wrapping are unchanged. ``tools/train_net.py
--compile`` calls it.
"""
import torch

__all__ = ["compile_bottom_up"]


def compile_bottom_up(model: torch.nn.Module, **options) -> torch.nn.Module:
    """Compile ``model``'s bottom-up (``model.backbone.bottom_up``, or ``model.backbone``
    without FPN; a DDP wrapper is looked through) in place and return it.

    Args:
        model: a Detectron2 meta-architecture (or its DDP wrapper).
        options: ``torch.compile`` options over ``fullgraph=True, dynamic=True``
            (e.g. ``backend="aot_eager"``, ``mode="max-autotune"``).
    """
    model = getattr(model, "module", model)
    backbone = model.backbone
    bottom_up = getattr(backbone, "bottom_up", backbone)
    bottom_up.compile(**{"fullgraph": True, "dynamic": True, **options})
    return bottom_up
