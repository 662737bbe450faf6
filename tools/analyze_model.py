#!/usr/bin/env python
"""MACs (fvcore, sampling ops counted), parameters and activations of a model and its baseline.

Examples:
    # SSB-R50-FPN Faster R-CNN vs its plain R50-FPN twin at 800x1216
    python tools/analyze_model.py --size 800 1216
    # any config; the baseline defaults to the same config with MODEL.SSB.ENABLED False
    python tools/analyze_model.py --config-file configs/ssb_r50_fpn_1x.yaml \
        --baseline COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml --output out/analysis

Thin wrapper over :func:`ssb_det.analysis.cli.analyze_main`.
"""
import sys

from ssb_det.analysis.cli import analyze_main

if __name__ == "__main__":
    sys.exit(analyze_main())
