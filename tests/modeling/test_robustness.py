"""Odd input to the backbone and the sampler: sizes, batches, padding, reduced precision,
extreme saliency, config and weights errors (issue 6)."""
import logging
import math

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_backbone
from detectron2.structures import ImageList

import ssb_det
from ssb_det import ssb_resnet
from ssb_det.checkpoint import SSBCheckpointer
from ssb_det.layers import SaliencySampler
from ssb_det.modeling import SSBBottleneckBlock, SSBResNet, image_sizes_from_padding
from detectron2.modeling.backbone import ResNet

STRIDES = {"res2": 4, "res3": 8, "res4": 16, "res5": 32}


def narrow_r50(host="resnet", enabled=True, **kwargs):
    """A depth-50 SSB-ResNet with every width divided by 16: the real block structure
    (3/4/6/3 blocks, 11 SSB blocks) at a cost that allows 4000x4000 inputs on a CPU."""
    torch.manual_seed(0)
    model = ssb_resnet(depth=50, host=host, enabled=enabled, norm="BN", stem_out_channels=4,
                       stem_width=4, res2_out_channels=16, width_per_group=4,
                       stride_in_1x1=host == "resnet", **kwargs).eval()
    randomise_saliency(model, std=1.0)
    return model


def randomise_saliency(module, std):
    """Non-zero saliency convs, as after training (zero-initialised ones sample uniformly)."""
    gen = torch.Generator().manual_seed(1)
    n = 0
    for m in module.modules():
        if isinstance(m, SaliencySampler) and not m.uniform:
            w = m.saliency_conv.weight
            w.data.copy_(torch.randn(w.shape, generator=gen) * std)
            n += 1
    return n


def assert_backbone_output(out, batch, h, w, model):
    shapes = model.output_shape()
    for name, stride in STRIDES.items():
        assert out[name].shape == (batch, shapes[name].channels, math.ceil(h / stride),
                                   math.ceil(w / stride)), name
        assert torch.isfinite(out[name]).all(), f"{name} has NaN/inf for a {h}x{w} input"


# ----------------------------------------------------------------------------- sizes


@pytest.mark.parametrize("host", ["resnet", "resnet-rs"])
@pytest.mark.parametrize("size", [(1, 1), (1, 517), (517, 1), (33, 2000), (2, 3), (17, 23),
                                  (63, 65)])
def test_backbone_any_size_and_aspect_ratio(host, size):
    model = narrow_r50(host)
    assert sum(isinstance(m, SSBBottleneckBlock) for m in model.modules()) == 11
    with torch.no_grad():
        out = model(torch.randn(2, 3, *size))
    assert_backbone_output(out, 2, *size, model)


@pytest.mark.parametrize("size", [(4000, 4000), (4000, 3)])
def test_backbone_4000px(size):
    model = narrow_r50()
    with torch.no_grad():
        out = model(torch.randn(1, 3, *size))
    assert_backbone_output(out, 1, *size, model)


@pytest.mark.parametrize("position", ["after_conv3", "before_conv3"])
def test_backbone_options_at_degenerate_sizes(position):
    model = narrow_r50(inverse_position=position)
    for size in [(1, 1), (1, 77), (45, 2)]:
        with torch.no_grad():
            out = model(torch.randn(1, 3, *size))
        assert_backbone_output(out, 1, *size, model)


def test_full_width_ssb_block_on_a_4000_long_map():
    # One real-width res2 SSB block (256 -> 64 -> 256) on the res2 map of a 4000-pixel side.
    torch.manual_seed(0)
    block = SSBBottleneckBlock(256, 256, bottleneck_channels=64, norm="BN").eval()
    randomise_saliency(block, std=0.05)
    with torch.no_grad():
        y = block(torch.randn(1, 256, 1000, 3))
        z = block(torch.randn(1, 256, 2, 1000))
    assert y.shape == (1, 256, 1000, 3) and z.shape == (1, 256, 2, 1000)
    assert torch.isfinite(y).all() and torch.isfinite(z).all()


# ----------------------------------------------------------------------------- batches


