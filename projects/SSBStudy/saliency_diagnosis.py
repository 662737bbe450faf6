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

Thin wrapper over :func:`ssb_study.cli.saliency_diagnosis_main`.
"""
import sys

from ssb_study.cli import saliency_diagnosis_main

if __name__ == "__main__":
    sys.exit(saliency_diagnosis_main())
