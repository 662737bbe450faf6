#!/usr/bin/env python
"""Backbone benchmark of issue 2 (SSB-R50(-FPN) vs R50(-FPN)): ``tools/benchmark.py``
restricted to the bottom-up network and the backbone with FPN. Same options."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from benchmark import benchmark_main, get_parser  # noqa: E402

if __name__ == "__main__":
    sys.exit(benchmark_main(get_parser().parse_args()))
