"""A detector whose SSB saliency is taught where the objects are.

:class:`SaliencySupervisedRCNN` is Detectron2's ``GeneralizedRCNN`` plus one training loss,
``loss_saliency``: each learned SSB block's saliency distribution is pulled toward one with a
share ``MODEL.SSB_STUDY.BOX_SALIENCY_MASS`` on the ground-truth boxes and the rest uniform
(:mod:`ssb_study.box_saliency`; KL divergence). Inference is
``GeneralizedRCNN``'s, unchanged: the saliency is still predicted from the features, and no
box is needed. Select it with ``MODEL.META_ARCHITECTURE "SaliencySupervisedRCNN"``.

``MODEL.SSB_STUDY.BOX_SALIENCY_HEAD "auxiliary"`` is its control: the same loss on a separate
saliency head per block that an SSB network samples, reading the same features (the block's
``relu(conv1(x))``) and never used for sampling. The features then get the same auxiliary
signal while the sampling is left alone (uniform with ``MODEL.SSB.UNIFORM True``), which
prices the supervision apart from where the samples go; with ``MODEL.SSB.ENABLED False`` the
plain host gets the same heads at the same blocks.
"""
import contextvars
import functools
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, GeneralizedRCNN
from torch import nn

from ssb_det.layers import SaliencySampler, as_grid_tensor
from ssb_det.modeling.backbone import region_sizes
from ssb_det.modeling.blocks import learned_ssb_blocks

from .box_saliency import box_saliency_target, saliency_kl

__all__ = ["SaliencySupervisedRCNN", "BOX_SALIENCY_HEADS", "sampled_positions"]

# Whose saliency the loss supervises: each block's own sampler, or a head beside it.
BOX_SALIENCY_HEADS = ("sampler", "auxiliary")

# What the current training forward records, or None outside one: the list of
# (module whose saliency is supervised, its input features, valid sizes) and the images'
# sizes (auxiliary heads only). A context variable, not module state: each thread (and each
# forward) sees only its own.
_RECORD: contextvars.ContextVar[Optional[tuple]] = contextvars.ContextVar("ssb_record",
                                                                          default=None)


def _keep_sampler_input(sampler, inputs):
    record = _RECORD.get()
    if record is not None:
        features, valid_size = (tuple(inputs) + (None,))[:2]
        record[0].append((sampler, features, valid_size))


def _keep_block_features(head, stride, conv1, inputs, output):
    record = _RECORD.get()
    if record is not None:
        calls, image_sizes = record
        # relu(conv1(x)), what the block's 3x3 (or sampler) reads; not relu_: the block
        # applies that to ``output`` itself.
        calls.append((head, F.relu(output), region_sizes(image_sizes, stride)))


def sampled_positions(backbone: nn.Module, ratios: Sequence[float]) -> Dict[str, tuple]:
    """``{name: (block, stride, ratio)}`` of the blocks an SSB network samples: the stride-1
    blocks of each stage whose ratio (``MODEL.SSB.RATIOS``, res2..res5) is below 1, in an SSB
    network or in its plain host; ``stride`` is the block's, relative to the image.

    Args:
        backbone: a Detectron2 ``ResNet`` (or an FPN around one, as ``bottom_up``).
        ratios: sampling ratio per stage, res2..res5.
    """
    resnet = getattr(backbone, "bottom_up", backbone)
    positions = {}
    for name, stage in zip(getattr(resnet, "stage_names", ()), getattr(resnet, "stages", ())):
        ratio = ratios[int(name[3:]) - 2]
        if ratio < 1.0:
            stride = resnet._out_feature_strides[name]
            positions.update({f"{name}.{i}": (b, stride, ratio) for i, b in enumerate(stage)
                              if b.stride == 1})
    return positions


