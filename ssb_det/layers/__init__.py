"""Pure-PyTorch layers of SSB-ResNet: the saliency sampler and its inverse, SE, drop path."""
from .sampling import (
    NonSeparableGrid,
    SaliencySampler,
    SeparableGrid,
    identity_knots,
    interp_knots,
    invert_knots,
    linear_resample,
    recasens_knots_1d,
    recasens_knots_2d,
    sampled_size,
)
from .misc import DropPath, SaliencyConv, SqueezeExcitation

__all__ = [k for k in globals().keys() if not k.startswith("_")]