@pytest.mark.parametrize("batch", [1, 3])
def test_each_image_of_a_same_size_batch_equals_running_it_alone(batch):
    # In eval mode nothing may mix images of a batch (a softmax or a pooling over the wrong
    # dimension would): every output equals the output of the image alone.
    # float64, so that float32 reordering by batch-size-dependent kernels cannot hide a leak.
    model = narrow_r50().double()
    x = torch.randn(batch, 3, 45, 61, dtype=torch.float64)
    with torch.no_grad():
        together = model(x)
        alone = [model(x[i:i + 1]) for i in range(batch)]
    for name in STRIDES:
        for i in range(batch):
            torch.testing.assert_close(together[name][i:i + 1], alone[i][name], rtol=1e-9, atol=1e-9)


def test_fpn_on_an_imagelist_of_different_sizes():
    cfg = get_cfg()
    ssb_det.add_ssb_config(cfg)
    cfg.MODEL.BACKBONE.NAME = "build_ssb_resnet_fpn_backbone"
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.FPN.IN_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 32
    cfg.MODEL.RESNETS.WIDTH_PER_GROUP = 8
    cfg.MODEL.RESNETS.STEM_OUT_CHANNELS = 16
    cfg.MODEL.FPN.OUT_CHANNELS = 16
    torch.manual_seed(0)
    fpn = build_backbone(cfg).eval()
    assert randomise_saliency(fpn, std=1.0) == 11
    images = [torch.randn(3, 1, 1), torch.randn(3, 37, 250), torch.randn(3, 130, 7)]
    batch = ImageList.from_tensors(images, fpn.size_divisibility)
    assert batch.tensor.shape == (3, 3, 160, 256)
    with torch.no_grad():
        out = fpn(batch.tensor)
    for name, spec in fpn.output_shape().items():
        assert out[name].shape == (3, 16, math.ceil(160 / spec.stride), math.ceil(256 / spec.stride))
        assert torch.isfinite(out[name]).all(), name


def _padded_real_image(a, padded_size, batch_mate_seed=1):
    """``a`` (``(1, C, h, w)``) at the top-left of a zero-padded map, next to a full-size
    random batch-mate, as Detectron2's ImageList lays out a batch."""
    gen = torch.Generator().manual_seed(batch_mate_seed)
    padded = torch.zeros(2, a.shape[1], *padded_size)
    padded[0, :, :a.shape[2], :a.shape[3]] = a[0]
    padded[1] = torch.randn(a.shape[1], *padded_size, generator=gen)
    return padded


def _padding_changes_the_grid_of_the_real_image(logit_std, tell_valid=True):
    """Largest change of where the real image of a 40x56 map is sampled when it is
    zero-padded to 80x96 next to a larger batch-mate, relative to the mean sampling step.

    The sampling rate (step of the inverse map) over the image's rows and columns.
    ``tell_valid`` passes
    the image sizes to the sampler, as SSBResNet does. The saliency conv is scaled so that
    the pooled logits of the lone map have standard deviation ``logit_std``.
    """
    torch.manual_seed(0)
    sampler = SaliencySampler(8, 0.5, grid_size=31, padding=30, sigma=5.5)
    a = torch.nn.functional.interpolate(torch.randn(1, 8, 5, 7), size=(40, 56), mode="bilinear",
                                        align_corners=False)  # smooth features, like real ones
    w = sampler.saliency_conv.weight
    w.data.copy_(torch.randn(w.shape))
    pooled = torch.nn.functional.adaptive_avg_pool2d(sampler.saliency_conv(a), 31)
    w.data.mul_(logit_std / max(pooled.std().item(), 1e-12))
    padded = _padded_real_image(a, (80, 96))
    valid = torch.tensor([[40, 56], [80, 96]]) if tell_valid else None
    with torch.no_grad():
        alone, batched = sampler(a), sampler(padded, valid)
        changes = []
        for axis, n in ((0, 40), (1, 56)):
            rate_alone = alone.inverse_positions()[axis][0].diff()
            rate_batched = batched.inverse_positions()[axis][0, :n].diff()
            changes.append((rate_batched - rate_alone).abs().max().item()
                           / rate_alone.abs().mean().item())
        return max(changes)


def test_uniform_sampling_of_an_image_does_not_depend_on_padding():
    # At initialisation (zero saliency conv) and with MODEL.SSB.UNIFORM the block is plain
    # bilinear resizing: with even sizes, as size_divisibility guarantees, the real image is
    # sampled at the same positions whatever the batch-mates, even without its size.
    assert _padding_changes_the_grid_of_the_real_image(logit_std=0.0, tell_valid=False) < 1e-9
    assert _padding_changes_the_grid_of_the_real_image(logit_std=0.0) < 1e-9


