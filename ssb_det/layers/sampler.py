"""The SSB block's sampler module: predicts a saliency from features and makes the
:class:`~ssb_det.layers.grid.Grid` that samples them (map maths in
:mod:`~ssb_det.layers.sampling_maps`)."""
from fractions import Fraction
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .export_guards import refuse_scripting
from .grid import SeparableGrid
from .lattice import Lattice, Regions
from .misc import SaliencyConv
from .sampling_maps import sampled_size, separable_knots
from .tensor_ops import as_grid_tensor, autocast_off, to_grid_dtype

__all__ = ["SaliencySampler"]


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
        uniform (bool): hold the saliency constant (uniform sampling ablation); then no
            saliency conv is created.
        saliency_bound (float): if > 0, pooled logits ``l`` become ``B tanh(l / B)``, so no
            cell outweighs another by more than ``exp(2B)`` and the map cannot collapse onto
            a few rows; 0: unbounded logits.
    """

    def __init__(self, in_channels: int, ratio: float, *, grid_size: int = 31, padding: int = 30,
                 sigma: float = 5.5, uniform: bool = False, saliency_bound: float = 0.0):
        super().__init__()
        if not (0.0 < ratio <= 1.0):
            raise ValueError(f"sampling ratio must be in (0, 1], got {ratio}")
        if grid_size < 1 or padding < 0 or not sigma > 0:
            raise ValueError(
                f"invalid sampler grid: grid_size={grid_size} (>= 1), padding={padding} (>= 0), "
                f"sigma={sigma} (> 0)"
            )
        if not saliency_bound >= 0:
            raise ValueError(f"saliency_bound must be >= 0 (0: unbounded), got {saliency_bound}")
        self.ratio = float(ratio)
        # The ratio as a fraction of ints: torch.compile(dynamic=True) makes float attributes
        # symbolic, and a size computed from a symbolic float cannot cross a checkpoint.
        fraction = Fraction(self.ratio).limit_denominator(1 << 16)
        self._ratio_num, self._ratio_den = fraction.numerator, fraction.denominator
        self.grid_size = int(grid_size)
        self.padding = int(padding)
        self.sigma = float(sigma)
        self.uniform = bool(uniform)
        self.saliency_bound = float(saliency_bound)
        if not self.uniform:
            self.saliency_conv = SaliencyConv(in_channels, 1, kernel_size=1, bias=False)
            nn.init.zeros_(self.saliency_conv.weight)

    def __prepare_scriptable__(self):
        # torch.jit.script calls this on every submodule before compiling: fail at once
        # with the supported export routes (see export_guards).
        refuse_scripting(self)

    def extra_repr(self):
        return (f"ratio={self.ratio}, grid_size={self.grid_size}, padding={self.padding}, "
                f"sigma={self.sigma}, uniform={self.uniform}, saliency_bound={self.saliency_bound}")

    def out_size(self, h: int, w: int) -> Tuple[int, int]:
        # torch.export keeps the float maths (its sizes must not alias the next stage's:
        # the exported graph would compute one from the other, wrong outside its range)
        exporting = getattr(torch.compiler, "is_exporting", lambda: False)()
        if not exporting and (torch.compiler.is_compiling() or isinstance(h, torch.SymInt)):
            # round(ratio * n) half up in integer maths, as sampled_size for these ratios
            p, q = self._ratio_num, self._ratio_den
            return tuple(torch.sym_max(1, (2 * p * n + q) // (2 * q)) for n in (h, w))
        return sampled_size(h, self.ratio), sampled_size(w, self.ratio)

    def _lattice(self, in_size, valid_size, device) -> Lattice:
        """The grid's size-only tensors; ``valid_size``: None, ``(N, 2)`` sizes or the
        stage's :class:`~ssb_det.layers.lattice.Regions` (shared by its blocks)."""
        return self._regions(valid_size, device).lattice(
            tuple(in_size), self.out_size(*in_size), self.ratio, self.grid_size, device)

    @staticmethod
    def _regions(valid_size, device) -> Regions:
        if isinstance(valid_size, Regions):
            return valid_size
        return Regions(None if valid_size is None else as_grid_tensor(valid_size, device))

    def saliency(self, x: torch.Tensor, valid_size: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``(N, G, G)`` saliency distribution in grid precision (sums to 1 per image).

        Args:
            x (Tensor): ``(N, C, H, W)`` features.
            valid_size (Tensor or None): ``(N, 2)`` rows and columns of each image's region;
                the saliency is pooled over that region only. None: the whole map.
        """
        n, g = x.shape[0], self.grid_size
        if self.uniform:
            return to_grid_dtype(torch.full((n, g, g), 1.0 / (g * g), device=x.device))
        with autocast_off(x.device.type):
            lat = self._lattice(x.shape[-2:], valid_size, x.device)
            return torch.softmax(self._logits(x, lat), dim=1).view(n, g, g)

    def logits(self, x: torch.Tensor, valid_size: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``(N, G * G)`` pooled saliency logits (bounded, if ``saliency_bound``) in grid
        precision: :meth:`saliency` is their softmax. For analysis, where the softmax of
        large logits would underflow.

        Args:
            x (Tensor): ``(N, C, H, W)`` features.
            valid_size (Tensor or None): as :meth:`forward`.
        """
        if self.uniform:
            raise ValueError("a uniform sampler (uniform=True) has no saliency logits")
        with autocast_off(x.device.type):
            return self._logits(x, self._lattice(x.shape[-2:], valid_size, x.device))

    def _logits(self, x, lat: Lattice):
        """:meth:`logits` over the regions of ``lat`` (its pooling windows; none: the map)."""
        g = self.grid_size
        # A 1x1 conv without bias commutes with average pooling, so either can come first.
        # Half-precision features are pooled first and the conv runs on the G x G map in
        # float32 (half-precision logits overflow for large weights). Float32/64 features are
        # convolved first: the 1-channel conv reads the map once at memory speed, while
        # pooling f channels into overlapping adaptive windows is several times slower.
        # The conv is called as a module (hooks, fvcore); it computes in its input's dtype.
        conv = self.saliency_conv
        full_precision = x.dtype in (torch.float32, torch.float64)
        dtype = x.dtype if full_precision else torch.promote_types(x.dtype, torch.float32)
        if lat.pool_rows is None:
            if full_precision:
                logits = F.adaptive_avg_pool2d(conv(x), (g, g))
            else:
                logits = conv(F.adaptive_avg_pool2d(x, (g, g)).to(dtype))
        elif full_precision:  # the same windows, over each image's region
            c = conv(x).to(lat.pool_rows.dtype).squeeze(1)  # (N, H, W), no reshape to export
            logits = torch.bmm(torch.bmm(lat.pool_rows, c), lat.pool_cols)
        else:
            rows, cols = lat.pool_rows[:, None].to(x.dtype), lat.pool_cols[:, None].to(x.dtype)
            logits = conv((rows @ x @ cols).to(dtype))
        # nan_to_num: features of a diverged run (NaN/Inf) must still give a valid grid, so
        # that the NaN reaches the loss and Detectron2 reports the divergence, instead of
        # NaN positions crashing the interpolation's indexing.
        logits = torch.nan_to_num(to_grid_dtype(logits).flatten(1))
        if self.saliency_bound > 0:
            logits = self.saliency_bound * torch.tanh(logits / self.saliency_bound)
        return logits

    def forward(self, x: torch.Tensor, valid_size: Optional[torch.Tensor] = None):
        """Build the grid for feature map ``x`` (``(N, C, H, W)``).

        Args:
            x (Tensor): the features the saliency is predicted from.
            valid_size (Tensor or None): ``(N, 2)`` rows and columns of each image's region
                of a padded batch (clamped to ``[1, H] x [1, W]``); each image is then
                sampled as if it were alone. None: every image fills the map. A stage may
                pass a :class:`~ssb_det.layers.lattice.Regions` of those sizes instead, shared
                by its blocks.

        Returns:
            Grid: call ``.sample`` / ``.inverse`` on it.
        """
        with autocast_off(x.device.type):
            regions = self._regions(valid_size, x.device)
            lat = self._lattice(x.shape[-2:], regions, x.device)
            if self.uniform:
                return self._uniform_grid(x.shape[0], lat, x.dtype)
            saliency = torch.softmax(self._logits(x, lat), dim=1)
            operator = regions.operator(self.grid_size, self.padding, self.sigma,
                                        saliency.device, saliency.dtype)
            knots, steps = separable_knots(saliency, self.padding, self.sigma, operator)
            return SeparableGrid.of_lattice(knots, steps, lat, x.dtype)

    def _uniform_grid(self, n: int, lat: Lattice, dtype):
        g = self.grid_size
        knots = torch.arange(g + 1, device=lat.zero.device, dtype=lat.zero.dtype) / g
        return SeparableGrid.of_lattice(knots.expand(n, 2, g + 1), knots.diff().expand(n, 2, g),
                                        lat, dtype)

    def grid_from_saliency(self, saliency: torch.Tensor, in_size: Tuple[int, int],
                           valid_size: Optional[torch.Tensor] = None):
        """The sampling grid of a saliency distribution (what :meth:`forward` returns).

        Args:
            saliency (Tensor): ``(N, G, G)``, as :meth:`saliency` returns.
            in_size (tuple[int, int]): full size ``(H, W)`` of the feature map.
            valid_size (Tensor or None): as :meth:`forward`.
        """
        with autocast_off(saliency.device.type):
            lat = self._lattice(tuple(in_size), valid_size, saliency.device)
            knots, steps = separable_knots(to_grid_dtype(saliency), self.padding, self.sigma)
            return SeparableGrid.of_lattice(knots, steps, lat)
