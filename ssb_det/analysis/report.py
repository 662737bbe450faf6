"""Model analysis: MACs, parameters and activations of the bottom-up network (per stage), the
backbone with FPN and the whole detector, for a config and its baseline, as tables.
"""
import csv
import io
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import torch

from .flops import CountResult, count_model, count_parameters, mac_analysis
from .models import (
    DetectorOutputs,
    build_detector,
    stage_feature_inputs,
    cfg_label,
    fpn_head_only,
    random_image,
)

__all__ = [
    "ModelAnalysis",
    "analyze_cfg",
    "analyze_detector",
    "part_macs",
    "comparison_rows",
    "format_markdown",
    "format_csv",
    "COLUMNS",
]

# Rows of an analysis, in display order. "fpn" is the FPN's own layers (laterals, outputs,
# top-down path, top block) on the bottom-up features; "detector" is the whole model in
# inference mode (backbone, proposal generator, ROI heads, post-processing).
WHOLE_PARTS = ("bottom-up", "fpn", "backbone", "detector")


@dataclass
class ModelAnalysis:
    """Counts of one model at one input size.

    Attributes:
        label (str): e.g. ``SSB-R50-FPN``.
        height, width (int): input size.
        parts (dict[str, CountResult]): per row: ``stem``, ``res2``..``res5`` (each traced on
            its own, with the input it gets in the full model), ``bottom-up``, ``fpn``,
            ``backbone``, ``detector``.
        unsupported (dict[str, int]): ops that had no handle, over every trace; empty when
            every op was accounted for.
    """

    label: str
    height: int
    width: int
    parts: Dict[str, CountResult] = field(default_factory=dict)
    unsupported: Dict[str, int] = field(default_factory=dict)

    @property
    def stages(self) -> List[str]:
        return [k for k in self.parts if k not in WHOLE_PARTS]


def _add(analysis: ModelAnalysis, name: str, result: CountResult):
    analysis.parts[name] = result
    for op, n in result.unsupported.items():
        analysis.unsupported[op] = analysis.unsupported.get(op, 0) + n


def analyze_detector(detector, label: str, height: int, width: int, *,
                     include_detector: bool = True, seed: int = 0) -> ModelAnalysis:
    """Count a built Detectron2 detector's parts at ``height x width``.

    Args:
        detector (nn.Module): a Detectron2 meta-architecture in eval mode, with
            ``backbone``, ``pixel_mean`` and ``pixel_std``.
        label (str): name used in tables.
        height, width (int): input size (the detector pads it to its size divisibility).
        include_detector (bool): also count the whole detector (slower: traces the heads).
        seed (int): seed of the random input image.
    """
    analysis = ModelAnalysis(label, height, width)
    image, x, parts = _count_parts(detector, height, width, seed, count_model)
    backbone = detector.backbone
    bottom_up = getattr(backbone, "bottom_up", backbone)
    fpn_counts = parts.pop("fpn", None)
    for name, counts in parts.items():
        _add(analysis, name, counts)
    _add(analysis, "bottom-up", count_model(bottom_up, (x,)))
    if fpn_counts is not None:
        fpn_counts.params = count_parameters(backbone) - count_parameters(bottom_up)
        _add(analysis, "fpn", fpn_counts)
        _add(analysis, "backbone", count_model(backbone, (x,)))
    else:
        analysis.parts["backbone"] = analysis.parts["bottom-up"]
    if include_detector:
        _add(analysis, "detector", count_model(DetectorOutputs(detector), (image,)))
    return analysis


def _count_parts(detector, height: int, width: int, seed: int, count):
    """``count(module, inputs)`` of each stage of the bottom-up network on the input it gets
    in the full model and, with an FPN, of the FPN's own layers (key ``"fpn"``).

    Returns:
        (image, x, counts): the random image, the normalised backbone input, and the counts.
    """
    image = random_image(height, width, seed)
    x = (image - detector.pixel_mean.cpu()) / detector.pixel_std.cpu()
    backbone = detector.backbone
    bottom_up = getattr(backbone, "bottom_up", backbone)
    counts = {name: count(getattr(bottom_up, name), args)
              for name, args in stage_feature_inputs(bottom_up, x).items()}
    if bottom_up is not backbone:
        with torch.no_grad():
            features = bottom_up(x)
        with fpn_head_only(backbone, features) as fpn:
            counts["fpn"] = count(fpn, (x,))
    return image, x, counts