@META_ARCH_REGISTRY.register()
class SaliencySupervisedRCNN(GeneralizedRCNN):
    """``GeneralizedRCNN`` with a box-supervised saliency (see the module docstring).

    Args:
        box_saliency_weight (float): weight of ``loss_saliency`` (>= 0; 0: the plain detector).
        box_saliency_mass (float): share of the target saliency on the boxes, in ``[0, 1)``.
        box_saliency_detach (bool): the loss trains the saliency convs only, not the features
            they read (the backbone then learns from the detection losses alone).
        box_saliency_head (str): ``"sampler"``: supervise the saliency each learned SSB
            block samples with; ``"auxiliary"``: supervise a separate head (``aux_saliency``)
            per block of :func:`sampled_positions`, whose saliency samples nothing.
        sampling_ratios (sequence[float]): ``MODEL.SSB.RATIOS``, where the auxiliary heads go.
        aux_head (dict): ``SaliencySampler`` keywords of the auxiliary heads (grid size,
            padding, sigma), as the SSB samplers'.
        other arguments: as ``GeneralizedRCNN``.
    """

    @configurable
    def __init__(self, *, box_saliency_weight: float, box_saliency_mass: float,
                 box_saliency_detach: bool = False, box_saliency_head: str = "sampler",
                 sampling_ratios: Sequence[float] = (0.5, 0.5, 0.5, 1.0),
                 aux_head: Optional[dict] = None, **kwargs):
        super().__init__(**kwargs)
        if not box_saliency_weight >= 0:
            raise ValueError(
                f"MODEL.SSB_STUDY.BOX_SALIENCY_WEIGHT must be >= 0, got {box_saliency_weight}")
        if not 0.0 <= box_saliency_mass < 1.0:
            raise ValueError(
                f"MODEL.SSB_STUDY.BOX_SALIENCY_MASS must be in [0, 1), got {box_saliency_mass}")
        self.box_saliency_weight = float(box_saliency_weight)
        self.box_saliency_mass = float(box_saliency_mass)
        self.box_saliency_detach = bool(box_saliency_detach)
        if box_saliency_head not in BOX_SALIENCY_HEADS:
            raise ValueError("MODEL.SSB_STUDY.BOX_SALIENCY_HEAD must be one of "
                             f"{BOX_SALIENCY_HEADS}, got {box_saliency_head!r}")
        self.box_saliency_head = box_saliency_head
        # Hooks registered once; they record nothing outside a training forward of this class.
        if box_saliency_head == "auxiliary":
            positions = sampled_positions(self.backbone, sampling_ratios)
            if not positions:
                raise ValueError(
                    'MODEL.SSB_STUDY.BOX_SALIENCY_HEAD "auxiliary" puts its heads on the blocks '
                    "an SSB network samples (stride 1, MODEL.SSB.RATIOS < 1), and the backbone "
                    "has none")
            self.aux_saliency = nn.ModuleDict()
            for name, (block, stride, ratio) in positions.items():
                head = SaliencySampler(block.conv1.out_channels, ratio, **(aux_head or {}))
                self.aux_saliency[name.replace(".", "_")] = head
                block.conv1.register_forward_hook(
                    functools.partial(_keep_block_features, head, stride))
        else:
            for block in learned_ssb_blocks(self.backbone).values():
                block.sampler.register_forward_pre_hook(_keep_sampler_input)

    @classmethod
    def from_config(cls, cfg):
        ret = super().from_config(cfg)
        ret["box_saliency_weight"] = cfg.MODEL.SSB_STUDY.BOX_SALIENCY_WEIGHT
        ret["box_saliency_mass"] = cfg.MODEL.SSB_STUDY.BOX_SALIENCY_MASS
        ret["box_saliency_detach"] = cfg.MODEL.SSB_STUDY.BOX_SALIENCY_DETACH
        ret["box_saliency_head"] = cfg.MODEL.SSB_STUDY.BOX_SALIENCY_HEAD
        ret["sampling_ratios"] = tuple(cfg.MODEL.SSB.RATIOS)
        s = cfg.MODEL.SSB
        # No SALIENCY_BOUND: it keeps a sampling map from collapsing, and these sample nothing.
        ret["aux_head"] = dict(grid_size=s.GRID_SIZE, padding=s.GRID_PADDING,
                               sigma=s.KERNEL_SIGMA)
        return ret

    def forward(self, batched_inputs: List[Dict[str, torch.Tensor]]):
        if not self.training or self.box_saliency_weight == 0:
            return super().forward(batched_inputs)
        if any("instances" not in x for x in batched_inputs):
            raise ValueError("SaliencySupervisedRCNN: training inputs need their 'instances'")
        calls = []
        image_sizes = None  # only the auxiliary heads need them; samplers get their regions
        if self.box_saliency_head == "auxiliary":
            image_sizes = as_grid_tensor([x["image"].shape[-2:] for x in batched_inputs],
                                         self.device)
        token = _RECORD.set((calls, image_sizes))
        try:
            losses = super().forward(batched_inputs)
        finally:
            _RECORD.reset(token)
        if not calls:  # no sampler was called: nothing learns a saliency
            raise ValueError(
                "SaliencySupervisedRCNN: the backbone has no learned saliency to supervise "
                "(MODEL.SSB.ENABLED False, or MODEL.SSB.UNIFORM True); use GeneralizedRCNN, "
                'or MODEL.SSB_STUDY.BOX_SALIENCY_HEAD "auxiliary" with uniform sampling')
        instances = [x["instances"] for x in batched_inputs]
        losses["loss_saliency"] = self.box_saliency_weight * self.saliency_loss(calls, instances)
        return losses

    def saliency_loss(self, calls, instances) -> torch.Tensor:
        """Mean over the sampled blocks of :func:`saliency_kl` between the box target and the
        saliency each block predicted (recomputed from what its sampler was called with: a
        1-channel 1x1 conv and a pooling, small next to the block).

        Args:
            calls: ``(head, features, valid_size)`` recorded in one forward, with ``head``
                the module whose saliency is supervised (a sampler, or an auxiliary head).
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
