"""The accuracy study: variants x seeds trained and COCO-evaluated on one schedule, then a table
of accuracy against cost (the paper's kind of chart) with seed spreads and paired differences.

Every run is ``tools/train_net.py`` in its own process (``OMP_NUM_THREADS`` threads, ``jobs``
at a time) on a committed config, with ``SEED`` and ``OUTPUT_DIR`` set by the study. A run
whose ``inference/eval_results.json`` exists is kept and skipped; an interrupted one resumes
from its last checkpoint (``--resume``). Costs are measured in the study's own process, side
by side: GMACs of the bottom-up and of the detector (fvcore, sampling counted) and the CPU
latency of the bottom-up, interleaved.
"""
import csv
import io
import json
import math
import os
import statistics
import sys
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import torch

from ssb_det.analysis.benchmark import time_interleaved
from ssb_det.analysis.models import build_detector, random_image
from ssb_det.analysis.report import part_macs

from .config import load_study_cfg
from .processes import Job, run_jobs
from .results import PER_RUN_FIELDS, task_of

__all__ = ["VARIANTS", "INIT_FROM", "EVAL_ONLY", "PAIRS", "Run", "plan_runs", "run_all", "collect",
           "sampling_stats", "paired_difference", "summarize", "format_markdown", "format_csv", "write_plot", "main"]

