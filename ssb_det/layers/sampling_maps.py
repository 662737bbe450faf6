"""Sampling maps as pure functions of a saliency (no modules, no feature maps).

Coordinates. Every map here is expressed in *normalised image coordinates*: ``t`` in
``[0, 1]`` spans the whole extent of an axis, and pixel ``i`` of an axis of ``n`` pixels
has its centre at ``(i + 0.5) / n`` (PyTorch's ``align_corners=False`` convention). A
sampling map ``phi: [0, 1] -> [0, 1]`` says where in the input the output position ``t``
reads. The identity map reproduces ``F.interpolate(mode="bilinear", align_corners=False)``
exactly, which is what makes "uniform sampling" an honest ablation of the same code.

The 2-D saliency is reduced to its row and column marginals and the 1-D Recasens formula
(Recasens et al., "Learning to Zoom", 2018) is evaluated on each. ``phi`` is stored as
``G + 1`` knots at ``t = k / G`` and is piecewise linear between them, strictly increasing,
with ``phi(0) = 0`` and ``phi(1) = 1``; so sampling is two 1-D interpolations and the
inverse is exact (invert the piecewise-linear map with ``searchsorted``).

Valid regions. In a padded batch (Detectron2 pads every image to the largest one) each
image may cover only the top-left ``v_y x v_x`` pixels of the map. Given those sizes, the
saliency of an image is pooled over its own region (:func:`valid_pooling_matrices`), its
map ``phi`` spans that region, the first ``round(r * v)`` sampled rows/columns cover it, and
the rest spread uniformly over the padding (:func:`two_segment_positions`): an image is
sampled exactly as it would be alone, whatever its batch-mates.

Maps are computed in :func:`~ssb_det.layers.tensor_ops.grid_dtype` (float64; float32 on
MPS), whatever the features' dtype, so reduced precision and extreme saliency logits cannot
make them leave the image or turn non-finite.
"""
import functools
import math

import torch

from .tensor_ops import may_cache, to_grid_dtype

__all__ = [
    "SALIENCY_FLOOR",
    "sampled_size",
    "identity_knots",
    "recasens_knots_1d",
    "separable_knots",
    "recasens_operator",
    "interp_knots",
    "invert_knots",
    "valid_pooling_matrices",
    "two_segment_positions",
]

# Share of a uniform distribution mixed into the saliency marginals. It keeps every
# Recasens denominator strictly positive (softmax of logits like +-1e4 underflows to exact
# zeros) and so keeps phi strictly increasing and its inverse finite. A uniform saliency is
# unchanged by the mix, so the identity property is exact.
SALIENCY_FLOOR = 1e-3


def sampled_size(size: int, ratio: float) -> int:
    """Length of a sampled axis: ``round(ratio * size)`` (half up), at least 1.

    ``size`` may be a symbolic size (``torch.SymInt``, under ``torch.export`` with dynamic
    shapes): ``torch.sym_int`` and ``torch.sym_max`` then record the same float maths in the
    graph instead of fixing the result (on plain numbers they are ``int`` and ``max``, and
    ``sym_int``'s truncation is the floor here, the value being positive; ``math.floor``
    would not serialize in a saved program). Under ``torch.jit.trace`` it is a 0-dim
    integer tensor (a traced size), and the result is one too, computed with tensor ops in
    float64 so that the trace records it.
    """
    if isinstance(size, torch.Tensor):
        return torch.floor(size.double() * ratio + 0.5).clamp(min=1).long()
    return torch.sym_max(1, torch.sym_int(ratio * size + 0.5))


def _gaussian_kernel(padding: int, sigma: float, device, dtype) -> torch.Tensor:
    d = torch.arange(-padding, padding + 1, device=device, dtype=dtype)
    return torch.exp(-0.5 * (d / sigma) ** 2)


def _centres_to_corners(u: torch.Tensor, dim: int) -> torch.Tensor:
    """Linear inter/extrapolation of values at cell centres ``(k+.5)/G`` to corners ``k/G``.

    Exact for a linear map, so an identity grid stays the identity.
    """
    g = u.shape[dim]
    if g == 1:
        first = u - 0.5  # a single cell: its corners lie half a cell either side
        return torch.cat([first, first + 1.0], dim=dim)
    head = u.narrow(dim, 0, 1) * 1.5 - u.narrow(dim, 1, 1) * 0.5
    tail = u.narrow(dim, g - 1, 1) * 1.5 - u.narrow(dim, g - 2, 1) * 0.5
    mid = (u.narrow(dim, 0, g - 1) + u.narrow(dim, 1, g - 1)) * 0.5
    return torch.cat([head, mid, tail], dim=dim)


