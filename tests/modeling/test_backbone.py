"""SSB-ResNet(-RS) backbones built from config: Detectron2's backbone contract."""
import os

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, build_backbone
from detectron2.modeling.backbone.resnet import BottleneckBlock, build_resnet_backbone

import ssb_det
from ssb_det.config import add_ssb_config, load_config
from ssb_det.modeling import SSBBottleneckBlock

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def make_cfg(**ssb):
    cfg = get_cfg()
    ssb_det.add_ssb_config(cfg)
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.BACKBONE.NAME = "build_ssb_resnet_fpn_backbone"
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.FPN.IN_FEATURES = ["res2", "res3", "res4", "res5"]
    for key, value in ssb.items():
        if key.isupper():
            setattr(cfg.MODEL.SSB, key, value)
    return cfg


def n_params(module, trainable_only=False):
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def test_builders_are_registered_on_import():
    for name in ("build_ssb_resnet_backbone", "build_ssb_resnet_fpn_backbone",
                 "build_ssb_retinanet_resnet_fpn_backbone"):
        assert BACKBONE_REGISTRY.get(name) is not None


def test_add_ssb_config_is_idempotent_and_every_key_documented():
    cfg = get_cfg()
    ssb_det.add_ssb_config(cfg)
    before = cfg.dump()
    ssb_det.add_ssb_config(cfg)
    assert cfg.dump() == before
    source = open(os.path.join(ROOT, "ssb_det", "config.py")).read().splitlines()
    for key in cfg.MODEL.SSB.keys():
        line = next(i for i, s in enumerate(source) if f"_C.MODEL.SSB.{key} =" in s)
        assert source[line - 1].strip().startswith("#"), f"MODEL.SSB.{key} has no comment"


@pytest.fixture(scope="module")
def r50_pair():
    torch.manual_seed(0)
    ssb = build_backbone(make_cfg())
    base = build_backbone(make_cfg(ENABLED=False))
    gen = torch.Generator().manual_seed(1)
    for m in ssb.modules():  # trained-like, peaked saliency (zero convs sample uniformly)
        if isinstance(m, SSBBottleneckBlock):
            w = m.sampler.saliency_conv.weight
            w.data.copy_(torch.randn(w.shape, generator=gen))
    return ssb, base


@pytest.mark.parametrize("size", [(97, 131), (33, 250), (1, 1), (5, 37), (64, 96)])
def test_ssb_bottom_up_shapes_equal_plain_resnet_for_odd_sizes(r50_pair, size):
    ssb, base = r50_pair
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        out_s, out_b = ssb.bottom_up(x), base.bottom_up(x)
    assert {k: v.shape for k, v in out_s.items()} == {k: v.shape for k, v in out_b.items()}
    assert all(torch.isfinite(v).all() for v in out_s.values())


