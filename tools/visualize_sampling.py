#!/usr/bin/env python
"""Draw where every SSB block samples an image: one PNG per block and a montage.

Each figure shows the image, every k-th sampled row and column of the block (yellow) and
the sampling density relative to uniform sampling (red: denser, blue: sparser). Titles say
whether the saliency is trained or untrained (zero-initialised: uniform sampling).

Examples:
    python tools/visualize_sampling.py --input demo.jpg --output out/sampling
    python tools/visualize_sampling.py --config-file configs/ssb_r50_fpn_1x.yaml \
        --weights output/model_final.pth --input demo.jpg --output out/sampling

The logic lives in :mod:`ssb_det.analysis.visualize`; this script only parses arguments.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ssb_det.analysis.cli import (  # noqa: E402
    add_model_arguments,
    add_opts_argument,
    visualize_main,
)


def get_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_model_arguments(p, baseline=False, size=False)
    p.add_argument("--weights", default=None,
                   help="checkpoint (.pth/.pkl); default: none (untrained: uniform sampling)")
    p.add_argument("--input", required=True, help="input image")
    p.add_argument("--output", required=True, help="output directory for the PNGs")
    p.add_argument("--dpi", type=int, default=100, help="resolution of the PNGs")
    p.add_argument("--palette", action="store_true",
                   help="256-colour PNGs (a fraction of the size, e.g. for documentation)")
    add_opts_argument(p)
    return p


if __name__ == "__main__":
    sys.exit(visualize_main(get_parser().parse_args()))
