#!/usr/bin/env python
"""Top-1 of SSB-R50, the plain R50 and uniform-sampling SSB-R50, side by side, same budget.

Each model is pretrained with ``tools/pretrain_cls.py``'s code path (``launch.main``) from the
same config (default: configs/pretrain/ssb_r50_shapes.yaml, the embedded set), the same seed
and the same schedule; the three runs differ in one key each (``MODEL.SSB.ENABLED False``,
``MODEL.SSB.UNIFORM True``). The table reports top-1 of the final weights and of their EMA on
the validation split, the validation loss, the training throughput and the wall time.

A script, not a test: timings depend on the machine (and on other processes sharing it).

Example::

    python benchmarks/pretrain_compare.py --iters 120 --output output/pretrain_compare
"""
import argparse
import json
import os
import platform
import sys
import time

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_CONFIG = os.path.join(REPO, "configs", "pretrain", "ssb_r50_shapes.yaml")

# (name, output sub-folder, overrides that make the variant from the SSB-R50 config)
VARIANTS = [
    ("SSB-R50", "ssb_r50", []),
    ("R50 (plain host)", "r50", ["MODEL.SSB.ENABLED", "False"]),
    ("SSB-R50 uniform sampling", "ssb_r50_uniform", ["MODEL.SSB.UNIFORM", "True"]),
]


def _last_train_record(output_dir):
    with open(os.path.join(output_dir, "metrics.json")) as f:
        records = [json.loads(line) for line in f]
    return [r for r in records if "images_per_s" in r][-1]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config-file", default=DEFAULT_CONFIG)
    parser.add_argument("--iters", type=int, default=120, help="SOLVER.MAX_ITER of every run")
    parser.add_argument("--output", default=os.path.join(REPO, "output", "pretrain_compare"))
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE overrides for all runs")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from ssb_det.classification.data import build_datasets
    from ssb_det.classification.launch import main as pretrain_main, setup

    # Generate the data once, outside the timed runs.
    build_datasets(setup(argparse.Namespace(config_file=args.config_file, opts=args.opts)))

    rows = []
    for name, folder, overrides in VARIANTS:
        out = os.path.join(args.output, folder)
        if os.path.exists(os.path.join(out, "metrics.json")):
            os.remove(os.path.join(out, "metrics.json"))  # a fresh table, not an appended one
        start = time.perf_counter()
        result = pretrain_main(["--config-file", args.config_file, "SOLVER.MAX_ITER",
                                str(args.iters), "SOLVER.CHECKPOINT_PERIOD", str(10 ** 9),
                                "OUTPUT_DIR", out] + list(args.opts or []) + overrides)
        wall = time.perf_counter() - start
        train = _last_train_record(out)
        rows.append((name, result, train["images_per_s"], wall))

    print()
    print(f"config {os.path.relpath(args.config_file, REPO)}, {args.iters} iterations, "
          f"overrides {args.opts or []}; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {platform.processor() or platform.machine()}")
    header = f"| {'model':<26} | top-1 | EMA top-1 | val loss | train img/s | wall s |"
    print(header)
    print("|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|")
    for name, r, ips, wall in rows:
        ema = f"{r['ema_top1']:.1f}" if "ema_top1" in r else "-"
        print(f"| {name:<26} | {r['top1']:5.1f} | {ema:>9} | {r['loss']:8.3f} | {ips:11.1f} "
              f"| {wall:6.0f} |")
    base = rows[1]
    for name, r, ips, _ in (rows[0], rows[2]):
        print(f"{name} vs plain R50: top-1 {r['top1'] - base[1]['top1']:+.1f} points, "
              f"training throughput x{ips / base[2]:.2f}")
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])