@pytest.mark.parametrize("size", [(64, 96), (160, 32)])
def test_ssb_fpn_shapes_equal_plain_fpn(r50_pair, size):
    # Detectron2 pads images to size_divisibility (32) before an FPN; odd sizes are covered
    # for the bottom-up above.
    ssb, base = r50_pair
    x = torch.randn(1, 3, *size)
    with torch.no_grad():
        out_s, out_b = ssb(x), base(x)
    assert list(out_s) == ["p2", "p3", "p4", "p5", "p6"]
    assert {k: v.shape for k, v in out_s.items()} == {k: v.shape for k, v in out_b.items()}
    assert out_s["p2"].shape[-2:] == (size[0] // 4, size[1] // 4)


def test_output_shape_contract(r50_pair):
    ssb, base = r50_pair
    assert ssb.size_divisibility == 32
    assert ssb.output_shape() == base.output_shape()
    assert {k: v.stride for k, v in ssb.output_shape().items()} == {
        "p2": 4, "p3": 8, "p4": 16, "p5": 32, "p6": 64}
    assert {k: (v.channels, v.stride) for k, v in ssb.bottom_up.output_shape().items()} == {
        "res2": (256, 4), "res3": (512, 8), "res4": (1024, 16), "res5": (2048, 32)}


def test_ssb_params_equal_plain_plus_saliency_convs(r50_pair):
    ssb, base = r50_pair
    # Stride-1 blocks of res2-res4 (ratio 0.5): 3 + 3 + 5; each saliency conv is f -> 1.
    blocks = [m for m in ssb.modules() if isinstance(m, SSBBottleneckBlock)]
    assert len(blocks) == 11
    saliency = sum(b.sampler.saliency_conv.weight.numel() for b in blocks)
    assert saliency == 3 * 64 + 3 * 128 + 5 * 256
    assert n_params(ssb) == n_params(base) + saliency
    assert saliency / n_params(base) < 1e-3


def test_disabled_builder_equals_detectron2_resnet():
    torch.manual_seed(0)
    cfg = make_cfg(ENABLED=False)
    cfg.MODEL.RESNETS.NORM = "BN"
    ours = build_backbone(cfg).bottom_up.eval()
    theirs = build_resnet_backbone(cfg, ShapeSpec(channels=3)).eval()
    theirs.load_state_dict(ours.state_dict())  # strict: identical names and shapes
    assert all(type(b) is BottleneckBlock for s in ours.stages for b in s)
    x = torch.randn(1, 3, 70, 90)
    with torch.no_grad():
        for k, v in ours(x).items():
            torch.testing.assert_close(v, theirs(x)[k])


def test_r50_checkpoint_loads_by_name_into_ssb_r50(r50_pair):
    ssb, base = r50_pair
    missing, unexpected = ssb.load_state_dict(base.state_dict(), strict=False)
    assert unexpected == []
    assert missing and all(k.endswith("sampler.saliency_conv.weight") for k in missing)


@pytest.mark.parametrize("freeze_at,trainable_prefixes", [
    (0, ("stem", "res2", "res3", "res4", "res5")),
    (2, ("res3", "res4", "res5")),
    (5, ()),
])
def test_freeze_at(freeze_at, trainable_prefixes):
    cfg = make_cfg()
    cfg.MODEL.BACKBONE.FREEZE_AT = freeze_at
    bottom_up = build_backbone(cfg).bottom_up
    trainable = {n.split(".")[0] for n, p in bottom_up.named_parameters() if p.requires_grad}
    frozen = {n.split(".")[0] for n, p in bottom_up.named_parameters() if not p.requires_grad}
    assert trainable == set(trainable_prefixes)
    assert frozen.isdisjoint(trainable)
    assert frozen == {"stem", "res2", "res3", "res4", "res5"}.difference(trainable_prefixes)
    # A frozen stage is frozen whole, its saliency convs included (see ssb_resnet's
    # freeze_at): at FREEZE_AT 2 res2 keeps its zero saliency and samples uniformly.
    saliency = {n.split(".")[0]: p.requires_grad for n, p in bottom_up.named_parameters()
                if n.endswith("saliency_conv.weight")}
    assert saliency == {s: s in trainable_prefixes for s in ("res2", "res3", "res4")}


@pytest.mark.parametrize("norm", ["FrozenBN", "BN", "GN", "SyncBN"])
def test_norms(norm):
    cfg = make_cfg()
    cfg.MODEL.RESNETS.NORM = norm
    model = build_backbone(cfg).eval()
    block = model.bottom_up.res4[1]  # res2 is frozen (FREEZE_AT 2), which makes it FrozenBN
    assert isinstance(block, SSBBottleneckBlock)
    expected = {"FrozenBN": "FrozenBatchNorm2d", "BN": "BatchNorm2d", "GN": "GroupNorm",
                "SyncBN": "SyncBatchNorm"}[norm]
    assert type(block.conv1.norm).__name__ == expected
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 64))
    assert out["p2"].shape == (1, 256, 16, 16)


def test_out_features_res2_channels_and_stride_in_1x1():
    cfg = make_cfg()
    cfg.MODEL.BACKBONE.NAME = "build_ssb_resnet_backbone"
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res3", "res4"]
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 128
    cfg.MODEL.RESNETS.STRIDE_IN_1X1 = False
    model = build_backbone(cfg)
    assert not hasattr(model, "res5")  # unused stages are not built
    assert {k: v.channels for k, v in model.output_shape().items()} == {"res3": 256, "res4": 512}
    first = model.res3[0]
    assert first.conv1.stride == (1, 1) and first.conv2.stride == (2, 2)
    cfg.MODEL.RESNETS.STRIDE_IN_1X1 = True
    assert build_backbone(cfg).res3[0].conv1.stride == (2, 2)


def test_retinanet_builder_p3_to_p7():
    cfg = make_cfg()
    cfg.MODEL.BACKBONE.NAME = "build_ssb_retinanet_resnet_fpn_backbone"
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res3", "res4", "res5"]
    cfg.MODEL.FPN.IN_FEATURES = ["res3", "res4", "res5"]
    model = build_backbone(cfg)
    with torch.no_grad():
        out = model(torch.randn(1, 3, 128, 96))
    assert {k: tuple(v.shape[-2:]) for k, v in out.items()} == {
        "p3": (16, 12), "p4": (8, 6), "p5": (4, 3), "p6": (2, 2), "p7": (1, 1)}


