"""SSB and ResNet-RS blocks: equivalence with Detectron2's BottleneckBlock, shapes, options."""
import pytest
import torch
from detectron2.modeling.backbone.resnet import BottleneckBlock

from ssb_det.layers import SaliencySampler
from ssb_det.modeling import RSBottleneckBlock, RSStem, SSBBottleneckBlock


def _randomise_bn(module, seed=0):
    gen = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=gen) * 0.1)


@pytest.mark.parametrize("in_ch,position", [(64, "after_conv3"), (32, "before_conv3"),
                                             (64, "before_conv3")])
def test_ssb_ratio_one_zero_saliency_equals_detectron2_bottleneck(in_ch, position):
    torch.manual_seed(0)
    ref = BottleneckBlock(in_ch, 64, bottleneck_channels=16, norm="BN").eval()
    _randomise_bn(ref)
    ssb = SSBBottleneckBlock(in_ch, 64, bottleneck_channels=16, norm="BN", sampling_ratio=1.0,
                             grid_size=7, grid_padding=6, kernel_sigma=2.0,
                             inverse_position=position).eval()
    missing, unexpected = ssb.load_state_dict(ref.state_dict(), strict=False)
    assert missing == ["sampler.saliency_conv.weight"] and unexpected == []
    x = torch.randn(2, in_ch, 19, 26)
    with torch.no_grad():
        torch.testing.assert_close(ssb(x), ref(x), atol=1e-5, rtol=1e-5)


def test_rs_block_without_options_equals_detectron2_bottleneck():
    torch.manual_seed(0)
    ref = BottleneckBlock(32, 64, bottleneck_channels=16, stride=2, norm="BN").eval()
    _randomise_bn(ref)
    rs = RSBottleneckBlock(32, 64, bottleneck_channels=16, stride=2, norm="BN").eval()
    rs.load_state_dict(ref.state_dict())  # strict: same parameter names
    x = torch.randn(1, 32, 15, 22)
    with torch.no_grad():
        torch.testing.assert_close(rs(x), ref(x))


@pytest.mark.parametrize("size", [(1, 1), (2, 3), (17, 26), (40, 9)])
@pytest.mark.parametrize("position", ["after_conv3", "before_conv3"])
def test_ssb_block_keeps_input_size(size, position):
    block = SSBBottleneckBlock(32, 32, bottleneck_channels=8, norm="BN", sampling_ratio=0.5,
                               grid_size=5, grid_padding=4, kernel_sigma=1.5,
                               inverse_position=position, se_ratio=0.25)
    x = torch.randn(2, 32, *size)
    y = block(x)
    assert y.shape == x.shape and torch.isfinite(y).all()


def test_ssb_block_runs_the_3x3_on_the_sampled_map():
    block = SSBBottleneckBlock(32, 32, bottleneck_channels=8, norm="BN", sampling_ratio=0.5)
    seen = {}

    def record(name):
        def hook(module, inputs, output):
            seen[name] = tuple(output.shape)  # returns None: the output is unchanged
        return hook

    block.conv2.register_forward_hook(record("shape"))
    block.conv3.register_forward_hook(record("c3"))
    block(torch.randn(1, 32, 21, 30))
    assert seen["shape"] == (1, 8, 11, 15)
    assert seen["c3"] == (1, 32, 11, 15)  # after_conv3: the expansion runs small too


def test_ssb_block_rejects_stride_and_bad_position():
    with pytest.raises(ValueError, match="stride"):
        SSBBottleneckBlock(32, 64, bottleneck_channels=8, stride=2)
    with pytest.raises(ValueError, match="inverse_position"):
        SSBBottleneckBlock(32, 32, bottleneck_channels=8, inverse_position="middle")


def test_ssb_block_freeze_converts_bn_and_freezes_saliency():
    block = SSBBottleneckBlock(32, 32, bottleneck_channels=8, norm="BN")
    block.freeze()
    assert all(not p.requires_grad for p in block.parameters())
    assert "FrozenBatchNorm2d" in type(block.conv1.norm).__name__


def test_uniform_ssb_block_has_no_saliency_parameters():
    block = SSBBottleneckBlock(32, 32, bottleneck_channels=8, uniform=True)
    assert not any("saliency" in n for n, _ in block.named_parameters())
    assert isinstance(block.sampler, SaliencySampler) and block.sampler.uniform


def test_rs_block_avg_down_shortcut_and_se():
    block = RSBottleneckBlock(32, 64, bottleneck_channels=16, stride=2, norm="BN",
                              se_ratio=0.25, avg_down=True).eval()
    assert block.shortcut.stride == (1, 1)  # the avg-pool does the striding
    assert block.se.fc1.out_channels == 16  # 0.25 * 64 output channels
    y = block(torch.randn(1, 32, 15, 21))
    assert y.shape == (1, 64, 8, 11)


