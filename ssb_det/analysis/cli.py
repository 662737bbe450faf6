"""Entry points of the analysis command-line tools (``tools/*.py`` only parse arguments)."""
import os

from ..checkpoint import atomic_write_text
from .models import baseline_twin, load_cfg
from .report import analyze_cfg, format_csv, format_markdown

__all__ = ["output_paths", "resolve_configs", "analyze_main"]


def output_paths(output: str, stem: str, extensions):
    """``<output>.<ext>`` for each extension, or ``<output>/<stem>.<ext>`` when ``output`` is
    an existing directory or ends with a path separator. Creates the parent directory."""
    if output.endswith(os.sep) or os.path.isdir(output):
        base = os.path.join(output, stem)
    else:
        base = output
    parent = os.path.dirname(os.path.abspath(base))
    os.makedirs(parent, exist_ok=True)
    return [f"{base}.{ext}" for ext in extensions]


def resolve_configs(config_file, baseline, opts):
    """The model config and its baseline (None when ``baseline == "none"``)."""
    cfg = load_cfg(config_file, opts)
    if baseline is None:
        base_cfg = baseline_twin(cfg)
    elif baseline.lower() == "none":
        base_cfg = None
    else:
        base_cfg = load_cfg(baseline, opts)
    return cfg, base_cfg


def analyze_main(args) -> int:
    """``tools/analyze_model.py``: print the comparison table, optionally write .md/.csv."""
    cfg, base_cfg = resolve_configs(args.config_file, args.baseline, args.opts)
    height, width = args.size
    include_detector = not args.no_detector
    model = analyze_cfg(cfg, height, width, include_detector=include_detector)
    base = (analyze_cfg(base_cfg, height, width, include_detector=include_detector)
            if base_cfg is not None else None)
    text = format_markdown(model, base)
    print(text, end="")
    if args.output:
        md, csv_path = output_paths(args.output, "analysis", ("md", "csv"))
        atomic_write_text(text, md)
        atomic_write_text(format_csv(model, base), csv_path)
        print(f"wrote {md} and {csv_path}")
    return 0
