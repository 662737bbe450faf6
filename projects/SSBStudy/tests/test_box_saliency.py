"""The box target of a box-supervised saliency against references written per pixel or by
hand, and the KL divergence to it."""
import math

import pytest
import torch

from ssb_study.box_saliency import box_coverage, box_saliency_target, saliency_kl


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
    nothing = box_coverage(torch.zeros(0, 4), size, cells)
    assert torch.equal(nothing, torch.zeros(4, 4, dtype=torch.float64))


def test_the_target_puts_the_mass_on_the_boxes_and_the_rest_uniform():
    cells, mass = 8, 0.5
    sizes = [(64, 64), (64, 128)]
    boxes = [torch.tensor([[0.0, 0.0, 8.0, 16.0]]), torch.zeros(0, 4)]
    target = box_saliency_target(boxes, sizes, cells, mass)
    # image 0: the box fills cells (0..1, 0): 0.25 each on top of 0.5 / 64 per cell
    expect = torch.full((cells, cells), 0.5 / 64, dtype=torch.float64)
    expect[0:2, 0] += 0.25
    assert torch.allclose(target[0], expect, atol=1e-15)
    # image 1 has no box: uniform
    assert torch.allclose(target[1], torch.full((cells, cells), 1 / 64, dtype=torch.float64))


@pytest.mark.parametrize("mass", [-0.1, 1.0, float("nan")])
def test_a_mass_outside_0_1_is_refused(mass):
    with pytest.raises(ValueError, match="mass"):
        box_saliency_target([torch.zeros(0, 4)], [(8, 8)], 4, mass)


def test_bad_boxes_and_sizes_are_refused():
    with pytest.raises(ValueError, match=r"\(K, 4\)"):
        box_coverage(torch.zeros(3), (8, 8), 4)
    with pytest.raises(ValueError, match="image_size"):
        box_coverage(torch.zeros(0, 4), (0, 8), 4)
    with pytest.raises(ValueError, match="2 box sets for 1 images"):
        box_saliency_target([torch.zeros(0, 4)] * 2, [(8, 8)], 4, 0.5)


def test_saliency_kl_by_hand():
    t = torch.tensor([[[0.5, 0.5], [0.0, 0.0]]], dtype=torch.float64)
    s = torch.tensor([[[0.25, 0.25], [0.25, 0.25]]], dtype=torch.float64)
    assert saliency_kl(t, s).item() == pytest.approx(math.log(2), rel=1e-12)  # 0 log 0 = 0
    assert saliency_kl(s, s).item() == 0.0
    two = torch.cat([t, s]), torch.cat([s, s])
    assert saliency_kl(*two).item() == pytest.approx(math.log(2) / 2, rel=1e-12)  # mean
    with pytest.raises(ValueError, match="differ"):
        saliency_kl(t, torch.zeros(1, 3, 3, dtype=torch.float64))


def test_the_kl_gradient_with_respect_to_logits_is_s_minus_t():
    logits = torch.randn(2, 4, 4, dtype=torch.float64, requires_grad=True)
    s = torch.softmax(logits.flatten(1), dim=1).view(2, 4, 4)
    t = box_saliency_target([torch.tensor([[0.0, 0.0, 4.0, 4.0]])] * 2, [(8, 8)] * 2, 4, 0.6)
    saliency_kl(t, s).backward()
    assert torch.allclose(logits.grad, (s - t).detach() / 2, atol=1e-12)  # / 2: mean of 2
