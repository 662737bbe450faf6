#!/usr/bin/env python
"""Where each SSB block of a study model samples: the library's ``tools/visualize_sampling.py``
with the study's config keys and meta-architectures (e.g. the box-supervised variants).

Example::

    python projects/SSBStudy/visualize_sampling.py \\
        --config-file projects/SSBStudy/configs/faster_rcnn_SSB_R_50_boxsal_salr10_FPN_tiny.yaml \\
        --weights \\
        output/accuracy_study/runs/SSB-R50_box-supervised_saliency_LR_x10_tiny/seed1/model_final.pth \\
        --input datasets/ssb_shapes/tiny_val/images/000000.png --output out/sampling --palette

Thin wrapper over :func:`ssb_study.cli.visualize_sampling_main`.
"""
import sys

from ssb_study.cli import visualize_sampling_main

if __name__ == "__main__":
    sys.exit(visualize_sampling_main())
