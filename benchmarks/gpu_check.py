#!/usr/bin/env python
"""One-shot GPU check of SSB-R50 against R50 (about 5 minutes on one GPU): latency,
throughput, peak memory and kernel launches, eager and compiled, fp32 and AMP, NCHW and
channels-last, batch 1/2/8 at 800x1216; a 224-px batch-64 training step with
``torch.cuda.set_sync_debug_mode("error")``; outputs against the CPU's.

Examples:
    python benchmarks/gpu_check.py --output gpu_check.md
    python benchmarks/gpu_check.py --small --device cpu    # CI: correctness only

Thin parser over :func:`ssb_det.analysis.gpu_check.gpu_check`.
"""
import argparse
import json
import sys

import torch

from ssb_det.analysis.gpu_check import format_rows, gpu_check


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--small", action="store_true", help="narrow host, small maps (CI)")
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--compile-backend", help="torch.compile backend (default: inductor; "
                        "with --small: eager, which checks the graph without generating code)")
    parser.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: default)")
    parser.add_argument("--output", help="write the tables here (.md) and the rows as .json")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device.startswith("cuda"):
        if not torch.cuda.is_available():
            parser.error("no CUDA device: run with --device cpu (and --small)")
        print(f"device: {torch.cuda.get_device_name()} | torch {torch.__version__}")
    backend = args.compile_backend or ("eager" if args.small else "inductor")
    rows = gpu_check(args.device, small=args.small, iters=args.iters, compile_backend=backend)
    text = format_rows(rows)
    print(text)
    if args.output:
        with open(args.output, "w") as f:
            f.write(text)
        with open(args.output.rsplit(".", 1)[0] + ".json", "w") as f:
            json.dump(rows, f, indent=1)
    return 0 if all(r["ok"] for r in rows["correctness"]) else 1


if __name__ == "__main__":
    sys.exit(main())
