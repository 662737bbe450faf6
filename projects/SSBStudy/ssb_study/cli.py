"""Entry points of the study's command lines, parsers included: ``projects/SSBStudy/X.py`` only
calls ``X_main()``, as the library's ``tools/X.py`` call ``ssb_det``'s (one convention)."""
import argparse
import os
import sys
from typing import Optional, Sequence

__all__ = ["accuracy_study_parser", "pretrain_compare_parser", "batch_dependence_parser",
           "saliency_diagnosis_parser", "accuracy_study_main",
           "pretrain_compare_args", "pretrain_compare_main", "batch_dependence_main",
           "saliency_diagnosis_main", "make_tables_parser",
           "make_tables_main", "visualize_sampling_main"]


def _opts(parser, help_text):
    parser.add_argument("opts", nargs=argparse.REMAINDER, help=help_text)


def accuracy_study_parser() -> argparse.ArgumentParser:
    from .accuracy_study import DEFAULT_VARIANTS, REPO, VARIANTS

    parser = argparse.ArgumentParser(
        description="Accuracy against cost: study variants trained from scratch (or from "
                    "another run's weights) and COCO-evaluated on the embedded tasks with "
                    "several seeds; finished runs are kept, interrupted ones resume.")
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
    _opts(parser, "KEY VALUE overrides for every run (e.g. MODEL.DEVICE cuda)")
    return parser


def accuracy_study_main(argv: Optional[Sequence[str]] = None) -> int:
    """``projects/SSBStudy/accuracy_study.py``: train what is missing, then tabulate."""
    from .accuracy_study import main

    return main(accuracy_study_parser().parse_args(argv))


def pretrain_compare_parser() -> argparse.ArgumentParser:
    from .pretrain_compare import DEFAULT_CONFIG, REPO, VARIANTS

    parser = argparse.ArgumentParser(
        description="Top-1 of SSB-R50, the plain R50 and uniform-sampling SSB-R50, side by "
                    "side, same budget, each pretrained by tools/pretrain_cls.py; resumable.")
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
    _opts(parser, "KEY VALUE overrides for all runs")
    return parser


def pretrain_compare_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """The parsed and checked arguments of ``pretrain_compare.py``."""
    parser = pretrain_compare_parser()
    args = parser.parse_args(argv)
    args.config_file = os.path.abspath(args.config_file)
    if args.jobs < 1:
        parser.error(f"--jobs {args.jobs}: must be at least 1")
    if len(args.opts) % 2:
        parser.error(f"overrides must be KEY VALUE pairs, got {args.opts}")
    return args


def pretrain_compare_main(argv: Optional[Sequence[str]] = None) -> int:
    """``projects/SSBStudy/pretrain_compare.py``: train what is missing, then tabulate."""
    from .pretrain_compare import main

    main(pretrain_compare_args(argv))
    return 0


def batch_dependence_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="How much an image's features and detections depend on its batch-mates: "
                    "SSB vs plain ResNet.")
    parser.add_argument("--config-file", default=None,
                        help="SSB detector config (default: Faster R-CNN SSB-R50-FPN)")
    parser.add_argument("--size-a", type=int, nargs=2, default=[320, 448], metavar=("H", "W"))
    parser.add_argument("--size-b", type=int, nargs=2, default=[640, 896], metavar=("H", "W"))
    parser.add_argument("--logit-std", type=float, nargs="+", default=[1.0, 3.0],
                        help="std of each SSB block's pooled saliency logits (random saliency)")
    parser.add_argument("--weights", default="", help="a trained checkpoint for every model "
                        "(the saliency then comes from the file)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--compare-padding-unaware", action="store_true",
                        help="also run each SSB model with MODEL.SSB.PADDING_AWARE False")
    _opts(parser, "KEY VALUE config overrides")
    return parser


def batch_dependence_main(argv: Optional[Sequence[str]] = None) -> int:
    """``projects/SSBStudy/batch_dependence.py``: prints the report."""
    from .batch_dependence import batch_dependence, format_report

    args = batch_dependence_parser().parse_args(argv)
    rows = batch_dependence(args.size_a, args.size_b, logit_stds=args.logit_std,
                            weights=args.weights, seed=args.seed,
                            compare_padding_unaware=args.compare_padding_unaware,
                            config_file=args.config_file, opts=args.opts)
    print(format_report(rows, args.size_a, args.size_b, args.seed, args.weights))
    return 0


def saliency_diagnosis_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="What the saliency learns, and why it stays near uniform.")
    parser.add_argument("--config-file", required=True, help="an SSB detector config")
    parser.add_argument("--weights", nargs="*", default=[], help="trained checkpoints")
    parser.add_argument("--images", type=int, default=8, help="training images in the batch")
    parser.add_argument("--output", default=None, help="write <output>.md and <output>.json")
    _opts(parser, "KEY VALUE config overrides")
    return parser


def saliency_diagnosis_main(argv: Optional[Sequence[str]] = None) -> int:
    """``projects/SSBStudy/saliency_diagnosis.py``."""
    from .saliency_diagnosis import main

    return main(saliency_diagnosis_parser().parse_args(argv))


def make_tables_parser() -> argparse.ArgumentParser:
    from .results import RESULTS_DIR

    parser = argparse.ArgumentParser(
        description="The Markdown tables of docs/accuracy.md, generated from the study's CSV "
                    "results; --check FILE verifies that each appears verbatim in FILE.")
    parser.add_argument("--results", default=RESULTS_DIR, help="folder of the CSV files")
    parser.add_argument("--check", metavar="FILE",
                        help="exit 1, naming them, if generated tables are not in FILE verbatim")
    return parser


def make_tables_main(argv: Optional[Sequence[str]] = None) -> int:
    """``projects/SSBStudy/make_tables.py``: print the tables, or check a page against them."""
    from .results import generate_tables, missing_tables

    args = make_tables_parser().parse_args(argv)
    tables = generate_tables(args.results)
    if not args.check:
        for name, table in tables:
            print(f"<!-- {name} -->\n{table}")
        return 0
    with open(args.check, encoding="utf-8") as f:
        missing = missing_tables(tables, f.read())
    for name in missing:
        print(f"make_tables: {name} is not in {args.check} as generated", file=sys.stderr)
    found = len(tables) - len(missing)
    print(f"make_tables: {found} of {len(tables)} tables found in {args.check}")
    return 1 if missing else 0


def visualize_sampling_main(argv: Optional[Sequence[str]] = None) -> int:
    """``projects/SSBStudy/visualize_sampling.py``: the library's ``tools/visualize_sampling.py``
    on the study's configs (its keys and meta-architectures known)."""
    from ssb_det.analysis.cli import visualize_main

    from .config import study_defaults

    return visualize_main(argv, defaults=study_defaults())
