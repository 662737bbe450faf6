"""Analysis tools: MAC/parameter/activation counts, benchmarks, sampling visualisation.

The command-line tools in ``tools/`` (``analyze_model.py``, ``benchmark.py``,
``visualize_sampling.py``) are thin wrappers over this package.
"""
from .flops import (
    ACTIVATION_HANDLES,
    MAC_HANDLES,
    NOT_COUNTED_OPS,
    CountResult,
    activation_analysis,
    count_model,
    count_parameters,
    mac_analysis,
)
from .models import baseline_twin, build_detector, cfg_label, load_cfg, random_image
from .report import ModelAnalysis, analyze_cfg, analyze_detector, comparison_rows, format_csv, format_markdown

__all__ = [
    "ACTIVATION_HANDLES",
    "MAC_HANDLES",
    "NOT_COUNTED_OPS",
    "CountResult",
    "ModelAnalysis",
    "activation_analysis",
    "analyze_cfg",
    "analyze_detector",
    "baseline_twin",
    "build_detector",
    "cfg_label",
    "comparison_rows",
    "count_model",
    "count_parameters",
    "format_csv",
    "format_markdown",
    "load_cfg",
    "mac_analysis",
    "random_image",
]
