"""Classification twins side by side: SSB-R50, the plain R50 and uniform-sampling SSB-R50.

``projects/SSBStudy/pretrain_compare.py`` parses its options and calls :func:`main`. Each run is a
``tools/pretrain_cls.py`` process (``--resume``: a finished run is kept, an interrupted one
continues); a run's numbers are read back from its ``metrics.json`` (the final evaluation
is logged there at the last iteration) and tabulated with the paired differences by seed
(:func:`ssb_study.accuracy_study.paired_difference`).
"""
import json
import os
import platform
import statistics
import sys

from .accuracy_study import paired_difference, sampling_stats
from .processes import Job, run_jobs

__all__ = ["VARIANTS", "PAIRS", "plan_runs", "run_result", "run_all", "report", "main"]

# The repository the project lives in: its configs/pretrain, tools/ and output/.
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
DEFAULT_CONFIG = os.path.join(REPO, "configs", "pretrain", "ssb_r50_shapes.yaml")

# (name, output sub-folder, overrides that make the variant from the SSB-R50 config)
VARIANTS = [
    ("SSB-R50", "ssb_r50", []),
    ("R50 (plain host)", "r50", ["MODEL.SSB.ENABLED", "False"]),
    ("SSB-R50 uniform sampling", "ssb_r50_uniform", ["MODEL.SSB.UNIFORM", "True"]),
]
# (a, b): the differences reported, a - b by seed.
PAIRS = [("SSB-R50", "SSB-R50 uniform sampling"), ("SSB-R50", "R50 (plain host)"),
         ("SSB-R50 uniform sampling", "R50 (plain host)")]


def _records(output_dir):
    path = os.path.join(output_dir, "metrics.json")
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def run_result(output_dir, iters):
    """The run's final numbers, or None while it has not finished ``iters`` iterations."""
    records = _records(output_dir)
    final = [r for r in records if "val/top1" in r and r.get("iteration") == iters]
    if not final or not os.path.isfile(os.path.join(output_dir, "model_final.pth")):
        return None
    last = final[-1]
    out = {k[len("val/"):]: v for k, v in last.items() if k.startswith("val/")}
    speeds = [r["images_per_s"] for r in records if "images_per_s" in r]
    out["images_per_s"] = statistics.fmean(speeds) if speeds else float("nan")
    out.update(sampling_stats(records))
    return out


def _run_dir(output, folder, seed):
    return os.path.join(output, folder, f"seed{seed}")


def _command(args, seed, overrides, out):
    return [sys.executable, os.path.join(REPO, "tools", "pretrain_cls.py"), "--resume",
            "--config-file", args.config_file, "SOLVER.MAX_ITER", str(args.iters),
            "SOLVER.CHECKPOINT_PERIOD", str(args.checkpoint_period), "SEED", str(seed),
            "OUTPUT_DIR", out, *args.opts, *overrides]


