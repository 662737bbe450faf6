"""Sampling grids: what an SSB block samples with and restores with.

:class:`Grid` is the interface the block, the profiler and the tools use; a grid is made
per forward by :class:`~ssb_det.layers.sampler.SaliencySampler` and holds no module state.
:class:`SeparableGrid` is its implementation: a separable map with an exact inverse.
"""
import abc
import functools
from typing import Optional, Tuple

import torch

from .resample import chunk_channels, chunked_cpu_inference, interp_taps, separable_resample
from .sampling_maps import interp_knots, invert_knots, two_segment_positions
from .tensor_ops import add_relu_, needs_grad, size_tensor

__all__ = ["Grid", "SeparableGrid"]

Positions = Tuple[torch.Tensor, torch.Tensor]


class Grid(abc.ABC):
    """A sampling map between a full size ``in_size = (H, W)`` and a sampled size
    ``out_size = (h, w)``, and its inverse.

    Positions are pixel coordinates (pixel ``i`` at ``i``) per image: ``(rows, cols)`` of
    shapes ``(N, h)`` and ``(N, w)`` for the sampling, ``(N, H)`` and ``(N, W)`` for the
    inverse.
    """

    in_size: Tuple[int, int]
    out_size: Tuple[int, int]

    @property
    @abc.abstractmethod
    def needs_grad(self) -> bool:
        """Whether autograd records what the map computes (see
        :func:`~ssb_det.layers.tensor_ops.needs_grad`)."""

    @abc.abstractmethod
    def sampling_positions(self, clamp: bool = False) -> Positions:
        """Full-size coordinates read by each sampled row and column.

        Args:
            clamp (bool): clamp to the pixels interpolation reads (otherwise an image's lines
                lie in ``[-0.5, v - 0.5]``, where the map puts them).
        """

    @abc.abstractmethod
    def inverse_positions(self, clamp: bool = False) -> Positions:
        """Sampled-map coordinates read by each full-size row and column."""

    @abc.abstractmethod
    def sample(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C, H, W) -> (N, C, h, w)``."""

    @abc.abstractmethod
    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        """``(N, C, h, w) -> (N, C, H, W)``: puts sampled values back where they came from."""

    def inverse_add_relu(self, y: torch.Tensor, shortcut: torch.Tensor,
                         out: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``relu(shortcut + inverse(y))``, in a new tensor (neither input is written).

        ``out`` is memory the caller offers for the result, a tensor that nothing else
        references. An implementation may write the result into it (and return it) if it
        fits: the result's shape, dtype and device, contiguous, sharing no memory with ``y``
        and either none with ``shortcut`` or being ``shortcut`` itself (a caller's own
        scratch shortcut, e.g. a projection no one else holds: each element is read before
        it is overwritten); otherwise, or if it has no use for it, it leaves ``out``
        untouched.
        """
        return add_relu_(self.inverse(y), shortcut)


def _fits(out: torch.Tensor, shape, dtype, y: torch.Tensor, shortcut: torch.Tensor) -> bool:
    """Whether ``out`` can hold the ``shape``, ``dtype`` result of an elementwise tail reading
    ``y`` (not to be overlapped) and ``shortcut`` (may be ``out`` itself, element for element)."""
    def shares(t):
        return out.untyped_storage().data_ptr() == t.untyped_storage().data_ptr()

    return (out.shape == shape and out.dtype == dtype and out.is_contiguous()
            and out.device == y.device == shortcut.device and not shares(y)
            and (not shares(shortcut) or out is shortcut))


def _region_sizes(knots: torch.Tensor, in_size, out_size, valid_in, valid_out):
    """``(valid_in, valid_out)`` of a grid in the knots' dtype: the given ``(N, 2)`` sizes,
    or (both None) every image filling both maps."""
    if (valid_in is None) != (valid_out is None):
        raise ValueError("valid_in and valid_out must be given together")
    if valid_in is None:
        n = knots.shape[0]
        valid_in = size_tensor(in_size, knots).expand(n, 2)
        valid_out = size_tensor(out_size, knots).expand(n, 2)
    return valid_in.to(knots.dtype), valid_out.to(knots.dtype)


