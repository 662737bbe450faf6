"""The box target of a box-supervised saliency, against references written per pixel."""
import math

import pytest
import torch

from ssb_det.layers import identity_knots
from ssb_det.layers.box_saliency import (box_coverage, box_marginals, box_target_knots,
                                         log_density_loss)


def coverage_by_pixels(boxes, size, cells, sub=8):
    """Each cell cut into sub x sub points; a point is covered if a box contains it."""
    h, w = size
    n = cells * sub
    ys = (torch.arange(n, dtype=torch.float64) + 0.5) / n * h
    xs = (torch.arange(n, dtype=torch.float64) + 0.5) / n * w
    mask = torch.zeros(n, n, dtype=torch.bool)
    for x0, y0, x1, y1 in boxes.tolist():
        mask |= ((ys >= y0) & (ys < y1))[:, None] & ((xs >= x0) & (xs < x1))[None, :]
    return mask.double().reshape(cells, sub, cells, sub).mean(dim=(1, 3))


def test_coverage_of_separate_boxes_matches_the_pixel_count():
    # Box edges on the 1/8-cell lattice, so the point count is exact.
    size, cells = (80, 120), 10  # cells of 8 x 12 px, sub-points every 1 x 1.5 px
    boxes = torch.tensor([[3.0, 2.0, 30.0, 13.0], [60.0, 40.0, 117.0, 79.0], [0.0, 70, 6, 80]])
    assert torch.allclose(box_coverage(boxes, size, cells),
                          coverage_by_pixels(boxes, size, cells), atol=1e-12)


def test_a_box_counted_twice_or_overlapping_another_is_not_counted_twice():
    size, cells = (64, 64), 8
    box = torch.tensor([[8.0, 8.0, 40.0, 24.0]])
    once = box_coverage(box, size, cells)
    assert torch.equal(box_coverage(torch.cat([box, box]), size, cells), once)
    inner = torch.tensor([[16.0, 8.0, 24.0, 16.0]])
    assert torch.equal(box_coverage(torch.cat([box, inner]), size, cells), once)
    assert once.max() == 1.0


def test_parts_outside_the_image_are_ignored_and_no_box_covers_nothing():
    size, cells = (32, 32), 4
    inside = box_coverage(torch.tensor([[24.0, 0.0, 32.0, 8.0]]), size, cells)
    beyond = box_coverage(torch.tensor([[24.0, -10.0, 50.0, 8.0]]), size, cells)
    assert torch.equal(inside, beyond)
    assert torch.equal(box_coverage(torch.zeros(0, 4), size, cells), torch.zeros(4, 4,
                                                                                dtype=torch.float64))


def test_marginals_put_the_mass_on_the_boxes_and_the_rest_uniform():
    cells, mass = 8, 0.5
    sizes = [(64, 64), (64, 128)]
    boxes = [torch.tensor([[0.0, 0.0, 8.0, 16.0]]), torch.zeros(0, 4)]
    rows, cols = box_marginals(boxes, sizes, cells, mass)
    # image 0: the box fills cells (0..1, 0): 0.25 each on top of 0.5 / 64 per cell
    expect = torch.full((cells, cells), 0.5 / 64, dtype=torch.float64)
    expect[0:2, 0] += 0.25
    assert torch.allclose(rows[0], expect.sum(dim=1)) and torch.allclose(cols[0], expect.sum(dim=0))
    # image 1 has no box: uniform
    assert torch.allclose(rows[1], torch.full((cells,), 1 / cells, dtype=torch.float64))
    assert torch.allclose(cols[1], torch.full((cells,), 1 / cells, dtype=torch.float64))


@pytest.mark.parametrize("mass", [-0.1, 1.0, float("nan")])
def test_a_mass_outside_0_1_is_refused(mass):
    with pytest.raises(ValueError, match="mass"):
        box_marginals([torch.zeros(0, 4)], [(8, 8)], 4, mass)


def test_bad_boxes_and_sizes_are_refused():
    with pytest.raises(ValueError, match=r"\(K, 4\)"):
        box_coverage(torch.zeros(3), (8, 8), 4)
    with pytest.raises(ValueError, match="image_size"):
        box_coverage(torch.zeros(0, 4), (0, 8), 4)
    with pytest.raises(ValueError, match="2 box sets for 1 images"):
        box_marginals([torch.zeros(0, 4)] * 2, [(8, 8)], 4, 0.5)


def test_the_target_map_samples_densest_on_the_box_and_is_the_identity_without_one():
    cells = 31
    box = torch.tensor([[140.0, 100.0, 152.0, 112.0]])  # 12 px on 320 x 256
    ky, kx = box_target_knots([box, torch.zeros(0, 4)], [(256, 320)] * 2, cells, 0.5, 30, 5.5)
    ident = identity_knots(1, cells, dtype=ky.dtype)[0]
    assert torch.allclose(ky[1], ident, atol=1e-12) and torch.allclose(kx[1], ident, atol=1e-12)
    for knots, (lo, hi) in ((ky[0], (100 / 256, 112 / 256)), (kx[0], (140 / 320, 152 / 320))):
        density = 1.0 / (cells * knots.diff())
        centre = (knots[:-1] + knots[1:]) / 2
        densest = centre[density.argmax()]
        assert lo - 1 / cells <= densest <= hi + 1 / cells  # within a grid cell of the box
        assert density.max() > 2.0  # the box is sampled over twice as densely as uniform


def test_log_density_loss_by_hand():
    a = torch.tensor([[0.0, 0.5, 1.0]], dtype=torch.float64)
    b = torch.tensor([[0.0, 0.25, 1.0]], dtype=torch.float64)
    expect = (math.log(0.5 / 0.25) ** 2 + math.log(0.5 / 0.75) ** 2) / 2
    assert log_density_loss(a, b).item() == pytest.approx(expect, rel=1e-12)
    assert log_density_loss(a, a).item() == 0.0
    with pytest.raises(ValueError, match="differ"):
        log_density_loss(a, torch.zeros(1, 4, dtype=torch.float64))
