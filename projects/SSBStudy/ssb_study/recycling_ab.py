"""A/B of the SSB blocks' memory reuse (``SampledStage``'s recycled block outputs and a
projection block's output written into its own shortcut): SSB bottom-up with and without
it, and its plain twin, timed interleaved in one process (``projects/SSBStudy/recycling_ab.py``).

The reuse has no config key (an internal speed-up); the A/B turns its one switch,
``blocks.may_reuse_memory``, off around one model's forward. Each order of the three models
is timed separately: on the CPU a model's time depends on what the allocator did before it.
"""
import statistics
from typing import Callable, List, Sequence

import torch

from ssb_det.modeling import blocks
from ssb_det.analysis.benchmark import time_interleaved
from ssb_det.analysis.models import baseline_twin, build_detector, random_image

from .config import load_study_cfg

__all__ = ["forward_step", "recycling_ab", "format_table"]

NAMES = ("SSB-R50 recycled", "SSB-R50 fresh", "R50")


def forward_step(model: torch.nn.Module, x: torch.Tensor, recycle: bool) -> Callable[[], None]:
    """A step running ``model(x)`` without gradients, with the memory reuse on or off."""
    may_reuse = blocks.may_reuse_memory

    def step():
        blocks.may_reuse_memory = may_reuse if recycle else (lambda: False)
        try:
            with torch.no_grad():
                model(x)
        finally:
            blocks.may_reuse_memory = may_reuse
    return step


def recycling_ab(size: Sequence[int] = (800, 1216), iters: int = 7) -> List[dict]:
    """Median CPU ms of :data:`NAMES` (default Faster R-CNN R50-FPN bottom-ups, one
    thread), one record per order (as listed, then reversed)."""
    torch.set_num_threads(1)
    cfg = load_study_cfg()
    ssb = build_detector(cfg).backbone.bottom_up
    plain = build_detector(baseline_twin(cfg)).backbone.bottom_up
    x = random_image(*size)
    steps = dict(zip(NAMES, (forward_step(ssb, x, True), forward_step(ssb, x, False),
                             forward_step(plain, x, True))))
    records = []
    for order in (list(NAMES), list(reversed(NAMES))):
        times = time_interleaved({k: steps[k] for k in order}, iters=iters, clock="cpu")
        ms = {k: 1000 * statistics.median(v.values) for k, v in times.items()}
        records.append({"order": order, **ms})
    return records


def format_table(records: Sequence[dict]) -> str:
    """Markdown: the times and the three ratios per order."""
    rows = ["| order | SSB recycled ms | SSB fresh ms | R50 ms | recycled / R50 | fresh / R50 "
            "| recycled / fresh |", "|---|---|---|---|---|---|---|"]
    for r in records:
        rec, fresh, plain = (r[k] for k in NAMES)
        rows.append(f"| {', '.join(r['order'])} | {rec:.0f} | {fresh:.0f} | {plain:.0f} | "
                    f"{rec / plain:.3f} | {fresh / plain:.3f} | {rec / fresh:.3f} |")
    return "\n".join(rows)
