"""SSB-ResNet(-RS) and SSB-BoTNet backbones on Detectron2's ``ResNet``, and their FPN twins.

``ssb_resnet(...)`` is the one constructor: the config builders, the LazyConfig twin and the
classification-pretraining model all call it. Stages are assembled with
``ResNet.make_stage``, so feature names are ``res2..res5`` and ``FREEZE_AT`` works as for
Detectron2's ResNet.
"""
from typing import Optional, Sequence

import torch
from torch import nn

from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY
from detectron2.modeling.backbone import FPN, ResNet
from detectron2.modeling.backbone.fpn import LastLevelMaxPool, LastLevelP6P7
from detectron2.modeling.backbone.resnet import BasicStem, BottleneckBlock, DeformBottleneckBlock

from ..config import HOSTS
from ..layers import as_grid_tensor, grid_dtype
from ..layers.lattice import Regions, operator_key
from ..layers.sampling_maps import recasens_operator
from .blocks import INVERSE_POSITIONS, RSBottleneckBlock, SSBBottleneckBlock
from .bot_blocks import BoTBlock, SSBBoTBlock
from .stems import DeepLabStem, RSStem

__all__ = [
    "BLOCKS_PER_STAGE",
    "BOTNET_S1_BLOCKS_PER_STAGE",
    "SSBResNet",
    "SampledStage",
    "image_sizes_from_padding",
    "region_sizes",
    "ssb_resnet",
    "ssb_resnet_kwargs_from_cfg",
    "build_ssb_resnet_backbone",
    "build_ssb_resnet_fpn_backbone",
    "build_ssb_retinanet_resnet_fpn_backbone",
]

# Blocks per stage res2..res5 (ResNet-RS-200 uses [3, 24, 36, 3]).
BLOCKS_PER_STAGE = {
    50: [3, 4, 6, 3],
    101: [3, 4, 23, 3],
    152: [3, 8, 36, 3],
    200: [3, 24, 36, 3],
}

# The BoTNet-S1 family (Srinivas et al. 2021, Table 13: T3 = S1-59, T6 = S1-77, T4 = S1-110,
# T5/T7 = S1-128): every c5 block is a BoT block; host "botnet" only, c5 at stride 1 with
# MODEL.RESNETS.RES5_DILATION 2. The "botnet" host also builds every depth above (BoT50, ...).
BOTNET_S1_BLOCKS_PER_STAGE = {
    59: [3, 4, 6, 6],
    77: [3, 4, 6, 12],
    110: [3, 4, 23, 6],
    128: [3, 4, 23, 12],
}

# Default attention span of the BoT blocks: the relative position tables cover maps of up to
# this many rows and columns (128 at stride 16: 2048-pixel inputs, export's default maximum).
ATTENTION_SPAN = 128


def image_sizes_from_padding(images: torch.Tensor) -> torch.Tensor:
    """Sizes of the images of a zero-padded batch: ``(N, 2)`` rows and columns (in
    :func:`~ssb_det.layers.grid_dtype`).

    Detectron2 normalises each image, ``(x - PIXEL_MEAN) / PIXEL_STD``, and then pads the batch
    with zeros (``ImageList.from_tensors``). An image's extent is its last row (column) with a
    non-zero value in any channel. A real border row is exactly zero only where every pixel
    equals ``PIXEL_MEAN``, which no whole-number pixel does with Detectron2's fractional
    means; were it to happen, that row is merely sampled like padding.

    Args:
        images (Tensor): ``(N, C, H, W)`` batch tensor.
    """
    content = images.ne(0).any(dim=1)  # (N, H, W)
    rows, cols = content.any(dim=2), content.any(dim=1)
    index_h = torch.arange(1, rows.shape[1] + 1, device=images.device)
    index_w = torch.arange(1, cols.shape[1] + 1, device=images.device)
    last_row = (rows * index_h).amax(dim=1)
    last_col = (cols * index_w).amax(dim=1)
    return torch.stack([last_row, last_col], 1).clamp(min=1).to(grid_dtype(images.device))


def region_sizes(image_sizes: torch.Tensor, stride: int) -> torch.Tensor:
    """``(N, 2)`` rows and columns each image covers in a map of ``stride``: ``ceil(v / s)``.

    Detectron2's strided layers (7x7 stem conv with padding 3, 3x3 max-pool and convs with
    padding 1, 1x1 convs) map ``v`` pixels to ``ceil(v / 2)``, and nested ceilings of
    halvings equal one ceiling of the product: an image alone gives exactly this map size,
    whatever the size of the batch it is padded into.
    """
    return torch.ceil(image_sizes / stride)


