#!/usr/bin/env python
"""A/B of the SSB blocks' memory reuse: SSB-R50 bottom-up with and without it, and R50.

``SampledStage`` lets an SSB block write its output into an earlier block's output that
nothing references any more (``ssb_det.layers.sole_reference``), and a projection SSB block
writes its output into its own shortcut when nothing else holds it, instead of a fresh
full-size map whose first write page-faults. This times the three bottom-ups (Faster R-CNN
R50-FPN, random weights) interleaved in one process, 1 thread, process CPU time, medians,
in both orders (see ``ssb_study.recycling_ab``).

    .venv/bin/python projects/SSBStudy/recycling_ab.py            # 800x1216, 7 runs each

Thin wrapper over :func:`ssb_study.cli.recycling_ab_main`.
"""
import sys

from ssb_study.cli import recycling_ab_main

if __name__ == "__main__":
    sys.exit(recycling_ab_main())
