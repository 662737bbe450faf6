"""The sampler against the independent NumPy reference of tests/sampling_reference.py:
random non-zero saliency, padded images, float64."""
import numpy as np
import pytest
import torch

from sampling_reference import ref_sampler
from ssb_det.layers import SaliencySampler


@pytest.mark.parametrize("ratio,size,valid,g,padding,sigma", [
    (0.5, (23, 30), [(23, 30), (23, 30)], 7, 6, 2.0),
    (0.5, (40, 56), [(40, 56), (29, 33)], 31, 30, 5.5),  # the default grid, a padded image
    (0.3, (17, 41), [(17, 41), (5, 40)], 5, 4, 1.5),
    (1.0, (19, 26), [(19, 26), (11, 20)], 6, 3, 1.0),
])
@pytest.mark.parametrize("grad", [False, True])  # chunked inference path / training path
def test_sample_and_restore_equal_the_reference(ratio, size, valid, g, padding, sigma, grad):
    gen = torch.Generator().manual_seed(0)
    c = 6
    sampler = SaliencySampler(c, ratio, grid_size=g, padding=padding, sigma=sigma).double()
    sampler.saliency_conv.weight.data.copy_(torch.randn(1, c, 1, 1, generator=gen) * 2.0)
    x = torch.randn(len(valid), c, *size, generator=gen, dtype=torch.float64)
    sizes = torch.tensor(valid, dtype=torch.float64)
    with torch.set_grad_enabled(grad):
        grid = sampler(x.requires_grad_(grad), sizes)
        sampled = grid.sample(x)
        restored = grid.inverse(sampled)
    want_sampled, want_restored = ref_sampler(
        x.detach().numpy(), sampler.saliency_conv.weight.detach().numpy()[0, :, 0, 0], ratio,
        g, padding, sigma, valid)
    np.testing.assert_allclose(sampled.detach().numpy(), want_sampled, rtol=0, atol=1e-10)
    np.testing.assert_allclose(restored.detach().numpy(), want_restored, rtol=0, atol=1e-10)
    # the premise: the saliency is not uniform, so the map is not the identity
    identity = torch.linspace(0, 1, g + 1, dtype=torch.float64)
    assert (grid.knots_y - identity).abs().max() > 0.02