class SampledStage(nn.Sequential):
    """A ResNet stage (``nn.Sequential`` of blocks, so parameter names are unchanged) that
    tells its SSB and BoT blocks each image's region of their input.

    Args:
        blocks: the stage's blocks.
        in_stride (int): stride of the stage's input relative to the image.
    """

    def __init__(self, *blocks, in_stride: int):
        super().__init__(*blocks)
        self.in_stride = int(in_stride)

    def forward(self, x, image_sizes: Optional[torch.Tensor] = None, *,
                shared: Optional[dict] = None):
        """
        Args:
            x (Tensor): the stage input.
            image_sizes (Tensor or None): ``(N, 2)`` image sizes in input pixels, in
                :func:`~ssb_det.layers.grid_dtype`; None: every image fills the batch.
            shared (dict or None): the forward's memo, shared by the stages (see
                :class:`~ssb_det.layers.lattice.Regions`).
        """
        stride = self.in_stride
        # one per stride: the region sizes, and the lattices its SSB blocks share (Regions)
        regions, regions_stride = None, None
        for block in self:
            # ``stride``: of the block's input (an SSB block keeps it; a BoT block may halve it)
            if isinstance(block, (SSBBottleneckBlock, BoTBlock)) and regions_stride != stride:
                sizes = None if image_sizes is None else region_sizes(image_sizes, stride)
                regions, regions_stride = Regions(sizes, shared), stride
            if isinstance(block, SSBBottleneckBlock):
                x = block(x, regions)
            elif isinstance(block, BoTBlock):
                x = block(x, regions.sizes)
            else:
                x = block(x)
            stride *= block.stride
        return x


class SSBResNet(ResNet):
    """Detectron2's ``ResNet`` whose SSB blocks sample (and BoT blocks attend over) each
    image's own region of the batch.

    Detectron2 pads a batch to its largest image. A plain ResNet sees that padding only near
    an image's border; an SSB block would also pool its saliency over, and spread its
    sampling map across, the padding, so an image would be sampled differently next to larger
    batch-mates. With ``padding_aware`` each forward passes every image's size down its
    stages (:class:`SampledStage`), and each SSB block samples an image exactly as it would
    sample it alone. Nothing is stored on the modules: one model may serve several threads.

    Args:
        stem, stages, num_classes, out_features, freeze_at: as Detectron2's ``ResNet``.
        padding_aware (bool): infer the image sizes of a zero-padded batch
            (:func:`image_sizes_from_padding`) when ``forward`` is not given them.
    """

    def __init__(self, stem, stages, num_classes=None, out_features=None, freeze_at=0,
                 padding_aware: bool = True):
        super().__init__(stem, stages, num_classes=num_classes, out_features=out_features,
                         freeze_at=freeze_at)
        self.padding_aware = bool(padding_aware)
        in_stride = self.stem.stride
        for i, name in enumerate(self.stage_names):
            stage = SampledStage(*self.stages[i], in_stride=in_stride)
            setattr(self, name, stage)  # same name, same place among the children
            self.stages[i] = stage
            in_stride = self._out_feature_strides[name]
        # The Recasens operators of the samplers' settings are constants of the model: kept
        # as non-persistent buffers (not in checkpoints; moved by .to()), no forward makes
        # them, not even where nothing can be cached (fake tensors, traces, compiled graphs).
        settings = sorted({(b.sampler.grid_size, b.sampler.padding, b.sampler.sigma)
                           for stage in self.stages for b in stage
                           if isinstance(b, SSBBottleneckBlock) and not b.sampler.uniform})
        self._operators = {}
        for i, setting in enumerate(settings):
            tensors = recasens_operator(*setting, "cpu", torch.float64)
            self._operators[setting] = [f"recasens_operator{i}_{j}" for j in range(len(tensors))]
            for name, t in zip(self._operators[setting], tensors):
                self.register_buffer(name, t.clone(), persistent=False)

    def _memo(self, device) -> dict:
        """A forward's memo (see :class:`~ssb_det.layers.lattice.Regions`) holding the
        model's Recasens operators, where they are in the grid dtype (a model cast to half
        precision makes them again, in the grid dtype)."""
        memo = {}
        for setting, names in self._operators.items():
            tensors = tuple(getattr(self, name) for name in names)
            if tensors[0].dtype == grid_dtype(device):
                memo[operator_key(*setting, tensors[0].dtype)] = tensors
        return memo

    def forward(self, x: torch.Tensor, image_sizes: Optional[torch.Tensor] = None):
        """As ``ResNet.forward``.

        Args:
            x (Tensor): ``(N, C, H, W)`` batch.
            image_sizes (Tensor or None): ``(N, 2)`` height and width of each image in ``x``
                (e.g. ``ImageList.image_sizes``). None: inferred from the zero padding if
                ``padding_aware``, else every image fills ``x`` (a trace records the
                inference, so a traced model infers them from each input too).
        """
        assert x.dim() == 4, f"ResNet takes an input of shape (N, C, H, W). Got {x.shape} instead!"
        if image_sizes is None and self.padding_aware:
            image_sizes = image_sizes_from_padding(x)
        if image_sizes is not None:
            image_sizes = as_grid_tensor(image_sizes, x.device)
        outputs = {}
        x = self.stem(x)
        if "stem" in self._out_features:
            outputs["stem"] = x
        shared = self._memo(x.device)  # one per forward for every stage (see Regions)
        for name, stage in zip(self.stage_names, self.stages):
            # by keyword: hooks and tracers that replay a stage see its two inputs only
            x = stage(x, image_sizes, shared=shared)
            if name in self._out_features:
                outputs[name] = x
        if self.num_classes is not None:
            x = torch.flatten(self.avgpool(x), 1)
            x = self.linear(x)
            if "linear" in self._out_features:
                outputs["linear"] = x
        return outputs


