"""The study's results as CSV (``projects/SSBStudy/results/``) and the Markdown tables of
``docs/accuracy.md`` generated from them.

The CSV files hold the numbers as the tables print them (strings: the same decimals, a sign
where the table shows one; an empty cell where the table shows ``-``), so a table generated
from them is the table in the docs, character for character, and a reader can re-plot the
study without parsing Markdown:

- ``tables.csv``: one row per generated table, in the page's order: its id (``table``, shared
  by the rows of the other files), its ``layout`` (which formatter below), for the per-seed
  layouts the first header cell (``caption``) and the difference column's name
  (``difference``), and the docs section it belongs to.
- ``variants.csv``: per variant and table, box AP over seeds (mean, std, min, max), the means
  of AP50, APs and the learned sampling's density max/min and KL, and the costs (GMACs,
  bottom-up CPU ms, measured by the ``--report-only`` command that printed the table).
- ``paired.csv``: paired differences ``a - b`` of box AP by seed, 95 % interval, verdict.
- ``per_seed.csv``: one row per run (variant, seed), the schema
  ``ssb_study.accuracy_study.format_csv`` writes for new runs (:data:`PER_RUN_FIELDS`);
  ``source`` says where the row comes from: ``table`` (a docs table), ``text`` (the docs'
  prose; data only, in no generated table) or ``run`` (a study's ``accuracy_study.csv``).
- ``sampling_at_boxes.csv``, ``oracle_zoom.csv``: the sampling density at the ground-truth
  box centres per block / per oracle; ``classification.csv``: the classification runs.
"""
import csv
import os
from typing import Dict, List, Sequence, Tuple

__all__ = ["RESULTS_DIR", "PER_RUN_FIELDS", "task_of", "read_results", "generate_tables",
           "missing_tables"]

RESULTS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "results")
# One run's row: where it is shown (docs table id, row label; empty for a run not yet in the
# docs), its task and variant, seed, COCO box metrics, learned-sampling stats, costs, source.
PER_RUN_FIELDS = ["table", "label", "task", "variant", "seed", "AP", "AP50", "APs", "APm",
                  "density_ratio", "kl", "bottom_up_gmacs", "backbone_gmacs", "latency_ms",
                  "source"]
FILES = ("tables", "variants", "paired", "per_seed", "sampling_at_boxes", "oracle_zoom",
         "classification")
# How the docs' table headers name the two tasks (datasets).
TASKS = {"ssb_shapes_small": "first task", "ssb_shapes_tiny": "tiny objects"}

Rows = List[Dict[str, str]]


def task_of(variant: str) -> str:
    """The dataset a study variant is evaluated on: the tiny-object task's variants say so."""
    return "ssb_shapes_tiny" if "tiny" in variant else "ssb_shapes_small"


def read_results(results_dir: str = RESULTS_DIR) -> Dict[str, Rows]:
    """Every CSV of the results folder by name (without ``.csv``); a missing one is empty."""
    out = {}
    for name in FILES:
        path = os.path.join(results_dir, name + ".csv")
        if os.path.isfile(path):
            with open(path, newline="", encoding="utf-8") as f:
                out[name] = list(csv.DictReader(f))
        else:
            out[name] = []
    return out


def _row(cells: Sequence[str]) -> str:
    # An empty cell prints as "| |", as the docs write it.
    return "|" + "".join(f" {c} |" if c else " |" for c in cells)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = [_row(header), "|" + "---|" * len(header)] + [_row(r) for r in rows]
    return "\n".join(lines) + "\n"


def _dash(value: str) -> str:
    return value if value != "" else "-"


VARIANT_HEADER = ["variant", "seeds", "box AP mean ± std (min-max)", "AP50", "APs",
                  "bottom-up GMACs", "backbone+FPN GMACs", "bottom-up CPU ms",
                  "sampling density max/min", "KL"]


def _variants(rows: Rows) -> str:
    return _table(VARIANT_HEADER, [
        [r["variant"], r["seeds"], f"{r['AP_mean']} ± {r['AP_std']} ({r['AP_min']}-{r['AP_max']})",
         _dash(r["AP50_mean"]), _dash(r["APs_mean"]), r["bottom_up_gmacs"], r["backbone_gmacs"],
         r["latency_ms"], _dash(r["density_ratio_mean"]), _dash(r["kl_mean"])] for r in rows])


def _paired(rows: Rows) -> str:
    return _table(["paired difference (box AP, by seed)", "seeds", "mean", "95 % CI", "verdict"], [
        [f"{r['a']} - {r['b']}", r["seeds"], r["mean"],
         f"[{_dash(r['ci_low'])}, {_dash(r['ci_high'])}]", r["verdict"]] for r in rows])


def _by_label(rows: Rows) -> Dict[str, Rows]:
    """Per-seed rows grouped by their row label (the variant where none), in first-seen order."""
    groups: Dict[str, Rows] = {}
    for r in rows:
        groups.setdefault(r["label"] or r["variant"], []).append(r)
    return groups


