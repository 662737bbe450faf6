#!/usr/bin/env python
"""Draw a trained model's detections on images; a thin wrapper over ``ssb_det.engine.demo``.

Example:
    python tools/demo.py --config-file configs/quickstart/faster_rcnn_SSB_R_50_FPN_shapes.yaml \\
        --input datasets/ssb_shapes/val/images --output output/demo \\
        --confidence-threshold 0.5 \\
        --opts MODEL.WEIGHTS output/quickstart/faster_rcnn_SSB_R_50_FPN_shapes/model_final.pth

Writes ``<output>/<image>.png`` per readable image and ``<output>/predictions.json``.
Unreadable images are skipped with a warning; the exit status is 1 if none could be read.
"""
import sys

from ssb_det.engine.demo import demo_main

if __name__ == "__main__":
    try:
        report = demo_main()
    except (FileNotFoundError, ValueError) as e:
        sys.exit(f"demo.py: error: {e}")
    sys.exit(1 if report["skipped"] and not report["images"] else 0)
