"""Saliency-guided spatial sampling and its inverse (the core of an SSB block).

Coordinates. Every map here is expressed in *normalised image coordinates*: ``t`` in
``[0, 1]`` spans the whole extent of an axis, and pixel ``i`` of an axis of ``n`` pixels
has its centre at ``(i + 0.5) / n`` (PyTorch's ``align_corners=False`` convention). A
sampling map ``phi: [0, 1] -> [0, 1]`` says where in the input the output position ``t``
reads. The identity map reproduces ``F.interpolate(mode="bilinear", align_corners=False)``
exactly, which is what makes "uniform sampling" an honest ablation of the same code.

Separable grid (default). The 2-D saliency is reduced to its row and column marginals and
the 1-D Recasens formula (Recasens et al., "Learning to Zoom", 2018) is evaluated on each.
``phi`` is stored as ``G + 1`` knots at ``t = k / G`` and is piecewise linear between
them, strictly increasing, with ``phi(0) = 0`` and ``phi(1) = 1``; so sampling is two 1-D
interpolations and the inverse is exact (invert the piecewise-linear map with
``searchsorted``).

Non-separable grid (option). The 2-D Recasens formula gives ``(u, v)`` knots on a
``(G + 1) x (G + 1)`` lattice; sampling uses ``grid_sample``; the inverse is approximate
(a few fixed-point iterations ``s <- s + (t - phi(s))``).

Valid regions. In a padded batch (Detectron2 pads every image to the largest one) each
image may cover only the top-left ``v_y x v_x`` pixels of the map. Given those sizes, the
saliency of an image is pooled over its own region, its map ``phi`` spans that region, the
first ``round(r * v)`` sampled rows/columns cover it, and the rest spread uniformly over the
padding: an image is sampled exactly as it would be alone, whatever its batch-mates.

The grid is always computed in float64 (float32 on MPS), whatever the features' dtype, so reduced precision
and extreme saliency logits cannot make it leave the image or turn non-finite.
"""
import functools
import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .export_guards import guard_traced_size, refuse_scripting
from .misc import SaliencyConv

__all__ = [
    "SaliencySampler",
    "SeparableGrid",
    "NonSeparableGrid",
    "sampled_size",
    "recasens_knots_1d",
    "recasens_knots_2d",
    "identity_knots",
    "interp_knots",
    "invert_knots",
    "linear_resample",
    "separable_resample",
    "valid_pooling_matrices",
]

# Share of a uniform distribution mixed into the saliency marginals. It keeps every
# Recasens denominator strictly positive (softmax of logits like +-1e4 underflows to exact
# zeros) and so keeps phi strictly increasing and its inverse finite. A uniform saliency is
# unchanged by the mix, so the identity property is exact.
SALIENCY_FLOOR = 1e-3


def sampled_size(size: int, ratio: float) -> int:
    """Length of a sampled axis: ``round(ratio * size)`` (half up), at least 1."""
    return max(1, int(math.floor(ratio * size + 0.5)))


def _grid_dtype(t: torch.Tensor) -> torch.Tensor:
    """The grid's precision: float64 (float32 on MPS, which has no float64).

    The grid tensors are tiny (``N x (G + 1)`` knots, ``N x h`` positions), so float64 costs
    nothing and keeps an identity grid exact to ~1e-7 px even at 4000 px, whatever the
    features' dtype (half and bfloat16 included).
    """
    return t.to(torch.float32 if t.device.type == "mps" else torch.float64)


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
    return m * (1.0 - SALIENCY_FLOOR) + SALIENCY_FLOOR / m.shape[-1]