# The project's folder, and the repository it lives in (runs write under its output/).
PROJECT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPO = os.path.dirname(os.path.dirname(PROJECT))
CONFIG_DIR = os.path.join(PROJECT, "configs")
# label -> config; each differs from Base-Study-FPN-small.yaml only in its defining keys.
VARIANTS: Dict[str, str] = {
    "R50": "faster_rcnn_R_50_FPN_small.yaml",
    "SSB-R50": "faster_rcnn_SSB_R_50_FPN_small.yaml",
    "SSB-R50 uniform": "faster_rcnn_SSB_R_50_uniform_FPN_small.yaml",
    "SSB-R101": "faster_rcnn_SSB_R_101_FPN_small.yaml",
    "R101": "faster_rcnn_R_101_FPN_small.yaml",
    "SSB-R50 saliency LR x3": "faster_rcnn_SSB_R_50_salr3_FPN_small.yaml",
    "SSB-R50 saliency LR x10": "faster_rcnn_SSB_R_50_salr10_FPN_small.yaml",
    "SSB-R50 bounded saliency LR x10": "faster_rcnn_SSB_R_50_bounded_salr10_FPN_small.yaml",
    "SSB-R50 sigma 2": "faster_rcnn_SSB_R_50_sigma2_FPN_small.yaml",
    "SSB-R50 bounded saliency LR x10 sigma 2":
        "faster_rcnn_SSB_R_50_bounded_salr10_sigma2_FPN_small.yaml",
    "SSB-R50 box-supervised saliency LR x10": "faster_rcnn_SSB_R_50_boxsal_salr10_FPN_small.yaml",
    "SSB-R50 box-supervised saliency LR x10 detached":
        "faster_rcnn_SSB_R_50_boxsal_detached_salr10_FPN_small.yaml",
    # Their control: the same loss on auxiliary heads that sample nothing, uniform sampling.
    "SSB-R50 uniform, box-supervised auxiliary saliency LR x10":
        "faster_rcnn_SSB_R_50_uniform_boxsal_aux_salr10_FPN_small.yaml",
    # ... and the plain host with the same auxiliary heads on the same blocks.
    "R50, box-supervised auxiliary saliency LR x10":
        "faster_rcnn_R_50_boxsal_aux_salr10_FPN_small.yaml",
    # ... and adaptive sampling (the recipe that does not collapse) under the same heads.
    "SSB-R50 bounded saliency LR x10 sigma 2, box-supervised auxiliary saliency":
        "faster_rcnn_SSB_R_50_bounded_salr10_sigma2_boxsal_aux_FPN_small.yaml",
    # The ceiling of a learned saliency: uniform SSB-R50's network sampling with the saliency
    # of the ground-truth boxes, in training and at test (OracleSamplingRCNN).
    "SSB-R50 oracle sampling": "faster_rcnn_SSB_R_50_oracle_FPN_small.yaml",
    "SSB-R50 oracle sampling sigma 2": "faster_rcnn_SSB_R_50_oracle_sigma2_FPN_small.yaml",
    # The pretrained path: the same networks started from the plain R50 run of the same seed
    # (its model_final.pth, loaded like converted weights: the saliency convs start at zero).
    "R50 continued": "faster_rcnn_R_50_FPN_small.yaml",
    "SSB-R50 from R50": "faster_rcnn_SSB_R_50_FPN_small.yaml",
    "SSB-R50 uniform from R50": "faster_rcnn_SSB_R_50_uniform_FPN_small.yaml",
    # ... and the twins of "R50 continued": each network trained twice as long (its schedule
    # restarted from its own final weights).
    "SSB-R50 continued": "faster_rcnn_SSB_R_50_FPN_small.yaml",
    "SSB-R50 uniform continued": "faster_rcnn_SSB_R_50_uniform_FPN_small.yaml",
    "SSB-R50 bounded saliency LR x10 from R50":
        "faster_rcnn_SSB_R_50_bounded_salr10_FPN_small.yaml",
    "SSB-R101 continued": "faster_rcnn_SSB_R_101_FPN_small.yaml",
    # The second task (Base-Study-FPN-tiny.yaml: 1-3 objects of 8-24 px), where uniform
    # downsampling loses most and a zoom has the most to gain.
    "R50 tiny": "faster_rcnn_R_50_FPN_tiny.yaml",
    "SSB-R50 tiny": "faster_rcnn_SSB_R_50_FPN_tiny.yaml",
    "SSB-R50 uniform tiny": "faster_rcnn_SSB_R_50_uniform_FPN_tiny.yaml",
    "SSB-R50 bounded saliency LR x10 sigma 2 tiny":
        "faster_rcnn_SSB_R_50_bounded_salr10_sigma2_FPN_tiny.yaml",
    # The saliency taught where the objects are (SaliencySupervisedRCNN: a training loss
    # pulling each block's saliency toward one with half its mass on the boxes).
    "SSB-R50 box-supervised saliency tiny": "faster_rcnn_SSB_R_50_boxsal_FPN_tiny.yaml",
    "SSB-R50 box-supervised saliency LR x10 tiny":
        "faster_rcnn_SSB_R_50_boxsal_salr10_FPN_tiny.yaml",
    "SSB-R50 box-supervised saliency LR x10 detached tiny":
        "faster_rcnn_SSB_R_50_boxsal_detached_salr10_FPN_tiny.yaml",
    "SSB-R50 uniform, box-supervised auxiliary saliency LR x10 tiny":
        "faster_rcnn_SSB_R_50_uniform_boxsal_aux_salr10_FPN_tiny.yaml",
    "R50, box-supervised auxiliary saliency LR x10 tiny":
        "faster_rcnn_R_50_boxsal_aux_salr10_FPN_tiny.yaml",
    "SSB-R50 bounded saliency LR x10 sigma 2, box-supervised auxiliary saliency tiny":
        "faster_rcnn_SSB_R_50_bounded_salr10_sigma2_boxsal_aux_FPN_tiny.yaml",
    "SSB-R50 oracle sampling tiny": "faster_rcnn_SSB_R_50_oracle_FPN_tiny.yaml",
    "SSB-R50 oracle sampling sigma 2 tiny": "faster_rcnn_SSB_R_50_oracle_sigma2_FPN_tiny.yaml",
    "SSB-R50 oracle sampling mass 0.2 tiny": "faster_rcnn_SSB_R_50_oracle_mass02_FPN_tiny.yaml",
    # Is the learned sampling what the adaptive network uses? Its trained weights evaluated
    # with uniform sampling (saliency ignored), nothing retrained (EVAL_ONLY).
    "SSB-R50, uniform at test": "faster_rcnn_SSB_R_50_uniform_FPN_small.yaml",
    "SSB-R50 tiny, uniform at test": "faster_rcnn_SSB_R_50_uniform_FPN_tiny.yaml",
    "SSB-R50 box-supervised saliency LR x10 tiny, uniform at test":
        "faster_rcnn_SSB_R_50_uniform_FPN_tiny.yaml",
    "SSB-R50 box-supervised saliency LR x10, uniform at test":
        "faster_rcnn_SSB_R_50_uniform_FPN_small.yaml",
    "SSB-R50 box-supervised saliency LR x10 detached tiny, uniform at test":
        "faster_rcnn_SSB_R_50_uniform_FPN_tiny.yaml",
    # Where does the oracle's difference arise: in what the network learned from sampling the
    # boxes, or in sampling them at test? Each network evaluated with the other's sampling.
    "SSB-R50 oracle sampling, uniform at test": "faster_rcnn_SSB_R_50_uniform_FPN_small.yaml",
    "SSB-R50 uniform, oracle sampling at test": "faster_rcnn_SSB_R_50_oracle_FPN_small.yaml",
    "SSB-R50 oracle sampling tiny, uniform at test": "faster_rcnn_SSB_R_50_uniform_FPN_tiny.yaml",
    "SSB-R50 uniform tiny, oracle sampling at test": "faster_rcnn_SSB_R_50_oracle_FPN_tiny.yaml",
    # Does the oracle's loss survive a longer schedule? Uniform SSB-R50's trained weights
    # trained 500 more iterations, uniformly or with the oracle (the same start).
    "SSB-R50 uniform tiny continued": "faster_rcnn_SSB_R_50_uniform_FPN_tiny.yaml",
    "SSB-R50 oracle sampling from uniform": "faster_rcnn_SSB_R_50_oracle_FPN_small.yaml",
    "SSB-R50 oracle sampling tiny from uniform": "faster_rcnn_SSB_R_50_oracle_FPN_tiny.yaml",
    # Where to sample (MODEL.SSB.RATIOS per stage): uniform SSB-R50 with res2 at full
    # resolution (more detail, more MACs) or with res5 at half resolution too (more context,
    # fewer MACs), on both tasks.
    "SSB-R50 uniform, res2 at full resolution":
        "faster_rcnn_SSB_R_50_uniform_res2full_FPN_small.yaml",
    "SSB-R50 uniform, res5 sampled": "faster_rcnn_SSB_R_50_uniform_res5half_FPN_small.yaml",
    "SSB-R50 uniform, res2 at full resolution tiny":
        "faster_rcnn_SSB_R_50_uniform_res2full_FPN_tiny.yaml",
    "SSB-R50 uniform, res5 sampled tiny": "faster_rcnn_SSB_R_50_uniform_res5half_FPN_tiny.yaml",
    # ... and adaptive sampling with res2 at full resolution (res3 and res4 sampled).
    "SSB-R50, res2 at full resolution tiny": "faster_rcnn_SSB_R_50_res2full_FPN_tiny.yaml",
    # The pretrained path with res2 at full resolution (the shipped *_1x_res2full configs):
    # started from the R50 run's weights, adaptive and uniform.
    "SSB-R50, res2 at full resolution from R50": "faster_rcnn_SSB_R_50_res2full_FPN_small.yaml",
    "SSB-R50 uniform, res2 at full resolution from R50":
        "faster_rcnn_SSB_R_50_uniform_res2full_FPN_small.yaml",
    # The BoTNet host (MODEL.SSB.HOST "botnet": res5 attends globally): does adaptive
    # sampling pay before attention, which mixes by content, where it did not before a 3x3?
    "BoT50": "faster_rcnn_BoT_50_FPN_small.yaml",
    "SSB-BoT50": "faster_rcnn_SSB_BoT_50_FPN_small.yaml",
    "SSB-BoT50 uniform": "faster_rcnn_SSB_BoT_50_uniform_FPN_small.yaml",
}
# variant -> the variant whose trained weights (same seed) it starts from (MODEL.WEIGHTS).
INIT_FROM: Dict[str, str] = {
    "R50 continued": "R50",
    "SSB-R50 from R50": "R50",
    "SSB-R50 uniform from R50": "R50",
    "SSB-R50 continued": "SSB-R50",
    "SSB-R50 uniform continued": "SSB-R50 uniform",
    "SSB-R50 bounded saliency LR x10 from R50": "R50",
    "SSB-R101 continued": "SSB-R101",
    "SSB-R50, uniform at test": "SSB-R50",
    "SSB-R50 tiny, uniform at test": "SSB-R50 tiny",
    "SSB-R50 box-supervised saliency LR x10 tiny, uniform at test":
        "SSB-R50 box-supervised saliency LR x10 tiny",
    "SSB-R50 box-supervised saliency LR x10, uniform at test":
        "SSB-R50 box-supervised saliency LR x10",
    "SSB-R50 box-supervised saliency LR x10 detached tiny, uniform at test":
        "SSB-R50 box-supervised saliency LR x10 detached tiny",
    "SSB-R50 oracle sampling, uniform at test": "SSB-R50 oracle sampling",
    "SSB-R50 uniform, oracle sampling at test": "SSB-R50 uniform",
    "SSB-R50 oracle sampling tiny, uniform at test": "SSB-R50 oracle sampling tiny",
    "SSB-R50 uniform tiny, oracle sampling at test": "SSB-R50 uniform tiny",
    "SSB-R50 uniform tiny continued": "SSB-R50 uniform tiny",
    "SSB-R50 oracle sampling from uniform": "SSB-R50 uniform",
    "SSB-R50 oracle sampling tiny from uniform": "SSB-R50 uniform tiny",
    "SSB-R50, res2 at full resolution from R50": "R50",
    "SSB-R50 uniform, res2 at full resolution from R50": "R50",
}
# Variants that only evaluate their source's final weights (INIT_FROM) under their config.
EVAL_ONLY = ("SSB-R50, uniform at test", "SSB-R50 tiny, uniform at test",
             "SSB-R50 box-supervised saliency LR x10 tiny, uniform at test",
             "SSB-R50 box-supervised saliency LR x10, uniform at test",
             "SSB-R50 box-supervised saliency LR x10 detached tiny, uniform at test",
             "SSB-R50 oracle sampling, uniform at test", "SSB-R50 uniform, oracle sampling at test",
             "SSB-R50 oracle sampling tiny, uniform at test",
             "SSB-R50 uniform tiny, oracle sampling at test")
