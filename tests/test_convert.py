"""Weight conversion (ssb_det.convert, tools/convert_weights.py).

Source models are made here with random weights (no downloads): torchvision's ResNet-50/101,
a module tree laid out exactly as timm's ``resnetrs*`` (timm is not a dependency), and a
Caffe2-named MSRA ``.pkl`` of numpy arrays whose validity is checked by Detectron2's own
loader.
"""
import os
import pickle
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
import torchvision
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling.backbone.resnet import build_resnet_backbone
from torch import nn

from ssb_det import add_ssb_config, build_ssb_resnet_fpn_backbone
from ssb_det.checkpoint import SSBCheckpointer, load_pth
from ssb_det.classification import build_classifier, get_pretrain_cfg, load_classifier_weights
from ssb_det.convert import (CONVENTIONS, ConversionError, conventions_mismatch,
                             convert_weights, main)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _randomise_bn(model, seed=0):
    # Non-trivial BN statistics and affine parameters, so a mis-mapped BN tensor shows.
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.rand(n, generator=g) * 0.2 - 0.1)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
                m.weight.copy_(torch.rand(n, generator=g) * 0.7 + 0.5)
                m.bias.copy_(torch.rand(n, generator=g) * 0.2 - 0.1)
    return model


def _classifier(host="resnet", enabled=False, num_classes=10, **resnets):
    cfg = get_pretrain_cfg()
    cfg.MODEL.SSB.HOST = host
    cfg.MODEL.SSB.ENABLED = enabled
    # Identity pixel normalisation: the reference models take the same tensor directly.
    cfg.MODEL.PIXEL_MEAN, cfg.MODEL.PIXEL_STD = [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]
    for k, v in resnets.items():
        cfg.MODEL.RESNETS[k] = v
    return build_classifier(cfg, num_classes).eval()


@pytest.fixture(scope="module")
def torchvision_r50(tmp_path_factory):
    torch.manual_seed(0)
    model = _randomise_bn(torchvision.models.resnet50(weights=None, num_classes=10)).eval()
    path = str(tmp_path_factory.mktemp("tv") / "resnet50.pth")
    torch.save(model.state_dict(), path)
    return model, path


# ------------------------------------------------------------------ torchvision


def test_torchvision_r50_tensors_copied_exactly(torchvision_r50, tmp_path):
    model, src = torchvision_r50
    dst = str(tmp_path / "ssb_r50.pth")
    report = convert_weights(src, dst)
    out = load_pth(dst)
    source = model.state_dict()
    assert report.source_format == "torchvision" and report.host == "resnet"
    assert report.architecture == {"depth": 50, "num_groups": 1, "width_per_group": 64}
    # 53 conv weights + 53 BN x 4 tensors.
    assert len(report.matched) == 53 + 53 * 4
    for name, src_key in report.matched.items():
        assert torch.equal(out["model"][name], source[src_key]), name
    # Spot-check the renaming itself, independently of the report.
    assert torch.equal(out["model"]["stem.conv1.weight"], source["conv1.weight"])
    assert torch.equal(out["model"]["res3.0.shortcut.norm.running_var"],
                       source["layer2.0.downsample.1.running_var"])
    assert torch.equal(out["model"]["res5.2.conv2.norm.weight"], source["layer4.2.bn2.weight"])
    # The only tensors the source lacks are the saliency convs of the SSB blocks: zero.
    saliency = [k for k in out["model"] if "saliency_conv" in k]
    assert saliency and set(report.initialised) == set(saliency)
    assert all(not out["model"][k].any() for k in saliency)
    assert set(out["model"]) == set(report.matched) | set(saliency)
    assert torch.equal(out["classifier_head"]["weight"], source["fc.weight"])
    assert torch.equal(out["classifier_head"]["bias"], source["fc.bias"])
    assert report.unexpected == []  # fc goes to the head, BN counters are skipped
    assert out["matching_heuristics"] is True
    assert out["conventions"]["MODEL.RESNETS.STRIDE_IN_1X1"] is False
    assert out["conventions"]["INPUT.FORMAT"] == "RGB"


@pytest.mark.parametrize("norm", ["BN", "FrozenBN"])
def test_torchvision_r50_logits_match(torchvision_r50, tmp_path, norm):
    model, src = torchvision_r50
    dst = str(tmp_path / "r50.pth")
    convert_weights(src, dst)
    clf = _classifier(NORM=norm)
    report, head_loaded = load_classifier_weights(clf, dst)
    assert head_loaded and report.source_format == "detectron2"
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected, got = model(x), clf(x)
    assert expected.abs().max() > 0.1  # a non-degenerate comparison
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_classifier_loads_torchvision_file_directly(torchvision_r50):
    model, src = torchvision_r50
    clf = _classifier()
    report, head_loaded = load_classifier_weights(clf, src)
    assert head_loaded and report.source_format == "torchvision"
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(clf(x), model(x), rtol=1e-4, atol=1e-4)


