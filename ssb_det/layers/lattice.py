"""What a sampled map's grid needs that depends on sizes alone, made once and shared.

An SSB grid reads, besides its knots, tensors that depend only on the full and sampled sizes
and on each image's region of the batch: where each destination line sits, which source
lines an image covers, the saliency pooling windows. :class:`Lattice` holds them with both
axes of both directions stacked (rows ``sample y``, ``sample x``, ``inverse y``, ``inverse x``
of a ``(.., 4, L)`` tensor, ``L = H + W``; row ``r`` uses its first ``n_dst[r]`` lines),
so a grid builds all its positions in a handful of batched ops: on a GPU every op is a
kernel launch. Without regions (every image fills the map) a lattice depends on sizes only
and is cached per (sizes, device, dtype); with regions, :class:`Regions` makes it once per
forward for all the blocks of a stage.

Line maps (see :func:`~ssb_det.layers.sampling_maps.two_segment_positions`, the reference):
destination line ``j < v_dst`` of an image reads source coordinate
``phi((j + .5) / v_dst) * v_src - .5``, clamped to ``[0, v_src - 1]``; the remaining lines
spread over the source's padding. Written as ``clamp(phi * scale + offset, 0, upper)`` with
``scale = 0`` and ``offset`` the padding line outside the image.
"""
import functools
from typing import NamedTuple, Optional, Tuple

import torch

from .sampling_maps import recasens_operator
from .tensor_ops import grid_dtype, head, may_cache, size_tensor, tracing_or_compiling

__all__ = ["Lattice", "Regions", "lattice", "operator_key", "region_sizes_of"]


class Lattice(NamedTuple):
    """Size-only tensors of a grid (leading dim ``N``, or 1 when shared by every image).

    Attributes:
        in_size, out_size: ``(H, W)`` and ``(h, w)``.
        valid_in, valid_out: ``(N | 1, 2)`` each image's rows and columns, full and sampled.
        ramp: ``(N | 1, 2, L, G)`` ``clamp(t G - k, 0, 1)`` at the sampling rows' normalised
            positions ``t``: ``phi(t) = ramp @ steps`` for knots starting at 0.
        inverse_t: ``(N | 1, 2, L)`` normalised positions of the inverse rows.
        scale, offset, upper: ``(N | 1, 4, L)``, see the module doc (``scale`` includes the
            ``1 / G`` of the inverse rows).
        zero: 0-dim, the lower clamp bound.
        last: ``(1, 1, 4, 1)`` long, last source line of each row.
        pair: ``(1, 2, 1, 1)`` long, ``[0, 1]``: the left and right taps' offsets.
        pool_rows, pool_cols: ``(N, G, H)`` and ``(N, W, G)`` pooling of each image's
            region (see :func:`~ssb_det.layers.sampling_maps.valid_pooling_matrices`), or
            None without regions (adaptive average pooling then).
    """

    in_size: Tuple[int, int]
    out_size: Tuple[int, int]
    valid_in: torch.Tensor
    valid_out: torch.Tensor
    ramp: torch.Tensor
    inverse_t: torch.Tensor
    scale: torch.Tensor
    offset: torch.Tensor
    upper: torch.Tensor
    zero: torch.Tensor
    last: torch.Tensor
    pair: torch.Tensor
    pool_rows: Optional[torch.Tensor]
    pool_cols: Optional[torch.Tensor]


def _build(in_size, out_size, g: int, v: Optional[torch.Tensor], vo: Optional[torch.Tensor],
           device, dtype) -> Lattice:
    (H, W), (h, w) = in_size, out_size
    # H + W lines, not max(H, W): no comparison of the sizes, which torch.export would
    # guard on (a program exported with H > W would refuse W > H); the tensors are tiny
    j = torch.arange(H + W, device=device, dtype=dtype)
    ref = j[:1]
    n_src = size_tensor((H, W, h, w), ref)
    regions = v is not None
    if not regions:
        v, vo = n_src[None, :2], n_src[None, 2:]
    else:
        v, vo = v.to(dtype), vo.to(dtype)
    vd = torch.cat([vo, v], 1)[..., None]  # (N, 4, 1) valid destination lines per row
    vs = torch.cat([v, vo], 1)[..., None]  # valid source lines
    n_src = n_src[:, None]
    n_dst = torch.cat([n_src[2:], n_src[:2]])
    jh = j + 0.5
    t = (jh / vd).clamp(max=1.0)
    inside = j < vd
    # inverse rows: phi is computed as a count of cells (times G)
    scale = torch.cat([v, vo * (1.0 / g)], 1)[..., None] * inside
    # the lines past the image spread uniformly over the source's padding (its last line
    # when it has none)
    top = n_src - 1
    slope = (n_src - vs) / (n_dst - vd).clamp(min=1.0)
    outside = torch.addcmul(vs - 0.5, jh - vd, slope)
    outside = torch.clamp(outside, min=torch.minimum(vs, top), max=top)
    offset = torch.where(inside, -0.5, outside)
    upper = torch.where(inside, vs - 1, top)
    k = torch.arange(g, device=device, dtype=dtype)
    ramp = (t[:, :2, :, None] * g - k).clamp(0.0, 1.0)
    pool_rows = pool_cols = None
    if regions:
        pool_rows, pool_cols = _pooling(v, (H, W), g, j)
    last = top.long().view(1, 1, 4, 1)
    pair = torch.arange(2, device=device).view(1, 2, 1, 1)
    return Lattice((H, W), (h, w), v, vo, ramp, t[:, 2:], scale, offset, upper,
                   ref.new_zeros(()), last, pair, pool_rows, pool_cols)