STEM_TYPES = ("basic", "deeplab")


def _check_args(depth, host, ratios, inverse_position, stride_in_1x1, res5_dilation, enabled,
                stem_type="basic", res4_dilation=1, res5_multi_grid=None,
                deform_on_per_stage=(False,) * 4, deform_num_groups=1, drop_path_rate=0.0,
                num_groups=1, attention_span=ATTENTION_SPAN):
    errors = []
    if depth in BOTNET_S1_BLOCKS_PER_STAGE and host != "botnet":
        errors.append(f"MODEL.RESNETS.DEPTH={depth}: a BoTNet-S1 depth; it needs "
                      "MODEL.SSB.HOST 'botnet'")
    elif depth not in BLOCKS_PER_STAGE and depth not in BOTNET_S1_BLOCKS_PER_STAGE:
        errors.append(f"MODEL.RESNETS.DEPTH={depth}: SSB-ResNet supports {sorted(BLOCKS_PER_STAGE)}"
                      f" (and {sorted(BOTNET_S1_BLOCKS_PER_STAGE)} with MODEL.SSB.HOST 'botnet')")
    if host not in HOSTS:
        errors.append(f"MODEL.SSB.HOST={host!r}: must be one of {HOSTS}")
    if len(ratios) != 4:
        errors.append(f"MODEL.SSB.RATIOS={list(ratios)}: needs 4 values (res2..res5)")
    bad = [r for r in ratios if not (isinstance(r, (int, float)) and 0.0 < r <= 1.0)]
    if bad and enabled:
        errors.append(f"MODEL.SSB.RATIOS={list(ratios)}: every ratio must be in (0, 1], got {bad}")
    if inverse_position not in INVERSE_POSITIONS:
        errors.append(
            f"MODEL.SSB.INVERSE_POSITION={inverse_position!r}: must be one of {INVERSE_POSITIONS}"
        )
    if host == "resnet-rs" and stride_in_1x1:
        errors.append(
            "MODEL.RESNETS.STRIDE_IN_1X1=True with MODEL.SSB.HOST='resnet-rs': ResNet-RS strides "
            "the 3x3 conv; set MODEL.RESNETS.STRIDE_IN_1X1 False"
        )
    # Dilations as Detectron2's ResNet (res5 1 or 2) and DeepLab's (res4 1 or 2; res5 up to 4,
    # and 4 whenever res4 is dilated).
    if res4_dilation not in (1, 2):
        errors.append(f"MODEL.RESNETS.RES4_DILATION={res4_dilation}: must be 1 or 2")
    if res5_dilation not in (1, 2, 4):
        errors.append(f"MODEL.RESNETS.RES5_DILATION={res5_dilation}: must be 1, 2 or 4 (4 as "
                      "DeepLab's output stride 8)")
    elif res4_dilation == 2 and res5_dilation != 4:
        errors.append(f"MODEL.RESNETS.RES5_DILATION={res5_dilation} with "
                      "MODEL.RESNETS.RES4_DILATION=2: a dilated res4 needs RES5_DILATION 4")
    if res5_multi_grid is not None and depth in BLOCKS_PER_STAGE and (
            len(res5_multi_grid) != BLOCKS_PER_STAGE[depth][3]
            or not all(isinstance(g, int) and g >= 1 for g in res5_multi_grid)):
        errors.append(f"MODEL.RESNETS.RES5_MULTI_GRID={list(res5_multi_grid)}: needs "
                      f"{BLOCKS_PER_STAGE[depth][3]} positive integers (one per res5 block)")
    if stem_type not in STEM_TYPES:
        errors.append(f"MODEL.RESNETS.STEM_TYPE={stem_type!r}: must be one of {STEM_TYPES}")
    elif host == "resnet-rs" and stem_type != "basic":
        errors.append(f"MODEL.RESNETS.STEM_TYPE={stem_type!r} with MODEL.SSB.HOST='resnet-rs': "
                      "the ResNet-RS host has its own deep stem; set STEM_TYPE 'basic'")
    if len(deform_on_per_stage) != 4:
        errors.append(f"MODEL.RESNETS.DEFORM_ON_PER_STAGE={list(deform_on_per_stage)}: needs 4 "
                      "values (res2..res5)")
    elif any(deform_on_per_stage):
        deform = f"MODEL.RESNETS.DEFORM_ON_PER_STAGE={list(deform_on_per_stage)}"
        if host == "resnet-rs":
            errors.append(f"{deform} with MODEL.SSB.HOST='resnet-rs': deformable blocks exist "
                          "only for the 'resnet' host; set DEFORM_ON_PER_STAGE all False")
        if drop_path_rate > 0:
            errors.append(f"{deform} with MODEL.SSB.DROP_PATH_RATE={drop_path_rate}: "
                          "Detectron2's deformable blocks have no stochastic depth")
        # A stage is either deformable (Detectron2's DeformBottleneckBlock, every block) or
        # sampled (SSB blocks); dropping either silently would build another model.
        both = [f"res{i + 2}" for i, (d, r) in enumerate(zip(deform_on_per_stage, ratios))
                if enabled and d and isinstance(r, (int, float)) and r < 1.0]
        if both:
            errors.append(f"{deform} with MODEL.SSB.RATIOS={list(ratios)}: {', '.join(both)} "
                          "would be both deformable and sampled; set the stage's ratio to 1.0 "
                          "or its DEFORM_ON_PER_STAGE entry to False")
    if deform_num_groups < 1:
        errors.append(f"MODEL.RESNETS.DEFORM_NUM_GROUPS={deform_num_groups}: must be >= 1")
    if host == "botnet":
        errors += _botnet_errors(res5_dilation, res4_dilation, res5_multi_grid,
                                 deform_on_per_stage, num_groups, attention_span)
    if errors:
        raise ValueError("Invalid SSB-ResNet configuration:\n  " + "\n  ".join(errors))