def test_torchvision_r101_depth_and_tensors(tmp_path):
    model = torchvision.models.resnet101(weights=None, num_classes=3)
    src = str(tmp_path / "r101.pth")
    torch.save(model.state_dict(), src)
    report = convert_weights(src, str(tmp_path / "out.pth"))
    out = load_pth(str(tmp_path / "out.pth"))["model"]
    assert report.architecture["depth"] == 101
    assert "res4.22.conv3.weight" in out and "res4.23.conv3.weight" not in out
    source = model.state_dict()
    for name, key in report.matched.items():
        assert torch.equal(out[name], source[key]), name


def test_resnext_groups_are_read_from_the_weights(tmp_path):
    model = torchvision.models.resnext50_32x4d(weights=None, num_classes=3)
    src = str(tmp_path / "x50.pth")
    torch.save(model.state_dict(), src)
    report = convert_weights(src, None)
    assert report.architecture == {"depth": 50, "num_groups": 32, "width_per_group": 4}
    assert report.conventions["MODEL.RESNETS.NUM_GROUPS"] == 32


# ------------------------------------------------------------------ timm resnetrs layout


class _TimmSE(nn.Module):
    # timm.layers.SEModule: mean -> fc1 -> (bn = Identity) -> ReLU -> fc2 -> sigmoid gate.
    def __init__(self, channels, rd_channels):
        super().__init__()
        self.fc1 = nn.Conv2d(channels, rd_channels, 1, bias=True)
        self.bn = nn.Identity()
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(rd_channels, channels, 1, bias=True)

    def forward(self, x):
        s = self.fc2(self.act(self.bn(self.fc1(x.mean((2, 3), keepdim=True)))))
        return x * s.sigmoid()


