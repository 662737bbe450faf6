"""How far a separable sampling map is from uniform: two numbers per image.

A separable map sends the ``G`` equal cells of the sampled axis to input intervals of widths
``w_1..w_G`` (differences of its ``G + 1`` knots, summing to 1); each interval receives
``1/G`` of the samples, so the local sampling density there is ``1 / (G w_i)`` times the
uniform one. Two summaries, both exactly 0 / 1 for uniform sampling:

- ``kl``: KL divergence, from uniform, of where the samples fall in the input:
  ``sum_i (1/G) log((1/G) / w_i)``; rows and columns add.
- ``density_ratio``: largest over smallest local density, ``max w / min w``; rows and
  columns multiply (the 2-D density is the product of the two 1-D ones).
"""
import math
from typing import Tuple

import torch

__all__ = ["knot_statistics", "separable_statistics", "density_at"]


def knot_statistics(knots: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(kl, density_ratio)``, each ``(N,)``, of the 1-D maps given by ``(N, G + 1)`` knots."""
    widths = knots.diff(dim=1)
    widths = widths / widths.sum(dim=1, keepdim=True)
    g = widths.shape[1]
    # >= 0 by Jensen's inequality; clamped so that rounding of a uniform map (exactly 0)
    # cannot report a negative divergence.
    kl = (-math.log(g) - torch.log(widths).mean(dim=1)).clamp(min=0.0)
    return kl, widths.amax(dim=1) / widths.amin(dim=1)


def separable_statistics(knots_y: torch.Tensor, knots_x: torch.Tensor
                         ) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(kl, density_ratio)``, each ``(N,)``, of the 2-D map ``(phi_y, phi_x)``."""
    kl_y, ratio_y = knot_statistics(knots_y)
    kl_x, ratio_x = knot_statistics(knots_x)
    return kl_y + kl_x, ratio_y * ratio_x


def density_at(knots: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Local sampling density of a 1-D map relative to uniform, ``1 / (G w_i)``, at input
    ``positions`` in ``[0, 1]``: ``w_i`` is the width of the knot interval containing each.

    Args:
        knots (Tensor): ``(G + 1,)`` knots of one image's map.
        positions (Tensor): ``(K,)`` normalised input positions.
    """
    g = knots.numel() - 1
    i = torch.searchsorted(knots, positions.to(knots.dtype).clamp(0.0, 1.0), right=True) - 1
    i = i.clamp(0, g - 1)
    return 1.0 / (g * (knots[i + 1] - knots[i]))
