#!/usr/bin/env python
"""Draw where every SSB block samples an image: one PNG per block and a montage.

Each figure shows the image, every k-th sampled row and column of the block (yellow) and
the sampling density relative to uniform sampling (red: denser, blue: sparser). Titles say
whether the saliency is trained or untrained (zero-initialised: uniform sampling).

Examples:
    python tools/visualize_sampling.py --input demo.jpg --output out/sampling
    python tools/visualize_sampling.py --config-file configs/ssb_r50_fpn_1x.yaml \
        --weights output/model_final.pth --input demo.jpg --output out/sampling

Thin wrapper over :func:`ssb_det.analysis.cli.visualize_main`.
"""
import sys

from ssb_det.analysis.cli import visualize_main

if __name__ == "__main__":
    sys.exit(visualize_main())