def identity_knots(batch: int, grid_size: int, device=None, dtype=torch.float64) -> torch.Tensor:
    """Knots of the identity map: ``(batch, grid_size + 1)`` values ``k / grid_size``."""
    k = torch.arange(grid_size + 1, device=device, dtype=dtype) / grid_size
    return k.expand(batch, grid_size + 1).contiguous()


def _recasens_matrices(g: int, padding: int, sigma: float, device, dtype) -> torch.Tensor:
    """``(G, 2, G)``: the matrices of the two kernel sums of the 1-D Recasens formula.

    With the marginal replicate-padded by ``P`` cells, ``den[p] = sum_t k[t] m_pad[p + t]``
    and ``num[p] = sum_t k[t] d[t] m_pad[p + t]`` (``t`` over the ``2P + 1`` kernel taps,
    ``d[t] = (t - P) / G`` the offset of the tap). A padded cell is a copy of the nearest
    edge cell, so both are ``m @ A`` with ``A[q, p]`` the summed weights of the taps of output
    ``p`` that read cell ``q``: ``[:, 0]`` for ``den``, ``[:, 1]`` for ``num``. They depend on
    the configuration only.
    """
    t = torch.arange(-padding, padding + 1, device=device, dtype=dtype)
    k = torch.exp((t / sigma).square() * -0.5)
    taps = torch.stack([k, k * t / g])  # (2, T): den and num weights of each tap
    cells = torch.arange(g, device=device, dtype=dtype)
    src = (cells[:, None] + t).clamp(0, g - 1)  # (p, t) -> q read by tap t of output p
    reads = (src[:, :, None] == cells).to(dtype)  # (p, t, q)
    return torch.einsum("dt,ptq->qdp", taps, reads)


def _corner_matrix(g: int, device, dtype) -> torch.Tensor:
    """``(G, G + 1)``: :func:`_centres_to_corners` as a matrix (it is linear)."""
    return _centres_to_corners(torch.eye(g, device=device, dtype=dtype), dim=1)


def _build_recasens_operator(g: int, padding: int, sigma: float, device, dtype):
    """The whole map maths from saliency to knots, folded into two affine maps.

    Every step but two divisions is linear: the marginals, the floor mix, the kernel sums
    (:func:`_recasens_matrices`), the centres-to-corners extrapolation and subtracting the
    first corner. So a saliency ``(N, G * G)`` gives its kernel sums, both axes, in one
    ``addmm`` (``sums = s @ W + b``, columns ``(den | num, axis, cell)``), and the offsets
    ``num / den`` give the corners minus the first corner and their differences in another
    (``e = offset @ C + c``, columns ``G + 1`` corners then ``G`` steps): the knots and steps
    are ``e`` over its last corner. Returns ``(W, b, C, c)`` and the 1-D ``(W1, b1)``
    (columns ``(den | num, cell)``) that :func:`recasens_knots_1d` applies to a marginal.
    Built in a few dozen small ops: where it cannot be cached (fake tensors, tracing) it is
    built once per forward.
    """
    a = _recasens_matrices(g, padding, sigma, device, dtype)  # (G, 2, G)
    a1 = a.reshape(g, 2 * g) * (1.0 - SALIENCY_FLOOR)  # the floor mix folded in
    b1 = a.sum(0).reshape(2 * g) * (SALIENCY_FLOOR / g)
    # cell (p, q) of the saliency adds to row p's marginal (axis y) and column q's (axis x)
    w = torch.stack([a1.view(g, 1, 2, g).expand(g, g, 2, g),
                     a1.view(1, g, 2, g).expand(g, g, 2, g)], 3)  # (p, q, den|num, axis, i)
    b = b1.view(2, 1, g).expand(2, 2, g)
    corners = _corner_matrix(g, device, dtype)
    identity = torch.arange(g + 1, device=device, dtype=dtype) / g  # corners of the centres
    c_mat = torch.cat([corners - corners[:, :1], corners.diff(dim=1)], 1)
    c_vec = torch.cat([identity - identity[0], identity.diff()])
    return w.reshape(g * g, 4 * g), b.reshape(4 * g), c_mat, c_vec, a1, b1