class _TimmBottleneck(nn.Module):
    # timm.models.resnet.Bottleneck with attn_layer=se (stride on the 3x3).
    def __init__(self, inplanes, planes, stride, downsample):
        super().__init__()
        out = planes * 4
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.act2 = nn.ReLU(inplace=True)
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.se = _TimmSE(out, out // 4)
        self.act3 = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        shortcut = x if self.downsample is None else self.downsample(x)
        y = self.act1(self.bn1(self.conv1(x)))
        y = self.act2(self.bn2(self.conv2(y)))
        y = self.se(self.bn3(self.conv3(y)))
        return self.act3(y + shortcut)


class _TimmResNetRS(nn.Module):
    """timm ``resnetrs50``'s module tree: stem_type='deep', stem_width=32,
    replace_stem_pool=True, avg_down=True, SE 0.25; so its state-dict keys are timm's."""

    def __init__(self, layers=(3, 4, 6, 3), num_classes=10):
        super().__init__()
        self.conv1 = nn.Sequential(
            nn.Conv2d(3, 32, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(32),
            nn.ReLU(inplace=True), nn.Conv2d(32, 32, 3, padding=1, bias=False),
            nn.BatchNorm2d(32), nn.ReLU(inplace=True), nn.Conv2d(32, 64, 3, padding=1, bias=False))
        self.bn1 = nn.BatchNorm2d(64)
        self.act1 = nn.ReLU(inplace=True)
        self.maxpool = nn.Sequential(nn.Conv2d(64, 64, 3, stride=2, padding=1, bias=False),
                                     nn.BatchNorm2d(64), nn.ReLU(inplace=True))
        inplanes = 64
        for i, (n, planes) in enumerate(zip(layers, (64, 128, 256, 512))):
            stride = 1 if i == 0 else 2
            pool = (nn.Identity() if stride == 1 else
                    nn.AvgPool2d(2, stride, ceil_mode=True, count_include_pad=False))
            down = nn.Sequential(pool, nn.Conv2d(inplanes, planes * 4, 1, bias=False),
                                 nn.BatchNorm2d(planes * 4))
            blocks = [_TimmBottleneck(inplanes, planes, stride, down)]
            inplanes = planes * 4
            blocks += [_TimmBottleneck(inplanes, planes, 1, None) for _ in range(n - 1)]
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
        self.fc = nn.Linear(2048, num_classes)

    def forward(self, x):
        x = self.maxpool(self.act1(self.bn1(self.conv1(x))))
        for i in range(1, 5):
            x = getattr(self, f"layer{i}")(x)
        return self.fc(x.mean((2, 3)))


def test_timm_resnetrs_layout_converts_to_rs_host(tmp_path):
    torch.manual_seed(0)
    timm_like = _randomise_bn(_TimmResNetRS()).eval()
    src = str(tmp_path / "resnetrs50.pth")
    # timm training checkpoints wrap the weights; the converter unwraps "state_dict".
    torch.save({"state_dict": timm_like.state_dict(), "epoch": 3}, src)
    dst = str(tmp_path / "ssb_rs50.pth")
    report = convert_weights(src, dst)
    assert report.source_format == "timm-resnetrs" and report.host == "resnet-rs"
    out = load_pth(dst)
    source = timm_like.state_dict()
    for name, key in report.matched.items():
        assert torch.equal(out["model"][name], source[key]), name
    assert torch.equal(out["model"]["stem.conv4.norm.running_mean"],
                       source["maxpool.1.running_mean"])
    assert torch.equal(out["model"]["res2.1.se.fc2.bias"], source["layer1.1.se.fc2.bias"])
    assert torch.equal(out["model"]["res3.0.shortcut.weight"], source["layer2.0.downsample.1.weight"])
    assert set(out["model"]) - set(report.matched) == set(report.initialised)
    assert all("saliency_conv" in k for k in report.initialised)

    clf = _classifier(host="resnet-rs")
    _, head_loaded = load_classifier_weights(clf, dst)
    assert head_loaded
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected, got = timm_like(x), clf(x)
    assert expected.abs().max() > 0.1
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------ MSRA .pkl


def _c2_name(d2_name):
    # Detectron2 ResNet name -> Caffe2 blob name of the MSRA ImageNet models.
    bn = {"weight": "s", "bias": "b"}
    m = re.fullmatch(r"stem\.conv1\.(weight|norm\.(weight|bias))", d2_name)
    if m:
        return "conv1_w" if m[1] == "weight" else f"res_conv1_bn_{bn[m[2]]}"
    m = re.fullmatch(r"res(\d)\.(\d+)\.(conv[123]|shortcut)\.(weight|norm\.(weight|bias))", d2_name)
    if m:
        branch = {"conv1": "2a", "conv2": "2b", "conv3": "2c", "shortcut": "1"}[m[3]]
        tail = "w" if m[4] == "weight" else f"bn_{bn[m[5]]}"
        return f"res{m[1]}_{m[2]}_branch{branch}_{tail}"
    return None  # running statistics: MSRA's affine-only BN has none


def _msra_r50(seed=0):
    cfg = get_cfg()
    cfg.MODEL.RESNETS.DEPTH = 50
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res5"]
    cfg.MODEL.BACKBONE.FREEZE_AT = 0
    torch.manual_seed(seed)
    model = build_resnet_backbone(cfg, ShapeSpec(channels=3)).eval()  # FrozenBN, stride in 1x1
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if name.endswith("norm.weight"):
                t.copy_(torch.rand(t.shape, generator=g) * 0.5 + 0.5)
            elif name.endswith("norm.bias"):
                t.copy_(torch.rand(t.shape, generator=g) * 0.2 - 0.1)
    return cfg, model


def test_msra_pkl_matches_detectron2_loader(tmp_path):
    cfg, d2_model = _msra_r50()
    blobs = {_c2_name(k): v.numpy().copy() for k, v in d2_model.state_dict().items()
             if _c2_name(k)}
    blobs["fc1000_w"] = np.random.RandomState(0).randn(1000, 2048).astype(np.float32)
    blobs["fc1000_b"] = np.zeros(1000, np.float32)
    blobs["res2_0_branch2a_bn_s_momentum"] = np.zeros(64, np.float32)  # optimiser leftovers
    src = str(tmp_path / "R-50.pkl")
    with open(src, "wb") as f:
        pickle.dump(blobs, f)

    # Oracle: Detectron2's own Caffe2 name conversion loads the .pkl into a fresh R-50.
    fresh = build_resnet_backbone(cfg, ShapeSpec(channels=3)).eval()
    DetectionCheckpointer(fresh).load(src)
    for name, t in d2_model.state_dict().items():
        if _c2_name(name):
            assert torch.equal(fresh.state_dict()[name], t), f"test .pkl is not MSRA: {name}"

    dst = str(tmp_path / "ssb_r50_msra.pth")
    report = convert_weights(src, dst)
    assert report.source_format == "msra"
    assert report.conventions == dict(CONVENTIONS["msra"], **{"MODEL.RESNETS.DEPTH": 50})
    assert report.unexpected == ["res2_0_branch2a_bn_s_momentum"]
    out = load_pth(dst)["model"]
    for name, t in fresh.state_dict().items():
        assert torch.equal(out[name], t), name  # BN statistics as Detectron2 fills them in
    assert {v for v in report.initialised.values() if "saliency" not in v} == {
        "BN statistics of an affine-only BN (mean 0, var 1)"}

    # The MSRA convention (stride in the 1x1, FrozenBN): same res5 features as Detectron2's
    # ResNet loaded from the .pkl by Detectron2.
    clf = _classifier(STRIDE_IN_1X1=True, NORM="FrozenBN", num_classes=1000)
    _, head_loaded = load_classifier_weights(clf, dst)
    assert head_loaded
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = fresh(x)["res5"]
        got = clf.backbone(x)["res5"]
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------ Detectron2 loading


def test_converted_weights_load_every_backbone_tensor_of_an_fpn_model(torchvision_r50, tmp_path):
    _, src = torchvision_r50
    dst = str(tmp_path / "r50.pth")
    convert_weights(src, dst)
    cfg = add_ssb_config(get_cfg())
    cfg.MODEL.RESNETS.DEPTH = 50
    cfg.MODEL.RESNETS.STRIDE_IN_1X1 = False
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.FPN.IN_FEATURES = ["res2", "res3", "res4", "res5"]
    holder = nn.Module()
    holder.backbone = build_ssb_resnet_fpn_backbone(cfg, ShapeSpec(channels=3))
    with torch.no_grad():  # make every loadable tensor differ from the file first
        for t in holder.backbone.bottom_up.state_dict().values():
            t.fill_(7.0)
    checkpointer = SSBCheckpointer(holder)
    incompatible = checkpointer._load_model(checkpointer._load_file(dst))
    assert not [k for k in incompatible.missing_keys if k.startswith("backbone.bottom_up.")]
    assert not incompatible.incorrect_shapes
    written = load_pth(dst)["model"]
    bottom_up = holder.backbone.bottom_up.state_dict()
    assert set(bottom_up) == set(written)
    for name, t in bottom_up.items():
        assert torch.equal(t, written[name]), name


# ------------------------------------------------------------------ refusals and CLI


def test_shape_mismatch_is_refused_with_a_clear_message(torchvision_r50):
    _, src = torchvision_r50
    with pytest.raises(ConversionError, match=r"shape mismatch.*\n.*stem\.conv1\.weight"):
        convert_weights(src, None, host="resnet-rs")
    timm_like = _TimmResNetRS().state_dict()
    with pytest.raises(ConversionError, match="shape mismatch"):
        convert_weights(timm_like, None, host="resnet")


def test_unsupported_sources_are_refused():
    with pytest.raises(ConversionError, match="basic-block"):
        convert_weights(torchvision.models.resnet18(weights=None).state_dict(), None)
    with pytest.raises(ConversionError, match="cannot tell the format"):
        convert_weights({"encoder.weight": torch.zeros(3)}, None)
    with pytest.raises(ConversionError, match="expected a state dict"):
        convert_weights([torch.zeros(1)], None)


def test_cli_converts_and_reports(torchvision_r50, tmp_path, capsys):
    _, src = torchvision_r50
    dst = str(tmp_path / "cli.pth")
    assert main([src, dst]) == 0
    printed = capsys.readouterr().out
    assert "format: torchvision" in printed and "matched: 265" in printed
    assert "saliency conv = 0" in printed and os.path.isfile(dst)
    assert main([src, str(tmp_path / "bad.pth"), "--host", "resnet-rs"]) == 1
    assert "shape mismatch" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "bad.pth")


def test_cli_script_runs(torchvision_r50, tmp_path):
    _, src = torchvision_r50
    dst = str(tmp_path / "script.pth")
    proc = subprocess.run([sys.executable, os.path.join(REPO, "tools", "convert_weights.py"),
                           src, dst], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "wrote" in proc.stdout and os.path.isfile(dst)


def test_conventions_mismatch_names_the_keys():
    cfg = add_ssb_config(get_cfg())  # Detectron2 defaults: BGR, MSRA mean, std 1
    diff = conventions_mismatch(cfg, CONVENTIONS["torchvision"])
    assert {line.split(":")[0] for line in diff} == {
        "INPUT.FORMAT", "MODEL.PIXEL_MEAN", "MODEL.PIXEL_STD", "MODEL.RESNETS.STRIDE_IN_1X1"}
    assert conventions_mismatch(cfg, CONVENTIONS["msra"]) == []
