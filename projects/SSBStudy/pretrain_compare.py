#!/usr/bin/env python
"""Top-1 of SSB-R50, the plain R50 and uniform-sampling SSB-R50, side by side, same budget.

Each model is pretrained by ``tools/pretrain_cls.py`` (one process per run) from the same
config (default: configs/pretrain/ssb_r50_shapes.yaml, the embedded set), the same seeds
and the same schedule; the three differ in one key each (``MODEL.SSB.ENABLED False``,
``MODEL.SSB.UNIFORM True``). The table reports, per model, top-1 of the final weights and
of their EMA on the validation split (mean, spread and each seed), the validation loss, the
training throughput, how far the learned sampling is from uniform, and the paired
differences by seed with a 95 % interval (``ssb_study.accuracy_study``'s).

Resumable: a run whose final evaluation is in its ``metrics.json`` is kept and skipped, an
interrupted one resumes from its last checkpoint. Writes ``table.md`` and ``results.json``
in ``--output``. A script, not a test: timings depend on the machine.

Examples::

    python projects/SSBStudy/pretrain_compare.py --iters 1200 --output output/pretrain_compare
    # classification where the object must be found first, three seeds, two runs at a time
    python projects/SSBStudy/pretrain_compare.py --config-file configs/pretrain/ssb_r50_shapes_canvas.yaml \\
        --seeds 1 2 3 --jobs 2 --threads 1 --output output/pretrain_canvas
"""
import argparse
import os
import sys

from ssb_study.pretrain_compare import DEFAULT_CONFIG, REPO, VARIANTS, main


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config-file", default=DEFAULT_CONFIG)
    parser.add_argument("--iters", type=int, default=120, help="SOLVER.MAX_ITER of every run")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="SEED of the runs")
    parser.add_argument("--variants", nargs="+", default=[v[0] for v in VARIANTS],
                        choices=[v[0] for v in VARIANTS], metavar="NAME",
                        help="which of the three to train (all three are tabulated when done)")
    parser.add_argument("--jobs", type=int, default=1, help="runs trained at the same time")
    parser.add_argument("--threads", type=int, default=None,
                        help="OMP_NUM_THREADS of each run (default: inherited)")
    parser.add_argument("--checkpoint-period", type=int, default=200,
                        help="iterations between checkpoints (what a resumed run repeats)")
    parser.add_argument("--report-only", action="store_true", help="tabulate finished runs")
    parser.add_argument("--output", default=os.path.join(REPO, "output", "pretrain_compare"))
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE overrides for all runs")
    args = parser.parse_args(argv)
    args.config_file = os.path.abspath(args.config_file)
    if args.jobs < 1:
        parser.error(f"--jobs {args.jobs}: must be at least 1")
    if len(args.opts) % 2:
        parser.error(f"overrides must be KEY VALUE pairs, got {args.opts}")
    return args


if __name__ == "__main__":
    main(parse_args(sys.argv[1:]))