DEFAULT_VARIANTS = ("R50", "SSB-R50", "SSB-R50 uniform", "SSB-R101")
# The differences the study is about: (a, b) reports a - b, paired by seed.
PAIRS = (("SSB-R50", "SSB-R50 uniform"), ("SSB-R50", "R50"), ("SSB-R101", "R50"),
         ("R101", "R50"), ("SSB-R101", "R101"), ("SSB-R50 saliency LR x3", "SSB-R50"),
         ("SSB-R50 saliency LR x3", "SSB-R50 uniform"), ("SSB-R50 saliency LR x10", "SSB-R50"),
         ("SSB-R50 saliency LR x10", "SSB-R50 uniform"),
         ("SSB-R50 bounded saliency LR x10", "SSB-R50"),
         ("SSB-R50 bounded saliency LR x10", "SSB-R50 uniform"),
         ("SSB-R50 sigma 2", "SSB-R50"), ("SSB-R50 sigma 2", "SSB-R50 uniform"),
         ("SSB-R50 bounded saliency LR x10 sigma 2", "SSB-R50 bounded saliency LR x10"),
         ("SSB-R50 bounded saliency LR x10 sigma 2", "SSB-R50 uniform"),
         ("SSB-R50 box-supervised saliency LR x10", "SSB-R50 uniform"),
         ("SSB-R50 box-supervised saliency LR x10", "SSB-R50"),
         ("SSB-R50 box-supervised saliency LR x10",
          "SSB-R50 box-supervised saliency LR x10, uniform at test"),
         ("SSB-R50 box-supervised saliency LR x10 detached", "SSB-R50 uniform"),
         ("SSB-R50 box-supervised saliency LR x10",
          "SSB-R50 box-supervised saliency LR x10 detached"),
         ("SSB-R50 uniform, box-supervised auxiliary saliency LR x10", "SSB-R50 uniform"),
         ("SSB-R50 box-supervised saliency LR x10",
          "SSB-R50 uniform, box-supervised auxiliary saliency LR x10"),
         ("R50, box-supervised auxiliary saliency LR x10", "R50"),
         ("SSB-R50 box-supervised saliency LR x10",
          "R50, box-supervised auxiliary saliency LR x10"),
         ("SSB-R50 uniform, box-supervised auxiliary saliency LR x10",
          "R50, box-supervised auxiliary saliency LR x10"),
         ("SSB-R50 bounded saliency LR x10 sigma 2, box-supervised auxiliary saliency",
          "SSB-R50 uniform, box-supervised auxiliary saliency LR x10"),
         ("SSB-R50 bounded saliency LR x10 sigma 2, box-supervised auxiliary saliency",
          "R50, box-supervised auxiliary saliency LR x10"),
         ("SSB-R50 from R50", "SSB-R50 uniform from R50"), ("SSB-R50 from R50", "R50 continued"),
         ("SSB-R50 uniform from R50", "R50 continued"), ("R50 continued", "R50"),
         ("SSB-R50 continued", "SSB-R50 uniform continued"), ("SSB-R50 continued", "R50 continued"),
         ("SSB-R50 uniform continued", "R50 continued"),
         ("SSB-R50 bounded saliency LR x10 from R50", "SSB-R50 uniform from R50"),
         ("SSB-R50 bounded saliency LR x10 from R50", "SSB-R50 from R50"),
         ("SSB-R101 continued", "R50 continued"), ("SSB-R101 continued", "SSB-R50 continued"),
         ("SSB-R50 tiny", "SSB-R50 uniform tiny"), ("SSB-R50 tiny", "R50 tiny"),
         ("SSB-R50 uniform tiny", "R50 tiny"),
         ("SSB-R50 bounded saliency LR x10 sigma 2 tiny", "SSB-R50 uniform tiny"),
         ("SSB-R50 bounded saliency LR x10 sigma 2 tiny", "SSB-R50 tiny"),
         ("SSB-R50", "SSB-R50, uniform at test"),
         ("SSB-R50 tiny", "SSB-R50 tiny, uniform at test"),
         ("SSB-R50 box-supervised saliency tiny", "SSB-R50 uniform tiny"),
         ("SSB-R50 box-supervised saliency tiny", "SSB-R50 tiny"),
         ("SSB-R50 box-supervised saliency LR x10 tiny",
          "SSB-R50 box-supervised saliency LR x10 tiny, uniform at test"),
         ("SSB-R50 box-supervised saliency LR x10 tiny", "SSB-R50 uniform tiny"),
         ("SSB-R50 box-supervised saliency LR x10 tiny", "SSB-R50 tiny"),
         ("SSB-R50 box-supervised saliency LR x10 tiny", "SSB-R50 box-supervised saliency tiny"),
         ("SSB-R50 box-supervised saliency LR x10 detached tiny", "SSB-R50 uniform tiny"),
         ("SSB-R50 box-supervised saliency LR x10 detached tiny", "SSB-R50 tiny"),
         ("SSB-R50 box-supervised saliency LR x10 detached tiny",
          "SSB-R50 box-supervised saliency LR x10 detached tiny, uniform at test"),
         ("SSB-R50 box-supervised saliency LR x10 detached tiny",
          "SSB-R50 box-supervised saliency LR x10 tiny"),
         ("SSB-R50 uniform, box-supervised auxiliary saliency LR x10 tiny",
          "SSB-R50 uniform tiny"),
         ("SSB-R50 box-supervised saliency LR x10 tiny",
          "SSB-R50 uniform, box-supervised auxiliary saliency LR x10 tiny"),
         ("R50, box-supervised auxiliary saliency LR x10 tiny", "R50 tiny"),
         ("SSB-R50 uniform, box-supervised auxiliary saliency LR x10 tiny",
          "R50, box-supervised auxiliary saliency LR x10 tiny"),
         ("SSB-R50 bounded saliency LR x10 sigma 2, box-supervised auxiliary saliency tiny",
          "SSB-R50 uniform, box-supervised auxiliary saliency LR x10 tiny"),
         ("SSB-R50 bounded saliency LR x10 sigma 2, box-supervised auxiliary saliency tiny",
          "R50, box-supervised auxiliary saliency LR x10 tiny"),
         ("SSB-R50 oracle sampling", "SSB-R50 uniform"),
         ("SSB-R50 oracle sampling sigma 2", "SSB-R50 uniform"),
         ("SSB-R50 oracle sampling tiny", "SSB-R50 uniform tiny"),
         ("SSB-R50 oracle sampling sigma 2 tiny", "SSB-R50 uniform tiny"),
         ("SSB-R50 oracle sampling mass 0.2 tiny", "SSB-R50 uniform tiny"),
         ("SSB-R50 oracle sampling tiny", "SSB-R50 oracle sampling mass 0.2 tiny"),
         ("SSB-R50 oracle sampling sigma 2", "SSB-R50 oracle sampling"),
         ("SSB-R50 oracle sampling sigma 2 tiny", "SSB-R50 oracle sampling tiny"),
         ("SSB-R50 oracle sampling", "SSB-R50 oracle sampling, uniform at test"),
         ("SSB-R50 oracle sampling, uniform at test", "SSB-R50 uniform"),
         ("SSB-R50 oracle sampling tiny, uniform at test", "SSB-R50 uniform tiny"),
         ("SSB-R50 uniform, oracle sampling at test", "SSB-R50 uniform"),
         ("SSB-R50 oracle sampling tiny", "SSB-R50 oracle sampling tiny, uniform at test"),
         ("SSB-R50 uniform tiny, oracle sampling at test", "SSB-R50 uniform tiny"),
         ("SSB-R50 oracle sampling from uniform", "SSB-R50 uniform continued"),
         ("SSB-R50 oracle sampling tiny from uniform", "SSB-R50 uniform tiny continued"),
         ("SSB-R50 uniform continued", "SSB-R50 uniform"),
         ("SSB-R50 uniform tiny continued", "SSB-R50 uniform tiny"),
         ("SSB-R50 uniform, res2 at full resolution", "SSB-R50 uniform"),
         ("SSB-R50 uniform, res5 sampled", "SSB-R50 uniform"),
         ("SSB-R50 uniform, res2 at full resolution tiny", "SSB-R50 uniform tiny"),
         ("SSB-R50 uniform, res5 sampled tiny", "SSB-R50 uniform tiny"),
         ("SSB-R50, res2 at full resolution tiny", "SSB-R50 uniform, res2 at full resolution tiny"),
         ("SSB-R50, res2 at full resolution tiny", "R50 tiny"),
         ("SSB-R50 uniform, res2 at full resolution tiny", "R50 tiny"),
         ("SSB-R50, res2 at full resolution from R50",
          "SSB-R50 uniform, res2 at full resolution from R50"),
         ("SSB-R50, res2 at full resolution from R50", "R50 continued"),
         ("SSB-R50 uniform, res2 at full resolution from R50", "R50 continued"),
         ("SSB-R50, res2 at full resolution from R50", "SSB-R50 from R50"),
         ("SSB-BoT50", "SSB-BoT50 uniform"), ("SSB-BoT50", "BoT50"), ("SSB-BoT50", "R50"),
         ("SSB-BoT50 uniform", "BoT50"), ("BoT50", "R50"))
