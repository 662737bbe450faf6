"""Exactness tests of the saliency sampler and its inverse (ssb_det.layers)."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ssb_det.layers import (
    SaliencySampler,
    SeparableGrid,
    identity_knots,
    interp_knots,
    invert_knots,
    recasens_knots_1d,
    sampled_size,
)


def _random_knots(n, g=31, scale=3.0, seed=0):
    gen = torch.Generator().manual_seed(seed)
    marg = torch.softmax(torch.randn(n, g, generator=gen) * scale, dim=1)
    return recasens_knots_1d(marg, padding=30, sigma=5.5)


def test_sampled_size_rounds_half_up_and_never_zero():
    assert [sampled_size(n, 0.5) for n in (1, 2, 3, 5, 200)] == [1, 1, 2, 3, 100]
    assert sampled_size(7, 1.0) == 7
    assert sampled_size(1, 0.01) == 1


def test_sampled_size_of_a_traced_size_is_the_same_number_as_a_tensor():
    # Under torch.jit.trace a size is a 0-dim integer tensor; the result must stay one (so
    # the trace records it) and equal the Python rounding, half-way cases included.
    for ratio in (0.5, 0.25, 0.3, 0.7, 1.0, 0.01):
        for n in (1, 2, 3, 5, 7, 10, 25, 199, 200, 801):
            traced = sampled_size(torch.tensor(n), ratio)
            assert isinstance(traced, torch.Tensor) and traced.dim() == 0
            assert int(traced) == max(1, int(n * ratio + 0.5)) == sampled_size(n, ratio), (n, ratio)


@pytest.mark.parametrize("g", [1, 2, 5, 31])
def test_uniform_saliency_gives_identity_grid_1d(g):
    marg = torch.full((3, g), 1.0 / g)
    knots = recasens_knots_1d(marg, padding=30, sigma=5.5)
    torch.testing.assert_close(knots, identity_knots(3, g), atol=1e-6, rtol=0)


def test_zero_initialised_sampler_is_identity():
    sampler = SaliencySampler(8, 0.5, grid_size=7, padding=6, sigma=2.0)
    assert torch.count_nonzero(sampler.saliency_conv.weight) == 0
    grid = sampler(torch.randn(2, 8, 20, 30))
    torch.testing.assert_close(grid.knots_y, identity_knots(2, 7), atol=1e-6, rtol=0)
    torch.testing.assert_close(grid.knots_x, identity_knots(2, 7), atol=1e-6, rtol=0)


def test_nonuniform_knots_strictly_increasing_from_0_to_1():
    knots = _random_knots(4, scale=6.0)
    assert torch.all(knots[:, 1:] > knots[:, :-1])
    assert torch.all(knots[:, 0] == 0) and torch.all(knots[:, -1] == 1)
    # and genuinely non-uniform
    assert (knots - identity_knots(4, 31)).abs().max() > 0.02


@pytest.mark.parametrize("size", [(37, 53), (20, 31), (1, 9), (2, 2)])
def test_uniform_half_ratio_equals_bilinear_down_then_up(size):
    H, W = size
    x = torch.randn(2, 4, H, W)
    sampler = SaliencySampler(4, 0.5, uniform=True)
    grid = sampler(x)
    h, w = sampled_size(H, 0.5), sampled_size(W, 0.5)
    down = F.interpolate(x, (h, w), mode="bilinear", align_corners=False)
    up = F.interpolate(down, (H, W), mode="bilinear", align_corners=False)
    y = grid.sample(x)
    torch.testing.assert_close(y, down, atol=1e-4, rtol=0)
    torch.testing.assert_close(grid.inverse(y), up, atol=1e-4, rtol=0)


def test_invert_knots_is_exact_inverse():
    knots = _random_knots(3, scale=5.0, seed=1)
    t = torch.rand(3, 200, dtype=knots.dtype)
    s = invert_knots(knots, t)
    torch.testing.assert_close(interp_knots(knots, s), t, atol=1e-12, rtol=0)
    # and it is numpy's piecewise-linear inverse
    lattice = np.linspace(0.0, 1.0, knots.shape[1])
    for k, ti, si in zip(knots.numpy(), t.numpy(), s.numpy()):
        np.testing.assert_allclose(si, np.interp(ti, k, lattice), rtol=0, atol=1e-12)


def test_inverse_of_nonuniform_separable_grid_maps_samples_back():
    # Sampling then restoring with a random map at ratio 1/2, in float64: the inverse map at
    # each sample's input position returns the sample's index. The inverse is evaluated
    # with numpy's np.interp (knots as abscissae), not with the package's invert_knots.
    n, (H, W), (h, w) = 2, (40, 64), (20, 32)
    grid = SeparableGrid(_random_knots(n, seed=2), _random_knots(n, seed=3), (H, W), (h, w))
    ys, xs = grid.sampling_positions()  # input pixel coordinates read by each sample
    for knots, pos, full, small in ((grid.knots_y, ys, H, h), (grid.knots_x, xs, W, w)):
        for k, p in zip(knots.numpy(), pos.numpy()):
            lattice = np.linspace(0.0, 1.0, len(k))
            back = np.interp((p + 0.5) / full, k, lattice) * small - 0.5
            np.testing.assert_allclose(back, np.arange(small), rtol=0, atol=1e-9)
    assert (grid.knots_y - identity_knots(n, 31)).abs().max() > 0.02  # a non-uniform map


def test_sample_reads_the_positions_it_reports():
    # Linear interpolation reproduces a linear ramp exactly, so sampling the ramp must return
    # the ramp evaluated at the reported positions, whatever the grid.
    n, H, W = 2, 30, 44
    yy, xx = torch.meshgrid(torch.arange(H, dtype=torch.float32),
                            torch.arange(W, dtype=torch.float32), indexing="ij")
    x = (2 * yy + 3 * xx).expand(n, 1, H, W)
    grid = SeparableGrid(_random_knots(n, seed=4), _random_knots(n, seed=5), (H, W), (15, 22))
    ys, xs = grid.sampling_positions()
    y = grid.sample(x)
    ys, xs = ys.clamp(0, H - 1), xs.clamp(0, W - 1)  # border samples read the edge pixel
    torch.testing.assert_close(y, (2 * ys[:, None, :, None] + 3 * xs[:, None, None, :]).float(),
                               atol=1e-3, rtol=0)


def test_gradients_reach_the_saliency_conv():
    block_in = torch.randn(2, 6, 16, 20)
    sampler = SaliencySampler(6, 0.5, grid_size=5, padding=4, sigma=1.5)
    torch.nn.init.normal_(sampler.saliency_conv.weight, std=0.5)
    grid = sampler(block_in)
    out = grid.inverse(grid.sample(block_in) * 2.0)
    (out * torch.randn_like(out)).sum().backward()
    g = sampler.saliency_conv.weight.grad
    assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0


def test_zero_init_saliency_conv_receives_gradient():
    # From the zero initialisation (uniform sampling) training must be able to move away.
    x = torch.randn(2, 6, 16, 20, requires_grad=True)
    sampler = SaliencySampler(6, 0.5, grid_size=5, padding=4, sigma=1.5)
    grid = sampler(x)
    out = grid.inverse(grid.sample(x))
    (out * torch.randn_like(out)).sum().backward()
    assert sampler.saliency_conv.weight.grad.abs().sum() > 0
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_gradcheck_separable_sample_and_inverse_double():
    torch.manual_seed(0)
    x = torch.randn(1, 2, 6, 7, dtype=torch.float64, requires_grad=True)
    logits = torch.randn(1, 4, 4, dtype=torch.float64, requires_grad=True)

    def fn(x, logits):
        sal = torch.softmax(logits.flatten(1), 1).view(1, 4, 4)
        ky = recasens_knots_1d(sal.sum(2), padding=3, sigma=1.0)
        kx = recasens_knots_1d(sal.sum(1), padding=3, sigma=1.0)
        grid = SeparableGrid(ky, kx, (6, 7), (3, 4))
        return grid.inverse(grid.sample(x) ** 2)

    assert torch.autograd.gradcheck(fn, (x, logits), eps=1e-6, atol=1e-5)


def test_grid_is_full_precision_under_reduced_precision():
    x = torch.randn(1, 4, 12, 12).to(torch.bfloat16)
    sampler = SaliencySampler(4, 0.5, grid_size=5, padding=4, sigma=1.5).to(torch.bfloat16)
    grid = sampler(x)
    assert grid.knots_y.dtype == torch.float64
    y = grid.sample(x)
    assert y.dtype == torch.bfloat16 and y.shape == (1, 4, 6, 6)
    assert grid.inverse(y).dtype == torch.bfloat16


def test_invalid_sampler_arguments_raise():
    with pytest.raises(ValueError, match="ratio"):
        SaliencySampler(4, 0.0)
    with pytest.raises(ValueError, match="ratio"):
        SaliencySampler(4, 1.5)
    with pytest.raises(ValueError, match="grid_size"):
        SaliencySampler(4, 0.5, grid_size=0)
    with pytest.raises(ValueError, match="saliency_bound"):
        SaliencySampler(4, 0.5, saliency_bound=-1.0)


@pytest.mark.parametrize("bound", [0.0, 1.5])
def test_saliency_is_softmax_of_bounded_pooled_logits(bound):
    # Reference in NumPy: pool each 3x3 window of the 1x1 conv's output by hand, then
    # softmax of B tanh(l / B) over the 4x4 cells (plain softmax for B = 0).
    torch.manual_seed(0)
    sampler = SaliencySampler(3, 0.5, grid_size=4, padding=3, sigma=1.0, saliency_bound=bound)
    with torch.no_grad():
        sampler.saliency_conv.weight.normal_(std=20.0)  # pooled logits of several units
    x = torch.randn(2, 3, 12, 12, dtype=torch.float64)
    w = sampler.saliency_conv.weight.detach().double().numpy().reshape(3)
    conv = np.einsum("c,nchw->nhw", w, x.numpy())
    pooled = conv.reshape(2, 4, 3, 4, 3).mean(axis=(2, 4)).reshape(2, 16)
    logits = bound * np.tanh(pooled / bound) if bound else pooled
    expected = np.exp(logits - logits.max(1, keepdims=True))
    expected /= expected.sum(1, keepdims=True)
    got = sampler.double().saliency(x).detach().numpy().reshape(2, 16)
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=0)
    if bound:  # one cell outweighs another by at most exp(2B)
        assert (got.max(1) / got.min(1)).max() <= np.exp(2 * bound)
        assert (pooled.max(1) - pooled.min(1)).max() > 4 * bound  # the bound was active
    np.testing.assert_allclose(sampler.logits(x).detach().numpy(), logits, rtol=1e-12, atol=1e-12)
    # Over a padded map's top-left 9x6 region: the region's own 4x4 adaptive windows.
    valid = torch.tensor([[9, 6], [12, 12]])
    got = sampler.logits(x, valid).detach().numpy()
    region = conv[0, :9, :6]
    rows = [(k * 9 // 4, -(-(k + 1) * 9 // 4)) for k in range(4)]
    cols = [(k * 6 // 4, -(-(k + 1) * 6 // 4)) for k in range(4)]
    first = np.array([[region[r0:r1, c0:c1].mean() for c0, c1 in cols] for r0, r1 in rows])
    first = bound * np.tanh(first / bound) if bound else first
    np.testing.assert_allclose(got[0], first.reshape(16), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(got[1], logits[1], rtol=1e-12, atol=1e-12)


def test_uniform_sampler_has_no_parameters():
    assert len(list(SaliencySampler(4, 0.5, uniform=True).parameters())) == 0
    with pytest.raises(ValueError, match="uniform"):
        SaliencySampler(4, 0.5, uniform=True).logits(torch.zeros(1, 4, 8, 8))
    assert sum(p.numel() for p in SaliencySampler(4, 0.5).parameters()) == 4


def test_chunked_inference_sampling_equals_sampling_with_gradients(monkeypatch):
    import ssb_det.layers.resample as sampling

    # Three channels per chunk: the chunk loop runs, with a shorter last chunk.
    monkeypatch.setattr(sampling, "CPU_CHUNK_BYTES", 3 * 2 * 23 * 30 * 4)
    torch.manual_seed(0)
    sampler = SaliencySampler(8, 0.5, grid_size=7, padding=6, sigma=2.0)
    torch.nn.init.normal_(sampler.saliency_conv.weight, std=1.0)
    x = torch.randn(2, 8, 23, 30)
    with torch.no_grad():
        grid = sampler(x)
        chunked = grid.sample(x)
    whole = grid.sample(x.clone().requires_grad_())
    assert chunked.shape == (2, 8, 12, 15)
    torch.testing.assert_close(chunked, whole.detach(), rtol=0, atol=0)


def test_dense_training_resample_equals_embedding_bag_in_values_and_gradients(monkeypatch):
    import ssb_det.layers.resample as sampling
    from ssb_det.layers.resample import interp_taps as _interp_taps, separable_resample

    torch.manual_seed(0)
    x0 = torch.randn(2, 5, 13, 17, dtype=torch.float64)
    ys0 = (torch.rand(2, 7, dtype=torch.float64) * 14 - 0.5).sort(1).values
    xs0 = (torch.rand(2, 9, dtype=torch.float64) * 18 - 0.5).sort(1).values
    results = []
    for dense_max in (0, 96):  # embedding_bag, then dense matrices (sides 13, 17 <= 96)
        monkeypatch.setattr(sampling, "DENSE_MAX_SIZE", dense_max)
        x, ys, xs = (t.clone().requires_grad_() for t in (x0, ys0, xs0))
        out = separable_resample(x, _interp_taps(ys, 13), _interp_taps(xs, 17), (7, 9),
                                 rows_first=True)
        (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum().backward()
        results.append((out.detach(), x.grad, ys.grad, xs.grad))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    assert results[1][2].abs().sum() > 0  # the positions do receive gradients


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("rows_first", [True, False])
def test_gather_lerp_resample_equals_embedding_bag_and_keeps_the_layout(rows_first, channels_last):
    # The path of GPUs, torch.compile and torch.export (resample.lerp_lines, one gather and
    # one lerp per pass): the same interpolation as the CPU's embedding_bag path; a
    # channels-last map comes back channels-last.
    from ssb_det.layers.resample import interp_taps, lerp_lines, separable_resample

    torch.manual_seed(0)
    x = torch.randn(2, 5, 13, 17, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    ys = (torch.rand(2, 7, dtype=torch.float64) * 14 - 0.5).sort(1).values
    xs = (torch.rand(2, 9, dtype=torch.float64) * 18 - 0.5).sort(1).values
    taps = interp_taps(ys, 13), interp_taps(xs, 17)
    out = x
    for (left, right, frac), dim in ([(taps[0], 2), (taps[1], 3)] if rows_first
                                     else [(taps[1], 3), (taps[0], 2)]):
        out = lerp_lines(out, torch.stack([left, right], 1), frac, dim)
    assert out.shape == (2, 5, 7, 9)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    assert out.is_contiguous(memory_format=fmt)
    torch.testing.assert_close(out, separable_resample(x.contiguous(), *taps, (7, 9),
                                                       rows_first=rows_first),
                               rtol=1e-12, atol=1e-12)


def _poisoned(x, image):
    """``x`` with NaN, +Inf and -Inf written into image ``image`` (features of a diverged run)."""
    x = x.clone()
    x[image, :, 1, 2] = float("nan")
    x[image, 0, 3] = float("inf")
    x[image, 1, :, 4] = -float("inf")
    return x


@pytest.mark.parametrize("padded", [False, True])
def test_non_finite_features_give_a_valid_grid(padded):
    # Diverged training makes NaN/Inf features; the grid must stay a valid map (finite,
    # inside the image) so that NaN flows on to the loss instead of crashing in indexing.
    torch.manual_seed(0)
    sampler = SaliencySampler(6, 0.5, grid_size=5, padding=4, sigma=1.5)
    torch.nn.init.normal_(sampler.saliency_conv.weight, std=1.0)
    x = torch.randn(2, 6, 12, 16)
    valid = torch.tensor([[12.0, 16.0], [9.0, 11.0]]) if padded else None
    bad = _poisoned(x, image=1)
    grid = sampler(bad, valid)
    for knots in (grid.knots_y, grid.knots_x):
        assert torch.isfinite(knots).all()
        assert (knots[:, 1:] > knots[:, :-1]).all()
        assert (knots[:, 0] == 0).all() and (knots[:, -1] == 1).all()
    ys, xs = grid.sampling_positions(clamp=True)
    iy, ix = grid.inverse_positions(clamp=True)
    for pos, size in ((ys, 12), (xs, 16), (iy, 6), (ix, 8)):
        assert torch.isfinite(pos).all() and pos.min() >= 0 and pos.max() <= size - 1
    # The clean image's grid is untouched by its batch-mate (up to float32 rounding: a batch
    # of two may sum in another order than a batch of one), and sampling runs.
    clean = sampler(x[:1], None if valid is None else valid[:1])
    torch.testing.assert_close(grid.sample(bad)[:1], clean.sample(x[:1]), rtol=1e-5, atol=1e-6)
    assert not torch.isfinite(grid.sample(bad)[1]).all()
    restored = grid.inverse(grid.sample(bad))
    assert restored.shape == bad.shape and not torch.isfinite(restored[1]).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("padded", [False, True])
def test_saliency_conv_is_called_as_a_module(dtype, padded):
    # Forward hooks (feature extraction, fvcore's module attribution) must see the saliency
    # conv. Full precision convolves the map, then pools; half precision pools the map and
    # convolves the G x G grid in float32 (see SaliencySampler.saliency).
    torch.manual_seed(0)
    sampler = SaliencySampler(6, 0.5, grid_size=5, padding=4, sigma=1.5).to(dtype)
    torch.nn.init.normal_(sampler.saliency_conv.weight, std=1.0)
    x = torch.randn(2, 6, 12, 16, dtype=dtype)
    valid = torch.tensor([[12.0, 16.0], [9.0, 11.0]]) if padded else None
    seen = []
    sampler.saliency_conv.register_forward_hook(lambda m, i, o: seen.append((i[0], o)))
    saliency = sampler.saliency(x, valid)
    assert len(seen) == 1
    inp, out = seen[0]
    w = sampler.saliency_conv.weight.detach().double()
    if dtype == torch.bfloat16:
        assert inp.shape == (2, 6, 5, 5) and inp.dtype == out.dtype == torch.float32
    else:
        assert inp is x and out.shape == (2, 1, 12, 16) and out.dtype == dtype
    # The hooked output is the 1x1 conv of the hooked input (independent einsum), and the
    # saliency is the softmax of its pooled logits.
    torch.testing.assert_close(out.double(), torch.einsum("oc,nchw->nohw", w[:, :, 0, 0],
                                                          inp.double()), rtol=1e-5, atol=1e-5)
    if not padded:
        logits = F.adaptive_avg_pool2d(out.double(), 5)
        torch.testing.assert_close(saliency, torch.softmax(logits.flatten(1), 1).view(2, 5, 5),
                                   rtol=1e-3 if dtype == torch.bfloat16 else 1e-6, atol=1e-6)


def test_fvcore_counts_the_saliency_conv():
    from fvcore.nn import FlopCountAnalysis

    from ssb_det.modeling import SSBBottleneckBlock

    block = SSBBottleneckBlock(32, 32, bottleneck_channels=8, norm="BN", grid_size=5,
                               grid_padding=4, kernel_sigma=1.5).eval()
    x = torch.randn(2, 32, 12, 16)
    flops = FlopCountAnalysis(block, (x,))
    flops.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    assert "sampler.saliency_conv" not in flops.uncalled_modules()
    # One MAC per value of the 8-channel full-size map it reads.
    assert flops.by_module()["sampler.saliency_conv"] == 2 * 8 * 12 * 16
