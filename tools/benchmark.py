#!/usr/bin/env python
"""Latency, throughput and peak memory of SSB-ResNet vs its baseline, measured in one run.

The two models run interleaved (SSB, baseline, SSB, ...) after a warm-up, so both see the
same machine state; the tool prints medians, interquartile ranges and ratios, per-stage
latency and MACs, and a per-step breakdown of one block per sampled stage.

Examples:
    # SSB-R50(-FPN) vs R50(-FPN) at 800x1216 on CPU, one thread, chart and reports
    python tools/benchmark.py --threads 1 --chart out/bench.png --output out/bench
    # GPU, AMP fp16, channels_last, batch 2 (needs CUDA)
    python tools/benchmark.py --device cuda --amp fp16 --channels-last --batch 2 --iters 20

The logic lives in :mod:`ssb_det.analysis`; this script only parses arguments.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ssb_det.analysis.cli import (  # noqa: E402
    add_model_arguments,
    add_opts_argument,
    benchmark_main,
)


def get_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_model_arguments(p)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--iters", type=int, default=5, help="timed runs per model and mode")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs first")
    p.add_argument("--threads", type=int, default=0,
                   help="torch.set_num_threads (0: PyTorch's default)")
    p.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                   help="wall: elapsed time; cpu: process CPU time (reproducible on a shared "
                        "machine with --threads 1)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--amp", choices=["fp16", "bf16"], default=None, help="autocast dtype")
    p.add_argument("--channels-last", action="store_true", help="NHWC memory format")
    p.add_argument("--parts", nargs="+", default=["bottom-up", "backbone"],
                   choices=["bottom-up", "backbone", "detector"])
    p.add_argument("--modes", nargs="+", default=["inference", "train"],
                   choices=["inference", "train"])
    p.add_argument("--no-memory", action="store_true", help="skip peak-memory measurement")
    p.add_argument("--no-stages", action="store_true", help="skip per-stage latency")
    p.add_argument("--no-breakdown", action="store_true", help="skip per-step block timing")
    p.add_argument("--no-macs", action="store_true", help="skip the fvcore MAC count")
    p.add_argument("--chart", default=None, help="write a PNG chart here")
    p.add_argument("--output", default=None,
                   help="write <output>.md/.csv/.json (a directory: benchmark.* in it)")
    add_opts_argument(p)
    return p


if __name__ == "__main__":
    sys.exit(benchmark_main(get_parser().parse_args()))