METRICS = ("AP", "AP50", "APs", "APm")
# --quick: the same pipeline on 8 images and a few iterations (a correctness check only).
QUICK_OPTS = ["DATASETS.TRAIN", "('ssb_shapes_small_quick',)",
              "DATASETS.TEST", "('ssb_shapes_small_quick',)",
              "SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", "3", "SOLVER.STEPS", "()",
              "SOLVER.WARMUP_ITERS", "1"]
# Student t 0.975 quantiles for 1..9 degrees of freedom (95 % two-sided intervals).
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262)


@dataclass
class Run:
    variant: str
    seed: int
    config: str
    output_dir: str
    init_weights: Optional[str] = None  # another run's model_final.pth (INIT_FROM)
    eval_only: bool = False  # evaluate init_weights, train nothing (EVAL_ONLY)

    @property
    def results_file(self) -> str:
        return os.path.join(self.output_dir, "inference", "eval_results.json")

    @property
    def done(self) -> bool:
        return os.path.isfile(self.results_file)

    @property
    def ready(self) -> bool:
        """Whether the run it starts from (if any) has finished training."""
        return self.init_weights is None or os.path.isfile(self.init_weights)


def _run_dir(output: str, variant: str, seed: int) -> str:
    return os.path.join(output, "runs", variant.replace(" ", "_"), f"seed{seed}")