def recasens_operator(g: int, padding: int, sigma: float, device, dtype):
    """:func:`_build_recasens_operator`, cached where :func:`~.tensor_ops.may_cache` allows
    (never with fake, traced or compiled tensors: a cached fake tensor fails or poisons every
    later call, and a trace must record the ops). Inference-mode tensors are cached apart:
    autograd cannot save them for a later backward."""
    if not may_cache():
        return _build_recasens_operator(g, padding, sigma, device, dtype)
    return _cached_recasens_operator(g, padding, sigma, device, dtype,
                                     torch.is_inference_mode_enabled())


@functools.lru_cache(maxsize=64)
def _cached_recasens_operator(g, padding, sigma, device, dtype, inference_mode):
    return _build_recasens_operator(g, padding, sigma, device, dtype)


def _knots_of_offsets(offset: torch.Tensor, c_mat: torch.Tensor, c_vec: torch.Tensor):
    """``(knots, steps)`` of ``(M, G)`` Recasens offsets (see :func:`_build_recasens_operator`)."""
    g = offset.shape[-1]
    e = torch.addmm(c_vec, offset, c_mat)
    # Pin the ends: an affine rescale keeps the map strictly increasing and inside the image
    # (Recasens clamps instead, which makes flat, non-invertible stretches at the borders).
    # e's first corner is exactly 0, so its last is the span.
    e = e / e[:, g:g + 1]
    return e.split([g + 1, g], 1)  # (its backward is one cat)


def separable_knots(saliency: torch.Tensor, padding: int, sigma: float, operator=None):
    """Knots and steps of both axes' Recasens maps of a 2-D saliency, in four small ops.

    Args:
        saliency (Tensor): ``(N, G, G)`` (or ``(N, G * G)``) distribution, grid dtype.
        padding (int), sigma (float): see :func:`recasens_knots_1d`.
        operator (tuple or None): :func:`recasens_operator` of these, if the caller has it.

    Returns:
        tuple[Tensor, Tensor]: ``(N, 2, G + 1)`` knots (rows ``y``, ``x``) as
        :func:`recasens_knots_1d` of the row and column marginals, and their ``(N, 2, G)``
        differences.
    """
    n = saliency.shape[0]
    s = saliency.reshape(n, -1)
    g = math.isqrt(int(s.shape[1]))  # G is the sampler's constant
    if operator is None:
        operator = recasens_operator(g, int(padding), float(sigma), s.device, s.dtype)
    w, b, c_mat, c_vec, _, _ = operator
    sums = torch.addmm(b, s, w).view(n, 2, 2, g)  # (den | num, axis, cell)
    # u(p) = sum_q S(q) k(p-q) X(q) / sum_q S(q) k(p-q), written as the cell centre X(p) plus
    # the weighted mean offset X(q) - X(p): the same formula, but a uniform S gives an
    # offset that cancels to ~1e-9 instead of a ratio of sums rounded to ~1e-7.
    den, num = sums.unbind(1)
    offset = num / den
    knots, steps = _knots_of_offsets(offset.view(2 * n, g), c_mat, c_vec)
    return knots.view(n, 2, g + 1), steps.view(n, 2, g)


def recasens_knots_1d(marginal: torch.Tensor, padding: int, sigma: float) -> torch.Tensor:
    """1-D Recasens sampling map from a saliency marginal.

    Args:
        marginal (Tensor): ``(N, G)`` non-negative saliency per cell, summing to 1.
        padding (int): replicate padding ``P`` in cells; the kernel spans ``2P + 1`` cells.
        sigma (float): standard deviation of the Gaussian kernel, in cells.

    Returns:
        Tensor: ``(N, G + 1)`` knots (in ``grid_dtype``) of ``phi`` at ``t = k / G``: strictly
        increasing, from exactly 0 to exactly 1. A constant marginal gives the identity.
    """
    m = to_grid_dtype(marginal)
    # int(g): under tracing a shape entry is a traced value; G is the sampler's constant, so
    # the matrices are built from the number (a cache key in eager, constants in a trace).
    g = int(m.shape[1])
    _, _, c_mat, c_vec, a1, b1 = recasens_operator(g, int(padding), float(sigma), m.device,
                                                    m.dtype)
    sums = torch.addmm(b1, m, a1)
    return _knots_of_offsets(sums[:, g:] / sums[:, :g], c_mat, c_vec)[0]


