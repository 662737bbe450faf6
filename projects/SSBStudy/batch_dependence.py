#!/usr/bin/env python
"""How much an image's features and detections depend on its batch-mates: SSB vs plain ResNet.

Runs image A alone and batched with a larger image B, for the plain twin and SSB models
(zero saliency: the initialisation; random saliency convs scaled so that each block's pooled
logits have standard deviation ``--logit-std`` on A, a stand-in for a trained model's
non-uniform saliency; or all from ``--weights``), and prints the relative L2 change of A's FPN
features, of the box head's outputs on fixed boxes in A and of the SSB sampling rate over A
(see ``ssb_study.batch_dependence``).

    .venv/bin/python projects/SSBStudy/batch_dependence.py            # defaults: A 320x448, B 640x896
    .venv/bin/python projects/SSBStudy/batch_dependence.py --weights output/model_final.pth

The numbers are exact (no timing involved) but depend on the random weights; ``--seed`` shows
the spread.

Thin wrapper over :func:`ssb_study.cli.batch_dependence_main`.
"""
import sys

from ssb_study.cli import batch_dependence_main

if __name__ == "__main__":
    sys.exit(batch_dependence_main())
