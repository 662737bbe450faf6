"""Residual blocks and stems of SSB-ResNet and its ResNet-RS host.

All blocks subclass Detectron2's ``CNNBlockBase`` so they plug into ``ResNet.make_stage``,
honour ``FREEZE_AT`` (``freeze()`` turns their BN into FrozenBN) and keep Detectron2's
parameter names (``conv1``, ``conv2``, ``conv3``, ``shortcut``), so an R-50 checkpoint loads
into an SSB-R50 by name; only the saliency convs (``sampler.saliency_conv``) are new.
"""
import torch
import torch.nn.functional as F
from detectron2.layers import CNNBlockBase, Conv2d, get_norm
from fvcore.nn import weight_init
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.checkpoint import checkpoint

from ..layers import DropPath, SaliencySampler, SqueezeExcitation, add_relu_, needs_grad
from ..layers.resample import cpu_kernels

__all__ = ["RSBottleneckBlock", "SSBBottleneckBlock", "INVERSE_POSITIONS", "blocks_by_stage",
           "learned_ssb_blocks", "ssb_blocks"]

# Where an SSB block restores the full size (see SSBBottleneckBlock).
INVERSE_POSITIONS = ("after_conv3", "before_conv3")


class RSBottleneckBlock(CNNBlockBase):
    """Bottleneck block with the ResNet-RS options (Bello et al. 2021).

    With ``se_ratio=0``, ``avg_down=False`` and ``drop_path=0`` it computes exactly what
    Detectron2's ``BottleneckBlock`` computes, with the same parameter names.

    Args:
        in_channels (int): input channels.
        out_channels (int): output channels (``4f``).
        bottleneck_channels (int): width ``f`` of the 3x3 conv.
        stride (int): stride of the block.
        num_groups (int): groups of the 3x3 conv.
        norm (str or callable): normalisation of every conv (see ``get_norm``).
        stride_in_1x1 (bool): put the stride on the first 1x1 (MSRA) instead of the 3x3.
        dilation (int): dilation of the 3x3 conv.
        se_ratio (float): squeeze-excitation hidden ratio on the block output; 0 disables.
        avg_down (bool): ResNet-D shortcut: 2x2 average pool (stride) then a stride-1 1x1
            conv, instead of a strided 1x1 conv.
        drop_path (float): stochastic-depth drop probability of the residual branch.
    """

    def __init__(self, in_channels, out_channels, *, bottleneck_channels, stride=1, num_groups=1,
                 norm="BN", stride_in_1x1=False, dilation=1, se_ratio=0.0, avg_down=False,
                 drop_path=0.0):
        super().__init__(in_channels, out_channels, stride)
        self.avg_down = bool(avg_down) and stride > 1
        if in_channels != out_channels or stride != 1:
            self.shortcut = Conv2d(
                in_channels, out_channels, kernel_size=1,
                stride=1 if self.avg_down else stride, bias=False,
                norm=get_norm(norm, out_channels),
            )
        else:
            self.shortcut = None
        stride_1x1, stride_3x3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.conv1 = Conv2d(in_channels, bottleneck_channels, kernel_size=1, stride=stride_1x1,
                            bias=False, norm=get_norm(norm, bottleneck_channels))
        self.conv2 = Conv2d(bottleneck_channels, bottleneck_channels, kernel_size=3,
                            stride=stride_3x3, padding=dilation, bias=False, groups=num_groups,
                            dilation=dilation, norm=get_norm(norm, bottleneck_channels))
        self.conv3 = Conv2d(bottleneck_channels, out_channels, kernel_size=1, bias=False,
                            norm=get_norm(norm, out_channels))
        for layer in (self.conv1, self.conv2, self.conv3, self.shortcut):
            if layer is not None:
                weight_init.c2_msra_fill(layer)
        self.se = SqueezeExcitation(out_channels, se_ratio) if se_ratio > 0 else None
        self.drop_path = DropPath(drop_path) if drop_path > 0 else None

    def project(self, x):
        """The shortcut branch: ``x``, or its (ResNet-D: average-pooled) projection."""
        if self.shortcut is None:
            return x
        if self.avg_down:
            x = F.avg_pool2d(x, self.stride, self.stride, ceil_mode=True, count_include_pad=False)
        return self.shortcut(x)

    def reduce(self, x):
        """conv1 (1x1, reducing to the bottleneck width) and ReLU."""
        return F.relu_(self.conv1(x))

    def conv3x3(self, a):
        """conv2 (the 3x3) and ReLU."""
        return F.relu_(self.conv2(a))

    def expand(self, b):
        """conv3 (1x1, expanding to the output width), then SE and stochastic depth on the
        residual branch, before the shortcut is added."""
        out = self.conv3(b)
        if self.se is not None:
            out = self.se(out)
        if self.drop_path is not None:
            out = self.drop_path(out)
        return out

    def forward(self, x):
        out = self.expand(self.conv3x3(self.reduce(x)))
        return F.relu_(out + self.project(x))