@pytest.mark.parametrize("depth", [50, 101, 152, 200])
@pytest.mark.parametrize("host", ["resnet", "resnet-rs"])
def test_every_depth_and_host_builds(depth, host):
    cfg = make_cfg(HOST=host)
    cfg.MODEL.RESNETS.DEPTH = depth
    cfg.MODEL.RESNETS.STRIDE_IN_1X1 = host == "resnet"
    cfg.MODEL.BACKBONE.NAME = "build_ssb_resnet_backbone"
    model = build_backbone(cfg)
    from ssb_det.modeling import BLOCKS_PER_STAGE
    assert [len(s) for s in model.stages] == BLOCKS_PER_STAGE[depth]
    # stride-1 blocks of res2..res4 are SSB blocks, res5 (ratio 1) and strided ones are not
    n_ssb = sum(isinstance(b, SSBBottleneckBlock) for b in model.modules())
    counts = BLOCKS_PER_STAGE[depth]
    assert n_ssb == counts[0] + (counts[1] - 1) + (counts[2] - 1)
    if depth == 50:
        with torch.no_grad():
            out = model.eval()(torch.randn(1, 3, 64, 64))
        assert out["res5"].shape == (1, 2048, 2, 2)


def test_resnet_rs_host_structure():
    cfg = make_cfg(HOST="resnet-rs", DROP_PATH_RATE=0.1)
    cfg.MODEL.RESNETS.STRIDE_IN_1X1 = False
    cfg.MODEL.BACKBONE.NAME = "build_ssb_resnet_backbone"
    model = build_backbone(cfg)
    assert type(model.stem).__name__ == "RSStem"
    strided = model.res3[0]
    assert strided.avg_down and strided.se is not None and strided.shortcut.stride == (1, 1)
    ssb_block = model.res3[1]
    assert isinstance(ssb_block, SSBBottleneckBlock) and ssb_block.se is not None
    last = model.res5[-1]
    assert last.drop_path.drop_prob == pytest.approx(0.1)
    assert model.res2[0].drop_path is None  # linear from 0 at the first block


def test_resnet_rs_with_stride_in_1x1_is_rejected():
    cfg = make_cfg(HOST="resnet-rs")
    cfg.MODEL.RESNETS.STRIDE_IN_1X1 = True
    with pytest.raises(ValueError, match="STRIDE_IN_1X1"):
        build_backbone(cfg)


@pytest.mark.parametrize("ratios,match", [([0.0, 0.5, 0.5, 1.0], r"in \(0, 1\]"),
                                          ([0.5, 1.5, 0.5, 1.0], r"in \(0, 1\]"),
                                          ([0.5, 0.5], "needs 4 values")])
def test_invalid_ratios_raise_clear_errors(ratios, match):
    cfg = make_cfg(RATIOS=ratios)
    with pytest.raises(ValueError, match=match):
        build_backbone(cfg)


def test_invalid_host_and_depth_listed_together():
    cfg = make_cfg(HOST="vit")
    cfg.MODEL.RESNETS.DEPTH = 34
    with pytest.raises(ValueError) as err:
        build_backbone(cfg)
    assert "MODEL.SSB.HOST" in str(err.value) and "MODEL.RESNETS.DEPTH=34" in str(err.value)


def test_builder_without_add_ssb_config_explains():
    cfg = get_cfg()
    cfg.MODEL.BACKBONE.NAME = "build_ssb_resnet_fpn_backbone"
    with pytest.raises(KeyError, match="add_ssb_config"):
        build_backbone(cfg)


def test_unknown_ssb_key_is_rejected():
    cfg = make_cfg()
    with pytest.raises(AssertionError, match="Non-existent key: MODEL.SSB.RATIO"):
        cfg.merge_from_list(["MODEL.SSB.RATIO", "0.5"])  # yacs, as for any Detectron2 key


def test_lazyconfig_twin_instantiates_ssb_backbone():
    from detectron2.config import LazyConfig, instantiate

    cfg = LazyConfig.load(os.path.join(ROOT, "configs", "lazy", "mask_rcnn_ssb_R_50_FPN_1x.py"))
    cfg.model.roi_heads.num_classes = 3
    model = instantiate(cfg.model).eval()
    assert sum(isinstance(m, SSBBottleneckBlock) for m in model.modules()) == 11
    with torch.no_grad():
        out = model([{"image": torch.rand(3, 64, 80) * 255}])
    assert "instances" in out[0]
    cfg.model.backbone.bottom_up.enabled = False
    plain = instantiate(cfg.model)
    assert not any(isinstance(m, SSBBottleneckBlock) for m in plain.modules())


