"""PNG charts of benchmark results (matplotlib, Agg backend: no display needed)."""
from typing import Dict, List, Optional

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

__all__ = ["benchmark_chart"]

_COLORS = ("#1f77b4", "#9a9a9a")


def _grouped_bars(ax, categories: List[str], series: Dict[str, List[float]], ylabel: str,
                  title: str):
    labels = list(series)
    width = 0.8 / max(len(labels), 1)
    for i, label in enumerate(labels):
        xs = [j + (i - (len(labels) - 1) / 2) * width for j in range(len(categories))]
        ax.bar(xs, series[label], width, label=label, color=_COLORS[i % len(_COLORS)])
    if len(labels) == 2:
        a, b = (series[l] for l in labels)
        top = max(max(a, default=0), max(b, default=0))
        for j, (va, vb) in enumerate(zip(a, b)):
            if vb:
                ax.text(j, max(va, vb) + 0.02 * top, f"{va / vb:.2f}x", ha="center",
                        va="bottom", fontsize=8)
        ax.set_ylim(0, top * 1.15)
    ax.set_xticks(range(len(categories)))
    ax.set_xticklabels(categories)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)


def benchmark_chart(path: str, *, stage_ms: Dict[str, Dict[str, float]],
                    stage_gmacs: Optional[Dict[str, Dict[str, float]]] = None,
                    block_ms: Optional[Dict[str, Dict[str, float]]] = None,
                    block_title: str = "", title: str = "") -> str:
    """Write a PNG: per-stage latency and MACs, model vs baseline, ratios on the bars, and
    optionally a per-step breakdown of one block per model.

    Args:
        path (str): output PNG.
        stage_ms (dict): ``{label: {stage: milliseconds}}`` (two labels: model, baseline).
        stage_gmacs (dict or None): ``{label: {stage: GMACs}}``.
        block_ms (dict or None): ``{label: {step: milliseconds}}`` of one block each.
        block_title (str): which block that is (e.g. ``res2.1``).
        title (str): figure title (input size, device, threads...).

    Returns:
        str: ``path``.
    """
    panels = 1 + (stage_gmacs is not None) + (block_ms is not None)
    fig, axes = plt.subplots(1, panels, figsize=(5.2 * panels, 4.2), squeeze=False)
    axes = axes[0]
    stages = list(next(iter(stage_ms.values())))
    _grouped_bars(axes[0], stages, {k: [v[s] for s in stages] for k, v in stage_ms.items()},
                  "ms (median)", "Inference latency per stage")
    i = 1
    if stage_gmacs is not None:
        parts = list(next(iter(stage_gmacs.values())))
        _grouped_bars(axes[i], parts, {k: [v[p] for p in parts] for k, v in stage_gmacs.items()},
                      "GMACs", "MACs per stage (sampling counted)")
        i += 1
    if block_ms is not None:
        ax = axes[i]
        labels = list(block_ms)
        steps: List[str] = []
        for v in block_ms.values():
            steps += [s for s in v if s not in steps]
        bottom = [0.0] * len(labels)
        cmap = plt.get_cmap("tab20")
        for j, step in enumerate(steps):
            vals = [block_ms[l].get(step, 0.0) for l in labels]
            ax.bar(labels, vals, bottom=bottom, label=step, color=cmap(j % 20))
            bottom = [b + v for b, v in zip(bottom, vals)]
        ax.set_ylabel("ms (median, steps timed separately)")
        ax.set_title(f"Block {block_title}, per step" if block_title else "One block, per step",
                     fontsize=10)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
