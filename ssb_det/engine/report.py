"""Print the COCO AP tables of finished runs from their ``inference/eval_results.json``.

``python -m ssb_det.engine.report OUTPUT_DIR [OUTPUT_DIR ...]`` prints, per task (bbox,
segm), one row per run with AP, AP50, AP75, APs, APm, APl and the per-category APs, so an
SSB run and its baseline twin can be read side by side. ``run_quickstart.sh`` ends with it.
"""
import argparse
import json
import math
import os
import sys
from typing import Dict, List, Optional, Sequence

from .train import EVAL_RESULTS_FILE

__all__ = ["load_eval_results", "format_ap_tables", "main"]

_SUMMARY = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def load_eval_results(output_dir: str) -> Dict[str, Dict[str, Dict[str, float]]]:
    """``{dataset: {task: {metric: value}}}`` written by :meth:`ssb_det.engine.Trainer.test`."""
    path = os.path.join(output_dir, "inference", EVAL_RESULTS_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} does not exist: has {output_dir} been evaluated?")
    with open(path) as f:
        return json.load(f)


def _fmt(value) -> str:
    return "nan" if value is None or (isinstance(value, float) and math.isnan(value)) \
        else f"{value:.1f}"


def format_ap_tables(runs: Dict[str, dict]) -> str:
    """Markdown tables, one per (dataset, task), one row per run.

    Args:
        runs (dict): ``{run name: load_eval_results(...)}``.
    """
    blocks: List[str] = []
    keys = sorted({(d, t) for res in runs.values() for d, tasks in res.items() for t in tasks})
    for dataset, task in keys:
        columns: List[str] = list(_SUMMARY)
        for res in runs.values():
            for metric in res.get(dataset, {}).get(task, {}):
                if metric.startswith("AP-") and metric not in columns:
                    columns.append(metric)
        lines = [f"{task} AP on {dataset}:", "",
                 "| run | " + " | ".join(columns) + " |",
                 "|:--|" + "--:|" * len(columns)]
        for name, res in runs.items():
            metrics = res.get(dataset, {}).get(task)
            if metrics is not None:
                lines.append(f"| {name} | " + " | ".join(_fmt(metrics.get(c)) for c in columns)
                             + " |")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output_dirs", nargs="+", help="OUTPUT_DIRs of evaluated runs")
    args = parser.parse_args(argv)
    runs = {}
    for d in args.output_dirs:
        try:
            runs[os.path.basename(os.path.normpath(d))] = load_eval_results(d)
        except FileNotFoundError as e:
            print(f"report: {e}", file=sys.stderr)
    if not runs:
        return 1
    print(format_ap_tables(runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