def plan_runs(variants: Sequence[str], seeds: Sequence[int], output: str) -> List[Run]:
    """One :class:`Run` per variant and seed, seeds outermost (a partial study is balanced).

    A variant in INIT_FROM starts from its source variant's final weights of the same seed
    (a variant in EVAL_ONLY only evaluates them); the source's runs are added to the plan
    (before it) when not asked for.
    """
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown study variants {unknown}; known: {list(VARIANTS)}")
    sources = [INIT_FROM[v] for v in variants if v in INIT_FROM]
    ordered = list(dict.fromkeys([s for s in sources if s not in variants] + list(variants)))
    ordered.sort(key=lambda v: v in INIT_FROM)  # sources first within each seed
    return [Run(v, s, os.path.join(CONFIG_DIR, VARIANTS[v]), _run_dir(output, v, s),
                os.path.join(_run_dir(output, INIT_FROM[v], s), "model_final.pth")
                if v in INIT_FROM else None, v in EVAL_ONLY)
            for s in seeds for v in ordered]


def _command(run: Run, opts: Sequence[str]) -> List[str]:
    # With --resume, Detectron2 loads MODEL.WEIGHTS only when the run has no checkpoint yet.
    init = ["MODEL.WEIGHTS", run.init_weights] if run.init_weights else []
    mode = "--eval-only" if run.eval_only else "--resume"
    return [sys.executable, os.path.join(PROJECT, "train_net.py"), mode,
            "--config-file", run.config, "SEED", str(run.seed), "OUTPUT_DIR", run.output_dir,
            *init, *opts]


