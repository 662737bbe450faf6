"""Pure-PyTorch layers of SSB-ResNet.

``tensor_ops`` (dtype and in-place helpers) <- ``sampling_maps`` (pure map maths) <-
``resample`` (CPU resampling kernels) <- ``grid`` (the :class:`Grid` interface) <-
``sampler`` (the :class:`SaliencySampler` module); ``attention``: BoTNet's
multi-head self-attention with relative position logits; ``misc``: SE and drop path;
``sampling_stats``: how far a map is from uniform.
"""
from .attention import RelPosSelfAttention2d
from .grid import Grid, SeparableGrid
from .misc import DropPath, SaliencyConv, SqueezeExcitation
from .sampler import SaliencySampler
from .sampling_maps import (
    identity_knots,
    interp_knots,
    invert_knots,
    recasens_knots_1d,
    sampled_size,
    valid_pooling_matrices,
)
from .tensor_ops import add_relu_, as_grid_tensor, grid_dtype, needs_grad, tracing_or_compiling

__all__ = [k for k in globals().keys() if not k.startswith("_")]
