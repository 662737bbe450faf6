"""A detector whose SSB saliency is taught where the objects are.

:class:`SaliencySupervisedRCNN` is Detectron2's ``GeneralizedRCNN`` plus one training loss,
``loss_saliency``: each learned SSB block's saliency distribution is pulled toward one with a
share ``MODEL.SSB.BOX_SALIENCY_MASS`` on the ground-truth boxes and the rest uniform
(:mod:`ssb_det.layers.box_saliency`; KL divergence). Inference is
``GeneralizedRCNN``'s, unchanged: the saliency is still predicted from the features, and no
box is needed. Select it with ``MODEL.META_ARCHITECTURE "SaliencySupervisedRCNN"``.
"""
import contextvars
from typing import Dict, List, Optional

import torch
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, GeneralizedRCNN

from ..layers.box_saliency import box_saliency_target, saliency_kl
from .blocks import learned_ssb_blocks

__all__ = ["SaliencySupervisedRCNN"]

# What the samplers are called with in the current training forward (sampler, features,
# valid sizes), or None outside one. A context variable, not module state: each thread (and
# each forward) sees only its own.
_CALLS: contextvars.ContextVar[Optional[list]] = contextvars.ContextVar("ssb_calls", default=None)


def _keep_call(sampler, inputs):
    calls = _CALLS.get()
    if calls is not None:
        features, valid_size = (tuple(inputs) + (None,))[:2]
        calls.append((sampler, features, valid_size))


@META_ARCH_REGISTRY.register()
class SaliencySupervisedRCNN(GeneralizedRCNN):
    """``GeneralizedRCNN`` with a box-supervised saliency (see the module docstring).

    Args:
        box_saliency_weight (float): weight of ``loss_saliency`` (>= 0; 0: the plain detector).
        box_saliency_mass (float): share of the target saliency on the boxes, in ``[0, 1)``.
        box_saliency_detach (bool): the loss trains the saliency convs only, not the features
            they read (the backbone then learns from the detection losses alone).
        other arguments: as ``GeneralizedRCNN``.
    """

    @configurable
    def __init__(self, *, box_saliency_weight: float, box_saliency_mass: float,
                 box_saliency_detach: bool = False, **kwargs):
        super().__init__(**kwargs)
        if not box_saliency_weight >= 0:
            raise ValueError(
                f"MODEL.SSB.BOX_SALIENCY_WEIGHT must be >= 0, got {box_saliency_weight}")
        if not 0.0 <= box_saliency_mass < 1.0:
            raise ValueError(
                f"MODEL.SSB.BOX_SALIENCY_MASS must be in [0, 1), got {box_saliency_mass}")
        self.box_saliency_weight = float(box_saliency_weight)
        self.box_saliency_mass = float(box_saliency_mass)
        self.box_saliency_detach = bool(box_saliency_detach)
        # Registered once; they record nothing outside a training forward of this class.
        for block in learned_ssb_blocks(self.backbone).values():
            block.sampler.register_forward_pre_hook(_keep_call)

    @classmethod
    def from_config(cls, cfg):
        ret = super().from_config(cfg)
        ret["box_saliency_weight"] = cfg.MODEL.SSB.BOX_SALIENCY_WEIGHT
        ret["box_saliency_mass"] = cfg.MODEL.SSB.BOX_SALIENCY_MASS
        ret["box_saliency_detach"] = cfg.MODEL.SSB.BOX_SALIENCY_DETACH
        return ret

    def forward(self, batched_inputs: List[Dict[str, torch.Tensor]]):
        if not self.training or self.box_saliency_weight == 0:
            return super().forward(batched_inputs)
        if any("instances" not in x for x in batched_inputs):
            raise ValueError("SaliencySupervisedRCNN: training inputs need their 'instances'")
        token = _CALLS.set([])
        try:
            losses = super().forward(batched_inputs)
            calls = _CALLS.get()
        finally:
            _CALLS.reset(token)
        if not calls:  # no sampler was called: nothing learns a saliency
            raise ValueError(
                "SaliencySupervisedRCNN: the backbone has no learned saliency to supervise "
                "(MODEL.SSB.ENABLED False, or MODEL.SSB.UNIFORM True); use GeneralizedRCNN")
        instances = [x["instances"] for x in batched_inputs]
        losses["loss_saliency"] = self.box_saliency_weight * self.saliency_loss(calls, instances)
        return losses

    def saliency_loss(self, calls, instances) -> torch.Tensor:
        """Mean over the sampled blocks of :func:`saliency_kl` between the box target and the
        saliency each block predicted (recomputed from what its sampler was called with: a
        1-channel 1x1 conv and a pooling, small next to the block).

        Args:
            calls: ``(sampler, features, valid_size)`` of each sampler call of one forward.
            instances: per image, Detectron2 ``Instances`` with ``gt_boxes`` in the pixels of
                its ``image_size``.
        """
        boxes = [i.gt_boxes.tensor for i in instances]
        sizes = [i.image_size for i in instances]
        targets = {}
        terms = []
        for sampler, features, valid_size in calls:
            if sampler.grid_size not in targets:
                targets[sampler.grid_size] = box_saliency_target(
                    boxes, sizes, sampler.grid_size, self.box_saliency_mass)
            if self.box_saliency_detach:
                features = features.detach()
            # valid_size as the stage passes it: whole rows and columns within the map
            # (region_sizes), what the sampler's own clamping leaves unchanged.
            saliency = sampler.saliency(features, valid_size)
            terms.append(saliency_kl(targets[sampler.grid_size].to(saliency.device), saliency))
        return torch.stack(terms).mean().float()