def run_all(runs: Sequence[Run], *, opts: Sequence[str] = (), jobs: int = 2,
            threads: int = 1, log=print) -> None:
    """Train and evaluate every run not yet done, ``jobs`` processes at a time.

    Raises:
        RuntimeError: naming the runs whose process failed (their logs are kept).
    """
    todo = [r for r in runs if not r.done]
    log(f"study: {len(runs) - len(todo)} of {len(runs)} runs done, {len(todo)} to run")
    # Runs started from another run's weights wait for it: queueing every run that needs no
    # other first keeps all processes busy (a later seed's source is not left for last).
    todo.sort(key=lambda r: r.init_weights is not None)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    run_jobs([Job(f"{r.variant} seed {r.seed}", _command(r, opts),
                  os.path.join(r.output_dir, "study_stdout.log"),
                  succeeded=lambda r=r: r.done, ready=lambda r=r: r.ready,
                  summary=lambda r=r: f"box AP {_read_metrics(r)['AP']:.2f}")
              for r in todo], parallel=jobs, env=env, cwd=REPO, log=log, name="study")


def _read_metrics(run: Run) -> Dict[str, float]:
    """The run's COCO box metrics; one COCOeval leaves undefined (NaN: no ground truth of
    that size, e.g. APm on the tiny-object task) is left out."""
    with open(run.results_file) as f:
        results = json.load(f)
    bbox = next(iter(results.values()))["bbox"]
    return {m: float(bbox[m]) for m in METRICS if not math.isnan(float(bbox[m]))}