def _seeds(rows: Rows) -> List[str]:
    return sorted({r["seed"] for r in rows}, key=int)


def _by_seed(spec: Dict[str, str], seeds: Rows) -> str:
    groups = _by_label(seeds)
    order = _seeds(seeds)
    body = []
    for label, rs in groups.items():
        ap = {r["seed"]: r["AP"] for r in rs}
        body.append([label] + [_dash(ap.get(s, "")) for s in order])
    return _table([spec["caption"]] + order, body)


def _by_seed_summary(spec: Dict[str, str], seeds: Rows, variants: Rows, paired: Rows) -> str:
    """Per-seed box AP with the variant's mean ± std and its paired difference (bold where
    the interval excludes 0) in the last two columns."""
    summary = {r["variant"]: r for r in variants}
    difference = {r["a"]: r for r in paired}
    order = _seeds(seeds)
    body = []
    for label, rs in _by_label(seeds).items():
        variant = rs[0]["variant"]
        ap = {r["seed"]: r["AP"] for r in rs}
        s = summary[variant]
        cell = ""
        if variant in difference:
            d = difference[variant]
            cell = f"{d['mean']} [{d['ci_low']}, {d['ci_high']}]"
            if d["verdict"] != "within noise":
                cell = f"**{cell}**"
        body.append([label] + [ap[k] for k in order] + [f"{s['AP_mean']} ± {s['AP_std']}", cell])
    header = [spec["caption"]] + [f"seed {k}" for k in order] + [
        "mean ± std", f"{spec['difference']} (95 % CI)"]
    return _table(header, body)


def _sampling_at_boxes(rows: Rows) -> str:
    labels = list(dict.fromkeys(r["label"] for r in rows))
    blocks: Dict[str, Dict[str, str]] = {}
    for r in rows:
        blocks.setdefault(r["block"], {})[r["label"]] = \
            f"{r['density_at_boxes']} ({r['density_max_min']})"
    return _table(["block"] + labels, [[b] + [cells[m] for m in labels]
                                       for b, cells in blocks.items()])


def _oracle_zoom(rows: Rows) -> str:
    tasks = ["ssb_shapes_tiny", "ssb_shapes_small"]
    oracles: Dict[str, Dict[str, str]] = {}
    for r in rows:
        oracles.setdefault(r["label"], {})[r["task"]] = \
            f"{r['density_at_boxes']}x ({r['density_max_min']})"
    return _table(["oracle"] + [f"{TASKS[t]}: at the boxes (max/min)" for t in tasks],
                  [[label] + [cells.get(t, "-") for t in tasks]
                   for label, cells in oracles.items()])


def _classification(rows: Rows) -> str:
    def noted(value, note):
        return f"{value} ({note})" if note else value

    first = rows[0]
    return _table(
        [f"run (seed {first['seed']}, {first['images_per_iteration']} images per iteration)",
         "iterations", "loss", "images/s (1 thread, 2 runs at once)"],
        [[r["run"], r["iterations"], noted(r["loss"], r["loss_note"]),
          noted(r["images_per_s"], r["images_per_s_note"])] for r in rows])


# Layouts whose rows are in a CSV file of the same name.
OWN_FILE = {"sampling_at_boxes": _sampling_at_boxes, "oracle_zoom": _oracle_zoom,
            "classification": _classification}


def generate_tables(results_dir: str = RESULTS_DIR) -> List[Tuple[str, str]]:
    """``(name, markdown)`` for each table listed in ``tables.csv``, in its order; the name is
    ``<table id>/<layout>``."""
    data = read_results(results_dir)

    def of(name: str, table: str) -> Rows:
        return [r for r in data[name] if r["table"] == table]

    out = []
    for spec in data["tables"]:
        tid, layout = spec["table"], spec["layout"]
        shown = [r for r in of("per_seed", tid) if r["source"] == "table"]
        if layout == "variants":
            text = _variants(of("variants", tid))
        elif layout == "paired":
            text = _paired(of("paired", tid))
        elif layout == "by_seed":
            text = _by_seed(spec, shown)
        elif layout == "by_seed_summary":
            text = _by_seed_summary(spec, shown, of("variants", tid), of("paired", tid))
        elif layout in OWN_FILE:
            text = OWN_FILE[layout](of(layout, tid))
        else:
            raise ValueError(f"tables.csv: table {tid!r} has an unknown layout {layout!r}")
        out.append((f"{tid}/{layout}", text))
    return out


def missing_tables(tables: Sequence[Tuple[str, str]], text: str) -> List[str]:
    """The names of the tables that do not appear verbatim (whole lines) in ``text``."""
    padded = "\n" + text if text.endswith("\n") else "\n" + text + "\n"
    return [name for name, table in tables if "\n" + table not in padded]
