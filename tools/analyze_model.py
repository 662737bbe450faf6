#!/usr/bin/env python
"""MACs (fvcore, sampling ops counted), parameters and activations of a model and its baseline.

Examples:
    # SSB-R50-FPN Faster R-CNN vs its plain R50-FPN twin at 800x1216
    python tools/analyze_model.py --size 800 1216
    # any config; the baseline defaults to the same config with MODEL.SSB.ENABLED False
    python tools/analyze_model.py --config-file configs/ssb_r50_fpn_1x.yaml \
        --baseline COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml --output out/analysis

The logic lives in :mod:`ssb_det.analysis`; this script only parses arguments.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ssb_det.analysis.cli import (  # noqa: E402
    add_model_arguments,
    add_opts_argument,
    analyze_main,
)


def get_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_model_arguments(p)
    p.add_argument("--no-detector", action="store_true",
                   help="count only the bottom-up network and the backbone with FPN")
    p.add_argument("--output", default=None,
                   help="write <output>.md and <output>.csv (a directory: analysis.md/.csv in it)")
    add_opts_argument(p)
    return p


if __name__ == "__main__":
    sys.exit(analyze_main(get_parser().parse_args()))
