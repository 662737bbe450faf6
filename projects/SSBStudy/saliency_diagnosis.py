#!/usr/bin/env python
"""What the saliency learns, and why it stays near uniform (see docs/accuracy.md).

Table 1: how far from uniform the separable Recasens map moves for saliency logits of a given
spread, on the study's res2/res4 map sizes, for several kernel widths (pure maths).
Table 2: per SSB block of a detector, at initialisation and with --weights: saliency weight
norm, pooled-logit spread, sampling statistics on a training batch, and the RMS gradient the
loss sends to the saliency conv relative to the block's conv1.

Example::

    python projects/SSBStudy/saliency_diagnosis.py \\
        --config-file projects/SSBStudy/configs/faster_rcnn_SSB_R_50_FPN_small.yaml \\
        --weights output/accuracy_study/runs/SSB-R50/seed1/model_final.pth --output out/diag
"""
import argparse
import sys

from ssb_study.saliency_diagnosis import main


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config-file", required=True, help="an SSB detector config")
    parser.add_argument("--weights", nargs="*", default=[], help="trained checkpoints")
    parser.add_argument("--images", type=int, default=8, help="training images in the batch")
    parser.add_argument("--output", default=None, help="write <output>.md and <output>.json")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(main(parse_args()))
