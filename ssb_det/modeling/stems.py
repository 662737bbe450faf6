"""Deep 3x3 stems: ResNet-RS's and the one Detectron2 projects define outside the package.

``RSStem`` is the ResNet-RS stem (``MODEL.SSB.HOST "resnet-rs"``). ``DeepLabStem`` is ``projects/DeepLab/deeplab/resnet.py``'s stem (``MODEL.RESNETS.STEM_TYPE
"deeplab"``, used by DeepLab and Panoptic-DeepLab), with the same module names, so its
checkpoints load by name. pip-installed Detectron2 does not ship ``projects/``, so the SSB
builders cannot import it from there.
"""
import fvcore.nn.weight_init as weight_init
import torch.nn.functional as F

from detectron2.layers import CNNBlockBase, Conv2d, get_norm

__all__ = ["DeepLabStem", "RSStem"]


def _add_conv3x3_stack(stem, widths, norm):
    """``conv1``, ``conv2``, ... on ``stem``: 3x3 conv + norm per ``(in, out, stride)``."""
    for i, (cin, cout, stride) in enumerate(widths, start=1):
        conv = Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False,
                      norm=get_norm(norm, cout))
        weight_init.c2_msra_fill(conv)
        stem.add_module(f"conv{i}", conv)


class DeepLabStem(CNNBlockBase):
    """Three 3x3 convs (the first stride 2; widths out/2, out/2, out) and a 3x3 stride-2
    max-pool. Output stride 4.

    Args:
        in_channels (int): image channels.
        out_channels (int): output channels (``MODEL.RESNETS.STEM_OUT_CHANNELS``; 128 in
            Panoptic-DeepLab).
        norm (str or callable): normalisation after every conv.
    """

    def __init__(self, in_channels=3, out_channels=128, norm="BN"):
        super().__init__(in_channels, out_channels, 4)
        self.in_channels = in_channels
        _add_conv3x3_stack(self, [(in_channels, out_channels // 2, 2),
                                  (out_channels // 2, out_channels // 2, 1),
                                  (out_channels // 2, out_channels, 1)], norm)

    def forward(self, x):
        for conv in (self.conv1, self.conv2, self.conv3):
            x = F.relu_(conv(x))
        return F.max_pool2d(x, kernel_size=3, stride=2, padding=1)


class RSStem(CNNBlockBase):
    """ResNet-RS deep stem: three 3x3 convs (the first stride 2) and a stride-2 3x3 conv in
    place of the max-pool. Output stride 4.

    Args:
        in_channels (int): image channels.
        out_channels (int): output channels (64 in ResNet-RS).
        stem_width (int): width of the first two convs (32 in ResNet-RS).
        norm (str or callable): normalisation after every conv.
    """

    def __init__(self, in_channels=3, out_channels=64, stem_width=32, norm="BN"):
        super().__init__(in_channels, out_channels, 4)
        self.in_channels = in_channels
        _add_conv3x3_stack(self, [(in_channels, stem_width, 2), (stem_width, stem_width, 1),
                                  (stem_width, out_channels, 1), (out_channels, out_channels, 2)],
                           norm)

    def forward(self, x):
        for conv in (self.conv1, self.conv2, self.conv3, self.conv4):
            x = F.relu_(conv(x))
        return x
