"""Entry points of the analysis command-line tools, parsers included: ``tools/X.py`` only
calls ``X_main()``, as every tool of the project does."""
import argparse
import os

from ..checkpoint import atomic_write_text
from .models import baseline_twin, load_cfg
from .report import analyze_cfg, format_csv, format_markdown

__all__ = ["add_model_arguments", "add_opts_argument", "output_paths", "resolve_configs",
           "analyze_parser", "benchmark_parser", "visualize_parser",
           "analyze_main", "benchmark_main", "visualize_main"]


def add_model_arguments(parser, baseline: bool = True, size: bool = True):
    """The options every analysis tool shares: ``--config-file``, ``--baseline``, ``--size``
    and trailing ``KEY VALUE`` config overrides (``opts``, add them last).

    Args:
        parser (argparse.ArgumentParser): the tool's parser.
        baseline (bool): add ``--baseline``.
        size (bool): add ``--size H W`` (default 800 1216).
    """
    parser.add_argument("--config-file", default=None,
                        help="model config (YAML path or model-zoo name); default: Faster "
                             "R-CNN with the SSB-R50-FPN backbone")
    if baseline:
        parser.add_argument("--baseline", default=None,
                            help="baseline config; default: the config's twin with "
                                 "MODEL.SSB.ENABLED False; 'none' to skip the comparison")
    if size:
        parser.add_argument("--size", type=int, nargs=2, default=(800, 1216),
                            metavar=("H", "W"), help="input height and width")


def add_opts_argument(parser):
    """Trailing ``KEY VALUE`` config overrides (``opts``), as Detectron2's tools take them."""
    parser.add_argument("opts", nargs=argparse.REMAINDER, default=[],
                        help="KEY VALUE config overrides (applied to the baseline too)")


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


def analyze_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="MACs (fvcore, sampling ops counted), parameters and activations of a "
                    "model and its baseline.")
    add_model_arguments(p)
    p.add_argument("--no-detector", action="store_true",
                   help="count only the bottom-up network and the backbone with FPN")
    p.add_argument("--output", default=None,
                   help="write <output>.md and <output>.csv (a directory: analysis.md/.csv in it)")
    add_opts_argument(p)
    return p


def benchmark_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Latency, throughput and peak memory of SSB-ResNet vs its baseline, "
                    "measured in one run.")
    add_model_arguments(p)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--iters", type=int, default=5, help="timed runs per model and mode")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs first")
    p.add_argument("--threads", type=int, default=0,
                   help="torch.set_num_threads (0: PyTorch's default)")
    p.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                   help="wall: elapsed time; cpu: process CPU time (reproducible on a shared "
                        "machine with --threads 1)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--amp", choices=["fp16", "bf16"], default=None, help="autocast dtype")
    p.add_argument("--channels-last", action="store_true", help="NHWC memory format")
    p.add_argument("--compile", nargs="?", const="inductor", default=None, metavar="BACKEND",
                   help="torch.compile both bottom-ups (default backend: inductor), as "
                        "tools/train_net.py --compile does, and time each cold compile")
    p.add_argument("--parts", nargs="+", default=["bottom-up", "backbone"],
                   choices=["bottom-up", "backbone", "detector"])
    p.add_argument("--modes", nargs="+", default=["inference", "train"],
                   choices=["inference", "train"])
    p.add_argument("--no-memory", action="store_true", help="skip peak-memory measurement")
    p.add_argument("--no-stages", action="store_true", help="skip per-stage latency")
    p.add_argument("--no-breakdown", action="store_true", help="skip per-step block timing")
    p.add_argument("--no-macs", action="store_true", help="skip the fvcore MAC count")
    p.add_argument("--chart", default=None, help="write a PNG chart here")
    p.add_argument("--output", default=None,
                   help="write <output>.md/.csv/.json (a directory: benchmark.* in it)")
    add_opts_argument(p)
    return p


def visualize_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Draw where every SSB block samples an image: one PNG per block and a "
                    "montage.")
    add_model_arguments(p, baseline=False, size=False)
    p.add_argument("--weights", default=None,
                   help="checkpoint (.pth/.pkl); default: none (untrained: uniform sampling)")
    p.add_argument("--input", required=True, help="input image")
    p.add_argument("--output", required=True, help="output directory for the PNGs")
    p.add_argument("--dpi", type=int, default=100, help="resolution of the PNGs")
    p.add_argument("--palette", action="store_true",
                   help="256-colour PNGs (a fraction of the size, e.g. for documentation)")
    add_opts_argument(p)
    return p


def analyze_main(argv=None) -> int:
    """``tools/analyze_model.py``: print the comparison table, optionally write .md/.csv.

    Args:
        argv (list[str] or None): command-line arguments (None: ``sys.argv[1:]``).
    """
    args = analyze_parser().parse_args(argv)
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


def benchmark_main(argv=None) -> int:
    """``tools/benchmark.py``: interleaved SSB-vs-baseline benchmark, tables, chart.

    Args:
        argv (list[str] or None): command-line arguments (None: ``sys.argv[1:]``).
    """
    args = benchmark_parser().parse_args(argv)
    from .benchmark import BenchmarkSetup
    from .benchmark_report import (
        benchmark_json,
        format_benchmark_csv,
        format_benchmark_markdown,
        run_benchmark,
        write_benchmark_chart,
    )

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    cfg, base_cfg = resolve_configs(args.config_file, args.baseline, args.opts)
    if base_cfg is None:
        raise ValueError("the benchmark compares two models: --baseline none is not allowed")
    setup = BenchmarkSetup(height=args.size[0], width=args.size[1], batch=args.batch,
                           iters=args.iters, warmup=args.warmup, device=args.device,
                           amp=args.amp, channels_last=args.channels_last,
                           modes=tuple(args.modes), memory=not args.no_memory,
                           clock=args.clock, compile=args.compile)
    result = run_benchmark(cfg, base_cfg, setup, parts=args.parts, stages=not args.no_stages,
                           breakdown=not args.no_breakdown, macs=not args.no_macs)
    text = format_benchmark_markdown(result)
    print(text, end="")
    if args.output:
        md, csv_path, js = output_paths(args.output, "benchmark", ("md", "csv", "json"))
        atomic_write_text(text, md)
        atomic_write_text(format_benchmark_csv(result), csv_path)
        atomic_write_text(benchmark_json(result), js)
        print(f"wrote {md}, {csv_path}, {js}")
    if args.chart:
        os.makedirs(os.path.dirname(os.path.abspath(args.chart)), exist_ok=True)
        write_benchmark_chart(result, args.chart)
        print(f"wrote {args.chart}")
    return 0


def visualize_main(argv=None, defaults=None) -> int:
    """``tools/visualize_sampling.py``: per-block sampling PNGs and a montage.

    Args:
        argv (list[str] or None): command-line arguments (None: ``sys.argv[1:]``).
        defaults (CfgNode or None): config defaults with a project's own keys (see
            :func:`~ssb_det.analysis.models.load_cfg`); None: the library's.
    """
    args = visualize_parser().parse_args(argv)
    from .visualize import STATE_TEXT, visualize_sampling

    cfg = load_cfg(args.config_file, args.opts, defaults=defaults)
    out = visualize_sampling(cfg, args.input, args.output, weights=args.weights,
                             dpi=args.dpi, palette=args.palette)
    print(f"{STATE_TEXT[out['state']]}; wrote {len(out['files'])} PNGs to {args.output}:")
    for path in out["files"]:
        print("  " + path)
    return 0
