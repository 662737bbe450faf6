"""The "botnet" host of ``ssb_resnet`` and its builders: BoT50 / SSB-BoT50 and the BoTNet-S1
depths, weights by name, each image's region, stateless forward, errors."""
import math

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling.backbone.resnet import BottleneckBlock

import ssb_det
from ssb_det.layers import SaliencySampler
from ssb_det.modeling import (BoTBlock, SSBBoTBlock, SSBBottleneckBlock, ssb_resnet_kwargs_from_cfg,
                              build_ssb_resnet_fpn_backbone,
                              build_ssb_retinanet_resnet_fpn_backbone)
from threads import assert_threads_match_sequential  # tests/ is on sys.path
from test_forward_safety import _padded  # tests/modeling is on sys.path

NARROW = dict(norm="BN", stem_out_channels=8, res2_out_channels=16, width_per_group=4)


def _model(**kwargs):
    torch.manual_seed(0)
    model = ssb_det.ssb_resnet(**{**NARROW, "host": "botnet", **kwargs}).eval()
    gen = torch.Generator().manual_seed(1)
    for m in model.modules():  # trained-like saliency: non-uniform sampling
        if isinstance(m, SaliencySampler) and not m.uniform:
            m.saliency_conv.weight.data.copy_(torch.randn(m.saliency_conv.weight.shape,
                                                          generator=gen))
    return model


def _types(stage):
    return [type(b) for b in stage]


def test_bot50_is_r50_with_bot_blocks_in_res5_and_ssb_bot50_samples_every_stage():
    bot, ssb = _model(enabled=False), _model()
    r50 = ssb_det.ssb_resnet(**NARROW, enabled=False)
    for name in ("res2", "res3", "res4"):
        assert _types(getattr(bot, name)) == _types(getattr(r50, name))
    assert _types(bot.res5) == [BoTBlock] * 3
    # Default ratios of the "botnet" host sample res5 too (0.5 everywhere).
    assert _types(ssb.res5) == [SSBBoTBlock] * 3
    assert [b.sampler.ratio for b in ssb.res5] == [0.5, 0.5, 0.5]
    assert sum(isinstance(b, SSBBottleneckBlock) for b in ssb.modules()) == 11
    assert _types(_model(ratios=[0.5, 0.5, 0.5, 1.0]).res5) == [BoTBlock] * 3
    x = torch.randn(1, 3, 67, 93)
    with torch.no_grad():
        for out in (bot(x), ssb(x)):
            assert {k: v.shape for k, v in out.items()} == {k: v.shape
                                                            for k, v in r50(x).items()}
    assert bot.output_shape() == r50.output_shape()


@pytest.mark.parametrize("depth", [101, 152, 200])
def test_every_resnet_depth_builds_with_the_botnet_host(depth):
    model = _model(depth=depth, enabled=False)
    assert [len(s) for s in model.stages] == ssb_det.modeling.BLOCKS_PER_STAGE[depth]
    assert _types(model.res5) == [BoTBlock] * 3


@pytest.mark.parametrize("depth,blocks", [(59, [3, 4, 6, 6]), (77, [3, 4, 6, 12]),
                                          (110, [3, 4, 23, 6]), (128, [3, 4, 23, 12])])
def test_botnet_s1_depths_keep_c5_at_stride_16(depth, blocks):
    model = _model(depth=depth, res5_dilation=2, enabled=False)
    assert [len(s) for s in model.stages] == blocks
    assert _types(model.res5) == [BoTBlock] * blocks[3]
    assert [b.stride for b in model.res5] == [1] * blocks[3]
    assert model.output_shape()["res5"].stride == 16
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 48))["res5"].shape == (1, 128, 4, 3)


def test_bot50_weights_load_by_name_into_ssb_bot50_only_saliency_convs_new():
    bot, ssb = _model(enabled=False), _model()
    missing, unexpected = ssb.load_state_dict(bot.state_dict(), strict=False)
    assert unexpected == [] and missing and all("sampler.saliency_conv" in k for k in missing)
    assert len(missing) == 14  # 11 SSB conv blocks + 3 SSB-BoT blocks
    # Against R50: res5's 3x3 convs became attention (its BN is attn_norm); the rest matches.
    r50 = ssb_det.ssb_resnet(**NARROW, enabled=False).state_dict()
    only_r50 = {k.split(".", 2)[2] for k in set(r50) - set(bot.state_dict())}
    only_bot = {k.split(".", 2)[2] for k in set(bot.state_dict()) - set(r50)}
    assert {k.split(".")[0] for k in only_r50} == {"conv2"}
    assert {k.split(".")[0] for k in only_bot} == {"attn", "attn_norm"}


