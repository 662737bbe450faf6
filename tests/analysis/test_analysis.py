"""MAC/parameter/activation counting (ssb_det.analysis): exact sums, agreement with fvcore on
Detectron2's own backbone, and no op of an SSB block left uncounted."""
import collections
import csv

import pytest
import torch
from detectron2.layers import ShapeSpec
from detectron2.modeling.backbone.fpn import build_resnet_fpn_backbone
from fvcore.nn import FlopCountAnalysis

from ssb_det.analysis import analyze_detector, baseline_twin, build_detector, count_model, load_cfg
from ssb_det.analysis.cli import analyze_main
from ssb_det.analysis.models import DetectorOutputs, random_image
from ssb_det.modeling import SSBBottleneckBlock

H, W = 64, 96
INTERPOLATION_OPS = ("lerp", "grid_sampler", "embedding_bag")


def _interpolation_macs(result):
    return sum(result.macs_by_operator[k] for k in INTERPOLATION_OPS)


@pytest.fixture(scope="module")
def ssb_cfg():
    return load_cfg(None, ["MODEL.RPN.POST_NMS_TOPK_TEST", "50"])


@pytest.fixture(scope="module")
def ssb_analysis(ssb_cfg):
    return analyze_detector(build_detector(ssb_cfg), "SSB", H, W, include_detector=False)


def test_ssb_fpn_count_is_the_sum_of_its_parts(ssb_cfg, ssb_analysis):
    parts = ssb_analysis.parts
    assert ssb_analysis.stages == ["stem", "res2", "res3", "res4", "res5"]
    assert sum(parts[s].params for s in ssb_analysis.stages) == parts["bottom-up"].params
    for key in ("macs", "activations", "params"):
        assert (getattr(parts["bottom-up"], key) + getattr(parts["fpn"], key)
                == getattr(parts["backbone"], key)), key
    # MACs add up operator by operator, but for the Recasens operator (one einsum on the
    # configuration's constants): the backbone keeps it as a buffer, so its forward builds
    # none, while each of the three sampled stages counted alone builds its own.
    whole = parts["bottom-up"].macs_by_operator
    by_stage = collections.Counter()
    for s in ssb_analysis.stages:
        by_stage.update(parts[s].macs_by_operator)
    assert whole["einsum"] == 0 and by_stage["einsum"] > 0
    assert {k: v for k, v in by_stage.items() if k != "einsum"} == {
        k: v for k, v in whole.items() if k != "einsum"}
    assert sum(parts[s].macs for s in ssb_analysis.stages) == (parts["bottom-up"].macs
                                                               + by_stage["einsum"])
    g = ssb_cfg.MODEL.SSB.GRID_SIZE  # the operator is (G, 2, G): its activations likewise
    assert sum(parts[s].activations for s in ssb_analysis.stages) == (
        parts["bottom-up"].activations + 3 * (g * 2 * g))
    assert ssb_analysis.unsupported == {}
    # the sampling is counted: interpolation MACs exist in every sampled stage
    for stage in ("res2", "res3", "res4"):
        assert _interpolation_macs(parts[stage]) > 0
    assert _interpolation_macs(parts["res5"]) == 0  # ratio 1: plain blocks


def test_plain_fpn_matches_fvcore_on_detectron2_backbone(ssb_cfg):
    base_cfg = baseline_twin(ssb_cfg)
    ours = analyze_detector(build_detector(base_cfg), "R50", H, W, include_detector=False)
    d2_cfg = load_cfg("COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml")
    d2_backbone = build_resnet_fpn_backbone(d2_cfg, ShapeSpec(channels=3)).eval()
    x = torch.randn(1, 3, H, W)
    with torch.no_grad():
        fvcore_default = FlopCountAnalysis(d2_backbone, (x,))
        fvcore_default.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
        assert ours.parts["backbone"].macs == fvcore_default.total()
        assert ours.parts["bottom-up"].macs == fvcore_default.total("bottom_up")
    assert ours.parts["backbone"].params == sum(p.numel() for p in d2_backbone.parameters())
    assert ours.unsupported == {}


def test_ssb_macs_below_baseline_and_params_only_add_saliency(ssb_cfg, ssb_analysis):
    base = analyze_detector(build_detector(baseline_twin(ssb_cfg)), "R50", H, W,
                            include_detector=False)
    ssb_bu, base_bu = ssb_analysis.parts["bottom-up"], base.parts["bottom-up"]
    assert ssb_bu.macs < 0.7 * base_bu.macs
    # one f->1 saliency conv per stride-1 block of res2-res4: res2 3 x 64 (all its blocks),
    # res3 3 x 128 and res4 5 x 256 (their strided first blocks stay plain)
    assert ssb_bu.params - base_bu.params == 3 * 64 + 3 * 128 + 5 * 256


