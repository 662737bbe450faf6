"""Saliency diagnosis: the map's response to logit scale, and the per-block measurements."""
import os

import torch

from ssb_det.analysis.models import build_detector
from ssb_study import load_study_cfg as load_cfg
from ssb_study.saliency_diagnosis import block_diagnosis, logit_scale_response

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


def training_item(box, gen):
    """A 64x96 training input with one ground-truth box ``(x0, y0, x1, y1)`` of class 1."""
    from detectron2.structures import Boxes, Instances

    inst = Instances((64, 96))
    inst.gt_boxes = Boxes(torch.tensor([box]))
    inst.gt_classes = torch.tensor([1])
    return dict(image=torch.randint(0, 255, (3, 64, 96), generator=gen).float(),
                instances=inst, height=64, width=96)


def test_zero_logits_sample_uniformly_and_larger_logits_move_the_map_more():
    rows = logit_scale_response([0.0, 1.0, 4.0], [5.5, 2.0], map_size=(8, 10), grid_size=9,
                                padding=8, draws=4)
    for pattern in ("noise", "object"):
        for sigma in (5.5, 2.0):
            r = [x for x in rows if x["pattern"] == pattern and x["sigma"] == sigma]
            assert [x["std"] for x in r] == [0.0, 1.0, 4.0]
            assert abs(r[0]["density_ratio"] - 1.0) < 1e-9 and abs(r[0]["kl"]) < 1e-12
            assert r[0]["density_ratio"] < r[1]["density_ratio"] < r[2]["density_ratio"]
    zooms = [x["zoom"] for x in rows if x["pattern"] == "object" and x["sigma"] == 2.0]
    assert abs(zooms[0] - 1.0) < 1e-9 and 1.0 < zooms[1] < zooms[2]


def test_block_diagnosis_at_initialisation_leaves_the_model_as_it_was():
    cfg = load_cfg(os.path.join(CONFIGS, "faster_rcnn_SSB_R_50_FPN_small.yaml"))
    model = build_detector(cfg)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    gen = torch.Generator().manual_seed(0)
    box = [10.0, 12.0, 30.0, 40.0]
    result = block_diagnosis(model, [training_item(box, gen), training_item(box, gen)])
    assert sorted(result) == sorted(["res2.0", "res2.1", "res2.2", "res3.1", "res3.2", "res3.3",
                                     "res4.1", "res4.2", "res4.3", "res4.4", "res4.5"])
    for d in result.values():
        assert d["weight_norm"] == 0.0 and d["logit_std"] == 0.0  # zero-initialised convs
        assert abs(d["density_ratio"] - 1.0) < 1e-9
        assert abs(d["zoom_at_boxes"] - 1.0) < 1e-9  # uniform: boxes sampled like the rest
        assert d["grad_ratio"] > 0  # the loss does reach the saliency convs
    assert not model.training  # mode restored; weights untouched, gradients cleared
    for k, v in model.state_dict().items():
        if "running" not in k and "num_batches" not in k:
            assert torch.equal(v, state[k]), k
    assert all(p.grad is None for p in model.parameters())


def test_block_diagnosis_reports_the_grid_each_block_samples_with():
    # The oracle samples the uniform network at the boxes: the statistics are its grid's,
    # and the saliency-conv entries are NaN (no conv).
    cfg = load_cfg(os.path.join(CONFIGS, "faster_rcnn_SSB_R_50_oracle_FPN_tiny.yaml"))
    model = build_detector(cfg)
    item = training_item([10.0, 12.0, 22.0, 20.0], torch.Generator().manual_seed(0))
    result = block_diagnosis(model, [item])
    assert len(result) == 11
    zooms = {d["zoom_at_boxes"] for d in result.values()}
    assert len(zooms) == 1 and zooms.pop() > 1.0  # one target, one kernel: the same zoom
    for d in result.values():
        assert d["density_ratio"] > 1.0
        assert all(d[k] != d[k] for k in ("weight_norm", "logit_std", "grad_ratio"))  # NaN


def test_zoom_at_boxes_by_hand():
    from types import SimpleNamespace

    from detectron2.structures import Boxes, Instances

    from ssb_study.saliency_diagnosis import _zoom_at_boxes

    # rows: intervals 0.1, 0.4, 0.4, 0.1 (densities 2.5, 0.625, 0.625, 2.5); columns uniform
    ky = torch.tensor([[0.0, 0.1, 0.5, 0.9, 1.0]], dtype=torch.float64)
    kx = torch.linspace(0, 1, 5, dtype=torch.float64)[None]
    inst = Instances((100, 200))
    # centres at rows 5 (density 2.5) and 30 (0.625): geometric mean 1.25
    inst.gt_boxes = Boxes(torch.tensor([[10.0, 0.0, 30.0, 10.0], [50.0, 20.0, 70.0, 40.0]]))
    got = _zoom_at_boxes(SimpleNamespace(knots_y=ky, knots_x=kx), [{"instances": inst}])
    assert abs(got - 1.25) < 1e-12


def test_the_diagnosis_batch_is_the_same_at_every_call_and_leaves_the_generators_alone():
    import random

    import numpy as np

    from ssb_study.saliency_diagnosis import _training_batch

    cfg = load_cfg(os.path.join(CONFIGS, "faster_rcnn_SSB_R_50_FPN_small.yaml"))
    cfg.defrost()
    cfg.DATASETS.TRAIN = ("ssb_shapes_small_quick",)
    torch.manual_seed(5), np.random.seed(5), random.seed(5)
    a = _training_batch(cfg, 4)
    after = torch.rand(1), np.random.rand(), random.random()
    torch.manual_seed(5), np.random.seed(5), random.seed(5)
    expected_after = torch.rand(1), np.random.rand(), random.random()
    b = _training_batch(cfg, 4)
    assert [x["file_name"] for x in a] == [x["file_name"] for x in b]
    assert all(torch.equal(x["image"], y["image"]) for x, y in zip(a, b))
    assert torch.equal(after[0], expected_after[0]) and after[1:] == expected_after[1:]
