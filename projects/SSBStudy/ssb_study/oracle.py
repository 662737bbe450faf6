"""A detector that samples where the objects are: the ceiling of any learned saliency.

:class:`OracleSamplingRCNN` is Detectron2's ``GeneralizedRCNN`` whose SSB blocks sample with
the saliency of the images' ground-truth boxes instead of a predicted one, in training and at
test: each block's grid is built (``SaliencySampler.grid_from_saliency``) from
:func:`~ssb_study.box_saliency.box_saliency_target`, a share
``MODEL.SSB_STUDY.BOX_SALIENCY_MASS`` on the boxes and the rest uniform. It asks the study's
question from above: if the saliency knew exactly where the objects are, would sampling them
more densely beat uniform sampling? A learned saliency can at best approach it.

It needs the boxes at test, so it is an analysis model, not a detector to deploy. An input's
``instances`` give them; without, its image's annotations are looked up by ``file_name`` in
the dataset catalog of ``DATASETS.TEST`` and scaled to the input's size. With
``MODEL.SSB.UNIFORM True`` it has exactly the uniform network's parameters (no saliency
convs), so that the two differ only in where they sample.
"""
import contextvars
import functools
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from detectron2.config import configurable
from detectron2.data import DatasetCatalog
from detectron2.modeling import META_ARCH_REGISTRY, GeneralizedRCNN
from detectron2.structures import BoxMode

from ssb_det.layers.tensor_ops import to_grid_dtype
from ssb_det.modeling.blocks import ssb_blocks

from .box_saliency import box_saliency_target

__all__ = ["OracleSamplingRCNN", "catalog_boxes"]

# The boxes of the current forward's images, or None outside one: (boxes, image sizes, mass,
# {grid size: target}). A context variable, not module state: each thread (and each
# forward) sees only its own.
_BOXES: contextvars.ContextVar[Optional[tuple]] = contextvars.ContextVar("ssb_oracle",
                                                                         default=None)


def _oracle_grid(sampler, inputs, grid):
    state = _BOXES.get()
    if state is None:  # outside an oracle forward: the block's own sampling
        return None
    boxes, sizes, mass, targets = state
    features, valid_size = (tuple(inputs) + (None,))[:2]
    if features.shape[0] != len(boxes):
        raise ValueError(f"OracleSamplingRCNN: a sampler got {features.shape[0]} images, "
                         f"the forward has boxes for {len(boxes)}")
    g = sampler.grid_size
    if g not in targets:
        targets[g] = to_grid_dtype(box_saliency_target(boxes, sizes, g, mass)
                                   .to(features.device))
    return sampler.grid_from_saliency(targets[g], tuple(features.shape[-2:]), valid_size)


@functools.lru_cache(maxsize=8)
def catalog_boxes(dataset_names: Tuple[str, ...]) -> Dict[str, tuple]:
    """``{file_name: ((K, 4) XYXY_ABS boxes, (height, width))}`` of the registered datasets'
    images (their annotations, in the pixels of the image on disk)."""
    found = {}
    for name in dataset_names:
        for record in DatasetCatalog.get(name):
            b = [BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS)
                 for a in record.get("annotations", ())]
            boxes = torch.tensor(b, dtype=torch.float64).reshape(-1, 4)
            found[record["file_name"]] = (boxes, (record["height"], record["width"]))
    return found


@META_ARCH_REGISTRY.register()
class OracleSamplingRCNN(GeneralizedRCNN):
    """``GeneralizedRCNN`` whose SSB blocks sample the ground-truth boxes (see the module
    docstring).

    Args:
        oracle_mass (float): share of the sampling saliency on the boxes, in ``[0, 1)``.
        test_datasets (sequence[str]): where boxes are looked up for inputs without
            ``instances``.
        other arguments: as ``GeneralizedRCNN``.
    """

    @configurable
    def __init__(self, *, oracle_mass: float, test_datasets: Sequence[str] = (), **kwargs):
        super().__init__(**kwargs)
        if not 0.0 <= oracle_mass < 1.0:
            raise ValueError(
                f"MODEL.SSB_STUDY.BOX_SALIENCY_MASS must be in [0, 1), got {oracle_mass}")
        self.oracle_mass = float(oracle_mass)
        self.test_datasets = tuple(test_datasets)
        samplers = [block.sampler for block in ssb_blocks(self.backbone).values()]
        if not samplers:
            raise ValueError("OracleSamplingRCNN: the backbone has no SSB block to sample with "
                             "(MODEL.SSB.ENABLED False, or every MODEL.SSB.RATIOS is 1)")
        # Hooks registered once; they change nothing outside a forward of this class.
        for sampler in samplers:
            sampler.register_forward_hook(_oracle_grid)

    @classmethod
    def from_config(cls, cfg):
        ret = super().from_config(cfg)
        ret["oracle_mass"] = cfg.MODEL.SSB_STUDY.BOX_SALIENCY_MASS
        ret["test_datasets"] = tuple(cfg.DATASETS.TEST)
        return ret

    def forward(self, batched_inputs: List[Dict[str, torch.Tensor]]):
        boxes, sizes = zip(*(self._boxes(x) for x in batched_inputs))
        token = _BOXES.set((list(boxes), list(sizes), self.oracle_mass, {}))
        try:
            return super().forward(batched_inputs)
        finally:
            _BOXES.reset(token)

    def _boxes(self, x):
        """``((K, 4) boxes, (height, width))`` of an input, in the pixels of its ``image``."""
        h, w = (int(v) for v in x["image"].shape[-2:])
        if "instances" in x:
            return x["instances"].gt_boxes.tensor.detach().cpu(), (h, w)
        known = catalog_boxes(self.test_datasets)
        if x.get("file_name") not in known:
            raise ValueError(
                "OracleSamplingRCNN needs each input's ground-truth boxes: its 'instances', or "
                f"an image of DATASETS.TEST {self.test_datasets}; got {x.get('file_name')!r}")
        boxes, (height, width) = known[x["file_name"]]
        scale = boxes.new_tensor([w / width, h / height, w / width, h / height])
        return boxes * scale, (h, w)