def test_drop_path_is_identity_in_eval_and_drops_in_train():
    torch.manual_seed(0)
    block = RSBottleneckBlock(16, 16, bottleneck_channels=4, norm="BN", drop_path=0.5)
    x = torch.randn(64, 16, 4, 4)
    block.eval()
    out_eval = block(x)
    block.drop_path.eval()
    branch = block.conv3(torch.relu(block.conv2(torch.relu(block.conv1(x)))))
    torch.testing.assert_close(out_eval, torch.relu(branch + x))
    block.train()
    block.drop_path.train()
    kept = block.drop_path(torch.ones(64, 1, 1, 1)).flatten()
    assert set(kept.unique().tolist()) <= {0.0, 2.0} and 0 < (kept == 0).sum() < 64


def test_rs_stem_output_stride_and_channels():
    stem = RSStem(3, 64, stem_width=32, norm="BN")
    assert stem.stride == 4 and stem.out_channels == 64
    assert stem(torch.randn(1, 3, 63, 97)).shape == (1, 64, 16, 25)


def _nonuniform_grid(n=2, size=(23, 30), ratio=0.5, separable=True, seed=0):
    torch.manual_seed(seed)
    sampler = SaliencySampler(8, ratio, grid_size=7, padding=6, sigma=2.0, separable=separable)
    torch.nn.init.normal_(sampler.saliency_conv.weight, std=1.0)
    with torch.no_grad():
        return sampler(torch.randn(n, 8, *size))


@pytest.mark.parametrize("separable", [True, False])
@pytest.mark.parametrize("overwrite", [False, True])
def test_fused_tail_over_many_chunks_equals_the_unfused_expression(monkeypatch, separable,
                                                                   overwrite):
    import ssb_det.layers.sampling as sampling

    # A few channels per chunk: the chunk loop, not one whole-map call, is what runs.
    monkeypatch.setattr(sampling, "CPU_CHUNK_BYTES", 3 * 2 * 23 * 30 * 4)
    grid = _nonuniform_grid(separable=separable)
    y = torch.randn(2, 16, 12, 15)
    shortcut = torch.randn(2, 16, 23, 30)
    expected = torch.relu(grid.inverse(y) + shortcut)
    given = shortcut.clone()
    with torch.no_grad():
        out = grid.inverse_add_relu(y, given, overwrite_shortcut=overwrite)
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=1e-6)
    # Overwriting means the result lives in the shortcut's memory and nothing else changed.
    assert (out.data_ptr() == given.data_ptr()) == overwrite
    if not overwrite:
        assert torch.equal(given, shortcut)


def test_fused_tail_never_overwrites_a_shortcut_of_another_dtype():
    grid = _nonuniform_grid()
    y = torch.randn(2, 4, 12, 15, dtype=torch.float64)
    shortcut = torch.randn(2, 4, 23, 30)
    given = shortcut.clone()
    with torch.no_grad():
        out = grid.inverse_add_relu(y, given, overwrite_shortcut=True)
    assert out.dtype == torch.float64 and torch.equal(given, shortcut)
    torch.testing.assert_close(out, torch.relu(grid.inverse(y) + shortcut))


def test_projection_block_fused_tail_equals_the_block_with_gradients():
    # No gradient: the fused tail writes into the block's own projection output; with
    # gradients the block takes the unfused path. Same values.
    torch.manual_seed(0)
    block = SSBBottleneckBlock(16, 32, bottleneck_channels=8, norm="FrozenBN",
                               sampling_ratio=0.5, grid_size=5, grid_padding=4,
                               kernel_sigma=1.5).eval()
    torch.nn.init.normal_(block.sampler.saliency_conv.weight, std=1.0)
    x = torch.randn(2, 16, 21, 17)
    x_before = x.clone()
    with torch.no_grad():
        fused = block(x)
    assert torch.equal(x, x_before)  # a projection block never writes into its input
    unfused = block(x.requires_grad_())
    torch.testing.assert_close(fused, unfused.detach(), atol=1e-5, rtol=1e-5)



@pytest.mark.parametrize("position", ["after_conv3", "before_conv3"])
def test_non_finite_input_flows_through_the_block(position):
    # Diverged training: NaN/Inf must reach the loss (Detectron2 then reports the
    # divergence) rather than crash the sampler. Training with backward, then inference.
    torch.manual_seed(0)
    block = SSBBottleneckBlock(32, 32, bottleneck_channels=8, norm="BN", sampling_ratio=0.5,
                               grid_size=5, grid_padding=4, kernel_sigma=1.5,
                               inverse_position=position)
    x = torch.randn(2, 32, 17, 26)
    x[1, :, 2, 3] = float("nan")
    x[1, 4] = float("inf")
    block.eval()  # first: training with this batch makes BN's running statistics NaN
    with torch.no_grad():
        y = block(x)
        alone = block(x[:1])
    assert not torch.isfinite(y[1]).all()
    torch.testing.assert_close(y[:1], alone)  # the clean image is unaffected in inference
    x.requires_grad_(True)
    block.train()
    y = block(x)
    assert y.shape == x.shape and not torch.isfinite(y).all()
    y.sum().backward()