def _botnet_errors(res5_dilation, res4_dilation, res5_multi_grid,
                   deform_on_per_stage, num_groups, attention_span):
    """What the "botnet" host refuses: c5's global attention has no dilation, groups or
    deformable offsets. (Its width, 8x res2's bottleneck, always splits into 4 heads.)"""
    host = "with MODEL.SSB.HOST='botnet'"
    errors = []
    if res5_dilation not in (1, 2) or res4_dilation != 1:
        errors.append(f"MODEL.RESNETS.RES4_DILATION={res4_dilation}, RES5_DILATION="
                      f"{res5_dilation} {host}: c5 attends globally, so only RES5_DILATION 2 "
                      "(c5 at stride 1: BoTNet-S1) or 1 (BoT50) mean something; RES4_DILATION 1")
    if res5_multi_grid is not None:
        errors.append(f"MODEL.RESNETS.RES5_MULTI_GRID {host}: attention has no dilation; "
                      "remove it")
    if len(deform_on_per_stage) == 4 and deform_on_per_stage[3]:
        errors.append(f"MODEL.RESNETS.DEFORM_ON_PER_STAGE={list(deform_on_per_stage)} {host}: "
                      "res5 is made of attention blocks; set its entry to False")
    if num_groups != 1:
        errors.append(f"MODEL.RESNETS.NUM_GROUPS={num_groups} {host}: c5's attention has no "
                      "groups; set NUM_GROUPS 1")
    if attention_span < 1:
        errors.append(f"MODEL.SSB.ATTENTION_SPAN={attention_span}: must be >= 1")
    return errors