@pytest.mark.parametrize("logit_std", [1.0, 3.0])
def test_learned_sampling_of_an_image_does_not_depend_on_padding(logit_std):
    # Given the image sizes, the saliency is pooled over the image only and the map spans
    # it only: the image is sampled exactly as alone (float32 pooling: ~1e-7 changes).
    assert _padding_changes_the_grid_of_the_real_image(logit_std) < 1e-5
    # Without them, the same saliency samples the image differently next to a larger
    # batch-mate (what MODEL.SSB.PADDING_AWARE False does): the sizes are what matters.
    assert _padding_changes_the_grid_of_the_real_image(logit_std, tell_valid=False) > 0.1


@pytest.mark.parametrize("inverse_position", ["after_conv3", "before_conv3"])
def test_ssb_block_output_on_the_image_does_not_depend_on_padding(inverse_position):
    # A block (random saliency, logits of std ~1.5) on a 40x56 image alone and padded to
    # 80x96: the output on the image is the same wherever its restoring reads sampled rows
    # and columns that the 3x3 conv computed from the image alone (all but the last one or
    # two; a plain bottleneck's 3x3 also reads the padding at the image border).
    torch.manual_seed(0)
    block = SSBBottleneckBlock(16, 16, bottleneck_channels=8, norm="BN",
                               inverse_position=inverse_position).eval()
    block.sampler.saliency_conv.weight.data.normal_(0, 1.5)
    x = torch.nn.functional.interpolate(torch.randn(1, 16, 5, 7), size=(40, 56),
                                        mode="bilinear", align_corners=False)
    padded = _padded_real_image(x, (80, 96))
    with torch.no_grad():
        alone = block(x)
        valid = torch.tensor([[40.0, 56.0], [80.0, 96.0]], dtype=torch.float64)
        batched = block(padded, valid)
        ys, xs = block.sampler(block.reduce(padded), valid).inverse_positions(clamp=True)
    rows = ys[0, :40] < 20 - 2  # reads (and interpolates between) sampled rows <= 17 of 20
    cols = xs[0, :56] < 28 - 2
    assert rows.sum() >= 30 and cols.sum() >= 44
    region = batched[0, :, :40, :56][:, rows][:, :, cols]
    torch.testing.assert_close(region, alone[0][:, rows][:, :, cols], atol=1e-5, rtol=0)
    # Without the sizes, the same rows and columns change.
    with torch.no_grad():
        unaware = block(padded)[0, :, :40, :56][:, rows][:, :, cols]
    assert (unaware - alone[0][:, rows][:, :, cols]).abs().max() > 1e-2


@pytest.mark.parametrize("sizes", [[(1, 1), (37, 250), (130, 7)], [(64, 64)], [(33, 20), (31, 40)]])
def test_image_sizes_are_recovered_from_detectron2s_padding(sizes):
    gen = torch.Generator().manual_seed(0)
    mean = torch.tensor([103.53, 116.28, 123.675]).view(3, 1, 1)
    std = torch.tensor([57.375, 57.12, 58.395]).view(3, 1, 1)
    # Whole-number pixels, including pure black and pixels rounded to the mean.
    images = [(torch.randint(0, 256, (3, h, w), generator=gen).float() - mean) / std
              for h, w in sizes]
    images[0][:, -1, :] = (torch.full((3, 1), 104.0) - mean[:, 0]) / std[:, 0]  # near-mean row
    batch = ImageList.from_tensors(images, 32)
    torch.testing.assert_close(image_sizes_from_padding(batch.tensor),
                               torch.tensor(batch.image_sizes, dtype=torch.float64))


def test_padding_aware_backbone_matches_explicit_sizes_and_can_be_disabled():
    model = narrow_r50()
    a, b = torch.randn(3, 45, 61), torch.randn(3, 96, 128)
    batch = ImageList.from_tensors([a, b], 32)
    with torch.no_grad():
        inferred = model(batch.tensor)
        explicit = model(batch.tensor, image_sizes=torch.tensor(batch.image_sizes))
        model.padding_aware = False
        unaware = model(batch.tensor)
    for name in STRIDES:
        torch.testing.assert_close(inferred[name], explicit[name], rtol=0, atol=0)
    assert any((inferred[n] - unaware[n]).abs().max() > 1e-3 for n in ("res3", "res4"))
    assert isinstance(model, SSBResNet)
    plain = ssb_resnet(depth=50, enabled=False, stem_out_channels=4, res2_out_channels=16,
                       width_per_group=4)
    assert type(plain) is ResNet  # the plain twin is Detectron2's class itself