def interp_knots(knots: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Evaluate the piecewise-linear map with knots at ``k / K`` at positions ``t``.

    Args:
        knots (Tensor): ``(N, K + 1)``.
        t (Tensor): ``(L,)`` positions in ``[0, 1]`` shared by the batch, or ``(N, L)``.

    Returns:
        Tensor: ``(N, L)``, in the dtype of ``knots``.
    """
    n, k1 = knots.shape
    kk = k1 - 1
    pos = t.to(knots.dtype).expand(n, t.shape[-1]) * kk
    idx = pos.floor().clamp(0, kk - 1).long()
    frac = pos - idx
    lo = knots.gather(1, idx)
    hi = knots.gather(1, idx + 1)
    return lo + (hi - lo) * frac


def invert_knots(knots: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Exact inverse of :func:`interp_knots` for strictly increasing knots.

    Returns ``s`` with ``interp_knots(knots, s) == t``: ``(N, L)``.
    """
    n, k1 = knots.shape
    kk = k1 - 1
    tq = t.to(knots.dtype).expand(n, t.shape[-1]).contiguous()
    if torch.compiler.is_compiling():
        # The count of knots <= t, which is searchsorted(right=True) on sorted knots:
        # ONNX (torch.onnx.export(dynamo=True)) has no searchsorted.
        idx = (knots[:, None, :] <= tq[:, :, None]).sum(-1) - 1
    else:
        idx = torch.searchsorted(knots.contiguous(), tq, right=True) - 1
    idx = idx.clamp(0, kk - 1)
    lo = knots.gather(1, idx)
    hi = knots.gather(1, idx + 1)
    frac = ((tq - lo) / (hi - lo)).clamp(0.0, 1.0)
    return (idx.to(knots.dtype) + frac) / kk


def valid_pooling_matrices(valid: torch.Tensor, size: int, cells: int, dtype) -> torch.Tensor:
    """Adaptive average pooling of each image's first ``valid`` lines into ``cells`` cells.

    Row ``k`` of image ``n`` averages lines ``[floor(k v / G), ceil((k + 1) v / G))``: the
    windows of ``F.adaptive_avg_pool2d`` on a map of ``v`` lines, so pooling a padded map with
    these matrices gives what pooling the image alone gives.

    Args:
        valid (Tensor): ``(N,)`` valid lengths (whole numbers in ``[1, size]``).
        size (int): length of the padded axis.
        cells (int): number of output cells ``G``.
        dtype: dtype of the result.

    Returns:
        Tensor: ``(N, G, size)``; each row sums to 1 and is 0 over the padding.
    """
    v = valid.round().long()[:, None]
    k = torch.arange(cells, device=valid.device)[None]
    start = (k * v) // cells
    end = ((k + 1) * v + cells - 1) // cells
    lines = torch.arange(size, device=valid.device)
    inside = (lines >= start[..., None]) & (lines < end[..., None])
    return inside.to(dtype) / (end - start)[..., None].to(dtype)


def two_segment_positions(phi, n_dst: int, n_src: int, v_dst: torch.Tensor,
                           v_src: torch.Tensor, clamp: bool = True) -> torch.Tensor:
    """Source pixel coordinates ``(N, n_dst)`` read by each destination line of an axis.

    Lines ``j < v_dst`` hold the image: they read ``phi((j + .5) / v_dst) * v_src - .5``
    (``phi`` maps normalised destination to normalised source coordinates of the valid
    region). The remaining lines spread uniformly over the source's padding,
    ``[v_src, n_src)`` (its last line when it has none). With ``v`` equal to the full lengths
    this is the plain formula ``phi((j + .5) / n) * N - .5``.

    Args:
        phi (callable): ``(N, L)`` normalised positions -> ``(N, L)`` normalised positions.
        n_dst, n_src (int): axis lengths of destination and source.
        v_dst, v_src (Tensor): ``(N,)`` valid lengths, in the grid's dtype.
        clamp (bool): clamp the image's lines to its own source lines ``[0, v_src - 1]``, as
            interpolation must (otherwise they lie in ``[-0.5, v_src - 0.5]``, where the map
            puts them).
    """
    j = torch.arange(n_dst, device=v_dst.device, dtype=v_dst.dtype)[None]
    vd, vs = v_dst[:, None], v_src[:, None]
    t = ((j + 0.5) / vd).clamp(max=1.0)
    inside = phi(t) * vs - 0.5
    if clamp:
        inside = torch.minimum(inside.clamp(min=0.0), vs - 1)
    pad_lines = (n_dst - vd).clamp(min=1.0)
    outside = vs + (j - vd + 0.5) * (n_src - vs) / pad_lines - 0.5
    outside = torch.maximum(outside.clamp(max=n_src - 1.0), torch.clamp(vs, max=n_src - 1.0))
    return torch.where(j < vd, inside, outside)
