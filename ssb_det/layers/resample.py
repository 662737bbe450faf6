"""Resampling kernels of separable grids: two 1-D linear interpolations per map, written
for the CPU (``embedding_bag`` passes over contiguous lines; dense interpolation matrices
for small maps in training; channel chunks that stay in cache in inference)."""
from typing import Optional, Tuple

import torch
import torch.nn.functional as F

from .tensor_ops import needs_grad, tracing_or_compiling

__all__ = ["CPU_CHUNK_BYTES", "DENSE_MAX_SIZE", "interp_taps", "lerp_lines", "cpu_kernels",
           "separable_resample", "chunk_channels", "chunked_cpu_inference"]


# Full-size bytes per channel chunk of the CPU inference paths of SeparableGrid.sample and
# SeparableGrid.inverse_add_relu: a chunk's intermediates (~2.5x this) should stay in cache
# (chosen by measurement, see docs/benchmarks.md).
CPU_CHUNK_BYTES = 1 << 20


def interp_taps(pos: torch.Tensor, size: int):
    """Taps of 1-D linear interpolation at pixel coordinates ``pos`` (``(N, L)``), clamped to
    the axis like ``F.interpolate``: left index, right index, right weight (``pos``'s dtype)."""
    pos = pos.clamp(0, size - 1)
    # min(floor, max(size - 2, 0)) with the bound as a tensor: under torch.jit.trace ``size``
    # is a traced value, which Python's max() would fix to the traced size.
    left = torch.minimum(pos.floor(), (pos.new_full((), size) - 2).clamp(min=0))
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
# matmul's backward is two more matmuls; past this size the matmuls cost more (measured,
# see docs/benchmarks.md). Inference keeps embedding_bag (as fast or faster forward alone).
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


def lerp_lines(x: torch.Tensor, index: torch.Tensor, weight: torch.Tensor, dim: int
               ) -> torch.Tensor:
    """Linear interpolation of whole lines of ``x`` along ``dim`` (2: rows, 3: columns), in
    two ops: one gather of both taps, one ``lerp``.

    Output line ``l`` of image ``n`` is ``lerp(x[index[n, 0, l]], x[index[n, 1, l]],
    weight[n, l])``. The layout is kept: a channels-last ``x`` is resampled as its NHWC view,
    and the result is channels-last too (no hidden full-size copies); the dtype is ``x``'s.

    Args:
        x (Tensor): ``(N, C, H, W)``.
        index (Tensor): ``(N, 2, L)`` long, left and right line of each output line.
        weight (Tensor): ``(N, L)`` weight of the right line, in ``x``'s dtype.
        dim (int): 2 or 3.
    """
    channels_last = not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
    if channels_last:
        x, dim = x.permute(0, 2, 3, 1), dim - 1  # (N, H, W, C), contiguous
    n, length = index.shape[0], index.shape[2]
    pairs = x.unsqueeze(1)  # (N, 1, ...): both taps gathered in one op
    out_shape = [n, 2, *x.shape[1:]]
    out_shape[dim + 1] = length
    index_shape = [n, 2, 1, 1, 1]
    index_shape[dim + 1] = length
    taps = pairs.expand(n, 2, *x.shape[1:]).gather(dim + 1, index.view(index_shape).expand(out_shape))
    weight_shape = [n, 1, 1, 1]
    weight_shape[dim] = length
    left, right = taps.unbind(1)  # (its backward is one stack, not two zero-filled selects)
    weight = weight.view(weight_shape)
    if channels_last:
        # lerp of the NCHW views: a new channels-last tensor, not a view of one (an in-place
        # op on a view, e.g. the block's residual add, costs autograd full-size copies)
        left, right, weight = (t.permute(0, 3, 1, 2) for t in (left, right, weight))
    return torch.lerp(left, right, weight)


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
        row_taps, col_taps: :func:`interp_taps` of the row and column positions.
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
    training = not torch.jit.is_tracing() and needs_grad(x, row_taps[2], col_taps[2])
    if training and max(H, W) <= DENSE_MAX_SIZE:
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


def cpu_kernels(*tensors) -> bool:
    """Whether the CPU resampling kernels (``embedding_bag`` passes, dense matrices, channel
    chunks) run: eager or traced PyTorch on the CPU, maps not channels-last (those kernels
    read NCHW lines; they would copy an NHWC map). Elsewhere (GPUs, ``torch.compile``,
    ``torch.export``, channels-last maps) one gather and one ``lerp`` per pass
    (:func:`lerp_lines`), which keeps the layout."""
    return (all(t.device.type == "cpu" for t in tensors) and not torch.compiler.is_compiling()
            and not any(t.dim() == 4 and not t.is_contiguous()
                        and t.is_contiguous(memory_format=torch.channels_last) for t in tensors))


def chunk_channels(n: int, c: int, size: Tuple[int, int], element_size: int) -> int:
    """Channels per chunk of the chunked CPU paths: ``CPU_CHUNK_BYTES`` of a full-size
    ``(n, ., H, W)`` map, at least one channel, at most ``c``."""
    per_channel = max(n * size[0] * size[1] * element_size, 1)
    return max(1, min(c, CPU_CHUNK_BYTES // per_channel))


def chunked_cpu_inference(*tensors) -> bool:
    """Whether the grids' chunked CPU paths may run on ``tensors``: on the CPU, no gradient
    needed, not tracing or compiling. Tracers (TorchScript/ONNX export, fvcore) cannot record
    the chunked writes into slices of a preallocated output, and autograd is spared them;
    under ``torch.export`` / ``torch.compile`` the number of chunks would depend on the
    (possibly symbolic) map size."""
    return (all(t.device.type == "cpu" for t in tensors) and not needs_grad(*tensors)
            and not tracing_or_compiling())
