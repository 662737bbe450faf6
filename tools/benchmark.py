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

Thin wrapper over :func:`ssb_det.analysis.cli.benchmark_main`.
"""
import sys

from ssb_det.analysis.cli import benchmark_main

if __name__ == "__main__":
    sys.exit(benchmark_main())