def _pooling(v: torch.Tensor, in_size, g: int, lines: torch.Tensor):
    """Adaptive average pooling windows of each image's region, both axes at once: cell
    ``k`` of an axis of ``v`` valid lines averages lines ``[floor(k v / G), ceil((k+1) v / G))``
    (``F.adaptive_avg_pool2d``'s windows on the region alone)."""
    k = torch.arange(g + 1, device=v.device, dtype=v.dtype)
    bounds = v[..., None] * k / g  # (N, 2, G + 1), exact where whole (k v is)
    start, end = bounds[..., :-1].floor()[..., None], bounds[..., 1:].ceil()[..., None]
    inside = (lines >= start) & (lines < end)  # (N, 2, G, L)
    pool = inside / (end - start)
    H, W = in_size
    # views (bmm reads them as they are strided)
    return head(pool[:, 0], 2, H), head(pool[:, 1], 2, W).transpose(1, 2)


@functools.lru_cache(maxsize=256)
def _cached(in_size, out_size, g, device, dtype, inference_mode):
    return _build(in_size, out_size, g, None, None, device, dtype)


def lattice(in_size, out_size, grid_size: int, valid_in: Optional[torch.Tensor] = None,
            valid_out: Optional[torch.Tensor] = None, device=None) -> Lattice:
    """The :class:`Lattice` of a grid (in :func:`~.tensor_ops.grid_dtype`).

    Args:
        in_size, out_size: ``(H, W)`` and ``(h, w)``.
        grid_size (int): ``G``.
        valid_in, valid_out (Tensor or None): ``(N, 2)`` each image's rows and columns of the
            full and of the sampled map (whole numbers); None: every image fills the maps,
            and the lattice is cached where :func:`~.tensor_ops.may_cache` allows.
        device: where the tensors live.
    """
    if (valid_in is None) != (valid_out is None):
        raise ValueError("valid_in and valid_out must be given together")
    dtype = grid_dtype(device)
    if valid_in is None and may_cache():
        # inference-mode tensors apart: autograd cannot save them for a later backward
        return _cached(tuple(in_size), tuple(out_size), int(grid_size), torch.device(device),
                       dtype, torch.is_inference_mode_enabled())
    return _build(in_size, out_size, int(grid_size), valid_in, valid_out, device, dtype)


def region_sizes_of(sizes: torch.Tensor, in_size, ratio: float):
    """Checked ``(N, 2)`` region sizes of a full map (whole lines, at least one, at most the
    map) and of its sampled map (``sampled_size`` per image), in the grid dtype."""
    v = sizes.to(grid_dtype(sizes.device))
    full = size_tensor(tuple(in_size), v)
    v = torch.minimum(v.round().clamp(min=1.0), full)
    return v, torch.floor(v * ratio + 0.5).clamp(min=1.0)


def operator_key(grid_size: int, padding: int, sigma: float, dtype: torch.dtype) -> tuple:
    """The key of a Recasens operator in a forward's memo (see :class:`Regions`): a model
    that keeps its operators (as buffers) puts them in the memo under it."""
    return ("operator", int(grid_size), int(padding), float(sigma), dtype)


class Regions:
    """What the blocks of one stage share in one forward: each image's region of their maps
    (or none), and the lattices and Recasens operators made for them. The stage makes it
    and passes it to its blocks' samplers in place of the ``(N, 2)`` sizes, so these are made
    once for all of its blocks even where they cannot be cached (fake tensors, tracing).
    Nothing is stored on a module: one per forward and stage.

    Args:
        sizes (Tensor or None): ``(N, 2)`` rows and columns of each image's region; None:
            every image fills the maps.
        shared (dict or None): a memo of the whole forward (the backbone's), where the
            Recasens operators are kept for every stage (under :func:`operator_key`; a memo
            given with them is used as it is).
    """

    def __init__(self, sizes: Optional[torch.Tensor] = None, shared: Optional[dict] = None):
        if sizes is not None and (sizes.dim() != 2 or sizes.shape[1] != 2):
            raise ValueError(f"valid_size must have shape (N, 2), got {tuple(sizes.shape)}")
        self.sizes = sizes
        self._made = {}
        self._shared = shared if shared is not None else {}

    def lattice(self, in_size, out_size, ratio: float, grid_size: int, device) -> Lattice:
        """The lattice of a sampler of ``ratio`` and ``grid_size`` on maps of ``in_size``."""
        key = ("lattice", ratio, int(grid_size))
        made = self._made.get(key)
        # Tracing or compiling, sizes are traced or symbolic values, and comparing them would
        # record a constant or a guard: a stage's blocks share its size.
        if made is None or not tracing_or_compiling() and (
                made.in_size != tuple(in_size) or made.out_size != tuple(out_size)):
            if self.sizes is None:
                made = lattice(in_size, out_size, grid_size, device=device)
            else:
                v, vo = region_sizes_of(self.sizes, in_size, ratio)
                made = lattice(in_size, out_size, grid_size, v, vo, device)
            self._made[key] = made
        return made

    def operator(self, grid_size: int, padding: int, sigma: float, device, dtype):
        """:func:`~ssb_det.layers.sampling_maps.recasens_operator`, made once here."""
        key = operator_key(grid_size, padding, sigma, dtype)
        if key not in self._shared:
            self._shared[key] = recasens_operator(int(grid_size), int(padding), float(sigma),
                                                  device, dtype)
        return self._shared[key]