@pytest.mark.parametrize("kwargs", [
    dict(),
    dict(inverse_position="before_conv3"),
    dict(uniform=True),
    dict(se_ratio=0.25, drop_path=0.1),
])
def test_every_op_of_an_ssb_block_is_accounted_for(kwargs):
    block = SSBBottleneckBlock(32, 32, bottleneck_channels=8, norm="FrozenBN", grid_size=7,
                               grid_padding=6, kernel_sigma=2.0, **kwargs).eval()
    result = count_model(block, (torch.randn(2, 32, 20, 28),))
    assert result.unsupported == {}
    assert _interpolation_macs(result) > 0


def test_separable_block_interpolation_macs_are_two_per_output():
    # Separable sampling = rows then columns, each output element a 2-tap interpolation
    # (2 MACs); the inverse after conv3 restores 4f channels: columns (h x W) then rows
    # (H x W).
    n, c, f, (Hb, Wb), (h, w) = 2, 32, 8, (20, 28), (10, 14)
    block = SSBBottleneckBlock(c, c, bottleneck_channels=f, norm="FrozenBN", grid_size=7,
                               grid_padding=6, kernel_sigma=2.0).eval()
    result = count_model(block, (torch.randn(n, c, Hb, Wb),))
    sample = 2 * n * f * (h * Wb + h * w)
    inverse = 2 * n * c * (h * Wb + Hb * Wb)
    assert _interpolation_macs(result) == sample + inverse


@pytest.mark.slow
def test_detector_count_has_no_unsupported_ops(ssb_cfg):
    detector = build_detector(ssb_cfg)
    result = count_model(DetectorOutputs(detector), (random_image(H, W),))
    assert result.unsupported == {}
    backbone = count_model(detector.backbone, ((random_image(H, W) - 100) / 50,))
    assert result.macs > backbone.macs
    assert result.params == sum(p.numel() for p in detector.parameters())


@pytest.mark.slow
def test_analyze_cli_writes_markdown_and_csv(tmp_path):
    assert analyze_main(["--size", str(H), str(W), "--no-detector",
                         "--output", str(tmp_path / "a")]) == 0
    text = (tmp_path / "a.md").read_text()
    assert "SSB-R50-FPN GMACs" in text and "R50-FPN GMACs" in text
    rows = list(csv.DictReader((tmp_path / "a.csv").open()))
    assert [r["part"] for r in rows] == ["stem", "res2", "res3", "res4", "res5", "bottom-up",
                                         "fpn", "backbone"]
    for r in rows:
        assert float(r["ratio_macs"]) == pytest.approx(int(r["macs"]) / int(r["base_macs"]))
    assert float(rows[0]["ratio_macs"]) == 1.0  # the stem is not sampled


def test_bad_baseline_config_is_named():
    cfg = load_cfg("COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml")
    with pytest.raises(ValueError, match="MODEL.BACKBONE.NAME"):
        baseline_twin(cfg)
    with pytest.raises(FileNotFoundError, match="no_such.yaml"):
        load_cfg("no_such.yaml")


@pytest.mark.parametrize("valid", [None, [[7.0, 9.0], [4.0, 5.0]]])
def test_attention_macs_are_its_projections_logits_and_weighted_sum(valid):
    # Every product of the BoT attention is a matmul that fvcore counts: the q/k/v 1x1
    # projection (HW x C x 3C), the content logits and the weighted sum (heads x (HW)^2 x d
    # each), the relative logits (heads x HW x d x (H + W)); the key mask and softmax are
    # not MACs.
    from ssb_det.layers import RelPosSelfAttention2d

    n, c, heads, (H, W) = 2, 16, 4, (7, 9)
    d, hw = c // heads, H * W
    layer = RelPosSelfAttention2d(c, heads, max_span=10).eval()
    inputs = (torch.randn(n, c, H, W),) + (() if valid is None else (torch.tensor(valid),))
    result = count_model(layer, inputs)
    assert result.unsupported == {}
    assert result.macs == n * (hw * c * 3 * c + 2 * heads * hw * hw * d
                               + heads * hw * d * (H + W))


@pytest.mark.parametrize("cls,stride", [("BoTBlock", 2), ("SSBBoTBlock", 1), ("SSBBoTBlock", 2)])
def test_every_op_of_a_bot_block_is_accounted_for(cls, stride):
    import ssb_det.modeling as modeling

    block = getattr(modeling, cls)(32, 64, bottleneck_channels=16, stride=stride,
                                   norm="FrozenBN").eval()
    result = count_model(block, (torch.randn(2, 32, 12, 14), torch.tensor([[12.0, 14], [9, 7]])))
    assert result.unsupported == {}
    assert result.macs_by_operator["matmul"] > 0