def _sampling_stats(run: Run) -> Dict[str, float]:
    path = os.path.join(run.output_dir, "metrics.json")
    records = []
    if os.path.isfile(path):
        with open(path) as f:
            records = [json.loads(line) for line in f]
    return sampling_stats(records)


def sampling_stats(records: Sequence[dict]) -> Dict[str, float]:
    """Mean over SSB blocks of the last logged ``ssb/<block>/density_ratio`` and ``kl`` in
    a run's ``metrics.json`` records (detection or classification)."""
    last = {}
    for record in records:
        last.update({k: v for k, v in record.items() if k.startswith("ssb/")})
    out = {}
    for stat in ("density_ratio", "kl"):
        values = [v for k, v in last.items() if k.endswith("/" + stat)]
        if values:
            out[stat] = statistics.fmean(values)
    return out


def collect(runs: Sequence[Run]) -> List[dict]:
    """One record per finished run: variant, seed, the COCO box metrics, sampling stats."""
    return [dict(variant=r.variant, seed=r.seed, **_read_metrics(r), **_sampling_stats(r))
            for r in runs if r.done]


def paired_difference(a: Sequence[float], b: Sequence[float]) -> dict:
    """Mean of ``a[i] - b[i]`` with a 95 % Student-t interval over the pairs (seeds).

    ``within_noise`` is True when the interval contains 0 (or there is only one pair).
    """
    if len(a) != len(b) or not a:
        raise ValueError(f"paired samples need the same, non-zero length: {len(a)} vs {len(b)}")
    d = [x - y for x, y in zip(a, b)]
    mean = statistics.fmean(d)
    if len(d) < 2:
        return dict(mean=mean, low=None, high=None, n=1, within_noise=True)
    half = _T975[min(len(d) - 2, len(_T975) - 1)] * statistics.stdev(d) / math.sqrt(len(d))
    return dict(mean=mean, low=mean - half, high=mean + half, n=len(d),
                within_noise=mean - half <= 0 <= mean + half)


def measure_costs(variants: Sequence[str], size=(256, 320), *, latency_iters: int = 5,
                  threads: int = 1) -> Dict[str, dict]:
    """GMACs (bottom-up, detector) and CPU latency (bottom-up, median ms, interleaved) of
    each variant's randomly initialised model at the study's input size."""
    torch.set_num_threads(threads)
    costs, bottom_ups = {}, {}
    x = random_image(*size)
    for v in variants:
        cfg = load_study_cfg(os.path.join(CONFIG_DIR, VARIANTS[v]))
        detector = build_detector(cfg)
        macs = part_macs(detector, *size)
        costs[v] = dict(bottom_up_gmacs=macs["bottom-up"] / 1e9,
                        backbone_gmacs=macs["backbone"] / 1e9)
        normalized = (x - detector.pixel_mean) / detector.pixel_std
        bottom_ups[v] = (detector.backbone.bottom_up, normalized)
    with torch.no_grad():
        times = time_interleaved({v: (lambda m=m, t=t: m(t)) for v, (m, t) in bottom_ups.items()},
                                 iters=latency_iters, warmup=1, clock="cpu")
    for v, samples in times.items():
        costs[v]["latency_ms"] = samples.median * 1e3
    return costs


def summarize(records: Sequence[dict], costs: Dict[str, dict]) -> dict:
    """Per-variant mean/std/min/max of each metric and the paired differences of PAIRS."""
    by_variant: Dict[str, List[dict]] = {}
    for r in records:
        by_variant.setdefault(r["variant"], []).append(r)
    variants = {}
    for v, rs in by_variant.items():
        row = dict(seeds=sorted(r["seed"] for r in rs), **costs.get(v, {}))
        for m in METRICS + ("density_ratio", "kl"):
            values = [r[m] for r in rs if m in r]
            if values:
                row[m] = dict(mean=statistics.fmean(values), min=min(values), max=max(values),
                              std=statistics.stdev(values) if len(values) > 1 else 0.0)
        variants[v] = row
    pairs = []
    for a, b in PAIRS:
        if a not in by_variant or b not in by_variant:
            continue
        ra = {r["seed"]: r for r in by_variant[a]}
        rb = {r["seed"]: r for r in by_variant[b]}
        seeds = sorted(set(ra) & set(rb))
        if seeds:
            pairs.append(dict(a=a, b=b, seeds=seeds, **paired_difference(
                [ra[s]["AP"] for s in seeds], [rb[s]["AP"] for s in seeds])))
    return dict(variants=variants, pairs=pairs)


