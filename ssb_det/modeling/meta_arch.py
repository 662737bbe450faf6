"""A detector whose SSB saliency is taught where the objects are.

:class:`SaliencySupervisedRCNN` is Detectron2's ``GeneralizedRCNN`` plus one training loss,
``loss_saliency``: each learned SSB block's sampling map is pulled toward the map it would
build from a saliency with a share ``MODEL.SSB.BOX_SALIENCY_MASS`` on the ground-truth boxes
(:mod:`ssb_det.layers.box_saliency`), in log sampling density. Inference is
``GeneralizedRCNN``'s, unchanged: the saliency is still predicted from the features, and no
box is needed. Select it with ``MODEL.META_ARCHITECTURE "SaliencySupervisedRCNN"``.
"""
import contextvars
from typing import Dict, List, Optional

import torch
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, GeneralizedRCNN

from ..layers.box_saliency import box_target_knots, log_density_loss
from .blocks import learned_ssb_blocks

__all__ = ["SaliencySupervisedRCNN"]

# The grids the samplers make in the current training forward, or None outside one. A context
# variable, not module state: each thread (and each forward) sees only its own.
_GRIDS: contextvars.ContextVar[Optional[list]] = contextvars.ContextVar("ssb_grids", default=None)


def _keep_grid(sampler, inputs, grid):
    grids = _GRIDS.get()
    if grids is not None:
        grids.append((sampler, grid))


@META_ARCH_REGISTRY.register()
class SaliencySupervisedRCNN(GeneralizedRCNN):
    """``GeneralizedRCNN`` with a box-supervised saliency (see the module docstring).

    Args:
        box_saliency_weight (float): weight of ``loss_saliency`` (>= 0; 0: the plain detector).
        box_saliency_mass (float): share of the target saliency on the boxes, in ``[0, 1)``.
        other arguments: as ``GeneralizedRCNN``.
    """

    @configurable
    def __init__(self, *, box_saliency_weight: float, box_saliency_mass: float, **kwargs):
        super().__init__(**kwargs)
        if not box_saliency_weight >= 0:
            raise ValueError(f"MODEL.SSB.BOX_SALIENCY_WEIGHT must be >= 0, got {box_saliency_weight}")
        if not 0.0 <= box_saliency_mass < 1.0:
            raise ValueError(
                f"MODEL.SSB.BOX_SALIENCY_MASS must be in [0, 1), got {box_saliency_mass}")
        self.box_saliency_weight = float(box_saliency_weight)
        self.box_saliency_mass = float(box_saliency_mass)
        # Registered once; they record nothing outside a training forward of this class.
        for block in learned_ssb_blocks(self.backbone).values():
            block.sampler.register_forward_hook(_keep_grid)

    @classmethod
    def from_config(cls, cfg):
        ret = super().from_config(cfg)
        ret["box_saliency_weight"] = cfg.MODEL.SSB.BOX_SALIENCY_WEIGHT
        ret["box_saliency_mass"] = cfg.MODEL.SSB.BOX_SALIENCY_MASS
        return ret

    def forward(self, batched_inputs: List[Dict[str, torch.Tensor]]):
        if not self.training or self.box_saliency_weight == 0:
            return super().forward(batched_inputs)
        if not learned_ssb_blocks(self.backbone):
            raise ValueError(
                "SaliencySupervisedRCNN: the backbone has no learned saliency to supervise "
                "(MODEL.SSB.ENABLED False, or MODEL.SSB.UNIFORM True); use GeneralizedRCNN")
        if any("instances" not in x for x in batched_inputs):
            raise ValueError("SaliencySupervisedRCNN: training inputs need their 'instances'")
        token = _GRIDS.set([])
        try:
            losses = super().forward(batched_inputs)
            grids = _GRIDS.get()
        finally:
            _GRIDS.reset(token)
        instances = [x["instances"] for x in batched_inputs]
        losses["loss_saliency"] = self.box_saliency_weight * self.saliency_loss(grids, instances)
        return losses

    def saliency_loss(self, grids, instances) -> torch.Tensor:
        """Mean over the sampled blocks of :func:`log_density_loss` (rows plus columns) between
        each block's map and the box target of its grid.

        Args:
            grids: ``(sampler, grid)`` pairs of one forward.
            instances: per image, Detectron2 ``Instances`` with ``gt_boxes`` in the pixels of
                its ``image_size``.
        """
        boxes = [i.gt_boxes.tensor for i in instances]
        sizes = [i.image_size for i in instances]
        targets = {}
        terms = []
        for sampler, grid in grids:
            key = (sampler.grid_size, sampler.padding, sampler.sigma)
            if key not in targets:
                cells, padding, sigma = key
                targets[key] = box_target_knots(boxes, sizes, cells, self.box_saliency_mass,
                                                padding, sigma)
            ty, tx = targets[key]
            terms.append(log_density_loss(grid.knots_y, ty.to(grid.knots_y.device))
                         + log_density_loss(grid.knots_x, tx.to(grid.knots_x.device)))
        return torch.stack(terms).mean().float()
