"""Sampling statistics against a direct numerical integration of the sampling density."""
import numpy as np
import torch

from ssb_det.layers import SaliencySampler, identity_knots
from ssb_det.layers.sampling_stats import knot_statistics, separable_statistics


def _density_on_fine_grid(knots, n=200_000):
    """Sampling density (relative to uniform) at n points of [0, 1], by differentiating the
    inverse map numerically: the samples' positions are knots at equal steps of 1/G."""
    g = len(knots) - 1
    x = (np.arange(n) + 0.5) / n
    t = np.interp(x, knots, np.linspace(0.0, 1.0, g + 1))  # inverse map phi^-1(x)
    return np.gradient(t, x)


def _random_knots(rng, n, g):
    widths = rng.uniform(0.2, 3.0, size=(n, g))
    knots = np.concatenate([np.zeros((n, 1)), np.cumsum(widths, 1)], 1)
    return knots / knots[:, -1:]


def test_uniform_sampling_is_zero_kl_and_unit_ratio():
    kl, ratio = separable_statistics(identity_knots(3, 31), identity_knots(3, 31))
    torch.testing.assert_close(kl, torch.zeros(3, dtype=torch.float64), atol=1e-12, rtol=0)
    torch.testing.assert_close(ratio, torch.ones(3, dtype=torch.float64), atol=1e-12, rtol=0)


def test_two_cell_map_by_hand():
    # Cells of width 1/4 and 3/4 each get half the samples: densities 2 and 2/3.
    kl, ratio = knot_statistics(torch.tensor([[0.0, 0.25, 1.0]], dtype=torch.float64))
    expected = 0.5 * np.log(2.0) + 0.5 * np.log(2.0 / 3.0)
    assert abs(float(kl) - expected) < 1e-12
    assert abs(float(ratio) - 3.0) < 1e-12


def test_one_dimensional_statistics_match_integration():
    rng = np.random.default_rng(0)
    knots = _random_knots(rng, 4, 9)
    kl, ratio = knot_statistics(torch.from_numpy(knots))
    for i in range(4):
        p = _density_on_fine_grid(knots[i])
        interior = slice(10, -10)  # np.gradient is one-sided at the ends
        assert abs(float(kl[i]) - float(np.mean(p * np.log(p)))) < 1e-3
        assert abs(float(ratio[i]) - p[interior].max() / p[interior].min()) < 1e-3 * float(ratio[i])


def test_separable_statistics_match_two_dimensional_integration():
    rng = np.random.default_rng(1)
    ky, kx = _random_knots(rng, 1, 7), _random_knots(rng, 1, 5)
    kl, ratio = separable_statistics(torch.from_numpy(ky), torch.from_numpy(kx))
    py, px = _density_on_fine_grid(ky[0], 2000), _density_on_fine_grid(kx[0], 2000)
    p = py[10:-10, None] * px[None, 10:-10]
    assert abs(float(kl) - float(np.mean(p * np.log(p)))) < 2e-2
    assert abs(float(ratio) - p.max() / p.min()) < 1e-2 * float(ratio)


def test_learned_saliency_moves_away_from_uniform():
    torch.manual_seed(0)
    sampler = SaliencySampler(8, 0.5, grid_size=7, padding=6, sigma=1.5)
    x = torch.randn(2, 8, 24, 32)
    with torch.no_grad():
        grid = sampler(x)  # zero-initialised conv: uniform
    kl, ratio = separable_statistics(grid.knots_y, grid.knots_x)
    assert float(kl.abs().max()) < 1e-9 and float((ratio - 1).abs().max()) < 1e-9
    with torch.no_grad():
        sampler.saliency_conv.weight.normal_(0, 2.0)
        grid = sampler(x)
    kl, ratio = separable_statistics(grid.knots_y, grid.knots_x)
    assert bool((kl > 1e-3).all()) and bool((ratio > 1.05).all())


def test_density_at_by_hand():
    from ssb_det.layers.sampling_stats import density_at
    # G = 4: intervals of widths 0.1, 0.4, 0.4, 0.1 -> densities 2.5, 0.625, 0.625, 2.5
    knots = torch.tensor([0.0, 0.1, 0.5, 0.9, 1.0], dtype=torch.float64)
    got = density_at(knots, torch.tensor([0.0, 0.05, 0.3, 0.95, 1.0]))
    assert torch.allclose(got, torch.tensor([2.5, 2.5, 0.625, 2.5, 2.5], dtype=torch.float64))


def test_density_at_matches_integration_away_from_knots():
    from ssb_det.layers.sampling_stats import density_at
    rng = np.random.default_rng(1)
    knots = _random_knots(rng, 1, 9)[0]
    n = 200_000
    fine = _density_on_fine_grid(knots, n)
    # points well inside intervals, where the numerical derivative is exact
    mids = (knots[:-1] + knots[1:]) / 2
    got = density_at(torch.from_numpy(knots), torch.from_numpy(mids)).numpy()
    np.testing.assert_allclose(got, fine[(mids * n).astype(int)], rtol=1e-6)