def run_all(args, runs):
    """Train every unfinished run, ``args.jobs`` processes at a time."""
    env = dict(os.environ)
    if args.threads:
        env.update(OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    todo = [r for r in runs if run_result(r[3], args.iters) is None]
    print(f"pretrain_compare: {len(runs) - len(todo)} of {len(runs)} runs done, "
          f"{len(todo)} to run", flush=True)
    run_jobs([Job(f"{name} seed {seed}", _command(args, seed, overrides, out),
                  os.path.join(out, "stdout.log"),
                  succeeded=lambda out=out: run_result(out, args.iters) is not None,
                  summary=lambda out=out: f"top-1 {run_result(out, args.iters)['top1']:.1f}")
              for name, seed, overrides, out in todo], parallel=args.jobs, env=env, cwd=REPO,
             log=lambda line: print(line, flush=True), name="pretrain_compare")


def _fmt(values, digits=1):
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return (f"{statistics.fmean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f} "
            f"({min(values):.{digits}f}-{max(values):.{digits}f})")


def report(args, runs):
    """Tabulate the finished runs (Markdown to stdout and ``table.md``; ``results.json``)."""
    results = {}
    for name, seed, _, out in runs:
        r = run_result(out, args.iters)
        if r is not None:
            results.setdefault(name, {})[seed] = r
    lines = [f"config {os.path.relpath(args.config_file, REPO)}, {args.iters} iterations, "
             f"seeds {args.seeds}, overrides {args.opts or []}; {args.threads or 'default'} "
             f"thread(s) per run, {args.jobs} run(s) at a time, "
             f"{platform.processor() or platform.machine()}", "",
             "| model | seeds | top-1 mean ± std (min-max) | EMA top-1 | val loss | "
             "train img/s | sampling density max/min | KL |",
             "|---|---|---|---|---|---|---|---|"]
    for name, _, _ in VARIANTS:
        by_seed = results.get(name, {})
        if not by_seed:
            continue
        rs = [by_seed[s] for s in sorted(by_seed)]

        def col(key, digits=1, rs=rs):
            values = [r[key] for r in rs if key in r]
            return f"{statistics.fmean(values):.{digits}f}" if values else "-"
        lines.append(f"| {name} | {len(rs)} | {_fmt([r['top1'] for r in rs])} | "
                     f"{_fmt([r['ema_top1'] for r in rs if 'ema_top1' in r])} | "
                     f"{col('loss', 3)} | {col('images_per_s')} | {col('density_ratio', 3)} | "
                     f"{col('kl', 4)} |")
    seeds = sorted({s for by_seed in results.values() for s in by_seed})
    lines += ["", "| top-1 by seed | " + " | ".join(str(s) for s in seeds) + " |",
              "|---|" + "---|" * len(seeds)]
    for name, _, _ in VARIANTS:
        if name in results:
            lines.append(f"| {name} | " + " | ".join(
                f"{results[name][s]['top1']:.1f}" if s in results[name] else "-"
                for s in seeds) + " |")
    lines += ["", "| paired difference (top-1, by seed) | metric | seeds | mean | 95 % CI | "
              "verdict |", "|---|---|---|---|---|---|"]
    pairs = {}
    for a, b in PAIRS:
        common = sorted(set(results.get(a, {})) & set(results.get(b, {})))
        if not common:
            continue
        for metric in ("top1", "ema_top1"):
            if not all(metric in results[v][s] for v in (a, b) for s in common):
                continue
            d = paired_difference([results[a][s][metric] for s in common],
                                  [results[b][s][metric] for s in common])
            pairs[f"{a} - {b} ({metric})"] = d
            ci = "-" if d["low"] is None else f"[{d['low']:.2f}, {d['high']:.2f}]"
            verdict = ("within noise" if d["within_noise"] else
                       ("a > b" if d["mean"] > 0 else "a < b"))
            lines.append(f"| {a} - {b} | {metric} | {d['n']} | {d['mean']:+.2f} | {ci} | "
                         f"{verdict} |")
    table = "\n".join(lines)
    print("\n" + table)
    os.makedirs(args.output, exist_ok=True)
    with open(os.path.join(args.output, "table.md"), "w") as f:
        f.write(table + "\n")
    with open(os.path.join(args.output, "results.json"), "w") as f:
        json.dump({"config": os.path.relpath(args.config_file, REPO), "iters": args.iters,
                   "opts": args.opts, "runs": {n: {str(s): r for s, r in v.items()}
                                               for n, v in results.items()},
                   "pairs": pairs}, f, indent=1)
    return results, pairs


def plan_runs(seeds, output):
    """``(name, seed, overrides, output_dir)`` of every variant and seed, seeds outermost."""
    return [(name, seed, overrides, _run_dir(output, folder, seed))
            for seed in seeds for name, folder, overrides in VARIANTS]


def main(args):
    """Train the runs of ``args.variants`` not yet done, then tabulate all finished runs.

    Args:
        args (argparse.Namespace): ``config_file``, ``iters``, ``seeds``, ``variants``,
            ``jobs``, ``threads``, ``checkpoint_period``, ``report_only``, ``output``, ``opts``
            (see ``projects/SSBStudy/pretrain_compare.py``).

    Returns:
        tuple: ``(results, pairs)``: per variant and seed the final numbers, and the paired
        differences.
    """
    runs = plan_runs(args.seeds, args.output)
    if not args.report_only:
        run_all(args, [r for r in runs if r[0] in args.variants])
    return report(args, runs)
