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

import torch

from .tensor_ops import to_grid_dtype, tracing_or_compiling

__all__ = [
    "SALIENCY_FLOOR",
    "sampled_size",
    "identity_knots",
    "recasens_knots_1d",
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


def _pixel_centres(n: int, device, dtype=torch.float32) -> torch.Tensor:
    return (torch.arange(n, device=device, dtype=dtype) + 0.5) / n


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


def _floor_marginal(m: torch.Tensor) -> torch.Tensor:
    # 1 / G in m's dtype: under torch.jit.trace G is a traced integer tensor, and a Python
    # float divided by it would be computed in the default dtype (float32).
    return m * (1.0 - SALIENCY_FLOOR) + SALIENCY_FLOOR / m.new_full((), m.shape[-1])


def _recasens_matrices(g: int, padding: int, sigma: float, device, dtype):
    """:func:`_build_recasens_matrices`, cached in eager mode.

    Not cached while ``torch.export`` / ``torch.compile`` traces: tensors made there are
    fake, and a cached fake tensor would poison every later eager call (garbage outputs);
    the graph builds them instead (a few small ops). Nor under ``torch.jit.trace``, so that
    every trace records the same graph (a cache hit would record a constant where a miss
    recorded the ops, and ``torch.jit.trace``'s check would see two graphs).
    """
    if tracing_or_compiling():
        return _build_recasens_matrices(g, padding, sigma, device, dtype)
    return _cached_recasens_matrices(g, padding, sigma, device, dtype)


def _build_recasens_matrices(g: int, padding: int, sigma: float, device, dtype):
    """``(G, G)`` matrices of the two kernel sums of the 1-D Recasens formula.

    With the marginal replicate-padded by ``P`` cells, ``den[p] = sum_t k[t] m_pad[p + t]``
    and ``num[p] = sum_t k[t] d[t] m_pad[p + t]`` (``t`` over the ``2P + 1`` kernel taps,
    ``d[t] = (t - P) / G`` the offset of the tap). A padded cell is a copy of the nearest
    edge cell, so both are ``m @ A`` with ``A[q, p]`` the summed weights of the taps of output
    ``p`` that read cell ``q``. They depend on the configuration only.
    """
    k = _gaussian_kernel(padding, sigma, device, dtype)
    t = torch.arange(-padding, padding + 1, device=device)
    src = (torch.arange(g, device=device)[:, None] + t[None, :]).clamp(0, g - 1)  # (p, t) -> q
    den = torch.zeros(g, g, device=device, dtype=dtype)
    num = torch.zeros(g, g, device=device, dtype=dtype)
    cols = torch.arange(g, device=device)[:, None].expand_as(src)
    den.index_put_((src.reshape(-1), cols.reshape(-1)), k.expand_as(src).reshape(-1), accumulate=True)
    num.index_put_((src.reshape(-1), cols.reshape(-1)), (k * t.to(dtype) / g).expand_as(src).reshape(-1),
                   accumulate=True)
    return den, num


_cached_recasens_matrices = functools.lru_cache(maxsize=64)(_build_recasens_matrices)


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
    m = _floor_marginal(to_grid_dtype(marginal))
    n, g = m.shape
    # u(p) = sum_q S(q) k(p-q) X(q) / sum_q S(q) k(p-q), written as the cell centre X(p) plus
    # the weighted mean offset X(q) - X(p): the same formula, but a uniform S gives an
    # offset that cancels to ~1e-9 instead of a ratio of sums rounded to ~1e-7.
    # Both sums are linear in S, so they are one small matrix product each (see
    # _recasens_matrices): two ops instead of a pad and two convolutions, which matters on
    # a CPU shared by other processes, where every multi-threaded op can stall.
    # int(g): under tracing a shape entry is a traced value; G is the sampler's constant, so
    # the matrices are built from the number (a cache key in eager, constants in a trace).
    den_mat, off_mat = _recasens_matrices(int(g), int(padding), float(sigma), m.device, m.dtype)
    den = m @ den_mat
    offset = (m @ off_mat) / den
    u = _pixel_centres(g, m.device, m.dtype) + offset  # phi at the cell centres, (N, G)
    c = _centres_to_corners(u, dim=1)
    # Pin the ends: an affine rescale keeps the map strictly increasing and inside the image
    # (Recasens clamps instead, which makes flat, non-invertible stretches at the borders).
    c0, c1 = c[:, :1], c[:, -1:]
    return (c - c0) / (c1 - c0)


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