def test_each_bot_block_attends_within_the_region_an_image_alone_would_fill():
    model = _model(enabled=False)
    sizes = [(803, 41), (600, 37)]
    x = _padded(sizes, (803, 41), seed=6)
    regions = {}
    handles = [m.attn.register_forward_pre_hook(
        lambda module, args, name=name: regions.__setitem__(name, args[1].tolist()))
        for name, m in model.named_modules() if isinstance(m, BoTBlock)]
    with torch.no_grad():
        out = model(x)
        for h in handles:
            h.remove()
        alone = model(x[1:, :, :600, :37])
    # res5.0 attends at stride 16 (before its pooling), res5.1 and res5.2 at stride 32.
    assert regions["res5.0"][1] == [math.ceil(600 / 16), math.ceil(37 / 16)]
    assert regions["res5.1"][1] == regions["res5.2"][1] == [math.ceil(600 / 32), 2]
    assert torch.isfinite(out["res5"]).all()
    assert alone["res5"].shape[-2:] == (19, 2)


def test_bot_blocks_get_no_region_without_padding_awareness():
    model = _model(enabled=False, padding_aware=False)
    seen = []
    model.res5[1].attn.register_forward_pre_hook(lambda m, args: seen.append(args[1]))
    with torch.no_grad():
        model(torch.randn(1, 3, 64, 64))
    assert seen == [None]


def test_a_forward_leaves_no_state_and_threads_match_sequential_runs():
    model = _model()
    inputs = [_padded([(45 + 7 * i, 61), (33, 40 + 5 * i)], (45 + 7 * i, 61 + 3 * i), seed=i)
              for i in range(3)]
    before = {name: dict(vars(m)) for name, m in model.named_modules()}
    with torch.no_grad():
        for x in inputs:
            model(x)
    after = {name: dict(vars(m)) for name, m in model.named_modules()}
    for name in before:
        assert before[name].keys() == after[name].keys(), name
    assert_threads_match_sequential(model, inputs, repeats=2)


def test_a_map_beyond_the_attention_span_names_the_key():
    model = _model(enabled=False, attention_span=4)
    with torch.no_grad():
        model(torch.randn(1, 3, 64, 64))  # res5.0 attends over 4x4
        with pytest.raises(ValueError, match=r"5x4 map.*raise MODEL\.SSB\.ATTENTION_SPAN"):
            model(torch.randn(1, 3, 80, 64))


@pytest.mark.parametrize("kwargs,match", [
    (dict(depth=59, host="resnet"), r"DEPTH=59: a BoTNet-S1 depth; it needs MODEL\.SSB\.HOST"),
    (dict(res5_dilation=4, res4_dilation=2), r"RES5_DILATION=4 with MODEL\.SSB\.HOST='botnet'"),
    (dict(res5_multi_grid=[1, 2, 4]), r"RES5_MULTI_GRID with MODEL\.SSB\.HOST='botnet'"),
    (dict(num_groups=2), r"NUM_GROUPS=2 with MODEL\.SSB\.HOST='botnet'"),
    (dict(deform_on_per_stage=[False, False, False, True], ratios=[0.5, 0.5, 0.5, 1.0]),
     r"res5 is made of attention blocks"),
    (dict(attention_span=0), r"ATTENTION_SPAN=0: must be >= 1"),
])
def test_combinations_that_make_no_sense_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ssb_det.ssb_resnet(**{**NARROW, "host": "botnet", **kwargs})


def _cfg(**ssb):
    cfg = ssb_det.add_ssb_config(get_cfg())
    cfg.MODEL.SSB.HOST = "botnet"
    cfg.MODEL.SSB.RATIOS = [0.5, 0.5, 0.5, 0.5]
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS, cfg.MODEL.RESNETS.WIDTH_PER_GROUP = 16, 4
    cfg.MODEL.RESNETS.STEM_OUT_CHANNELS, cfg.MODEL.FPN.OUT_CHANNELS = 8, 16
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res3", "res4", "res5"]
    cfg.MODEL.FPN.IN_FEATURES = ["res3", "res4", "res5"]
    for k, v in ssb.items():
        cfg.MODEL.SSB[k] = v
    return cfg


def test_fpn_and_retinanet_builders_take_the_botnet_host():
    x = torch.randn(1, 3, 96, 128)
    fpn = build_ssb_resnet_fpn_backbone(_cfg(), ShapeSpec(channels=3)).eval()
    retina = build_ssb_retinanet_resnet_fpn_backbone(_cfg(), ShapeSpec(channels=3)).eval()
    assert _types(fpn.bottom_up.res5) == [SSBBoTBlock] * 3
    with torch.no_grad():
        assert {k: v.shape[-1] for k, v in fpn(x).items()} == {"p3": 16, "p4": 8, "p5": 4,
                                                               "p6": 2}
        assert {k: v.shape[-1] for k, v in retina(x).items()} == {"p3": 16, "p4": 8, "p5": 4,
                                                                  "p6": 2, "p7": 1}


def test_attention_span_key_reaches_every_attention():
    cfg = _cfg()
    assert ssb_resnet_kwargs_from_cfg(cfg)["attention_span"] == 128
    cfg.merge_from_list(["MODEL.SSB.ATTENTION_SPAN", "40"])  # as a command line sets it
    model = build_ssb_resnet_fpn_backbone(cfg, ShapeSpec(channels=3))
    assert {b.attn.max_span for b in model.bottom_up.res5} == {40}


def test_plain_blocks_of_res2_to_res4_stay_detectron2s():
    model = _model(enabled=False)
    assert all(type(b) is BottleneckBlock for s in model.stages[:3] for b in s)
