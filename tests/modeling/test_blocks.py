"""SSB and ResNet-RS blocks: equivalence with Detectron2's BottleneckBlock, shapes, options."""
import numpy as np
import pytest
import torch
from detectron2.modeling.backbone.resnet import BottleneckBlock

from ssb_det.layers import SaliencySampler
from sampling_reference import ref_lines_of_image, ref_restore, ref_sample
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


def _nonuniform_grid(n=2, size=(23, 30), ratio=0.5, seed=0, valid=None):
    """A grid of a random saliency in float64, and its reference lines
    (tests/sampling_reference.py)."""
    gen = torch.Generator().manual_seed(seed)
    sampler = SaliencySampler(8, ratio, grid_size=7, padding=6, sigma=2.0).double()
    sampler.saliency_conv.weight.data.copy_(torch.randn(1, 8, 1, 1, generator=gen))
    a = torch.randn(n, 8, *size, generator=gen, dtype=torch.float64)
    valid = [size] * n if valid is None else valid
    with torch.no_grad():
        grid = sampler(a, torch.tensor(valid, dtype=torch.float64))
    weight = sampler.saliency_conv.weight.detach().numpy()[0, :, 0, 0]
    lines = ref_lines_of_image(a.numpy(), weight, ratio, 7, 6, 2.0, valid)
    return grid, lines


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_fused_tail_over_many_chunks_equals_the_reference(monkeypatch, dtype):
    import ssb_det.layers.resample as resample

    # A few channels per chunk: the chunk loop, not one whole-map call, is what runs.
    monkeypatch.setattr(resample, "CPU_CHUNK_BYTES", 3 * 2 * 23 * 30 * 8)
    grid, lines = _nonuniform_grid(valid=[(23, 30), (17, 26)])
    gen = torch.Generator().manual_seed(1)
    y = torch.randn(2, 16, 12, 15, generator=gen, dtype=torch.float64)
    shortcut = torch.randn(2, 16, 23, 30, generator=gen, dtype=torch.float64)
    expected = np.maximum(ref_restore(y.numpy(), lines) + shortcut.numpy(), 0)
    given, y_given = shortcut.to(dtype), y.to(dtype)
    before = given.clone(), y_given.clone()
    with torch.no_grad():
        out = grid.inverse_add_relu(y_given, given)
    assert out.dtype == dtype
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    np.testing.assert_allclose(out.double().numpy(), expected, rtol=0, atol=tol)
    # A new tensor: neither input is written.
    assert torch.equal(given, before[0]) and torch.equal(y_given, before[1])


def test_fused_tail_of_mixed_dtypes_promotes():
    grid, lines = _nonuniform_grid()
    y = torch.randn(2, 4, 12, 15, dtype=torch.float64)
    shortcut = torch.randn(2, 4, 23, 30)
    given = shortcut.clone()
    with torch.no_grad():
        out = grid.inverse_add_relu(y, given)
    assert out.dtype == torch.float64 and torch.equal(given, shortcut)
    expected = np.maximum(ref_restore(y.numpy(), lines) + shortcut.double().numpy(), 0)
    np.testing.assert_allclose(out.numpy(), expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("inverse_position", ["after_conv3", "before_conv3"])
@pytest.mark.parametrize("grad", [False, True])  # fused chunked tail / unfused training path
def test_ssb_block_equals_its_definition_with_reference_sampling(inverse_position, grad):
    # The block as the docstring defines it, with the reference sampling of
    # tests/sampling_reference.py and its own convs: a projection block of a padded batch.
    torch.manual_seed(0)
    block = SSBBottleneckBlock(16, 32, bottleneck_channels=8, norm="FrozenBN",
                               sampling_ratio=0.5, grid_size=5, grid_padding=4, kernel_sigma=1.5,
                               inverse_position=inverse_position).double().eval()
    torch.nn.init.normal_(block.sampler.saliency_conv.weight, std=1.0)
    x = torch.randn(2, 16, 21, 17, dtype=torch.float64)
    valid = [(21, 17), (15, 11)]
    x_before = x.clone()
    with torch.set_grad_enabled(grad):
        out = block(x.clone().requires_grad_(grad), torch.tensor(valid, dtype=torch.float64))
    assert torch.equal(x, x_before)
    with torch.no_grad():
        a = torch.relu(block.conv1(x))
        weight = block.sampler.saliency_conv.weight.numpy()[0, :, 0, 0]
        lines = ref_lines_of_image(a.numpy(), weight, 0.5, 5, 4, 1.5, valid)
        b = torch.relu(block.conv2(torch.from_numpy(ref_sample(a.numpy(), lines))))
        if inverse_position == "after_conv3":
            c = torch.from_numpy(ref_restore(block.conv3(b).numpy(), lines))
        else:
            c = block.conv3(torch.from_numpy(ref_restore(b.numpy(), lines)))
        expected = torch.relu(c + block.shortcut(x))
    np.testing.assert_allclose(out.detach().numpy(), expected.numpy(), rtol=0, atol=1e-12)


@pytest.mark.parametrize("memory_efficient", [True, False])
@pytest.mark.parametrize("inverse_position", ["after_conv3", "before_conv3"])
def test_gradcheck_of_a_whole_ssb_block_in_float64(memory_efficient, inverse_position):
    # Finite differences of the whole block (its input, the saliency conv and the convs
    # around the sampling; a padded batch), on the recomputing (memory-efficient) path and
    # the plain one. fast_mode: a random projection of the Jacobian, checked in one pass.
    torch.manual_seed(0)
    block = SSBBottleneckBlock(6, 6, bottleneck_channels=3, norm="FrozenBN", sampling_ratio=0.5,
                               grid_size=4, grid_padding=3, kernel_sigma=1.0,
                               inverse_position=inverse_position,
                               memory_efficient=memory_efficient).double()
    torch.nn.init.normal_(block.sampler.saliency_conv.weight, std=1.0)
    names = ("sampler.saliency_conv.weight", "conv1.weight", "conv3.weight")
    params = [block.get_parameter(n).detach().clone().requires_grad_() for n in names]
    x = torch.randn(2, 6, 7, 9, dtype=torch.float64, requires_grad=True)
    valid = torch.tensor([[7.0, 9.0], [5.0, 6.0]], dtype=torch.float64)
    recomputed = []
    block.sampler.register_forward_hook(lambda m, a, grid: recomputed.append(grid.needs_grad))

    def fn(x, *ps):
        return torch.func.functional_call(block, dict(zip(names, ps)), (x, valid))

    assert torch.autograd.gradcheck(fn, (x, *params), eps=1e-6, atol=1e-6, fast_mode=True)
    assert all(recomputed)  # the grid was differentiated, not treated as a constant


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