class SSBBottleneckBlock(RSBottleneckBlock):
    """Spatial-sampling bottleneck (SSB) block: the 3x3 runs on a saliency-sampled map.

    ``a = relu(bn(conv1(x)))`` at full size; a :class:`SaliencySampler` predicts a sampling
    grid from ``a`` and samples it to ``round(r H) x round(r W)``; the 3x3 (and, with
    ``inverse_position="after_conv3"``, the expanding 1x1 and SE) run small; the inverse
    sampling restores exactly ``H x W`` before the never-sampled shortcut is added. So the
    block keeps its input's size and Detectron2's strides are unchanged.

    With ratio 1 and a zero saliency conv (its initialisation) it computes what
    Detectron2's ``BottleneckBlock`` computes with the same weights.

    Args:
        in_channels, out_channels, bottleneck_channels, num_groups, norm, dilation, se_ratio,
        drop_path: as :class:`RSBottleneckBlock`.
        stride (int): must be 1; strided blocks stay ordinary bottlenecks.
        stride_in_1x1 (bool): accepted for ``make_stage`` compatibility (no effect at stride 1).
        avg_down (bool): accepted for ``make_stage`` compatibility (no effect at stride 1).
        sampling_ratio (float): sampled size / full size in ``(0, 1]``.
        grid_size (int), grid_padding (int), kernel_sigma (float), uniform (bool): see
            :class:`SaliencySampler`.
        inverse_position (str): ``"after_conv3"``: conv3 (and SE) run on the sampled map and
            the inverse restores ``4f`` channels; ``"before_conv3"``: the inverse restores
            the ``f``-channel 3x3 output and conv3 runs at full size.
        memory_efficient (bool): when gradients are needed, keep only the inputs of the
            sampling passes (and of conv3 + SE with ``"after_conv3"``, unless its norm
            updates running statistics) for backward and recompute the rest there, instead
            of storing the transposed and half-restored maps: training then stores less than
            a plain bottleneck, for a small recomputation. Outputs and gradients are the
            same either way.
    """

    def __init__(self, in_channels, out_channels, *, bottleneck_channels, stride=1, num_groups=1,
                 norm="BN", stride_in_1x1=False, dilation=1, se_ratio=0.0, avg_down=False,
                 drop_path=0.0, sampling_ratio=0.5, grid_size=31, grid_padding=30,
                 kernel_sigma=5.5, uniform=False, saliency_bound=0.0,
                 inverse_position="after_conv3", memory_efficient=True):
        if stride != 1:
            raise ValueError(
                f"SSBBottleneckBlock samples stride-1 blocks only (got stride={stride}); "
                "strided blocks stay ordinary bottlenecks"
            )
        if inverse_position not in INVERSE_POSITIONS:
            raise ValueError(
                f"inverse_position must be one of {INVERSE_POSITIONS}, got {inverse_position!r}"
            )
        super().__init__(in_channels, out_channels, bottleneck_channels=bottleneck_channels,
                         stride=1, num_groups=num_groups, norm=norm, stride_in_1x1=stride_in_1x1,
                         dilation=dilation, se_ratio=se_ratio, avg_down=avg_down,
                         drop_path=drop_path)
        self.inverse_position = inverse_position
        self.memory_efficient = bool(memory_efficient)
        self.sampler = SaliencySampler(
            bottleneck_channels, sampling_ratio, grid_size=grid_size, padding=grid_padding,
            sigma=kernel_sigma, uniform=uniform, saliency_bound=saliency_bound,
        )

    def forward(self, x, valid_size=None):
        """
        Args:
            x (Tensor): ``(N, C, H, W)``.
            valid_size (Tensor or None): ``(N, 2)`` rows and columns of each image's region
                of ``x`` in a padded batch (see :class:`SaliencySampler`); None: every image
                fills the map.
        """
        a = self.reduce(x)
        grid = self.sampler(a, valid_size)
        if self.memory_efficient and (needs_grad(a) or grid.needs_grad):
            return self._forward_recomputing(a, grid, x)
        b = self.conv3x3(grid.sample(a))
        if self.inverse_position == "after_conv3":
            # The restore, the residual add and the ReLU in one call: at full size these are
            # memory passes, and the fused form makes fewer (see inverse_add_relu).
            shortcut = self.project(x)
            # The CPU kernels restore from the (h, w)-transposed layout (see expand_sampled);
            # gather + lerp keeps the map's own layout (channels-last stays channels-last).
            c = self.expand_sampled(b) if cpu_kernels(b, shortcut) else self.expand(b)
            return grid.inverse_add_relu(c, shortcut)
        return F.relu_(self.expand(grid.inverse(b)) + self.project(x))

    def expand_sampled(self, b):
        """:meth:`expand` of the sampled map, returned in the ``(h, w)``-transposed memory
        layout that the separable inverse starts from.

        conv3 and the SE gate act per pixel, so they may run on the transposed map: the copy
        that layout needs is then made of the ``f``-channel input, not of the ``4f`` output.
        """
        return self.expand(b.transpose(2, 3)).transpose(2, 3)

    def _conv3_recomputable(self) -> bool:
        # Recomputing a training-mode BatchNorm would update its running statistics twice.
        return not any(isinstance(m, _BatchNorm) and m.training for m in self.conv3.modules())

    def _expand_and_restore(self, b, grid):
        return grid.inverse(self.expand(b))

    def _forward_recomputing(self, a, grid, x):
        """The same computation, with the sampling passes (and conv3) recomputed in backward
        (``torch.utils.checkpoint``) instead of storing their intermediates."""
        b = self.conv3x3(checkpoint(grid.sample, a, use_reentrant=False))
        if self.inverse_position == "after_conv3":
            if self._conv3_recomputable():
                out = checkpoint(self._expand_and_restore, b, grid, use_reentrant=False)
            else:
                out = checkpoint(grid.inverse, self.expand(b), use_reentrant=False)
        else:
            out = self.expand(checkpoint(grid.inverse, b, use_reentrant=False))
        return add_relu_(out, self.project(x))


def blocks_by_stage(model: torch.nn.Module, types) -> dict:
    """``{name: block}`` of the blocks of ``model`` that are instances of ``types``, named by
    stage and index whatever the model around the backbone (a detector's
    ``backbone.bottom_up.``, a classifier's ``backbone.``, a ``DistributedDataParallel``
    wrapper), e.g. ``"res3.1"``."""
    return {".".join(name.split(".")[-2:]): m for name, m in model.named_modules()
            if isinstance(m, types)}


def ssb_blocks(model: torch.nn.Module):
    """:func:`blocks_by_stage` of every SSB block of ``model``."""
    return blocks_by_stage(model, SSBBottleneckBlock)


def learned_ssb_blocks(model: torch.nn.Module):
    """:func:`ssb_blocks` with a learned (non-uniform) saliency."""
    return {name: m for name, m in ssb_blocks(model).items() if not m.sampler.uniform}