def ssb_resnet(
    *,
    depth: int = 50,
    in_channels: int = 3,
    host: str = "resnet",
    enabled: bool = True,
    ratios: Optional[Sequence[float]] = None,
    norm="FrozenBN",
    stem_out_channels: int = 64,
    stem_width: int = 32,
    res2_out_channels: int = 256,
    num_groups: int = 1,
    width_per_group: int = 64,
    stride_in_1x1: bool = True,
    res5_dilation: int = 1,
    res4_dilation: int = 1,
    res5_multi_grid: Optional[Sequence[int]] = None,
    stem_type: str = "basic",
    deform_on_per_stage: Sequence[bool] = (False, False, False, False),
    deform_modulated: bool = False,
    deform_num_groups: int = 1,
    out_features=("res2", "res3", "res4", "res5"),
    freeze_at: int = 0,
    grid_size: int = 31,
    grid_padding: int = 30,
    kernel_sigma: float = 5.5,
    uniform: bool = False,
    saliency_bound: float = 0.0,
    inverse_position: str = "after_conv3",
    se_ratio: float = 0.25,
    drop_path_rate: float = 0.0,
    memory_efficient: bool = True,
    padding_aware: bool = True,
    attention_span: int = ATTENTION_SPAN,
) -> ResNet:
    """Build an SSB-ResNet (or, with ``enabled=False``, its plain host) as a Detectron2 ``ResNet``.

    Args:
        depth (int): 50, 101, 152 or 200.
        in_channels (int): image channels.
        host (str): ``"resnet"`` (Detectron2's ResNet), ``"resnet-rs"`` (deep stem,
            ResNet-D shortcut, SE, stochastic depth) or ``"botnet"`` (Detectron2's ResNet
            whose res5 blocks are :class:`BoTBlock`: BoT50, ..., and with ``res5_dilation``
            2 the BoTNet-S1 family, depths 59/77/110/128).
        enabled (bool): use SSB blocks; False gives the plain host, block for block.
        ratios (Sequence[float] or None): sampling ratio per stage res2..res5; stride-1
            blocks of a stage with ratio < 1 become :class:`SSBBottleneckBlock`; with the
            "botnet" host a res5 ratio < 1 makes every res5 block a :class:`SSBBoTBlock`.
            None: 0.5 for res2-res4, and for res5 1.0 (0.5 with the "botnet" host).
        norm (str or callable): normalisation (``"FrozenBN"``, ``"BN"``, ``"SyncBN"``,
            ``"GN"``, ...), as ``MODEL.RESNETS.NORM``.
        stem_out_channels (int): stem output channels.
        stem_width (int): width of the first two convs of the ResNet-RS stem.
        res2_out_channels (int): output channels of res2 (doubling per stage).
        num_groups (int): groups of the 3x3 convs.
        width_per_group (int): bottleneck width per group.
        stride_in_1x1 (bool): MSRA convention, stride on the first 1x1 of strided blocks.
        res5_dilation (int): 1 or 2 (dilated res5 keeps stride 16); 4 with DeepLab's
            ``res4_dilation`` 2 (output stride 8).
        res4_dilation (int): 1 or 2, as DeepLab's ``MODEL.RESNETS.RES4_DILATION``.
        res5_multi_grid (Sequence[int] or None): DeepLab's ``MODEL.RESNETS.RES5_MULTI_GRID``:
            res5 block ``i`` has dilation ``res5_dilation * res5_multi_grid[i]``; None: 1s.
        stem_type (str): ``"basic"`` (Detectron2's ``BasicStem``) or ``"deeplab"``
            (:class:`~ssb_det.modeling.stems.DeepLabStem`), as DeepLab's
            ``MODEL.RESNETS.STEM_TYPE``; the ``"resnet-rs"`` host has its own stem.
        deform_on_per_stage (Sequence[bool]): per stage res2..res5, every block is Detectron2's
            ``DeformBottleneckBlock`` (as ``build_resnet_backbone``); such a stage must not be
            sampled (ratio 1.0). Running it needs Detectron2's C++ extension.
        deform_modulated, deform_num_groups: as ``MODEL.RESNETS.DEFORM_MODULATED`` and
            ``DEFORM_NUM_GROUPS``.
        out_features (Sequence[str]): features to return, e.g. ``["res2", ..., "res5"]``.
        freeze_at (int): stages to freeze (0 none, 1 the stem, 2 stem and res2, ...), as
            Detectron2's ResNet: a frozen stage is frozen whole, its saliency convs included.
            So with ``FREEZE_AT 2`` (Detectron2's default for ImageNet starts) res2's
            zero-initialised saliency convs stay at zero and res2 samples uniformly; use
            ``FREEZE_AT 1`` to learn where res2 samples. Kept so because the documented
            accuracy runs (docs/accuracy.md) were trained so, and because a frozen stage
            of an SSB-pretrained backbone keeps its learned sampling.
        grid_size, grid_padding, kernel_sigma, uniform, saliency_bound, inverse_position: sampler
            options, see ``MODEL.SSB`` in :mod:`ssb_det.config`.
        se_ratio (float): SE ratio of the ResNet-RS host (ignored by the plain host).
        drop_path_rate (float): stochastic depth of the last block, linear from 0.
        memory_efficient (bool): SSB blocks recompute their sampling passes and conv3 in
            backward instead of storing them.
        padding_aware (bool): SSB blocks sample each image of a zero-padded batch within its
            own size, and BoT blocks attend within it (see :class:`SSBResNet`).
        attention_span (int): largest side of a map the BoT blocks attend over (their
            relative position tables are this long); the "botnet" host only.

    Returns:
        ResNet: a Detectron2 backbone with ``res2..res5`` features.
    """
    if ratios is None:
        ratios = (0.5, 0.5, 0.5, 0.5 if host == "botnet" else 1.0)
    ratios = list(ratios)
    deform_on_per_stage = list(deform_on_per_stage)
    _check_args(depth, host, ratios, inverse_position, stride_in_1x1, res5_dilation, enabled,
                stem_type=stem_type, res4_dilation=res4_dilation, res5_multi_grid=res5_multi_grid,
                deform_on_per_stage=deform_on_per_stage, deform_num_groups=deform_num_groups,
                drop_path_rate=drop_path_rate, num_groups=num_groups,
                attention_span=attention_span)
    rs = host == "resnet-rs"
    if rs:
        stem = RSStem(in_channels, stem_out_channels, stem_width=stem_width, norm=norm)
        plain_block = RSBottleneckBlock
    else:
        stem_class = DeepLabStem if stem_type == "deeplab" else BasicStem
        stem = stem_class(in_channels, stem_out_channels, norm=norm)
        # Detectron2's own block, unless stochastic depth asks for the block that has it
        # (RSBottleneckBlock without SE/avg-down computes the same, with the same names).
        plain_block = BottleneckBlock if drop_path_rate == 0 else RSBottleneckBlock

    num_blocks = {**BLOCKS_PER_STAGE, **BOTNET_S1_BLOCKS_PER_STAGE}[depth]
    total_blocks = sum(num_blocks)
    block_index = 0
    in_ch, out_ch = stem_out_channels, res2_out_channels
    bottleneck = num_groups * width_per_group
    stages = []
    for idx, stage_idx in enumerate(range(2, 6)):
        # A dilated stage keeps its input's stride (Detectron2's res5, DeepLab's res4/res5).
        dilation = {4: res4_dilation, 5: res5_dilation}.get(stage_idx, 1)
        first_stride = 1 if idx == 0 or dilation > 1 else 2
        strides = [first_stride] + [1] * (num_blocks[idx] - 1)
        grid = res5_multi_grid if stage_idx == 5 and res5_multi_grid is not None else None
        dilations = [dilation * g for g in grid] if grid else [dilation] * num_blocks[idx]
        common = dict(bottleneck_channels=bottleneck, num_groups=num_groups, norm=norm,
                      stride_in_1x1=stride_in_1x1)
        stage_block = plain_block
        if deform_on_per_stage[idx]:  # as build_resnet_backbone: the whole stage
            stage_block = DeformBottleneckBlock
            common.update(deform_modulated=deform_modulated, deform_num_groups=deform_num_groups)
        if rs:
            common.update(se_ratio=se_ratio, avg_down=True)
        drop = [drop_path_rate * (block_index + i) / max(total_blocks - 1, 1)
                for i in range(num_blocks[idx])]
        block_index += num_blocks[idx]
        sampled = enabled and ratios[idx] < 1.0
        if host == "botnet" and stage_idx == 5:
            stages.append(_bot_stage(in_ch, out_ch, bottleneck, norm, strides, drop, sampled,
                                     ratios[idx], attention_span, grid_size=grid_size,
                                     grid_padding=grid_padding, kernel_sigma=kernel_sigma,
                                     uniform=uniform, saliency_bound=saliency_bound))
            break  # res5 is the last stage
        ssb_kwargs = dict(sampling_ratio=ratios[idx], grid_size=grid_size,
                          grid_padding=grid_padding, kernel_sigma=kernel_sigma,
                          uniform=uniform, saliency_bound=saliency_bound,
                          inverse_position=inverse_position, memory_efficient=memory_efficient)
        # Consecutive runs of one block class, each made by ResNet.make_stage: strided blocks
        # stay plain bottlenecks, stride-1 blocks of a sampled stage are SSB blocks.
        blocks, i = [], 0
        while i < len(strides):
            use_ssb = sampled and strides[i] == 1
            j = i
            while j < len(strides) and (sampled and strides[j] == 1) == use_ssb:
                j += 1
            block_class = SSBBottleneckBlock if use_ssb else stage_block
            kwargs = dict(common, stride_per_block=strides[i:j], dilation_per_block=dilations[i:j])
            if block_class not in (BottleneckBlock, DeformBottleneckBlock):
                kwargs["drop_path_per_block"] = drop[i:j]
            if use_ssb:
                kwargs.update(ssb_kwargs)
            blocks += ResNet.make_stage(block_class, j - i, in_channels=in_ch,
                                        out_channels=out_ch, **kwargs)
            in_ch = out_ch
            i = j
        stages.append(blocks)
        out_ch *= 2
        bottleneck *= 2
    # BoT blocks need each image's region as much as SSB blocks do (the attention is global).
    if any(isinstance(b, (SSBBottleneckBlock, BoTBlock)) for stage in stages for b in stage):
        return SSBResNet(stem, stages, out_features=list(out_features), freeze_at=freeze_at,
                         padding_aware=padding_aware)
    return ResNet(stem, stages, out_features=list(out_features), freeze_at=freeze_at)


