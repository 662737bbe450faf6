"""projects/SSBStudy/batch_dependence.py (ssb_study.batch_dependence): the calibration of its
random saliency, and that its measurements separate padding-aware from padding-unaware
sampling, on a narrow host and small images."""

import torch
import torch.nn.functional as F

from ssb_study import batch_dependence as bd
from ssb_det.analysis.models import build_detector, load_cfg
from ssb_det.layers import SaliencySampler
from narrow_host import NARROW_HOST_OPTS  # tests/ is on sys.path, see conftest.py

from ssb_study.cli import batch_dependence_main as main

SIZE_A, SIZE_B = (64, 96), (96, 160)  # A a multiple of 32: alone, it fills every map


def _detector(*opts):
    return build_detector(load_cfg(None, NARROW_HOST_OPTS + list(opts)), seed=0)


def test_random_saliency_has_the_requested_pooled_logit_std():
    model = _detector()
    image = bd.smooth_image(*SIZE_A, torch.Generator().manual_seed(0))
    changed = bd.randomise_saliency(model, image, 2.5, torch.Generator().manual_seed(1))
    samplers = [m for m in model.modules() if isinstance(m, SaliencySampler)]
    assert changed == len(samplers) == 11  # res2-res4 of an R50, res5 not sampled

    stds = []

    def logit_std(sampler, args):
        # Pool first, then the 1x1 conv as a channel sum: the calibration reads
        # SaliencySampler.logits, which convolves first and pools over the image's region.
        pooled = F.adaptive_avg_pool2d(args[0].double(), sampler.grid_size)
        weight = sampler.saliency_conv.weight.double()[0, :, 0, 0]
        stds.append(torch.einsum("nchw,c->nhw", pooled, weight).std().item())

    hooks = [s.register_forward_pre_hook(logit_std) for s in samplers]
    with torch.no_grad():
        model([{"image": image}])
    for h in hooks:
        h.remove()
    assert len(stds) == 11
    for std in stds:
        assert abs(std - 2.5) < 1e-6


def test_padding_unaware_sampling_moves_more_with_the_batch_mate():
    # Padding-aware sampling is not exactly unchanged here: features at A's border differ
    # once a batch-mate's padding replaces the convs' zero padding, and the saliency reads them.
    gen = torch.Generator().manual_seed(0)
    img_a, img_b = bd.smooth_image(*SIZE_A, gen), bd.smooth_image(*SIZE_B, gen)
    rate = {}
    for aware in (True, False):
        model = _detector("MODEL.SSB.PADDING_AWARE", str(aware))
        bd.randomise_saliency(model, img_a, 3.0, torch.Generator().manual_seed(1))
        rate[aware] = bd.measure(model, img_a, img_b)["grid rate"]
    assert 0 < rate[True] < rate[False]


def test_a_batch_mate_of_the_same_size_changes_nothing():
    gen = torch.Generator().manual_seed(0)
    img_a, img_b = (bd.smooth_image(*SIZE_A, gen) for _ in range(2))
    model = _detector()
    bd.randomise_saliency(model, img_a, 3.0, torch.Generator().manual_seed(1))
    # In float64, so that a batched convolution's different summation order stays far
    # below what the test checks.
    change = bd.measure(model.double(), img_a.double(), img_b.double())
    assert set(change) == {"p2", "p3", "p4", "p5", "p6", "box head", "grid rate"}
    assert max(change.values()) < 1e-10


def test_command_line_runs_every_model_and_prints_the_table(capsys):
    main(["--size-a", *map(str, SIZE_A), "--size-b", *map(str, SIZE_B), "--logit-std", "3",
          "--compare-padding-unaware", *NARROW_HOST_OPTS])
    out = capsys.readouterr().out.splitlines()
    labels = ["plain R50-FPN", "SSB, uniform saliency (init)", "SSB, random saliency, std 3",
              "SSB, random saliency, std 3, unaware"]
    header = out.index(next(line for line in out if line.startswith("model")))
    assert out[header].split() == ["model", "p2", "p3", "p4", "p5", "p6", "box", "head", "grid",
                                   "rate"]
    rows = out[header + 1:header + 5]
    assert [r[:40].strip() for r in rows] == labels
    grid_rate = [float(r.split()[-1]) for r in rows]
    assert grid_rate[0] == grid_rate[1] == 0.0  # no SSB block; uniform sampling
    assert 0 < grid_rate[2] < grid_rate[3]
    assert [line.split(" / plain")[0] for line in out[header + 5:]] == labels[1:]


def test_fixed_boxes_and_relative_change_by_hand():
    boxes = bd.fixed_boxes(100, 200).tensor
    assert boxes.shape == (64, 4)
    assert boxes[:, 0].min() >= 0 and boxes[:, 1].min() >= 0
    assert boxes[:, 2].max() <= 200 and boxes[:, 3].max() <= 100
    widths, heights = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    assert sorted(set(widths.round().tolist())) == [20, 40, 70, 100]
    assert sorted(set(heights.round().tolist())) == [10, 20, 35, 50]
    assert boxes[0].tolist() == [0, 0, 20, 10]
    assert abs(bd.relative_change(torch.tensor([3.0, 4.0]), torch.tensor([3.0, 0.0])) - 0.8) < 1e-7
