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

Thin wrapper over :func:`ssb_study.cli.pretrain_compare_main`.
"""
import sys

from ssb_study.cli import pretrain_compare_main

if __name__ == "__main__":
    sys.exit(pretrain_compare_main())