def _f(value, digits=2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def format_markdown(summary: dict) -> str:
    lines = ["| variant | seeds | box AP mean ± std (min-max) | AP50 | APs | bottom-up GMACs | "
             "backbone+FPN GMACs | bottom-up CPU ms | sampling density max/min | KL |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for v, row in summary["variants"].items():
        ap = row["AP"]

        def mean(key, digits=2):  # "-" where undefined (e.g. APs of a task without small objects)
            return _f(row.get(key) and row[key]["mean"], digits)

        lines.append(
            f"| {v} | {len(row['seeds'])} | {ap['mean']:.2f} ± {ap['std']:.2f} "
            f"({ap['min']:.2f}-{ap['max']:.2f}) | {mean('AP50')} | {mean('APs')} | "
            f"{_f(row.get('bottom_up_gmacs'), 3)} | {_f(row.get('backbone_gmacs'), 3)} | "
            f"{_f(row.get('latency_ms'), 1)} | {mean('density_ratio', 3)} | {mean('kl', 4)} |")
    lines += ["", "| paired difference (box AP, by seed) | seeds | mean | 95 % CI | verdict |",
              "|---|---|---|---|---|"]
    for p in summary["pairs"]:
        verdict = "within noise" if p["within_noise"] else (
            "a > b" if p["mean"] > 0 else "a < b")
        lines.append(f"| {p['a']} - {p['b']} | {len(p['seeds'])} | {p['mean']:+.2f} | "
                     f"[{_f(p['low'])}, {_f(p['high'])}] | {verdict} |")
    return "\n".join(lines) + "\n"


def format_csv(records: Sequence[dict], costs: Dict[str, dict]) -> str:
    """One row per run in the schema of the committed ``results/per_seed.csv``
    (:data:`ssb_study.results.PER_RUN_FIELDS`), so a study's rows append to it as they are;
    ``table`` and ``label`` stay empty until the run is shown in a docs table."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=PER_RUN_FIELDS, extrasaction="ignore",
                            lineterminator="\n")
    writer.writeheader()
    for r in records:
        writer.writerow(dict(r, **costs.get(r["variant"], {}), task=task_of(r["variant"]),
                             source="run"))
    return buf.getvalue()


def write_plot(summary: dict, path: str) -> str:
    """Box AP (mean, min-max bars over seeds) against bottom-up GMACs and CPU latency."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 4), sharey=True)
    for ax, key, label in zip(axes, ("bottom_up_gmacs", "latency_ms"),
                              ("bottom-up GMACs (study input)", "bottom-up CPU latency, ms")):
        for v, row in summary["variants"].items():
            if key not in row:
                continue
            ap = row["AP"]
            ax.errorbar([row[key]], [ap["mean"]],
                        yerr=[[ap["mean"] - ap["min"]], [ap["max"] - ap["mean"]]],
                        fmt="o" if v.startswith("SSB") else "s", capsize=4, label=v)
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("box AP (mean, min-max over seeds)")
    axes[1].legend(fontsize=8, loc="center left", bbox_to_anchor=(1.02, 0.5))  # off the points
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def main(args) -> int:
    """The study from parsed arguments (see ``projects/SSBStudy/accuracy_study.py``)."""
    seeds = list(range(1, args.seeds + 1))
    runs = plan_runs(args.variants, seeds, args.output)
    opts = list(args.opts)
    if args.quick:
        opts = QUICK_OPTS + opts
    if args.iters:
        opts += ["SOLVER.MAX_ITER", str(args.iters)]
    if not args.report_only:
        run_all(runs, opts=opts, jobs=args.jobs, threads=args.threads)
    records = collect(runs)
    if not records:
        raise SystemExit("accuracy_study: no finished runs to report")
    done = sorted({r["variant"] for r in records}, key=list(VARIANTS).index)
    costs = measure_costs(done, latency_iters=1 if args.quick else args.latency_iters,
                          threads=args.threads)
    summary = summarize(records, costs)
    summary["settings"] = dict(variants=list(args.variants), seeds=seeds, quick=args.quick,
                               opts=opts, torch=torch.__version__, threads=args.threads)
    os.makedirs(args.output, exist_ok=True)
    stem = os.path.join(args.output, "accuracy_study")
    table = format_markdown(summary)
    with open(stem + ".md", "w") as f:
        f.write(table)
    with open(stem + ".csv", "w") as f:
        f.write(format_csv(records, costs))
    with open(stem + ".json", "w") as f:
        json.dump(dict(summary, runs=records), f, indent=1)
    write_plot(summary, stem + ".png")
    print(table)
    print(f"accuracy_study: wrote {stem}.md/.csv/.json/.png")
    return 0