def test_memory_efficient_key_reaches_the_blocks():
    cfg = make_cfg(MEMORY_EFFICIENT=False)
    blocks = [m for m in build_backbone(cfg).modules() if isinstance(m, SSBBottleneckBlock)]
    assert blocks and not any(b.memory_efficient for b in blocks)
    blocks = [m for m in build_backbone(make_cfg()).modules() if isinstance(m, SSBBottleneckBlock)]
    assert all(b.memory_efficient for b in blocks)


def test_saliency_bound_key_reaches_every_sampler():
    for bound in (0.0, 1.5):
        blocks = [m for m in build_backbone(make_cfg(SALIENCY_BOUND=bound)).modules()
                  if isinstance(m, SSBBottleneckBlock)]
        assert blocks and all(b.sampler.saliency_bound == bound for b in blocks)


def test_removed_separable_key_is_refused_naming_it_and_the_fix(tmp_path):
    # The 2-D map's inverse did not converge; it was removed, and with it the key.
    assert "SEPARABLE" not in make_cfg().MODEL.SSB and "INVERSE_ITERS" not in make_cfg().MODEL.SSB
    path = tmp_path / "old.yaml"
    path.write_text("MODEL:\n  SSB:\n    SEPARABLE: True\n")
    expected = "MODEL.SSB.SEPARABLE.*removed.*delete MODEL.SSB.SEPARABLE from your config"
    with pytest.raises(KeyError, match=expected):
        load_config(str(path))
    with pytest.raises(KeyError, match=expected):  # what a Detectron2 user's own setup does
        add_ssb_config(get_cfg()).merge_from_file(str(path))
    with pytest.raises(KeyError, match=expected):
        load_config(None, ["MODEL.SSB.SEPARABLE", "False"])


def _bottom_up_cfg(**ssb):
    cfg = make_cfg(**ssb)
    cfg.MODEL.BACKBONE.NAME = "build_ssb_resnet_backbone"
    return cfg


@pytest.mark.parametrize("ratios", [[0.5, 0.5, 0.5, 1.0], [0.5, 1.0, 1.0, 1.0]])
def test_deformable_stages_are_detectron2s_deform_blocks(ratios):
    # As build_resnet_backbone: every block of a DEFORM_ON_PER_STAGE stage is a
    # DeformBottleneckBlock (constructing one needs no C++ extension; running it does).
    from detectron2.modeling.backbone.resnet import DeformBottleneckBlock

    cfg = _bottom_up_cfg(ENABLED=False, RATIOS=ratios)
    cfg.MODEL.RESNETS.DEFORM_ON_PER_STAGE = [False, True, True, True]
    cfg.MODEL.RESNETS.DEFORM_MODULATED = True
    cfg.MODEL.RESNETS.DEFORM_NUM_GROUPS = 2
    ours = build_backbone(cfg)
    theirs = build_resnet_backbone(cfg, ShapeSpec(channels=3))
    theirs.load_state_dict(ours.state_dict())  # strict: identical names and shapes
    assert [[type(b) for b in s] for s in ours.stages] == [[type(b) for b in s]
                                                          for s in theirs.stages]
    # SSB elsewhere: the sampled res2 keeps its SSB blocks beside deformable res3..res5.
    cfg.MODEL.SSB.ENABLED = True
    if ratios[1] < 1.0:
        with pytest.raises(ValueError, match=r"DEFORM_ON_PER_STAGE.*RATIOS.*res3, res4"):
            build_backbone(cfg)
        return
    stages = build_backbone(cfg).stages
    assert all(type(b) is SSBBottleneckBlock for b in stages[0])
    assert all(type(b) is DeformBottleneckBlock for s in stages[1:] for b in s)


