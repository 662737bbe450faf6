"""OracleSamplingRCNN: every SSB block samples with the ground-truth boxes' saliency (checked
against knots computed by the independent NumPy reference from a target rasterised cell by
cell), in training and at test (boxes from the dataset catalog, scaled by hand), in a padded
batch, and per thread; outside its forward the blocks sample as configured."""
import threading

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from ssb_det.modeling import SSBBottleneckBlock
from ssb_study import OracleSamplingRCNN, add_study_config
from ssb_study.oracle import _BOXES
from narrow_host import NARROW_HOST_OPTS  # noqa: E402 (tests/ is on sys.path, see conftest.py)
from sampling_reference import ref_knots  # noqa: E402
from test_meta_arch import reference_box_target  # noqa: E402
from test_rcnn import random_batch, rcnn_cfg  # noqa: E402

ZOO = "COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml"
CATALOG = "ssb_det_test_oracle_catalog"
# Two images as they are on disk: (file, height, width, XYWH boxes).
ON_DISK = [("/nowhere/a.png", 128, 192, [[16.0, 20.0, 40.0, 30.0], [100.0, 60.0, 50.0, 44.0]]),
           ("/nowhere/b.png", 96, 160, [[80.0, 8.0, 20.0, 20.0]])]


def _register_catalog():
    if CATALOG not in DatasetCatalog.list():
        DatasetCatalog.register(CATALOG, lambda: [
            {"file_name": f, "height": h, "width": w, "image_id": i,
             "annotations": [{"bbox": b, "bbox_mode": 1, "category_id": 0} for b in boxes]}
            for i, (f, h, w, boxes) in enumerate(ON_DISK)])  # bbox_mode 1: XYWH_ABS


def build(mass=0.5, sigma=5.5, seed=0, **overrides):
    _register_catalog()
    cfg = add_study_config(rcnn_cfg(ZOO))
    cfg.merge_from_list(NARROW_HOST_OPTS)
    cfg.MODEL.META_ARCHITECTURE = "OracleSamplingRCNN"
    cfg.MODEL.RESNETS.NORM = "BN"
    cfg.MODEL.SSB.UNIFORM = True
    cfg.MODEL.SSB_STUDY.BOX_SALIENCY_MASS = mass
    cfg.MODEL.SSB.KERNEL_SIGMA = sigma
    cfg.DATASETS.TEST = (CATALOG,)
    cfg.merge_from_list([x for kv in overrides.items() for x in kv])
    torch.manual_seed(seed)
    return build_model(cfg)


def record_grids(model):
    """A hook after the oracle's on every SSB sampler: ``({thread: grids the blocks sample
    with}, number of SSB blocks)``."""
    seen = {}

    def hook(sampler, inputs, grid):
        seen.setdefault(threading.get_ident(), []).append(grid)

    blocks = [m for m in model.backbone.modules() if isinstance(m, SSBBottleneckBlock)]
    for b in blocks:
        b.sampler.register_forward_hook(hook)
    return seen, len(blocks)


def expected_knots(boxes, size, mass, sigma, g=31, padding=30):
    """Row and column knots of the target saliency of ``boxes`` (XYXY, pixels of ``size``)."""
    t = reference_box_target(boxes, *size, g, mass).reshape(g, g).numpy()
    return ref_knots(t.sum(axis=1), padding, sigma), ref_knots(t.sum(axis=0), padding, sigma)


def assert_sampled_at(grids, n, boxes, size, mass, sigma):
    ky, kx = expected_knots(boxes, size, mass, sigma)
    for grid in grids:
        np.testing.assert_allclose(grid.knots_y[n].double().numpy(), ky, atol=1e-6)
        np.testing.assert_allclose(grid.knots_x[n].double().numpy(), kx, atol=1e-6)


def test_training_samples_each_image_at_its_boxes_in_a_padded_batch():
    model = build(mass=0.4, sigma=2.0).train()
    assert isinstance(model, OracleSamplingRCNN)
    seen, blocks = record_grids(model)
    batch = random_batch(with_masks=False, h=96, w=128)
    batch[1] = random_batch(with_masks=False, h=64, w=96, seed=1)[1]  # padded to 96 x 128
    with EventStorage(0):
        losses = model(batch)
    sum(losses.values()).backward()
    grids = seen[threading.get_ident()]
    assert len(grids) == blocks == 11
    for n, x in enumerate(batch):
        inst = x["instances"]
        assert_sampled_at(grids, n, inst.gt_boxes.tensor.tolist(), inst.image_size, 0.4, 2.0)
        # and not the uniform sampling the blocks are configured with
        assert np.abs(grids[0].knots_y[n].numpy() - np.linspace(0, 1, 32)).max() > 1e-2
    # each image sampled within its own region of the padded map
    res2 = grids[0]
    assert res2.valid_in[1].tolist() == [16.0, 24.0]
    assert _BOXES.get() is None


def test_inference_takes_the_boxes_of_the_test_set_scaled_to_the_input():
    model = build().eval()
    seen, _ = record_grids(model)
    gen = torch.Generator().manual_seed(0)
    # the images resized to half their size on disk, as a test loader would
    batch = [{"image": torch.randint(0, 256, (3, h // 2, w // 2), generator=gen).float(),
              "file_name": f, "height": h, "width": w} for f, h, w, _ in ON_DISK]
    with torch.no_grad():
        out = model(batch)
    assert len(out) == 2 and out[0]["instances"].image_size == (128, 192)  # at the disk size
    grids = seen[threading.get_ident()]
    for n, (_, h, w, boxes) in enumerate(ON_DISK):
        half = [[x / 2, y / 2, (x + bw) / 2, (y + bh) / 2] for x, y, bw, bh in boxes]
        assert_sampled_at(grids, n, half, (h // 2, w // 2), 0.5, 5.5)


def test_outside_its_forward_the_blocks_sample_as_configured():
    model = build().eval()
    seen, _ = record_grids(model)
    with torch.no_grad():
        model.backbone(torch.randn(1, 3, 64, 96))
    identity = np.linspace(0, 1, 32)
    for grid in seen[threading.get_ident()]:
        np.testing.assert_allclose(grid.knots_y[0].double().numpy(), identity, atol=1e-6)


def test_threads_sample_their_own_boxes():
    model = build().eval()
    seen, _ = record_grids(model)
    gen = torch.Generator().manual_seed(0)
    inputs = [[{"image": torch.randint(0, 256, (3, h, w), generator=gen).float(),
                "file_name": f, "height": h, "width": w}] for f, h, w, _ in ON_DISK]
    errors = []

    def run(batch):
        try:
            for _ in range(2):
                with torch.no_grad():
                    model(batch)
        except Exception as e:  # surfaced below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(b,)) for b in inputs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    grids_by_thread = [seen[t.ident] for t in threads]
    for grids, (_, h, w, boxes) in zip(grids_by_thread, ON_DISK):
        xyxy = [[x, y, x + bw, y + bh] for x, y, bw, bh in boxes]
        assert len(grids) == 22
        assert_sampled_at(grids, 0, xyxy, (h, w), 0.5, 5.5)


def test_bad_settings_and_inputs_are_refused_by_name():
    with pytest.raises(ValueError, match="BOX_SALIENCY_MASS"):
        build(mass=1.0)
    with pytest.raises(ValueError, match="no SSB block"):
        build(**{"MODEL.SSB.ENABLED": False})
    model = build().eval()
    with pytest.raises(ValueError, match="/elsewhere/c.png"):
        model([{"image": torch.zeros(3, 32, 32), "file_name": "/elsewhere/c.png"}])
    assert _BOXES.get() is None
