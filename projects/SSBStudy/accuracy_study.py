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
"""
import argparse
import os
import sys

from ssb_study.accuracy_study import DEFAULT_VARIANTS, REPO, VARIANTS, main


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", nargs="+", default=list(DEFAULT_VARIANTS),
                        choices=list(VARIANTS), metavar="VARIANT",
                        help=f"from {list(VARIANTS)}")
    parser.add_argument("--seeds", type=int, default=3, help="seeds 1..N per variant")
    parser.add_argument("--jobs", type=int, default=2, help="training processes at a time")
    parser.add_argument("--threads", type=int, default=1, help="threads per process")
    parser.add_argument("--iters", type=int, default=None, help="override SOLVER.MAX_ITER")
    parser.add_argument("--latency-iters", type=int, default=7)
    parser.add_argument("--quick", action="store_true",
                        help="8 images, 3 iterations: checks the pipeline, measures nothing")
    parser.add_argument("--report-only", action="store_true",
                        help="tabulate the finished runs, train nothing")
    parser.add_argument("--output", default=os.path.join(REPO, "output", "accuracy_study"))
    parser.add_argument("opts", nargs=argparse.REMAINDER,
                        help="KEY VALUE overrides for every run (e.g. MODEL.DEVICE cuda)")
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(main(parse_args()))
