"""Pure-PyTorch layers of SSB-ResNet: the saliency sampler and its inverse, SE, drop path."""
from .sampling import (
    SaliencySampler,
    SeparableGrid,
    add_relu_,
    grid_dtype,
    identity_knots,
    interp_knots,
    invert_knots,
    recasens_knots_1d,
    sampled_size,
)
from .misc import DropPath, SqueezeExcitation

__all__ = [k for k in globals().keys() if not k.startswith("_")]