def test_deeplab_stem_dilations_and_multi_grid_are_honoured():
    # projects/DeepLab's keys (add_deeplab_config), as Panoptic-DeepLab sets them, with the
    # output stride 8 variant: res4 dilation 2, res5 dilation 4 and multi-grid 1, 2, 4.
    cfg = _bottom_up_cfg(ENABLED=False)
    r = cfg.MODEL.RESNETS
    r.STEM_TYPE, r.STEM_OUT_CHANNELS, r.NORM = "deeplab", 128, "BN"
    r.RES4_DILATION, r.RES5_DILATION, r.RES5_MULTI_GRID = 2, 4, [1, 2, 4]
    plain = build_backbone(cfg).eval()
    assert {k: tuple(v.shape) for k, v in plain.stem.state_dict().items() if "norm" not in k} == {
        "conv1.weight": (64, 3, 3, 3), "conv2.weight": (64, 64, 3, 3),
        "conv3.weight": (128, 64, 3, 3)}
    assert [b.conv2.dilation[0] for b in plain.res4] == [2] * 6
    assert [b.conv2.dilation[0] for b in plain.res5] == [4, 8, 16]
    assert {k: v.stride for k, v in plain.output_shape().items()} == {
        "res2": 4, "res3": 8, "res4": 8, "res5": 8}
    cfg.MODEL.SSB.ENABLED = True
    ssb = build_backbone(cfg).eval()
    # A dilated stage starts at stride 1, so all its blocks are sampled, dilated 3x3s included.
    assert all(isinstance(b, SSBBottleneckBlock) for b in ssb.res4)
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        ours, theirs = ssb(x), plain(x)
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in theirs.items()}
    assert ours["res5"].shape[-2:] == (8, 12)


@pytest.mark.parametrize("key,value,match", [
    ("STEM_TYPE", "resnet-d", "MODEL.RESNETS.STEM_TYPE='resnet-d'"),
    ("RES4_DILATION", 2, "RES4_DILATION=2: a dilated res4 needs RES5_DILATION 4"),
    ("RES5_MULTI_GRID", [1, 2], r"MODEL.RESNETS.RES5_MULTI_GRID=\[1, 2\]: needs 3"),
    ("DEFORM_ON_PER_STAGE", [True], r"DEFORM_ON_PER_STAGE=\[True\]: needs 4"),
])
def test_invalid_resnets_keys_raise_naming_the_key(key, value, match):
    cfg = _bottom_up_cfg()
    setattr(cfg.MODEL.RESNETS, key, value)
    with pytest.raises(ValueError, match=match):
        build_backbone(cfg)


def test_deeplab_stem_and_deformable_blocks_refused_with_the_resnet_rs_host():
    cfg = _bottom_up_cfg(HOST="resnet-rs", RATIOS=[0.5, 1.0, 1.0, 1.0])
    cfg.MODEL.RESNETS.STRIDE_IN_1X1 = False
    cfg.MODEL.RESNETS.STEM_TYPE = "deeplab"
    cfg.MODEL.RESNETS.DEFORM_ON_PER_STAGE = [False, False, True, True]
    with pytest.raises(ValueError) as err:
        build_backbone(cfg)
    assert "STEM_TYPE='deeplab' with MODEL.SSB.HOST='resnet-rs'" in str(err.value)
    assert "DEFORM_ON_PER_STAGE=[False, False, True, True] with MODEL.SSB.HOST" in str(err.value)


def test_unknown_resnets_key_is_refused_naming_it():
    # A key some other project adds would otherwise be silently ignored.
    cfg = _bottom_up_cfg()
    cfg.MODEL.RESNETS.RES3_DILATION = 2
    with pytest.raises(ValueError, match="MODEL.RESNETS.RES3_DILATION: not a key the SSB"):
        build_backbone(cfg)


def test_recasens_operators_are_buffers_no_forward_rebuilds():
    # Constants of the samplers' settings: non-persistent buffers (no checkpoint key) that
    # move with the model, so a forward builds none (the Gaussian kernel's exp never runs),
    # even where nothing is cached (a fake tensor mode, as in tracing and compiling).
    from ssb_det import ssb_resnet
    from ssb_det.analysis.op_count import OpCounter, fake_device_call

    model = ssb_resnet(norm="FrozenBN", stem_out_channels=8, res2_out_channels=16,
                       width_per_group=4).eval()
    buffers = {n for n, _ in model.named_buffers() if "recasens" in n}
    assert buffers and not any("recasens" in k for k in model.state_dict())
    whole, stage = OpCounter(), OpCounter()
    with torch.no_grad():
        fake_device_call(model, torch.randn(1, 3, 64, 96), counter=whole)
        # a stage run alone (no backbone memo) builds its own
        fake_device_call(model.res2, torch.randn(1, 8, 16, 24), counter=stage)
    assert whole.ops["exp"] == 0 and whole.ops["bmm"] > 0
    assert stage.ops["exp"] == 1