def _bot_stage(in_ch, out_ch, bottleneck, norm, strides, drop, sampled, ratio, attention_span,
               **sampler_kwargs):
    """The res5 stage of the "botnet" host: BoT blocks, or SSB-BoT blocks if ``sampled``."""
    kwargs = dict(bottleneck_channels=bottleneck, norm=norm, num_heads=4,
                  attention_span=attention_span, stride_per_block=strides,
                  drop_path_per_block=drop)
    if sampled:
        kwargs.update(sampling_ratio=ratio, **sampler_kwargs)
    return ResNet.make_stage(SSBBoTBlock if sampled else BoTBlock, len(strides),
                             in_channels=in_ch, out_channels=out_ch, **kwargs)


# Every MODEL.RESNETS key that Detectron2 (config/defaults.py) and its projects
# (projects/DeepLab's add_deeplab_config) define; the SSB builders honour each of them.
RESNETS_KEYS = (
    "DEPTH", "OUT_FEATURES", "NUM_GROUPS", "NORM", "WIDTH_PER_GROUP", "STRIDE_IN_1X1",
    "RES5_DILATION", "RES2_OUT_CHANNELS", "STEM_OUT_CHANNELS", "DEFORM_ON_PER_STAGE",
    "DEFORM_MODULATED", "DEFORM_NUM_GROUPS", "STEM_TYPE", "RES4_DILATION", "RES5_MULTI_GRID",
)


