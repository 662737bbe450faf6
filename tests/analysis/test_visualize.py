"""Sampling visualisation (ssb_det.analysis.visualize): PNGs that decode at the expected
size, uniform density for untrained weights, and the trained/untrained statement."""
import math

import cv2
import numpy as np
import pytest
import torch

from ssb_det.analysis import build_detector, load_cfg
from ssb_det.analysis.cli import visualize_main
from ssb_det.analysis.visualize import sampling_state, visualize_sampling
from ssb_det.layers import SaliencySampler

SMALL = ["INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "128"]
SSB_BLOCKS = ["res2.0", "res2.1", "res2.2", "res3.1", "res3.2", "res3.3", "res4.1", "res4.2",
              "res4.3", "res4.4", "res4.5"]


@pytest.fixture(scope="module")
def image_path(tmp_path_factory):
    h, w = 90, 120
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([xx * 2, yy * 2, (xx + yy)], axis=-1).astype(np.uint8)
    path = tmp_path_factory.mktemp("img") / "input.png"
    cv2.imwrite(str(path), img)
    return str(path)


def _check_png(path, width, height):
    img = cv2.imread(path)
    assert img is not None, f"{path} does not decode"
    assert img.shape[1] == width and abs(img.shape[0] - height) <= 1, (path, img.shape)
    assert img.std() > 0  # not a blank canvas


def test_untrained_weights_give_uniform_density_and_decodable_pngs(tmp_path, image_path):
    cfg = load_cfg(None, SMALL)
    out = visualize_sampling(cfg, image_path, str(tmp_path))
    assert out["state"] == "untrained"
    assert [b.name for b in out["blocks"]] == SSB_BLOCKS
    # 90x120 -> shortest edge 64 -> 64x85, run unpadded (the blocks sample within the image)
    for b in out["blocks"]:
        assert b.feature_size == (math.ceil(64 / b.stride), math.ceil(85 / b.stride))
        np.testing.assert_allclose(b.density, 1.0, atol=1e-9)
        assert b.points.shape == (b.sampled_size[0] * b.sampled_size[1], 2)
        assert b.points.min() >= -0.5 and b.points[:, 0].max() <= 85 and b.points[:, 1].max() <= 64
    assert len(out["files"]) == len(SSB_BLOCKS) + 1
    for path in out["files"][:-1]:
        _check_png(path, 640, round((6.4 * 64 / 85 + 0.6) * 100))
    montage = out["files"][-1]
    assert montage.endswith("sampling_montage.png")
    _check_png(montage, round(3.6 * 4 * 90), round((3.6 * 3 * 64 / 85 + 0.7) * 90))


def test_trained_weights_are_reported_and_sample_non_uniformly(tmp_path, image_path):
    cfg = load_cfg(None, SMALL)
    model = build_detector(cfg)
    gen = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, SaliencySampler):
            w = m.saliency_conv.weight
            w.data.copy_(torch.randn(w.shape, generator=gen) * 0.2)
    weights = tmp_path / "weights.pth"
    torch.save({"model": model.state_dict()}, weights)
    out = visualize_sampling(cfg, image_path, str(tmp_path / "png"), weights=str(weights))
    assert out["state"] == "trained"
    densities = [b.density for b in out["blocks"]]
    assert all(np.isfinite(d).all() and (d >= 0).all() for d in densities)
    assert max(d.max() for d in densities) > 1.2  # somewhere denser than uniform...
    assert min(d.min() for d in densities) < 0.8  # ...and somewhere sparser
    for d in densities:  # a separable map's density is a product of a row and a column profile
        assert np.linalg.matrix_rank(d, tol=1e-9 * d.max()) == 1
    for path in out["files"]:
        assert cv2.imread(path) is not None


def test_state_of_uniform_and_plain_models():
    assert sampling_state(build_detector(load_cfg(None, ["MODEL.SSB.UNIFORM", "True"]))) \
        == "uniform"
    with pytest.raises(ValueError, match="no SSB blocks"):
        sampling_state(build_detector(load_cfg(None, ["MODEL.SSB.ENABLED", "False"])))


def test_cli_names_a_missing_image(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jpg"):
        visualize_main(["--input", str(tmp_path / "nope.jpg"), "--output", str(tmp_path),
                        *SMALL])
