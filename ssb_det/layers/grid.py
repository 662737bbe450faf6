"""Sampling grids: what an SSB block samples with and restores with.

:class:`Grid` is the interface the block, the profiler and the tools use; a grid is made
per forward by :class:`~ssb_det.layers.sampler.SaliencySampler` and holds no module state.
:class:`SeparableGrid` is its implementation: a separable map with an exact inverse.
"""
import abc
from typing import Optional, Tuple

import torch

from .lattice import Lattice, lattice
from .resample import (chunk_channels, chunked_cpu_inference, cpu_kernels, lerp_lines,
                       separable_resample)
from .tensor_ops import add_relu_, head, needs_grad

__all__ = ["Grid", "SeparableGrid"]

Positions = Tuple[torch.Tensor, torch.Tensor]


class Grid(abc.ABC):
    """A sampling map between a full size ``in_size = (H, W)`` and a sampled size
    ``out_size = (h, w)``, and its inverse.

    Positions are pixel coordinates (pixel ``i`` at ``i``) per image: ``(rows, cols)`` of
    shapes ``(N, h)`` and ``(N, w)`` for the sampling, ``(N, H)`` and ``(N, W)`` for the
    inverse. ``valid_in`` and ``valid_out`` are ``(N, 2)`` rows and columns of each image's
    region of the full and of the sampled map (the whole maps where no region was given).
    """

    in_size: Tuple[int, int]
    out_size: Tuple[int, int]
    valid_in: torch.Tensor
    valid_out: torch.Tensor

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

    def inverse_add_relu(self, y: torch.Tensor, shortcut: torch.Tensor) -> torch.Tensor:
        """``relu(shortcut + inverse(y))``, in a new tensor (neither input is written)."""
        return add_relu_(self.inverse(y), shortcut)


