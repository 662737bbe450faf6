#!/usr/bin/env python
"""Accuracy against cost: R50, SSB-R50 (adaptive), SSB-R50 uniform and SSB-R101 (optionally
R101), each trained from scratch and COCO-evaluated on ssb_shapes_small with several seeds.

Writes <output>/accuracy_study.{md,csv,json,png}: per-variant box AP (mean, std, min-max over
seeds), GMACs and CPU latency measured side by side, the paired differences (adaptive -
uniform, SSB-R50 - R50, SSB-R101 - R50) with 95 % intervals over seeds, and the learned
sampling's distance from uniform. Finished runs are kept and skipped; rerun to resume.
See docs/accuracy.md.

Examples::

    python projects/SSBStudy/accuracy_study.py                 # the study (75-90 min, 2 cores)
    python projects/SSBStudy/accuracy_study.py --quick --output /tmp/study   # a few minutes, CI
    python projects/SSBStudy/accuracy_study.py --variants R50 SSB-R50 R101 --seeds 3

Thin wrapper over :func:`ssb_study.cli.accuracy_study_main`.
"""
import sys

from ssb_study.cli import accuracy_study_main

if __name__ == "__main__":
    sys.exit(accuracy_study_main())