# ----------------------------------------------------------------------------- precision


def _extreme_block(scale):
    torch.manual_seed(0)
    block = SSBBottleneckBlock(32, 32, bottleneck_channels=8, norm="BN",
                               grid_size=7, grid_padding=6, kernel_sigma=2.0).eval()
    w = block.sampler.saliency_conv.weight
    # Logits of order +-1e4 and beyond: softmax underflows to exact zeros almost everywhere.
    w.data.copy_(torch.sign(torch.randn(w.shape)) * scale)
    return block


def _assert_grid_finite_and_inside(grid, h, w):
    for k in (grid.knots_y, grid.knots_x):
        assert k.dtype == torch.float64  # whatever the features' dtype
        assert torch.isfinite(k).all()
        assert (k.diff(dim=1) > 0).all(), "separable map must stay strictly increasing"
        assert k[:, 0].eq(0).all() and k[:, -1].eq(1).all()
    ys, xs = grid.sampling_positions()
    assert ys.min() >= -0.5 and ys.max() <= h - 0.5
    assert xs.min() >= -0.5 and xs.max() <= w - 0.5
    iy, ix = grid.inverse_positions()
    assert torch.isfinite(iy).all() and torch.isfinite(ix).all()


@pytest.mark.parametrize("dtype,scale", [
    (torch.float32, 1e4), (torch.float32, -1e4), (torch.float32, 1e30),
    (torch.bfloat16, 1e4), (torch.bfloat16, -1e4), (torch.bfloat16, 1e30),
    (torch.float16, 1e4), (torch.float16, -1e4),
])
def test_extreme_saliency_logits_keep_grid_and_block_finite(scale, dtype):
    block = _extreme_block(scale).to(dtype)
    x = torch.randn(2, 32, 29, 43).to(dtype)
    with torch.no_grad():
        a = torch.relu(block.conv1(x))
        logits = torch.nn.functional.conv2d(a.float(), block.sampler.saliency_conv.weight.float())
        assert logits.abs().max() >= 1e4  # the premise: logits really are extreme
        _assert_grid_finite_and_inside(block.sampler(a), 29, 43)
        y = block(x)
    assert y.shape == x.shape and y.dtype == dtype
    assert torch.isfinite(y).all()


def _cpu_autocast_dtypes():
    dtypes = [torch.bfloat16]
    try:
        with torch.autocast("cpu", dtype=torch.float16):
            torch.nn.functional.conv2d(torch.randn(1, 1, 2, 2), torch.randn(1, 1, 1, 1))
        dtypes.append(torch.float16)
    except RuntimeError:  # CPU autocast without fp16 support on this build
        pass
    return dtypes


@pytest.mark.parametrize("scale", [1e4, -1e4])
@pytest.mark.parametrize("dtype", _cpu_autocast_dtypes())
def test_block_under_cpu_autocast_with_extreme_saliency(scale, dtype):
    block = _extreme_block(scale)
    x = torch.randn(2, 32, 29, 43)
    with torch.no_grad(), torch.autocast("cpu", dtype=dtype):
        a = torch.relu(block.conv1(x))
        assert a.dtype == dtype  # the premise: autocast hands the sampler reduced precision
        _assert_grid_finite_and_inside(block.sampler(a), 29, 43)
        y = block(x)
    assert y.shape == x.shape and torch.isfinite(y).all()


