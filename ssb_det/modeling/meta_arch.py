"""A detector whose SSB saliency is taught where the objects are.

:class:`SaliencySupervisedRCNN` is Detectron2's ``GeneralizedRCNN`` plus one training loss,
``loss_saliency``: each learned SSB block's saliency distribution is pulled toward one with a
share ``MODEL.SSB.BOX_SALIENCY_MASS`` on the ground-truth boxes and the rest uniform
(:mod:`ssb_det.layers.box_saliency`; KL divergence). Inference is
``GeneralizedRCNN``'s, unchanged: the saliency is still predicted from the features, and no
box is needed. Select it with ``MODEL.META_ARCHITECTURE "SaliencySupervisedRCNN"``.

``MODEL.SSB.BOX_SALIENCY_HEAD "auxiliary"`` is its control: the same loss on a separate
saliency head per SSB block, reading the same features and never used for sampling. The
features then get the same auxiliary signal while the sampling is left alone (uniform with
``MODEL.SSB.UNIFORM True``), which prices the supervision apart from where the samples go.
"""
import contextvars
import functools
from typing import Dict, List, Optional

import torch
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, GeneralizedRCNN
from torch import nn

from ..layers import SaliencySampler
from ..layers.box_saliency import box_saliency_target, saliency_kl
from .blocks import learned_ssb_blocks, ssb_blocks

__all__ = ["SaliencySupervisedRCNN", "BOX_SALIENCY_HEADS"]

# Whose saliency the loss supervises: each block's own sampler, or a head beside it.
BOX_SALIENCY_HEADS = ("sampler", "auxiliary")

# What the samplers are called with in the current training forward (the module whose
# saliency is supervised, features, valid sizes), or None outside one. A context variable,
# not module state: each thread (and each forward) sees only its own.
_CALLS: contextvars.ContextVar[Optional[list]] = contextvars.ContextVar("ssb_calls", default=None)


def _keep_call(head, sampler, inputs):
    calls = _CALLS.get()
    if calls is not None:
        features, valid_size = (tuple(inputs) + (None,))[:2]
        calls.append((sampler if head is None else head, features, valid_size))


def _auxiliary_head(block) -> SaliencySampler:
    """A zero-initialised saliency head like ``block``'s sampler, learned even where that
    sampler is uniform; only its :meth:`~SaliencySampler.saliency` is ever called."""
    s = block.sampler
    return SaliencySampler(block.conv1.out_channels, s.ratio, grid_size=s.grid_size,
                           padding=s.padding, sigma=s.sigma, saliency_bound=s.saliency_bound)


@META_ARCH_REGISTRY.register()
class SaliencySupervisedRCNN(GeneralizedRCNN):
    """``GeneralizedRCNN`` with a box-supervised saliency (see the module docstring).

    Args:
        box_saliency_weight (float): weight of ``loss_saliency`` (>= 0; 0: the plain detector).
        box_saliency_mass (float): share of the target saliency on the boxes, in ``[0, 1)``.
        box_saliency_detach (bool): the loss trains the saliency convs only, not the features
            they read (the backbone then learns from the detection losses alone).
        box_saliency_head (str): ``"sampler"``: supervise the saliency each learned SSB
            block samples with; ``"auxiliary"``: supervise a separate head per SSB block
            (``aux_saliency``), reading the same features, whose saliency samples nothing.
        other arguments: as ``GeneralizedRCNN``.
    """

    @configurable
    def __init__(self, *, box_saliency_weight: float, box_saliency_mass: float,
                 box_saliency_detach: bool = False, box_saliency_head: str = "sampler",
                 **kwargs):
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
        if box_saliency_head not in BOX_SALIENCY_HEADS:
            raise ValueError(f"MODEL.SSB.BOX_SALIENCY_HEAD must be one of {BOX_SALIENCY_HEADS}, "
                             f"got {box_saliency_head!r}")
        self.box_saliency_head = box_saliency_head
        heads = {}
        if box_saliency_head == "auxiliary":
            blocks = ssb_blocks(self.backbone)
            if not blocks:
                raise ValueError('MODEL.SSB.BOX_SALIENCY_HEAD "auxiliary" reads the features '
                                 "of SSB blocks, and the backbone has none")
            self.aux_saliency = nn.ModuleDict(
                {name.replace(".", "_"): _auxiliary_head(b) for name, b in blocks.items()})
            heads = {name: self.aux_saliency[name.replace(".", "_")] for name in blocks}
        else:
            blocks = learned_ssb_blocks(self.backbone)
        # Registered once; they record nothing outside a training forward of this class.
        for name, block in blocks.items():
            block.sampler.register_forward_pre_hook(
                functools.partial(_keep_call, heads.get(name)))

    @classmethod
    def from_config(cls, cfg):
        ret = super().from_config(cfg)
        ret["box_saliency_weight"] = cfg.MODEL.SSB.BOX_SALIENCY_WEIGHT
        ret["box_saliency_mass"] = cfg.MODEL.SSB.BOX_SALIENCY_MASS
        ret["box_saliency_detach"] = cfg.MODEL.SSB.BOX_SALIENCY_DETACH
        ret["box_saliency_head"] = cfg.MODEL.SSB.BOX_SALIENCY_HEAD
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
                "(MODEL.SSB.ENABLED False, or MODEL.SSB.UNIFORM True); use GeneralizedRCNN, "
                'or MODEL.SSB.BOX_SALIENCY_HEAD "auxiliary" with uniform sampling')
        instances = [x["instances"] for x in batched_inputs]
        losses["loss_saliency"] = self.box_saliency_weight * self.saliency_loss(calls, instances)
        return losses

    def saliency_loss(self, calls, instances) -> torch.Tensor:
        """Mean over the sampled blocks of :func:`saliency_kl` between the box target and the
        saliency each block predicted (recomputed from what its sampler was called with: a
        1-channel 1x1 conv and a pooling, small next to the block).

        Args:
            calls: ``(head, features, valid_size)`` of each sampler call of one forward, with
                ``head`` the module whose saliency is supervised (the sampler, or its
                auxiliary head).
            instances: per image, Detectron2 ``Instances`` with ``gt_boxes`` in the pixels of
                its ``image_size``.
        """
        boxes = [i.gt_boxes.tensor for i in instances]
        sizes = [i.image_size for i in instances]
        targets = {}
        terms = []
        for head, features, valid_size in calls:
            if head.grid_size not in targets:
                targets[head.grid_size] = box_saliency_target(
                    boxes, sizes, head.grid_size, self.box_saliency_mass)
            if self.box_saliency_detach:
                features = features.detach()
            # valid_size as the stage passes it: whole rows and columns within the map
            # (region_sizes), what the sampler's own clamping leaves unchanged.
            saliency = head.saliency(features, valid_size)
            terms.append(saliency_kl(targets[head.grid_size].to(saliency.device), saliency))
        return torch.stack(terms).mean().float()