def _macs(model, inputs) -> int:
    with torch.no_grad():
        return int(mac_analysis(model, tuple(inputs)).total())


def part_macs(detector, height: int, width: int, seed: int = 0) -> Dict[str, int]:
    """MACs of the stages (``stem``, ``res2``..) and of the FPN's own layers, each traced on
    its own, plus ``bottom-up`` and ``backbone`` as their sums (exactly what whole-model
    traces give, see the tests) - the cheap count the benchmark chart uses."""
    _, _, out = _count_parts(detector, height, width, seed, _macs)
    fpn = out.pop("fpn", None)
    out["bottom-up"] = sum(out.values())
    if fpn is not None:
        out["fpn"] = fpn
    out["backbone"] = out["bottom-up"] + (fpn or 0)
    return out


def analyze_cfg(cfg, height: int, width: int, *, include_detector: bool = True,
                seed: int = 0) -> ModelAnalysis:
    """Build ``cfg``'s detector (random weights) and count it; see :func:`analyze_detector`."""
    detector = build_detector(cfg, seed=seed)
    return analyze_detector(detector, cfg_label(cfg), height, width,
                            include_detector=include_detector, seed=seed)


# (key, header, scale, decimals) of the value columns.
COLUMNS = (
    ("macs", "GMACs", 1e-9, 2),
    ("params", "Params (M)", 1e-6, 2),
    ("activations", "Acts (M)", 1e-6, 1),
)


def _ratio(a: float, b: float) -> Optional[float]:
    return a / b if b else None


def comparison_rows(model: ModelAnalysis, baseline: Optional[ModelAnalysis] = None) -> List[dict]:
    """One dict per part: the model's values, and with a baseline its values and the ratios
    ``model / baseline``. Raw integers are kept (``macs``, ``base_macs``, ...)."""
    rows = []
    order = model.stages + [p for p in WHOLE_PARTS if p in model.parts]
    for part in order:
        r = model.parts[part]
        row = {"part": part}
        for key, *_ in COLUMNS:
            row[key] = getattr(r, key)
            if baseline is not None and part in baseline.parts:
                b = getattr(baseline.parts[part], key)
                row["base_" + key] = b
                row["ratio_" + key] = _ratio(row[key], b)
        rows.append(row)
    return rows


def _fmt(value, scale, decimals):
    if value is None:
        return "-"
    return f"{value * scale:.{decimals}f}"


def format_markdown(model: ModelAnalysis, baseline: Optional[ModelAnalysis] = None) -> str:
    """A Markdown table (and notes) of :func:`comparison_rows`."""
    rows = comparison_rows(model, baseline)
    header = ["part"]
    for key, title, _, _ in COLUMNS:
        header.append(f"{model.label} {title}")
        if baseline is not None:
            header += [f"{baseline.label} {title}", "ratio"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [row["part"]]
        for key, _, scale, dec in COLUMNS:
            cells.append(_fmt(row[key], scale, dec))
            if baseline is not None:
                cells.append(_fmt(row.get("base_" + key), scale, dec))
                ratio = row.get("ratio_" + key)
                cells.append("-" if ratio is None else f"{ratio:.3f}")
        lines.append("| " + " | ".join(cells) + " |")
    notes = [
        "",
        f"Input {model.height}x{model.width}, batch 1. MACs: fvcore (one multiply-add = 1), "
        "sampling interpolations counted (k-tap interpolation = k MACs per output), "
        "elementwise ops not counted (ssb_det.analysis.flops).",
    ]
    for a in (model, baseline):
        if a is not None:
            if a.unsupported:
                ops = ", ".join(f"{k} x{v}" for k, v in sorted(a.unsupported.items()))
                notes.append(f"{a.label}: ops WITHOUT a handle (counted as 0): {ops}")
            else:
                notes.append(f"{a.label}: every traced op accounted for (no unsupported ops).")
    return "\n".join(lines + notes) + "\n"


def format_csv(model: ModelAnalysis, baseline: Optional[ModelAnalysis] = None) -> str:
    """CSV of :func:`comparison_rows` with raw integer counts."""
    rows = comparison_rows(model, baseline)
    fields: Sequence[str] = ["model", "baseline", "height", "width"] + list(rows[0].keys())
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow(dict(row, model=model.label,
                             baseline=baseline.label if baseline else "",
                             height=model.height, width=model.width))
    return buf.getvalue()