def ssb_resnet_kwargs_from_cfg(cfg, in_channels: int = 3) -> dict:
    """The :func:`ssb_resnet` arguments a Detectron2 config describes.

    Args:
        cfg (CfgNode): a config with ``MODEL.SSB`` (see :func:`ssb_det.add_ssb_config`).
        in_channels (int): image channels.
    """
    r, s = cfg.MODEL.RESNETS, cfg.MODEL.SSB
    unknown = sorted(set(r) - set(RESNETS_KEYS))
    if unknown:
        raise ValueError(
            f"MODEL.RESNETS.{', MODEL.RESNETS.'.join(unknown)}: not a key the SSB builders know, "
            "so it would be ignored; they read every key that Detectron2 and its projects "
            f"define ({', '.join(RESNETS_KEYS)}). Remove it, or build this backbone with the "
            "builder that defines it"
        )
    return dict(
        depth=r.DEPTH, in_channels=in_channels, host=s.HOST, enabled=s.ENABLED,
        ratios=list(s.RATIOS), norm=r.NORM, stem_out_channels=r.STEM_OUT_CHANNELS,
        stem_width=s.STEM_WIDTH, res2_out_channels=r.RES2_OUT_CHANNELS,
        num_groups=r.NUM_GROUPS, width_per_group=r.WIDTH_PER_GROUP,
        stride_in_1x1=r.STRIDE_IN_1X1, res5_dilation=r.RES5_DILATION,
        deform_on_per_stage=list(r.DEFORM_ON_PER_STAGE), deform_modulated=r.DEFORM_MODULATED,
        deform_num_groups=r.DEFORM_NUM_GROUPS,
        # Keys of projects/DeepLab's add_deeplab_config (DeepLab, Panoptic-DeepLab); absent
        # from a plain Detectron2 config, where their defaults build Detectron2's ResNet.
        stem_type=r.get("STEM_TYPE", "basic"), res4_dilation=r.get("RES4_DILATION", 1),
        res5_multi_grid=r.get("RES5_MULTI_GRID", None),
        out_features=list(r.OUT_FEATURES), freeze_at=cfg.MODEL.BACKBONE.FREEZE_AT,
        grid_size=s.GRID_SIZE, grid_padding=s.GRID_PADDING, kernel_sigma=s.KERNEL_SIGMA,
        uniform=s.UNIFORM, saliency_bound=s.SALIENCY_BOUND,
        inverse_position=s.INVERSE_POSITION, se_ratio=s.SE_RATIO,
        drop_path_rate=s.DROP_PATH_RATE, memory_efficient=s.MEMORY_EFFICIENT,
        padding_aware=s.PADDING_AWARE,
        attention_span=s.ATTENTION_SPAN,
    )


