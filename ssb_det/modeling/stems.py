"""Stems that Detectron2 projects define outside the installed package.

``DeepLabStem`` is ``projects/DeepLab/deeplab/resnet.py``'s stem (``MODEL.RESNETS.STEM_TYPE
"deeplab"``, used by DeepLab and Panoptic-DeepLab), with the same module names, so its
checkpoints load by name. pip-installed Detectron2 does not ship ``projects/``, so the SSB
builders cannot import it from there.
"""
import fvcore.nn.weight_init as weight_init
import torch.nn.functional as F

from detectron2.layers import CNNBlockBase, Conv2d, get_norm

__all__ = ["DeepLabStem"]


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
        widths = [(in_channels, out_channels // 2, 2), (out_channels // 2, out_channels // 2, 1),
                  (out_channels // 2, out_channels, 1)]
        for i, (cin, cout, stride) in enumerate(widths, start=1):
            conv = Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False,
                          norm=get_norm(norm, cout))
            weight_init.c2_msra_fill(conv)
            self.add_module(f"conv{i}", conv)

    def forward(self, x):
        for conv in (self.conv1, self.conv2, self.conv3):
            x = F.relu_(conv(x))
        return F.max_pool2d(x, kernel_size=3, stride=2, padding=1)
