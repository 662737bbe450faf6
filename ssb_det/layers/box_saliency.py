"""A sampling map to aim at from ground-truth boxes: the target of a box-supervised saliency.

The box target puts a share ``mass`` of a ``G x G`` saliency on the boxes and spreads the rest
uniformly; :func:`box_target_knots` turns its row and column marginals into the separable map
the sampler would build from it (the same Recasens formula), and :func:`log_density_loss`
measures how far a predicted map's local sampling density is from it.
"""
from typing import Sequence, Tuple

import torch

from .sampling_maps import recasens_knots_1d
from .tensor_ops import to_grid_dtype

__all__ = ["box_coverage", "box_marginals", "box_target_knots", "log_density_loss"]


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


def box_marginals(boxes: Sequence[torch.Tensor], image_sizes: Sequence[Tuple[int, int]],
                  cells: int, mass: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """Row and column marginals, each ``(N, cells)`` summing to 1, of the box target: a share
    ``mass`` of the saliency spread over the boxes in proportion to :func:`box_coverage`, the
    rest uniform over the grid. An image without boxes gets the uniform saliency.

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
    rows, cols = [], []
    for b, size in zip(boxes, image_sizes):
        cover = box_coverage(b, size, cells)
        total = cover.sum()
        on_boxes = cover / total * mass if total > 0 else cover
        saliency = on_boxes + (1.0 - (mass if total > 0 else 0.0)) / cells ** 2
        rows.append(saliency.sum(dim=1))
        cols.append(saliency.sum(dim=0))
    return torch.stack(rows), torch.stack(cols)


def box_target_knots(boxes, image_sizes, cells: int, mass: float, padding: int, sigma: float
                     ) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(knots_y, knots_x)``, each ``(N, cells + 1)`` in grid precision: the separable map a
    sampler with this grid (``cells``, ``padding``, ``sigma``) builds from the box target of
    :func:`box_marginals`."""
    rows, cols = box_marginals(boxes, image_sizes, cells, mass)
    return (recasens_knots_1d(to_grid_dtype(rows), padding, sigma),
            recasens_knots_1d(to_grid_dtype(cols), padding, sigma))


def log_density_loss(knots: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of the log local sampling densities of two 1-D maps given by
    their ``(N, G + 1)`` knots: ``mean_i (log w_i - log w*_i)^2`` over the knot intervals
    ``w`` (a density is ``1 / (G w)``). 0 only for the same map; a map twice as dense as the
    target everywhere it differs costs ``log(2)^2`` there."""
    if knots.shape != target.shape:
        raise ValueError(f"knots {tuple(knots.shape)} and target {tuple(target.shape)} differ")
    return (torch.log(knots.diff(dim=1)) - torch.log(target.to(knots.dtype).diff(dim=1))
            ).square().mean()
