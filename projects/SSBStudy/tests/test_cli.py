"""The study's command lines: its visualize wrapper knows the study's keys, which the
library's tool refuses."""
import os

import numpy as np
import pytest
from PIL import Image

from ssb_det.analysis.cli import visualize_main
from ssb_study.cli import visualize_sampling_main

CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs",
                      "faster_rcnn_SSB_R_50_boxsal_salr10_FPN_tiny.yaml")


def test_visualize_sampling_runs_on_a_box_supervised_config(tmp_path):
    image = tmp_path / "in.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (96, 128, 3), np.uint8)).save(image)
    argv = ["--config-file", CONFIG, "--input", str(image), "--output", str(tmp_path / "out")]
    with pytest.raises(KeyError, match="MODEL.SSB_STUDY"):
        visualize_main(argv)  # the library's tool: no study keys
    assert visualize_sampling_main(argv) == 0
    written = sorted(os.listdir(tmp_path / "out"))
    assert "sampling_montage.png" in written
    assert "sampling_res4.1.png" in written  # one picture per SSB block