def _require_ssb_cfg(cfg):
    if "SSB" not in cfg.MODEL:
        raise KeyError(
            "cfg.MODEL.SSB is missing: call ssb_det.add_ssb_config(cfg) before merging an SSB "
            "config file or building an SSB backbone"
        )


@BACKBONE_REGISTRY.register()
def build_ssb_resnet_backbone(cfg, input_shape: ShapeSpec):
    """Create an SSB-ResNet(-RS) from config (``MODEL.BACKBONE.NAME: build_ssb_resnet_backbone``).

    Args:
        cfg (CfgNode): config with ``MODEL.RESNETS`` and ``MODEL.SSB``.
        input_shape (ShapeSpec): input image shape (channels are used).

    Returns:
        ResNet: with features ``MODEL.RESNETS.OUT_FEATURES``.
    """
    _require_ssb_cfg(cfg)
    return ssb_resnet(**ssb_resnet_kwargs_from_cfg(cfg, input_shape.channels))


@BACKBONE_REGISTRY.register()
def build_ssb_resnet_fpn_backbone(cfg, input_shape: ShapeSpec):
    """SSB-ResNet with FPN, P2-P6 (for Faster/Mask R-CNN), as ``build_resnet_fpn_backbone``.

    Args:
        cfg (CfgNode): config with ``MODEL.RESNETS``, ``MODEL.SSB`` and ``MODEL.FPN``.
        input_shape (ShapeSpec): input image shape.

    Returns:
        FPN: a Detectron2 FPN backbone (``size_divisibility`` 32).
    """
    bottom_up = build_ssb_resnet_backbone(cfg, input_shape)
    return FPN(
        bottom_up=bottom_up,
        in_features=cfg.MODEL.FPN.IN_FEATURES,
        out_channels=cfg.MODEL.FPN.OUT_CHANNELS,
        norm=cfg.MODEL.FPN.NORM,
        top_block=LastLevelMaxPool(),
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )


@BACKBONE_REGISTRY.register()
def build_ssb_retinanet_resnet_fpn_backbone(cfg, input_shape: ShapeSpec):
    """SSB-ResNet with FPN, P3-P7 (for RetinaNet), as ``build_retinanet_resnet_fpn_backbone``.

    Args:
        cfg (CfgNode): config with ``MODEL.RESNETS``, ``MODEL.SSB`` and ``MODEL.FPN``.
        input_shape (ShapeSpec): input image shape.

    Returns:
        FPN: a Detectron2 FPN backbone.
    """
    bottom_up = build_ssb_resnet_backbone(cfg, input_shape)
    out_channels = cfg.MODEL.FPN.OUT_CHANNELS
    in_channels_p6p7 = bottom_up.output_shape()["res5"].channels
    return FPN(
        bottom_up=bottom_up,
        in_features=cfg.MODEL.FPN.IN_FEATURES,
        out_channels=out_channels,
        norm=cfg.MODEL.FPN.NORM,
        top_block=LastLevelP6P7(in_channels_p6p7, out_channels),
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )
