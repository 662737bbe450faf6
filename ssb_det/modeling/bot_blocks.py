"""The blocks of the BoTNet host: BoT (bottleneck with global self-attention in place of the
3x3 conv) and SSB-BoT (the attention runs on a saliency-sampled map).

Parameter names follow Detectron2's ``BottleneckBlock`` (``conv1``, ``conv3``, ``shortcut``)
plus ``attn`` (the MHSA) and ``attn_norm`` (its BN), so BoT weights load into SSB-BoT by name;
only the saliency convs (``sampler.saliency_conv``) are new.
"""
from typing import Optional

import torch
import torch.nn.functional as F
from detectron2.layers import CNNBlockBase, Conv2d, get_norm
from fvcore.nn import weight_init

from ..layers import DropPath, RelPosSelfAttention2d, SaliencySampler
from ..layers.attention import key_mask
from .blocks import blocks_by_stage

__all__ = ["BoTBlock", "SSBBoTBlock", "learned_ssb_bot_blocks"]


def _pool_region(y: torch.Tensor, valid_size: Optional[torch.Tensor]) -> torch.Tensor:
    """BoTNet's 2x2 average pooling after the attention of a strided block, to
    ``ceil(H / 2)`` as Detectron2's strided convs; with ``valid_size``, averaged over each
    image's region only, so a window at the border of a padded image sees what it sees alone."""
    pool = dict(kernel_size=2, stride=2, ceil_mode=True, count_include_pad=False)
    if valid_size is None:
        return F.avg_pool2d(y, **pool)
    H, W = y.shape[-2:]
    inside = key_mask(valid_size, H, W).view(-1, 1, H, W).to(y.dtype)
    return F.avg_pool2d(y * inside, **pool) / F.avg_pool2d(inside, **pool).clamp(min=1e-6)


class BoTBlock(CNNBlockBase):
    """Bottleneck Transformer block (BoTNet's c5 block).

    ``relu(bn(conv1(x)))``, multi-head self-attention over all positions with relative
    position logits (then, if strided, a 2x2 average pooling), BN and ReLU, ``conv3`` + BN,
    plus the shortcut. The stride sits after the attention (BoTNet), never on ``conv1``.

    Args:
        in_channels (int), out_channels (int), bottleneck_channels (int): as Detectron2's
            ``BottleneckBlock``; ``bottleneck_channels`` is the attention width.
        stride (int): 1 or 2.
        norm (str or callable): normalisation of every conv and of the attention output.
        num_heads (int): attention heads (BoTNet: 4).
        attention_span (int): largest side of the map the attention runs on.
        drop_path (float): stochastic-depth probability of the residual branch.
    """

    def __init__(self, in_channels, out_channels, *, bottleneck_channels, stride=1, norm="BN",
                 num_heads=4, attention_span=128, drop_path=0.0):
        if stride not in (1, 2):
            raise ValueError(f"a BoT block has stride 1 or 2, got {stride}")
        super().__init__(in_channels, out_channels, stride)
        self.shortcut = None
        if in_channels != out_channels or stride != 1:
            self.shortcut = Conv2d(in_channels, out_channels, kernel_size=1, stride=stride,
                                   bias=False, norm=get_norm(norm, out_channels))
        self.conv1 = Conv2d(in_channels, bottleneck_channels, kernel_size=1, bias=False,
                            norm=get_norm(norm, bottleneck_channels))
        self.attn = RelPosSelfAttention2d(bottleneck_channels, num_heads, attention_span,
                                          span_name="MODEL.SSB.ATTENTION_SPAN "
                                                    "(ssb_resnet(attention_span=...))")
        self.attn_norm = get_norm(norm, bottleneck_channels)
        self.conv3 = Conv2d(bottleneck_channels, out_channels, kernel_size=1, bias=False,
                            norm=get_norm(norm, out_channels))
        for layer in (self.conv1, self.conv3, self.shortcut):
            if layer is not None:
                weight_init.c2_msra_fill(layer)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else None

    def project(self, x):
        return x if self.shortcut is None else self.shortcut(x)

    def expand(self, b):
        """conv3 (and stochastic depth) on the residual branch."""
        out = self.conv3(b)
        return out if self.drop_path is None else self.drop_path(out)

    def forward(self, x, valid_size: Optional[torch.Tensor] = None):
        """
        Args:
            x (Tensor): ``(N, C, H, W)``.
            valid_size (Tensor or None): ``(N, 2)`` rows and columns of each image's region
                of ``x`` (the backbone passes them); the attention never attends outside it.
        """
        b = self.attn(F.relu_(self.conv1(x)), valid_size)
        if self.stride > 1:
            b = _pool_region(b, valid_size)
        b = F.relu_(self.attn_norm(b))
        return F.relu_(self.expand(b) + self.project(x))


class SSBBoTBlock(BoTBlock):
    """SSB-BoT block: the attention runs on a saliency-sampled map.

    ``a = relu(bn(conv1(x)))``; a :class:`SaliencySampler` samples ``a`` to ``h x w``; the
    attention (relative positions of ``h x w``), BN, ReLU and ``conv3`` run small.

    * stride 1: the inverse sampling restores ``H x W`` and adds the never-sampled shortcut
      (``grid.inverse_add_relu``). With ratio 1 and a zero saliency conv it computes what
      :class:`BoTBlock` computes with the same weights.
    * stride 2: the sampler takes ``a`` straight to the output size ``ceil(H / 2)`` (ratio
      1/2, where BoTNet's pooling would take it), so the attention runs on a quarter of the
      positions and no inverse is needed; the shortcut is the strided projection.

    Args:
        in_channels, out_channels, bottleneck_channels, stride, norm, num_heads,
        attention_span, drop_path: as :class:`BoTBlock`.
        sampling_ratio (float): sampled size / input size of a stride-1 block, in ``(0, 1]``
            (a strided block samples at 1/2, whatever this ratio).
        grid_size, grid_padding, kernel_sigma, uniform, saliency_bound: see
            :class:`SaliencySampler`.
    """

    def __init__(self, in_channels, out_channels, *, bottleneck_channels, stride=1, norm="BN",
                 num_heads=4, attention_span=128, drop_path=0.0, sampling_ratio=0.5,
                 grid_size=31, grid_padding=30, kernel_sigma=5.5, uniform=False,
                 saliency_bound=0.0):
        super().__init__(in_channels, out_channels, bottleneck_channels=bottleneck_channels,
                         stride=stride, norm=norm, num_heads=num_heads,
                         attention_span=attention_span, drop_path=drop_path)
        ratio = 1.0 / stride if stride > 1 else sampling_ratio
        self.sampler = SaliencySampler(bottleneck_channels, ratio, grid_size=grid_size,
                                       padding=grid_padding, sigma=kernel_sigma,
                                       uniform=uniform, saliency_bound=saliency_bound)

    def forward(self, x, valid_size: Optional[torch.Tensor] = None):
        a = F.relu_(self.conv1(x))
        grid = self.sampler(a, valid_size)
        # each image's region of the sampled map, as the grid made it (its first round(r v)
        # rows and columns)
        regions = None if valid_size is None else grid.valid_out
        b = F.relu_(self.attn_norm(self.attn(grid.sample(a), regions)))
        out = self.expand(b)
        if self.stride > 1:  # sampled to the output size: nothing to restore
            return F.relu_(out + self.project(x))
        return grid.inverse_add_relu(out, self.project(x))


def learned_ssb_bot_blocks(model: torch.nn.Module):
    """The SSB-BoT blocks of ``model`` with a learned saliency, named as
    :func:`~ssb_det.modeling.blocks.blocks_by_stage` names them (``"res5.1"``)."""
    return {name: m for name, m in blocks_by_stage(model, SSBBoTBlock).items()
            if not m.sampler.uniform}