@functools.lru_cache(maxsize=64)
def _recasens_matrices(g: int, padding: int, sigma: float, device, dtype):
    """``(G, G)`` matrices of the two kernel sums of the 1-D Recasens formula.

    With the marginal replicate-padded by ``P`` cells, ``den[p] = sum_t k[t] m_pad[p + t]``
    and ``num[p] = sum_t k[t] d[t] m_pad[p + t]`` (``t`` over the ``2P + 1`` kernel taps,
    ``d[t] = (t - P) / G`` the offset of the tap). A padded cell is a copy of the nearest
    edge cell, so both are ``m @ A`` with ``A[q, p]`` the summed weights of the taps of output
    ``p`` that read cell ``q``. Cached: they depend on the configuration only.
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


def recasens_knots_1d(marginal: torch.Tensor, padding: int, sigma: float) -> torch.Tensor:
    """1-D Recasens sampling map from a saliency marginal.

    Args:
        marginal (Tensor): ``(N, G)`` non-negative saliency per cell, summing to 1.
        padding (int): replicate padding ``P`` in cells; the kernel spans ``2P + 1`` cells.
        sigma (float): standard deviation of the Gaussian kernel, in cells.

    Returns:
        Tensor: ``(N, G + 1)`` knots (float64, see ``_grid_dtype``) of ``phi`` at ``t = k / G``: strictly
        increasing, from exactly 0 to exactly 1. A constant marginal gives the identity.
    """
    m = _floor_marginal(_grid_dtype(marginal))
    n, g = m.shape
    # u(p) = sum_q S(q) k(p-q) X(q) / sum_q S(q) k(p-q), written as the cell centre X(p) plus
    # the weighted mean offset X(q) - X(p): the same formula, but a uniform S gives an
    # offset that cancels to ~1e-9 instead of a ratio of sums rounded to ~1e-7.
    # Both sums are linear in S, so they are one small matrix product each (see
    # _recasens_matrices): two ops instead of a pad and two convolutions, which matters on
    # a CPU shared by other processes, where every multi-threaded op can stall.
    # int(g): under tracing a shape entry can be a traced value, which must not key the cache.
    den_mat, off_mat = _recasens_matrices(int(g), int(padding), float(sigma), m.device, m.dtype)
    den = m @ den_mat
    offset = (m @ off_mat) / den
    u = _pixel_centres(g, m.device, m.dtype) + offset  # phi at the cell centres, (N, G)
    c = _centres_to_corners(u, dim=1)
    # Pin the ends: an affine rescale keeps the map strictly increasing and inside the image
    # (Recasens clamps instead, which makes flat, non-invertible stretches at the borders).
    c0, c1 = c[:, :1], c[:, -1:]
    return (c - c0) / (c1 - c0)


def recasens_knots_2d(saliency: torch.Tensor, padding: int, sigma: float) -> torch.Tensor:
    """2-D Recasens sampling map (the non-separable option).

    Args:
        saliency (Tensor): ``(N, G, G)`` non-negative, summing to 1 per image.
        padding (int): replicate padding in cells.
        sigma (float): Gaussian kernel standard deviation in cells.

    Returns:
        Tensor: ``(N, 2, G + 1, G + 1)`` knots ``(u, v)`` (x then y) at corners ``(k/G, l/G)``,
        clamped to ``[0, 1]``. A constant saliency gives the identity.
    """
    s = _grid_dtype(saliency)
    n, gh, gw = s.shape
    s = s * (1.0 - SALIENCY_FLOOR) + SALIENCY_FLOOR / (gh * gw)
    p = int(padding)
    s_pad = F.pad(s[:, None], (p, p, p, p), mode="replicate") if p > 0 else s[:, None]
    k = _gaussian_kernel(p, sigma, s.device, s.dtype)
    d = torch.arange(-p, p + 1, device=s.device, dtype=s.dtype)

    def smooth(t, kx, ky):  # separable 2-D Gaussian (times offsets) correlation
        return F.conv2d(F.conv2d(t, kx[None, None, None, :]), ky[None, None, :, None])

    # Centre plus weighted mean offset, as in recasens_knots_1d.
    den = smooth(s_pad, k, k)
    u = _pixel_centres(gw, s.device, s.dtype) + smooth(s_pad, k * d / gw, k) / den
    v = _pixel_centres(gh, s.device, s.dtype)[:, None] + smooth(s_pad, k, k * d / gh) / den
    uv = torch.cat([u, v], dim=1)  # (N, 2, G, G) at centres
    uv = _centres_to_corners(_centres_to_corners(uv, dim=2), dim=3)
    return uv.clamp(0.0, 1.0)


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


def _two_segment_positions(phi, n_dst: int, n_src: int, v_dst: torch.Tensor,
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


def _region_sizes(knots: torch.Tensor, in_size, out_size, valid_in, valid_out):
    """``(valid_in, valid_out)`` of a grid in the knots' dtype: the given ``(N, 2)`` sizes,
    or (both None) every image filling both maps."""
    if (valid_in is None) != (valid_out is None):
        raise ValueError("valid_in and valid_out must be given together")
    if valid_in is None:
        n = knots.shape[0]
        valid_in = knots.new_tensor([in_size]).expand(n, 2)
        valid_out = knots.new_tensor([out_size]).expand(n, 2)
    return valid_in.to(knots.dtype), valid_out.to(knots.dtype)


def linear_resample(x: torch.Tensor, pos: torch.Tensor, dim: int) -> torch.Tensor:
    """1-D linear interpolation of ``x`` along ``dim`` (2 or 3) at per-image positions.

    Args:
        x (Tensor): ``(N, C, H, W)``.
        pos (Tensor): ``(N, L)`` pixel coordinates (pixel ``i`` at ``i``), clamped to the axis
            like ``F.interpolate`` does.
        dim (int): 2 resamples rows (H -> L), 3 resamples columns (W -> L).

    Returns:
        Tensor: ``x`` with axis ``dim`` of length ``L``.
    """
    n, c = x.shape[:2]
    size = x.shape[dim]
    pos = pos.clamp(0, size - 1)
    i0 = pos.floor().clamp(max=max(size - 2, 0)).long()
    i1 = (i0 + 1).clamp(max=size - 1)
    w = (pos - i0).to(x.dtype)
    length = pos.shape[1]
    if dim == 2:
        shape, wshape = (n, c, length, x.shape[3]), (n, 1, length, 1)
        i0, i1 = i0[:, None, :, None], i1[:, None, :, None]
    else:
        shape, wshape = (n, c, x.shape[2], length), (n, 1, 1, length)
        i0, i1 = i0[:, None, None, :], i1[:, None, None, :]
    x0 = x.gather(dim, i0.expand(shape))
    x1 = x.gather(dim, i1.expand(shape))
    return torch.lerp(x0, x1, w.view(wshape))


# Full-size bytes per channel chunk of the CPU inference paths of SeparableGrid.sample and
# SeparableGrid.inverse_add_relu: a chunk's intermediates (~2.5x this) should stay in cache.
# Measured on the 2-core EPYC VM, one thread, 800x1216 input, restore + add + ReLU of
# res2 / res3 / res4: 1 MB 9.4 / 5.7 / 3.1 ms, 2 MB 11.3 / 5.3 / 3.3, 8 MB 23.7 / 21.3 / 4.4;
# sampling of res2: 1 MB 2.2 ms, 8 MB 2.3, unchunked 5.8-11.5.
CPU_CHUNK_BYTES = 1 << 20


def _interp_taps(pos: torch.Tensor, size: int):
    """Taps of 1-D linear interpolation at pixel coordinates ``pos`` (``(N, L)``), clamped to
    the axis like ``F.interpolate``: left index, right index, right weight (``pos``'s dtype)."""
    pos = pos.clamp(0, size - 1)
    left = pos.floor().clamp(max=max(size - 2, 0))
    frac = pos - left
    left = left.long()
    right = (left + 1).clamp(max=size - 1)
    return left, right, frac


def _bag_inputs(taps, planes: int, size: int, dtype, line_major: bool = False):
    """``embedding_bag`` indices and weights interpolating ``planes`` planes per image.

    The table is ``(N * planes * size, D)``: row ``(n, plane, i)`` is line ``i`` of a plane.
    Output row ``(n, plane, l)`` - or ``(n, l, plane)`` with ``line_major`` - is
    ``(1 - frac) * row(left) + frac * row(right)``.
    """
    left, right, frac = taps
    n, length = left.shape
    plane_start = torch.arange(0, n * planes * size, size, device=left.device).view(n, planes)
    pairs = torch.stack([left, right], -1)  # (N, L, 2)
    weights = torch.stack([1 - frac, frac], -1).to(dtype)
    if line_major:
        idx = plane_start[:, None, :, None] + pairs[:, :, None, :]  # (N, L, planes, 2)
        weights = weights[:, :, None].expand(n, length, planes, 2)
    else:
        idx = plane_start[:, :, None, None] + pairs[:, None]  # (N, planes, L, 2)
        weights = weights[:, None].expand(n, planes, length, 2)
    return idx.reshape(-1, 2), weights.reshape(-1, 2)


def _resample_rows(table: torch.Tensor, bag) -> torch.Tensor:
    """Rows of ``table`` (``(R, D)``) interpolated as ``bag`` says: ``(len(bag), D)``.

    ``embedding_bag`` blends two contiguous rows per output row in one pass, which on CPU
    runs at memory speed, unlike element-wise gathers.
    """
    idx, weights = bag
    return F.embedding_bag(idx, table, per_sample_weights=weights, mode="sum")


def _swap_last_two(m: torch.Tensor) -> torch.Tensor:
    """``(N, A, B) -> (N, B, A)``, contiguous (one multi-threaded transposing copy)."""
    return m.transpose(1, 2).contiguous()


# Largest input side for which training resamples with dense interpolation matrices (two
# batched matmuls) instead of embedding_bag: its backward is a scatter, slow on CPU, where a
# matmul's backward is two more matmuls. Measured forward + backward, 2 threads, ms,
# embedding_bag vs matmul: restore of 8x256x24x18 28.1 vs 17.9, of 8x512x12x9 21.9 vs 5.9,
# of 2x256x50x76 69.3 vs 50.4; sample of 8x64x48x36 3.7 vs 3.4, of 1x64x64x96 1.4 vs 1.0,
# of 1x64x100x152 2.5 vs 3.5, of 1x64x200x304 12.9 vs 25.8. Inference keeps embedding_bag
# (forward alone it is as fast or faster at every size measured).
DENSE_MAX_SIZE = 96


def _interp_matrix(taps, size: int) -> torch.Tensor:
    """``(N, L, size)`` matrix of 1-D linear interpolation: row ``l`` holds ``1 - frac`` at
    ``left`` and ``frac`` at ``right`` (summed where they coincide). Differentiable in
    ``frac``."""
    left, right, frac = taps
    m = frac.new_zeros(*left.shape, size)
    m = m.scatter_add(2, left[..., None], (1 - frac)[..., None])
    return m.scatter_add(2, right[..., None], frac[..., None])


def _dense_resample(x: torch.Tensor, row_taps, col_taps) -> torch.Tensor:
    """:func:`separable_resample` as ``A_y @ x @ A_x^T`` per image (see ``DENSE_MAX_SIZE``)."""
    a_y = _interp_matrix(row_taps, x.shape[2]).to(x.dtype)[:, None]  # (N, 1, h, H)
    a_x = _interp_matrix(col_taps, x.shape[3]).to(x.dtype)[:, None]  # (N, 1, w, W)
    return torch.matmul(torch.matmul(a_y, x), a_x.transpose(2, 3)).contiguous()


def separable_resample(x: torch.Tensor, row_taps, col_taps, out_size: Tuple[int, int],
                       rows_first: bool, bag_cache: Optional[dict] = None) -> torch.Tensor:
    """Resample ``x`` (``(N, C, H, W)``) to ``out_size`` with two 1-D linear interpolations.

    Each pass blends whole contiguous lines with ``embedding_bag``: rows of the map for the
    vertical pass, rows of the transposed map for the horizontal one. The output lines of
    a pass are ordered line-major (``(n, line, channel)``) where the next step needs the
    other layout, so that the switch is a single transpose of two axes per image.

    Args:
        x (Tensor): the feature map. If ``x.transpose(2, 3)`` is contiguous (the map is
            stored transposed), the horizontal pass reads it without a copy.
        row_taps, col_taps: :func:`_interp_taps` of the row and column positions.
        out_size (tuple[int, int]): ``(h, w)``.
        rows_first (bool): interpolate rows (along H) first. Do first the pass that shrinks
            or keeps the tensor small: rows first when sampling, columns first when
            restoring.
        bag_cache (dict or None): reuse the ``embedding_bag`` inputs across calls with the
            same taps and channel count (callers resampling equal chunks pass one dict).

    Returns:
        Tensor: ``(N, C, h, w)``, contiguous.
    """
    n, c, H, W = x.shape
    h, w = out_size
    # Training only: a traced graph (export) records the inference path, whatever the
    # tracer's grad mode.
    needs_grad = torch.is_grad_enabled() and not torch.jit.is_tracing() and (
        x.requires_grad or row_taps[2].requires_grad or col_taps[2].requires_grad)
    if needs_grad and max(H, W) <= DENSE_MAX_SIZE:
        return _dense_resample(x, row_taps, col_taps)
    cache = bag_cache if bag_cache is not None else {}

    def bag(kind, taps, size, line_major):
        key = (kind, c, size, line_major, x.dtype)
        if key not in cache:
            cache[key] = _bag_inputs(taps, c, size, x.dtype, line_major)
        return cache[key]

    if rows_first:
        # rows: table (n, c, y) of W -> lines (n, y', c) -> transposed map (n, c, W, h)
        out = _resample_rows(x.reshape(n * c * H, W), bag("rows", row_taps, H, True))
        xt = _swap_last_two(out.view(n, h, c * W))  # (n, c * W, h) = (n, c, W, h)
        # columns: table (n, c, x) of h -> lines (n, x', c) -> (n, c, h, w)
        out = _resample_rows(xt.reshape(n * c * W, h), bag("cols", col_taps, W, True))
        return _swap_last_two(out.view(n, w, c * h)).view(n, c, h, w)
    # columns first: table = the transposed map, rows (n, c, x) of H
    out = _resample_rows(x.transpose(2, 3).reshape(n * c * W, H),
                         bag("cols", col_taps, W, True))
    xr = _swap_last_two(out.view(n, w, c * H))  # (n, c * H, w) = (n, c, H, w)
    # rows: table (n, c, y) of w -> (n, c, h, w)
    out = _resample_rows(xr.reshape(n * c * H, w), bag("rows", row_taps, H, False))
    return out.view(n, c, h, w)


def _chunk_channels(n: int, c: int, size: Tuple[int, int], element_size: int) -> int:
    """Channels per chunk of the chunked CPU paths: ``CPU_CHUNK_BYTES`` of a full-size
    ``(n, ., H, W)`` map, at least one channel, at most ``c``."""
    per_channel = max(n * size[0] * size[1] * element_size, 1)
    return max(1, min(c, CPU_CHUNK_BYTES // per_channel))


def _chunked_cpu_inference(*tensors) -> bool:
    """Whether the grids' chunked CPU paths may run on ``tensors``: on the CPU, no gradient
    needed, not tracing. Tracers (TorchScript/ONNX export, fvcore) cannot record the chunked
    writes into slices of a preallocated output, and autograd is spared them."""
    return (all(t.device.type == "cpu" for t in tensors)
            and not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors))
            and not torch.jit.is_tracing())


class SeparableGrid:
    """A separable sampling map ``(phi_y, phi_x)`` between a full and a sampled size.

    Args:
        knots_y (Tensor): ``(N, G + 1)`` strictly increasing knots of the row map.
        knots_x (Tensor): ``(N, G + 1)`` knots of the column map.
        in_size (tuple[int, int]): full size ``(H, W)``.
        out_size (tuple[int, int]): sampled size ``(h, w)``.
        valid_in (Tensor or None): ``(N, 2)`` rows and columns of each image's region of the
            full map (the knots span that region); None: the whole map.
        valid_out (Tensor or None): ``(N, 2)`` rows and columns of the sampled map that
            cover that region (the rest cover the padding); given with ``valid_in``.
    """

    def __init__(self, knots_y, knots_x, in_size: Tuple[int, int], out_size: Tuple[int, int],
                 valid_in: Optional[torch.Tensor] = None,
                 valid_out: Optional[torch.Tensor] = None):
        self.knots_y, self.knots_x = knots_y, knots_x
        self.in_size, self.out_size = tuple(in_size), tuple(out_size)
        self.valid_in, self.valid_out = _region_sizes(knots_y, self.in_size, self.out_size,
                                                      valid_in, valid_out)
        self._positions = {}

    def _lines(self, inverse: bool, clamp: bool):
        """Row and column coordinates (cached): see :func:`_two_segment_positions`."""
        key = (inverse, clamp)
        if key not in self._positions:
            vi, vo = self.valid_in, self.valid_out
            if inverse:
                phi, n_dst, n_src, v_dst, v_src = invert_knots, self.in_size, self.out_size, vi, vo
            else:
                phi, n_dst, n_src, v_dst, v_src = interp_knots, self.out_size, self.in_size, vo, vi
            self._positions[key] = tuple(
                _two_segment_positions(functools.partial(phi, knots), n_dst[a], n_src[a],
                                       v_dst[:, a], v_src[:, a], clamp)
                for a, knots in enumerate((self.knots_y, self.knots_x)))
        return self._positions[key]

    def sampling_positions(self, clamp: bool = False):
        """Input pixel coordinates read by each sampled row and column: ``(N,h)``, ``(N,w)``.

        Args:
            clamp (bool): clamp to the pixels interpolation reads (see ``_two_segment_positions``).
        """
        return self._lines(False, clamp)

    def inverse_positions(self, clamp: bool = False):
        """Sampled-map pixel coordinates read by each full-size row and column."""
        return self._lines(True, clamp)

    def sample(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C, H, W) -> (N, C, h, w)``."""
        (H, W), (h, w) = self.in_size, self.out_size
        ys, xs = self.sampling_positions(clamp=True)
        row_taps, col_taps = _interp_taps(ys, H), _interp_taps(xs, W)
        n, c = x.shape[:2]
        if not _chunked_cpu_inference(x, self.knots_y, self.knots_x):
            return separable_resample(x, row_taps, col_taps, (h, w), rows_first=True)
        # CPU inference: channel chunks whose intermediates stay in cache (2.2 vs 5.8 ms
        # for res2 of an 800x1216 input), written into one output.
        step = _chunk_channels(n, c, (H, W), x.element_size())
        out = x.new_empty((n, c, h, w))
        bags = {}
        for start in range(0, c, step):
            out[:, start:start + step] = separable_resample(
                x[:, start:start + step], row_taps, col_taps, (h, w), rows_first=True,
                bag_cache=bags)
        return out

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        """``(N, C, h, w) -> (N, C, H, W)``: puts sampled values back where they came from."""
        (H, W), (h, w) = self.in_size, self.out_size
        ys, xs = self.inverse_positions(clamp=True)
        return separable_resample(y, _interp_taps(ys, h), _interp_taps(xs, w), (H, W),
                                  rows_first=False)

    def inverse_add_relu(self, y: torch.Tensor, shortcut: torch.Tensor,
                         overwrite_shortcut: bool = False) -> torch.Tensor:
        """``relu(shortcut + inverse(y))``: the tail of an SSB block, fused where it pays.

        Same values as the unfused expression. In CPU inference (no gradient needed) it runs
        over channel chunks of about ``CPU_CHUNK_BYTES`` of output, writing each sum straight
        into the output: the restored map never exists at full size, and the intermediates
        of a chunk stay in cache.

        Args:
            y (Tensor): ``(N, C, h, w)`` sampled map.
            shortcut (Tensor): ``(N, C, H, W)``.
            overwrite_shortcut (bool): the caller no longer needs ``shortcut``: the fused
                paths may write the result into it (each chunk of the shortcut is read
                before the same chunk of the output is written) instead of allocating a new
                map - at full size, fresh memory costs page faults on every call. Used only
                where the result has the shortcut's dtype.
        """
        (H, W), (h, w) = self.in_size, self.out_size
        if shortcut.shape != (*y.shape[:2], H, W):
            raise ValueError(f"shortcut has shape {tuple(shortcut.shape)}, the restored map "
                             f"{(*y.shape[:2], H, W)}")
        if not _chunked_cpu_inference(y, shortcut, self.knots_y, self.knots_x):
            out = self.inverse(y)
            out = out.add_(shortcut) if out.dtype == torch.result_type(out, shortcut) \
                else out + shortcut
            return out.relu_()
        ys, xs = self.inverse_positions(clamp=True)
        row_taps, col_taps = _interp_taps(ys, h), _interp_taps(xs, w)
        into = overwrite_shortcut and torch.result_type(y, shortcut) == shortcut.dtype
        n, c = y.shape[:2]
        step = _chunk_channels(n, c, (H, W), y.element_size())
        bags = {}  # indices and weights of a chunk depend only on its number of channels
        out = shortcut if into else torch.empty(
            shortcut.shape, device=y.device, dtype=torch.result_type(y, shortcut))
        for start in range(0, c, step):
            stop = min(start + step, c)
            part = separable_resample(y[:, start:stop], row_taps, col_taps, (H, W),
                                      rows_first=False, bag_cache=bags)
            chunk = out[:, start:stop]
            torch.add(part, shortcut[:, start:stop], out=chunk)
            chunk.relu_()  # while the chunk is still in cache
        return out


class NonSeparableGrid:
    """A 2-D sampling map; forward with ``grid_sample``, approximate inverse by iteration.

    Args:
        knots (Tensor): ``(N, 2, G + 1, G + 1)`` ``(u, v)`` at lattice corners.
        in_size (tuple[int, int]): full size ``(H, W)``.
        out_size (tuple[int, int]): sampled size ``(h, w)``.
        inverse_iters (int): fixed-point iterations of the inverse.
        valid_in, valid_out (Tensor or None): as :class:`SeparableGrid`. Pixels outside an
            image's region (in either map) follow the separable two-segment maps with the
            identity inside, so only the image's own pixels are sampled by the 2-D map.
    """

    def __init__(self, knots, in_size, out_size, inverse_iters: int = 4,
                 valid_in: Optional[torch.Tensor] = None,
                 valid_out: Optional[torch.Tensor] = None):
        self.knots = knots
        self.in_size, self.out_size = tuple(in_size), tuple(out_size)
        self.inverse_iters = inverse_iters
        self.valid_in, self.valid_out = _region_sizes(knots, self.in_size, self.out_size,
                                                      valid_in, valid_out)

    def _phi(self, s: torch.Tensor) -> torch.Tensor:
        # s: (N, h, w, 2) in [0, 1] (x, y) -> phi(s) in the same layout.
        out = F.grid_sample(self.knots, s * 2 - 1, mode="bilinear", align_corners=True)
        return out.permute(0, 2, 3, 1)

    def _lattice(self, valid: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """``(N, h, w, 2)`` pixel centres ``(x, y)`` normalised by each image's ``valid``
        size, clamped to 1 (pixels past the region are replaced by the caller)."""
        dt = self.knots.dtype
        ys = torch.arange(h, device=valid.device, dtype=dt)[None]
        xs = torch.arange(w, device=valid.device, dtype=dt)[None]
        ty = ((ys + 0.5) / valid[:, :1]).clamp(max=1.0)
        tx = ((xs + 0.5) / valid[:, 1:]).clamp(max=1.0)
        n = valid.shape[0]
        return torch.stack([tx[:, None, :].expand(n, h, w), ty[:, :, None].expand(n, h, w)], -1)

    def _to_pixels(self, s, v_dst, v_src, n_dst, n_src):
        """Normalised positions ``s`` (``(N, h, w, 2)`` on the source's regions) -> source
        pixel coordinates, with pixels outside the destination's regions on the separable
        two-segment maps."""
        h, w = n_dst

        def identity(t):
            return t

        scale = v_src.flip(1)[:, None, None, :]  # (x, y) order
        inside_pix = torch.minimum((s * scale - 0.5).clamp(min=0.0), scale - 1)
        py = _two_segment_positions(identity, h, n_src[0], v_dst[:, 0], v_src[:, 0])
        px = _two_segment_positions(identity, w, n_src[1], v_dst[:, 1], v_src[:, 1])
        plain = torch.stack([px[:, None, :].expand(-1, h, w), py[:, :, None].expand(-1, h, w)], -1)
        rows = torch.arange(h, device=s.device, dtype=s.dtype)[None, :, None] < v_dst[:, :1, None]
        cols = torch.arange(w, device=s.device, dtype=s.dtype)[None, None, :] < v_dst[:, 1:, None]
        return torch.where((rows & cols)[..., None], inside_pix, plain)

    def sampling_positions(self):
        """``(N, h, w, 2)`` input pixel coordinates ``(x, y)`` read by each sampled pixel."""
        (h, w) = self.out_size
        uv = self._phi(self._lattice(self.valid_out, h, w))
        return self._to_pixels(uv, self.valid_out, self.valid_in, (h, w), self.in_size)

    @staticmethod
    def _grid(pixels, size):
        """Pixel coordinates ``(x, y)`` -> ``grid_sample``'s ``[-1, 1]`` (align_corners=False)."""
        h, w = size
        return (pixels + 0.5) / pixels.new_tensor([w, h]) * 2 - 1

    def sample(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C, H, W) -> (N, C, h, w)`` with ``grid_sample``."""
        grid = self._grid(self.sampling_positions(), self.in_size)
        out = F.grid_sample(x, grid.to(x.dtype), mode="bilinear", padding_mode="border",
                            align_corners=False)
        return out.to(x.dtype)

    def inverse_positions(self) -> torch.Tensor:
        """``(N, H, W, 2)`` normalised positions ``s`` of the sampled map read by each full-size
        pixel: ``phi(s) ~ t`` on an image's region.

        Fixed-point iterations ``s <- s + (t - phi(s))`` from ``s = t``; exact for the
        identity. Near borders the clamped 2-D map may not reach ``t`` at all; there ``s``
        stops at the nearest reachable position.
        """
        H, W = self.in_size
        target = self._lattice(self.valid_in, H, W)
        s = target
        for _ in range(self.inverse_iters):
            s = (s + (target - self._phi(s))).clamp(0.0, 1.0)
        pixels = self._to_pixels(s, self.valid_in, self.valid_out, (H, W), self.out_size)
        h, w = self.out_size
        return (pixels + 0.5) / pixels.new_tensor([w, h])

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        s = self.inverse_positions()
        out = F.grid_sample(y, (s * 2 - 1).to(y.dtype), mode="bilinear", padding_mode="border",
                            align_corners=False)
        return out.to(y.dtype)

    def inverse_add_relu(self, y: torch.Tensor, shortcut, overwrite_shortcut: bool = False
                         ) -> torch.Tensor:
        """``relu(shortcut + inverse(y))``, as :meth:`SeparableGrid.inverse_add_relu`."""
        restored = self.inverse(y)
        if overwrite_shortcut and not (torch.is_grad_enabled() and shortcut.requires_grad) \
                and torch.result_type(restored, shortcut) == shortcut.dtype:
            return shortcut.add_(restored).relu_()
        return torch.relu_(restored + shortcut)


class SaliencySampler(nn.Module):
    """Predicts where to sample a feature map and builds the sampling grid.

    A zero-initialised 1x1 conv gives one saliency logit per pixel; the logits are average
    pooled to ``grid_size x grid_size`` and soft-maxed over positions; the Recasens kernel
    formula turns that distribution into a sampling map. At initialisation (and with
    ``uniform=True`` always) the map is the identity, i.e. plain bilinear resizing.

    Args:
        in_channels (int): channels of the feature map the saliency is predicted from.
        ratio (float): sampled size / full size, in ``(0, 1]``.
        grid_size (int): side ``G`` of the pooled saliency grid (Recasens: 31).
        padding (int): replicate padding ``P`` of the saliency, in cells (Recasens: 30).
        sigma (float): Gaussian kernel std in cells (Recasens: FWHM 13 -> about 5.5).
        separable (bool): separable map with exact inverse (default) or a 2-D map.
        uniform (bool): hold the saliency constant (uniform sampling ablation); then no
            saliency conv is created.
        inverse_iters (int): fixed-point iterations of the 2-D inverse.
    """

    def __init__(self, in_channels: int, ratio: float, *, grid_size: int = 31, padding: int = 30,
                 sigma: float = 5.5, separable: bool = True, uniform: bool = False,
                 inverse_iters: int = 4):
        super().__init__()
        if not (0.0 < ratio <= 1.0):
            raise ValueError(f"sampling ratio must be in (0, 1], got {ratio}")
        if grid_size < 1 or padding < 0 or not sigma > 0:
            raise ValueError(
                f"invalid sampler grid: grid_size={grid_size} (>= 1), padding={padding} (>= 0), "
                f"sigma={sigma} (> 0)"
            )
        self.ratio = float(ratio)
        self.grid_size = int(grid_size)
        self.padding = int(padding)
        self.sigma = float(sigma)
        self.separable = bool(separable)
        self.uniform = bool(uniform)
        self.inverse_iters = int(inverse_iters)
        if not self.uniform:
            self.saliency_conv = SaliencyConv(in_channels, 1, kernel_size=1, bias=False)
            nn.init.zeros_(self.saliency_conv.weight)

    def __prepare_scriptable__(self):
        # torch.jit.script calls this on every submodule before compiling: fail at once
        # with the supported export routes (see export_guards).
        refuse_scripting(self)

    def extra_repr(self):
        return (f"ratio={self.ratio}, grid_size={self.grid_size}, padding={self.padding}, "
                f"sigma={self.sigma}, separable={self.separable}, uniform={self.uniform}")

    def out_size(self, h: int, w: int) -> Tuple[int, int]:
        return sampled_size(h, self.ratio), sampled_size(w, self.ratio)

    def saliency(self, x: torch.Tensor, valid_size: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``(N, G, G)`` saliency distribution in grid precision (sums to 1 per image).

        Args:
            x (Tensor): ``(N, C, H, W)`` features.
            valid_size (Tensor or None): ``(N, 2)`` rows and columns of each image's region;
                the saliency is pooled over that region only. None: the whole map.
        """
        n, g = x.shape[0], self.grid_size
        if self.uniform:
            return _grid_dtype(torch.full((n, g, g), 1.0 / (g * g), device=x.device))
        # A 1x1 conv without bias commutes with average pooling, so either can come first.
        # Half-precision features are pooled first and the conv runs on the G x G map in
        # float32 (half-precision logits overflow for large weights). Float32/64 features are
        # convolved first: the 1-channel conv reads the map once at memory speed, while
        # pooling f channels into overlapping adaptive windows is several times slower.
        # The conv is called as a module (hooks, fvcore); it computes in its input's dtype.
        conv = self.saliency_conv
        full_precision = x.dtype in (torch.float32, torch.float64)
        dtype = x.dtype if full_precision else torch.promote_types(x.dtype, torch.float32)
        with torch.autocast(device_type=x.device.type, enabled=False):
            if valid_size is None:
                if full_precision:
                    logits = F.adaptive_avg_pool2d(conv(x), (g, g))
                else:
                    pooled = F.adaptive_avg_pool2d(x, (g, g)).to(dtype)
                    logits = conv(pooled)
            else:  # the same windows, over each image's region (see valid_pooling_matrices)
                H, W = x.shape[-2:]
                rows = valid_pooling_matrices(valid_size[:, 0], H, g, x.dtype)[:, None]
                cols = valid_pooling_matrices(valid_size[:, 1], W, g, x.dtype)[:, None]
                if full_precision:
                    logits = rows @ conv(x) @ cols.transpose(2, 3)
                else:
                    pooled = (rows @ x @ cols.transpose(2, 3)).to(dtype)
                    logits = conv(pooled)
        # nan_to_num: features of a diverged run (NaN/Inf) must still give a valid grid, so
        # that the NaN reaches the loss and Detectron2 reports the divergence, instead of
        # NaN positions crashing the interpolation's indexing.
        logits = torch.nan_to_num(_grid_dtype(logits).flatten(1))
        return torch.softmax(logits, dim=1).view(n, g, g)

    def _valid_sizes(self, valid_size, in_size, device):
        """Checked ``(N, 2)`` valid sizes of the full map and of the sampled map (grid dtype)."""
        H, W = in_size
        v = _grid_dtype(torch.as_tensor(valid_size, device=device))
        if v.dim() != 2 or v.shape[1] != 2:
            raise ValueError(f"valid_size must have shape (N, 2), got {tuple(v.shape)}")
        v = torch.minimum(v.round().clamp(min=1.0), v.new_tensor([H, W]))
        out = torch.floor(v * self.ratio + 0.5).clamp(min=1.0)  # sampled_size, per image
        return v, out

    def forward(self, x: torch.Tensor, valid_size: Optional[torch.Tensor] = None):
        """Build the grid for feature map ``x`` (``(N, C, H, W)``).

        Args:
            x (Tensor): the features the saliency is predicted from.
            valid_size (Tensor or None): ``(N, 2)`` rows and columns of each image's region
                of a padded batch (clamped to ``[1, H] x [1, W]``); each image is then
                sampled as if it were alone. None: every image fills the map.

        Returns:
            SeparableGrid or NonSeparableGrid: call ``.sample`` / ``.inverse`` on it.
        """
        x = guard_traced_size(x)  # a trace refuses another size (see export_guards)
        H, W = x.shape[-2:]
        with torch.autocast(device_type=x.device.type, enabled=False):
            valid = None if valid_size is None else self._valid_sizes(valid_size, (H, W), x.device)
            if self.separable and self.uniform:
                n, g = x.shape[0], self.grid_size
                ky = kx = _grid_dtype(identity_knots(n, g, x.device))
                return self._grid(ky, kx, None, (H, W), valid)
            saliency = self.saliency(x, None if valid is None else valid[0])
            return self._grid_of_saliency(saliency, (H, W), valid)

    def grid_from_saliency(self, saliency: torch.Tensor, in_size: Tuple[int, int],
                           valid_size: Optional[torch.Tensor] = None):
        """The sampling grid of a saliency distribution (what :meth:`forward` returns).

        Args:
            saliency (Tensor): ``(N, G, G)``, as :meth:`saliency` returns.
            in_size (tuple[int, int]): full size ``(H, W)`` of the feature map.
            valid_size (Tensor or None): as :meth:`forward`.
        """
        valid = None
        if valid_size is not None:
            valid = self._valid_sizes(valid_size, in_size, saliency.device)
        return self._grid_of_saliency(saliency, in_size, valid)

    def _grid_of_saliency(self, saliency, in_size, valid):
        """:meth:`grid_from_saliency` with sizes checked by :meth:`_valid_sizes` (or None)."""
        with torch.autocast(device_type=saliency.device.type, enabled=False):
            if self.separable:
                ky = recasens_knots_1d(saliency.sum(dim=2), self.padding, self.sigma)
                kx = recasens_knots_1d(saliency.sum(dim=1), self.padding, self.sigma)
                return self._grid(ky, kx, None, in_size, valid)
            knots = recasens_knots_2d(saliency, self.padding, self.sigma)
            return self._grid(None, None, knots, in_size, valid)

    def _grid(self, ky, kx, knots, in_size, valid):
        """The grid object; ``valid`` is :meth:`_valid_sizes`' pair or None."""
        H, W = in_size
        out_size = self.out_size(H, W)
        valid = (None, None) if valid is None else valid
        if knots is None:
            return SeparableGrid(ky, kx, (H, W), out_size, *valid)
        return NonSeparableGrid(knots, (H, W), out_size, self.inverse_iters, *valid)