class SeparableGrid(Grid):
    """A separable sampling map ``(phi_y, phi_x)`` between a full and a sampled size.

    Sampling and restoring are two 1-D linear interpolations each
    (:func:`~ssb_det.layers.resample.separable_resample`); the inverse of the
    piecewise-linear map is exact.

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
        # Made now, not on first use: a checkpointed (recomputed) segment of the block must
        # save the same tensors in both of its runs.
        (H, W), (h, w) = self.in_size, self.out_size
        ys, xs = self.sampling_positions(clamp=True)
        self._sample_taps = interp_taps(ys, H), interp_taps(xs, W)
        ys, xs = self.inverse_positions(clamp=True)
        self._inverse_taps = interp_taps(ys, h), interp_taps(xs, w)

    @property
    def needs_grad(self) -> bool:
        return needs_grad(self.knots_y, self.knots_x)

    def _lines(self, inverse: bool, clamp: bool) -> Positions:
        """Row and column coordinates: see :func:`two_segment_positions`."""
        vi, vo = self.valid_in, self.valid_out
        if inverse:
            phi, n_dst, n_src, v_dst, v_src = invert_knots, self.in_size, self.out_size, vi, vo
        else:
            phi, n_dst, n_src, v_dst, v_src = interp_knots, self.out_size, self.in_size, vo, vi
        return tuple(
            two_segment_positions(functools.partial(phi, knots), n_dst[a], n_src[a],
                                  v_dst[:, a], v_src[:, a], clamp)
            for a, knots in enumerate((self.knots_y, self.knots_x)))

    def sampling_positions(self, clamp: bool = False) -> Positions:
        return self._lines(False, clamp)

    def inverse_positions(self, clamp: bool = False) -> Positions:
        return self._lines(True, clamp)

    def _chunked(self, x: torch.Tensor, taps, out_size, rows_first: bool, out: torch.Tensor,
                 write) -> torch.Tensor:
        """CPU inference: resample ``x`` over channel chunks of ``CPU_CHUNK_BYTES`` of
        full-size map, so a chunk's intermediates stay in cache; ``write(chunk, start, stop)``
        puts each into ``out``."""
        n, c = x.shape[:2]
        step = chunk_channels(n, c, self.in_size, x.element_size())
        bags = {}  # indices and weights of a chunk depend only on its number of channels
        for start in range(0, c, step):
            stop = min(start + step, c)
            write(separable_resample(x[:, start:stop], *taps, out_size, rows_first=rows_first,
                                     bag_cache=bags), start, stop)
        return out

    def sample(self, x: torch.Tensor) -> torch.Tensor:
        if not chunked_cpu_inference(x, self.knots_y, self.knots_x):
            return separable_resample(x, *self._sample_taps, self.out_size, rows_first=True)
        out = x.new_empty((*x.shape[:2], *self.out_size))

        def write(part, start, stop):
            out[:, start:stop] = part

        return self._chunked(x, self._sample_taps, self.out_size, True, out, write)

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        return separable_resample(y, *self._inverse_taps, self.in_size, rows_first=False)

    def inverse_add_relu(self, y: torch.Tensor, shortcut: torch.Tensor,
                         out: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``relu(shortcut + inverse(y))``: the tail of an SSB block, fused where it pays.

        Same values as the unfused expression, in a new tensor (no input is written, except
        a ``shortcut`` passed as ``out`` too).
        In CPU inference (no gradient needed) it runs over channel chunks, writing each sum
        straight into the output (``out`` if it fits, else a new tensor): the restored map
        never exists at full size, and the intermediates of a chunk stay in cache.

        Args:
            y (Tensor): ``(N, C, h, w)`` sampled map.
            shortcut (Tensor): ``(N, C, H, W)``.
            out (Tensor or None): see :meth:`Grid.inverse_add_relu`.
        """
        if shortcut.shape != (*y.shape[:2], *self.in_size):
            raise ValueError(f"shortcut has shape {tuple(shortcut.shape)}, the restored map "
                             f"{(*y.shape[:2], *self.in_size)}")
        if not chunked_cpu_inference(y, shortcut, self.knots_y, self.knots_x):
            return add_relu_(self.inverse(y), shortcut)
        dtype = torch.promote_types(y.dtype, shortcut.dtype)
        if out is None or not _fits(out, shortcut.shape, dtype, y, shortcut):
            out = torch.empty(shortcut.shape, device=y.device, dtype=dtype)

        def write(part, start, stop):
            chunk = out[:, start:stop]
            torch.add(part, shortcut[:, start:stop], out=chunk)
            chunk.relu_()  # while the chunk is still in cache

        return self._chunked(y, self._inverse_taps, self.in_size, False, out, write)