def test_backbone_trains_a_step_under_cpu_autocast():
    model = narrow_r50().train()
    x = torch.randn(2, 3, 64, 96)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
        loss = sum(v.float().square().mean() for v in out.values())
    loss.backward()
    assert torch.isfinite(loss)
    for name, p in model.named_parameters():
        assert p.grad is None or torch.isfinite(p.grad).all(), name


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("scale", [1e4, -1e4])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_block_under_cuda_autocast_with_extreme_saliency(scale, dtype):
    block = _extreme_block(scale).cuda().train()
    x = torch.randn(2, 32, 29, 43, device="cuda", requires_grad=True)
    with torch.autocast("cuda", dtype=dtype):
        a = torch.relu(block.conv1(x))
        assert a.dtype == dtype
        grid = block.sampler(a)
        y = block(x)
    _assert_grid_finite_and_inside(grid, 29, 43)
    assert torch.isfinite(y).all()
    y.float().square().mean().backward()
    assert torch.isfinite(x.grad).all()
    for name, p in block.named_parameters():
        assert p.grad is None or torch.isfinite(p.grad).all(), name


# ----------------------------------------------------------------------------- config, weights


def _yaml(tmp_path, text):
    path = tmp_path / "ssb.yaml"
    path.write_text(text)
    return str(path)


def _cfg_from_yaml(path):
    cfg = get_cfg()
    ssb_det.add_ssb_config(cfg)
    cfg.merge_from_file(path)
    return cfg


def test_config_file_with_unknown_key_names_it(tmp_path):
    path = _yaml(tmp_path, "MODEL:\n  SSB:\n    RATIO: [0.5, 0.5, 0.5, 1.0]\n")
    with pytest.raises(KeyError, match="MODEL.SSB.RATIO"):
        _cfg_from_yaml(path)


def test_config_file_with_wrong_type_names_the_key(tmp_path):
    path = _yaml(tmp_path, "MODEL:\n  SSB:\n    GRID_SIZE: big\n")
    with pytest.raises(ValueError, match="GRID_SIZE"):
        _cfg_from_yaml(path)


def test_config_file_with_invalid_ratios_lists_every_problem(tmp_path):
    path = _yaml(tmp_path, "MODEL:\n  BACKBONE:\n    NAME: build_ssb_resnet_fpn_backbone\n"
                           "  RESNETS:\n    OUT_FEATURES: [res2, res3, res4, res5]\n"
                           "  FPN:\n    IN_FEATURES: [res2, res3, res4, res5]\n"
                           "  SSB:\n    RATIOS: [0.0, -0.5, 1.5, 1.0]\n"
                           "    INVERSE_POSITION: middle\n")
    cfg = _cfg_from_yaml(path)
    with pytest.raises(ValueError) as err:
        build_backbone(cfg)
    msg = str(err.value)
    assert "MODEL.SSB.RATIOS" in msg and "[0.0, -0.5, 1.5]" in msg
    assert "MODEL.SSB.INVERSE_POSITION='middle'" in msg


def test_mismatched_checkpoint_lists_every_mismatch_and_leaves_the_model_unchanged(tmp_path, caplog):
    model = narrow_r50()
    other = ssb_resnet(depth=50, norm="BN", stem_out_channels=4, res2_out_channels=32,
                       width_per_group=8)
    path = str(tmp_path / "other.pth")
    torch.save({"model": other.state_dict()}, path)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with caplog.at_level(logging.WARNING):
        SSBCheckpointer(model).load(path)
    log = caplog.text
    # Detectron2's behaviour (fine-tuning across heads relies on it): skip, and say which
    # parameter, with both shapes.
    assert "'res2.0.conv1.weight'" in log and "(8, 4, 1, 1) in the checkpoint" in log
    assert "'res2.0.sampler.saliency_conv.weight'" in log
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    mismatched = {k for k, v in other.state_dict().items() if v.shape != before[k].shape}
    assert not set(changed) & mismatched


@pytest.mark.parametrize("suffix", [".pth", ".pkl"])
def test_truncated_checkpoint_error_names_the_file(tmp_path, suffix):
    from ssb_det.checkpoint import atomic_torch_save, load_checkpoint_file

    full = tmp_path / ("full" + suffix)
    if suffix == ".pth":
        atomic_torch_save({"model": narrow_r50().state_dict()}, str(full))
    else:
        import pickle

        import numpy as np
        full.write_bytes(pickle.dumps({"model": {"w": np.ones((64, 64), np.float32)}}))
    broken = tmp_path / ("broken" + suffix)
    broken.write_bytes(full.read_bytes()[: len(full.read_bytes()) // 2])
    with pytest.raises(Exception) as err:
        load_checkpoint_file(str(broken))
    assert str(broken) in str(err.value)