class SeparableGrid(Grid):
    """A separable sampling map ``(phi_y, phi_x)`` between a full and a sampled size.

    Sampling and restoring are two 1-D linear interpolations each; the inverse of the
    piecewise-linear map is exact. Every position, of both axes and both directions, is
    built at once from the knots and the size-only :class:`~ssb_det.layers.lattice.Lattice`
    (a handful of batched ops: on a GPU each op is a kernel launch).

    Args:
        knots_y (Tensor): ``(N, G + 1)`` strictly increasing knots of the row map, from 0 to 1.
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
        knots = torch.stack([knots_y, knots_x], 1)
        lat = lattice(tuple(in_size), tuple(out_size), knots.shape[-1] - 1, valid_in, valid_out,
                      knots.device)
        self._build(knots, knots.diff(dim=2), lat, None)

    @classmethod
    def of_lattice(cls, knots: torch.Tensor, steps: torch.Tensor, lat: Lattice,
                   dtype: Optional[torch.dtype] = None) -> "SeparableGrid":
        """The grid of ``(N, 2, G + 1)`` knots (rows y, x) and their ``(N, 2, G)`` steps on a
        lattice; ``dtype``: the features' dtype (the interpolation weights are made in it)."""
        grid = cls.__new__(cls)
        grid._build(knots, steps, lat, dtype)
        return grid

    def _build(self, knots, steps, lat: Lattice, dtype):
        self.knots = knots
        self.knots_y, self.knots_x = knots[:, 0], knots[:, 1]
        self.in_size, self.out_size = lat.in_size, lat.out_size
        n = knots.shape[0]
        self.valid_in = lat.valid_in.expand(n, 2)
        self.valid_out = lat.valid_out.expand(n, 2)
        # Made now, not on first use: a checkpointed (recomputed) segment of the block must
        # save the same tensors in both of its runs.
        # phi at the sampling rows' positions, and the inverse map at the inverse rows' as a
        # count of cells: sum_k clamp((t - K_k) / (K_k+1 - K_k), 0, 1) (exact for increasing
        # knots, and no searchsorted: ONNX has none)
        ramp = lat.ramp.expand(n, *lat.ramp.shape[1:]).reshape(2 * n, *lat.ramp.shape[2:])
        phi = torch.bmm(ramp, steps.reshape(2 * n, -1, 1)).view(n, 2, -1)
        cells = ((lat.inverse_t[..., None] - knots[:, :, None, :-1]) / steps[:, :, None, :])
        phi = torch.cat([phi, cells.clamp(0.0, 1.0).sum(-1)], 1)
        self._raw = torch.addcmul(lat.offset, phi, lat.scale)  # (N, 4, L)
        pos = torch.clamp(self._raw, lat.zero, lat.upper)
        self._pos = pos
        # taps of linear interpolation: left and right line (pos >= 0: truncation is floor)
        left = pos.long()
        self._index = torch.minimum(left[:, None] + lat.pair, lat.last)  # (N, 2, 4, L)
        self._frac = pos - left
        self._weight = self._frac.to(dtype) if dtype is not None else None

    @property
    def needs_grad(self) -> bool:
        return needs_grad(self.knots)

    def _lengths(self):
        (H, W), (h, w) = self.in_size, self.out_size
        return h, w, H, W

    def _rows(self, t: torch.Tensor, first: int) -> Positions:
        lengths = self._lengths()
        return (head(t[:, first], 1, lengths[first]),
                head(t[:, first + 1], 1, lengths[first + 1]))

    def sampling_positions(self, clamp: bool = False) -> Positions:
        return self._rows(self._pos if clamp else self._raw, 0)

    def inverse_positions(self, clamp: bool = False) -> Positions:
        return self._rows(self._pos if clamp else self._raw, 2)

    def _weights(self, dtype) -> torch.Tensor:
        w = self._weight
        return w if w is not None and w.dtype == dtype else self._frac.to(dtype)

    def _taps(self, row: int):
        """CPU kernels' ``(left, right, frac)`` of a row of the stacked positions."""
        length = self._lengths()[row]
        return (head(self._index[:, 0, row], 1, length), head(self._index[:, 1, row], 1, length),
                head(self._frac[:, row], 1, length))

    def _resample(self, x: torch.Tensor, first: int, rows_first: bool) -> torch.Tensor:
        """Rows ``first`` and ``first + 1`` of the stacked positions applied to ``x``."""
        lengths = self._lengths()
        # indexing, not unbind: an unbind whose outputs are used in two checkpointed
        # segments makes torch.compile's min-cut partitioner fail (aot_eager, inductor)
        weights = self._weights(x.dtype)
        weights = [weights[:, r] for r in range(4)]
        passes = [(first, 2), (first + 1, 3)]
        for row, dim in (passes if rows_first else passes[::-1]):
            n = lengths[row]
            x = lerp_lines(x, head(self._index[:, :, row], 2, n), head(weights[row], 1, n), dim)
        return x

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
        if not cpu_kernels(x, self.knots):
            return self._resample(x, 0, rows_first=True)
        taps = self._taps(0), self._taps(1)
        if not chunked_cpu_inference(x, self.knots):
            return separable_resample(x, *taps, self.out_size, rows_first=True)
        out = x.new_empty((*x.shape[:2], *self.out_size))

        def write(part, start, stop):
            out[:, start:stop] = part

        return self._chunked(x, taps, self.out_size, True, out, write)

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        if not cpu_kernels(y, self.knots):
            return self._resample(y, 2, rows_first=False)
        return separable_resample(y, self._taps(2), self._taps(3), self.in_size, rows_first=False)

    def inverse_add_relu(self, y: torch.Tensor, shortcut: torch.Tensor) -> torch.Tensor:
        """``relu(shortcut + inverse(y))``: the tail of an SSB block, fused where it pays.

        Same values as the unfused expression, in a new tensor (no input is written).
        In CPU inference (no gradient needed) it runs over channel chunks, writing each sum
        straight into the output: the restored map never exists at full size, and the
        intermediates of a chunk stay in cache.

        Args:
            y (Tensor): ``(N, C, h, w)`` sampled map.
            shortcut (Tensor): ``(N, C, H, W)``.
        """
        if shortcut.shape != (*y.shape[:2], *self.in_size):
            raise ValueError(f"shortcut has shape {tuple(shortcut.shape)}, the restored map "
                             f"{(*y.shape[:2], *self.in_size)}")
        if not (cpu_kernels(y, shortcut, self.knots)
                and chunked_cpu_inference(y, shortcut, self.knots)):
            return add_relu_(self.inverse(y), shortcut)
        out = torch.empty(shortcut.shape, device=y.device,
                          dtype=torch.promote_types(y.dtype, shortcut.dtype))

        def write(part, start, stop):
            chunk = out[:, start:stop]
            torch.add(part, shortcut[:, start:stop], out=chunk)
            chunk.relu_()  # while the chunk is still in cache

        return self._chunked(y, (self._taps(2), self._taps(3)), self.in_size, False, out, write)
