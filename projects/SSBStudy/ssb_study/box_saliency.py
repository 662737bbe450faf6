"""A saliency to aim at from ground-truth boxes: the target of a box-supervised saliency.

:func:`box_saliency_target` puts a share ``mass`` of a ``G x G`` saliency on the boxes and
spreads the rest uniformly; :func:`saliency_kl` measures how far a predicted saliency is
from it.
"""
from typing import Sequence, Tuple

import torch

__all__ = ["box_coverage", "box_saliency_target", "saliency_kl"]


def _interval_overlap(lo: torch.Tensor, hi: torch.Tensor, cells: int) -> torch.Tensor:
    """``(K, cells)`` fraction of each of ``cells`` equal cells of ``[0, 1]`` that each of
    ``K`` intervals ``[lo, hi]`` (normalised) covers."""
    edges = torch.linspace(0.0, 1.0, cells + 1, dtype=lo.dtype, device=lo.device)
    overlap = torch.minimum(edges[1:], hi[:, None]) - torch.maximum(edges[:-1], lo[:, None])
    return overlap.clamp(min=0.0) * cells


def box_coverage(boxes: torch.Tensor, image_size: Tuple[int, int], cells: int) -> torch.Tensor:
    """``(cells, cells)`` share of each cell of an image's ``cells x cells`` grid that a box
    covers: the largest over the boxes (so overlapping boxes are not counted twice).

    Args:
        boxes (Tensor): ``(K, 4)`` boxes ``(x0, y0, x1, y1)`` in pixels of the image; ``K``
            may be 0. Parts outside the image are ignored.
        image_size (tuple[int, int]): ``(height, width)`` of the image.
        cells (int): grid side ``G``.
    """
    if boxes.dim() != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes must have shape (K, 4), got {tuple(boxes.shape)}")
    h, w = (float(v) for v in image_size)
    if not (h > 0 and w > 0):
        raise ValueError(f"image_size must be positive, got {tuple(image_size)}")
    b = boxes.to(torch.float64)
    if b.shape[0] == 0:
        return b.new_zeros(cells, cells)
    rows = _interval_overlap(b[:, 1] / h, b[:, 3] / h, cells)
    cols = _interval_overlap(b[:, 0] / w, b[:, 2] / w, cells)
    return (rows[:, :, None] * cols[:, None, :]).amax(dim=0)


def box_saliency_target(boxes: Sequence[torch.Tensor], image_sizes: Sequence[Tuple[int, int]],
                        cells: int, mass: float) -> torch.Tensor:
    """``(N, cells, cells)`` saliency distributions (each sums to 1, float64): a share ``mass``
    spread over the boxes in proportion to :func:`box_coverage`, the rest uniform over the
    grid. An image without boxes gets the uniform saliency.

    Args:
        boxes: per image, ``(K_i, 4)`` boxes in its pixels.
        image_sizes: per image, ``(height, width)``.
        cells (int): grid side ``G`` (the sampler's ``grid_size``).
        mass (float): share of the saliency on the boxes, in ``[0, 1)`` (1 would leave
            the rest of the image no saliency at all).
    """
    if not 0.0 <= mass < 1.0:
        raise ValueError(f"the saliency mass on the boxes must be in [0, 1), got {mass}")
    if len(boxes) != len(image_sizes):
        raise ValueError(f"{len(boxes)} box sets for {len(image_sizes)} images")
    targets = []
    for b, size in zip(boxes, image_sizes):
        cover = box_coverage(b, size, cells)
        total = cover.sum()
        if total > 0:
            targets.append(cover / total * mass + (1.0 - mass) / cells ** 2)
        else:
            targets.append(torch.full_like(cover, 1.0 / cells ** 2))
    return torch.stack(targets)


def saliency_kl(target: torch.Tensor, saliency: torch.Tensor) -> torch.Tensor:
    """Mean over images of ``KL(target || saliency) = sum t log(t / s)`` of ``(N, G, G)``
    distributions: 0 only where they agree; its gradient with respect to the logits a
    softmax saliency is made from is ``s - t``, cell by cell."""
    if target.shape != saliency.shape:
        raise ValueError(
            f"target {tuple(target.shape)} and saliency {tuple(saliency.shape)} differ")
    t = target.to(saliency.dtype)
    tiny = torch.finfo(saliency.dtype).tiny
    return (t * (torch.log(t.clamp(min=tiny)) - torch.log(saliency.clamp(min=tiny)))
            ).flatten(1).sum(dim=1).mean()
