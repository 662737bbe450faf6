"""Small building blocks: SE and drop path of the ResNet-RS host, the SSB saliency conv."""
import torch
from torch import nn


class SqueezeExcitation(nn.Module):
    """Squeeze-and-excitation (Hu et al. 2018) as used by ResNet-RS.

    Args:
        channels (int): channels of the gated feature map (a block's output, 4f).
        se_ratio (float): hidden width as a fraction of ``channels``; ResNet-RS uses 0.25,
            i.e. ``f`` hidden units for a ``4f``-channel block (timm's ``resnetrs*`` layout,
            so their ``se.fc1`` / ``se.fc2`` weights load by name).
    """

    def __init__(self, channels: int, se_ratio: float = 0.25):
        super().__init__()
        hidden = max(1, int(channels * se_ratio))
        self.fc1 = nn.Conv2d(channels, hidden, kernel_size=1)
        self.fc2 = nn.Conv2d(hidden, channels, kernel_size=1)

    def forward(self, x):
        s = x.mean(dim=(2, 3), keepdim=True)
        s = self.fc2(torch.relu(self.fc1(s)))
        return x * torch.sigmoid(s)


class DropPath(nn.Module):
    """Stochastic depth: drops a residual branch per sample while training.

    Args:
        drop_prob (float): probability of dropping the branch.
    """

    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        if not 0.0 <= drop_prob < 1.0:
            raise ValueError(f"drop path probability must be in [0, 1), got {drop_prob}")
        self.drop_prob = float(drop_prob)

    def forward(self, x):
        if not self.training or self.drop_prob == 0.0:
            return x
        keep = 1.0 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self):
        return f"drop_prob={self.drop_prob}"


class SaliencyConv(nn.Conv2d):
    """The saliency conv of a ``SaliencySampler``: an ``nn.Conv2d`` that computes in its
    input's dtype.

    The sampler picks the precision of the logits (float32 for half-precision features, see
    ``SaliencySampler.saliency``) and casts the input; the weight follows, whatever the
    module's own dtype. Being called as a module, it is seen by forward hooks and by
    fvcore's per-module counts; the parameter is ``weight`` as in ``nn.Conv2d``, so
    checkpoints are unchanged.
    """

    def forward(self, x):
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return self._conv_forward(x, self.weight.to(x.dtype), bias)
