"""The SSB-vs-baseline benchmark run behind ``tools/benchmark.py``: latency, throughput and
peak memory (inference and training step) of the bottom-up network, the backbone with FPN
and optionally the detector; per-stage latency and MACs; a per-step breakdown of one block
per sampled stage; Markdown/CSV/JSON reports and a PNG chart.
"""
import json
import os
import platform
import sys
from typing import Dict, Optional, Sequence

import torch

from .benchmark import (CLOCKS, BenchmarkSetup, Samples, benchmark_parts, make_step,
                        prepare_model)
from .breakdown import (
    block_breakdown,
    block_input,
    executed_steps,
    sampler_share,
    stage_latency,
)
from .flops import count_parameters
from .models import DetectorOutputs, build_detector, cfg_label, random_image
from .plots import benchmark_chart
from .report import part_macs

__all__ = ["PARTS", "run_benchmark", "compile_bottom_ups", "format_benchmark_markdown", "format_benchmark_csv",
           "benchmark_json", "write_benchmark_chart", "environment"]

PARTS = ("bottom-up", "backbone", "detector")


def environment(device: str) -> dict:
    """What the numbers depend on: versions, threads, CPU/GPU, load."""
    env = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
    }
    env["omp_wait_policy"] = os.environ.get("OMP_WAIT_POLICY", "default")
    if hasattr(os, "getloadavg"):
        env["loadavg"] = [round(v, 2) for v in os.getloadavg()]
    if device.startswith("cuda") and torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return env


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _part_module(detector, part: str):
    if part == "bottom-up":
        return getattr(detector.backbone, "bottom_up", detector.backbone)
    if part == "backbone":
        return detector.backbone
    if part == "detector":
        return DetectorOutputs(detector)
    raise ValueError(f"unknown part {part!r}: use one of {PARTS}")


def run_benchmark(cfg, base_cfg, setup: BenchmarkSetup, *, parts: Sequence[str] = ("bottom-up",
                  "backbone"), stages: bool = True, breakdown: bool = True, macs: bool = True,
                  log=None) -> dict:
    """Benchmark ``cfg``'s model against ``base_cfg``'s, interleaved, and collect everything.

    Args:
        cfg, base_cfg: Detectron2 configs (see :func:`ssb_det.analysis.load_cfg`).
        setup (BenchmarkSetup): input size, iterations, device, precision, modes.
        parts (Sequence[str]): of ``bottom-up``, ``backbone``, ``detector`` (the detector is
            timed in inference only: its training step needs annotations).
        stages (bool): per-stage inference latency of the bottom-up networks.
        breakdown (bool): per-step latency of block 1 of every sampled stage.
        macs (bool): per-stage MACs (fvcore, sampling counted).
        log (callable): progress messages (default: printed to stderr).

    Returns:
        dict: see :func:`format_benchmark_markdown` for what it holds.
    """
    setup.validate()
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    bad = [p for p in parts if p not in PARTS]
    if bad:
        raise ValueError(f"unknown parts {bad}: use any of {PARTS}")
    labels = (cfg_label(cfg), cfg_label(base_cfg))
    if labels[0] == labels[1]:
        labels = (labels[0] + " (model)", labels[1] + " (baseline)")
    detectors = {labels[0]: build_detector(cfg), labels[1]: build_detector(base_cfg)}
    device = torch.device(setup.device)
    result = {"labels": labels, "setup": dict(vars(setup)), "env": environment(setup.device),
              "latency": {}, "memory": {}, "params": {}}
    image = random_image(setup.height, setup.width, seed=0, batch=setup.batch)
    det0 = detectors[labels[0]]
    normalised = (image - det0.pixel_mean.cpu()) / det0.pixel_std.cpu()
    if setup.compile:
        result["compile_s"] = compile_bottom_ups(detectors, normalised, setup, log)
    for part in parts:
        modules = {label: _part_module(d, part) for label, d in detectors.items()}
        result["params"][part] = {label: count_parameters(m) for label, m in modules.items()}
        part_setup = setup
        if part == "detector" and "train" in setup.modes:
            part_setup = BenchmarkSetup(**dict(vars(setup), modes=("inference",)))
            log("detector: timing inference only (a training step needs annotations)")
        log(f"timing {part} ({', '.join(part_setup.modes)}), {setup.iters} runs each...")
        x = image if part == "detector" else normalised
        timed = benchmark_parts({part: modules}, part_setup, x=x)[part]
        result["latency"][part] = {mode: r["latency"] for mode, r in timed.items()}
        if setup.memory:
            result["memory"][part] = {mode: r["memory"] for mode, r in timed.items()}
    bottom_ups = {label: _part_module(d, "bottom-up").to(device).eval()
                  for label, d in detectors.items()}
    x = normalised.to(device)
    if stages:
        log("timing stages...")
        with _autocast(setup):
            result["stages"] = stage_latency(bottom_ups, x, iters=setup.iters,
                                             warmup=setup.warmup, clock=setup.clock)
    if breakdown:
        result["blocks"] = {}
        for stage in bottom_ups[labels[0]].stage_names:
            nets = {label: net for label, net in bottom_ups.items()
                    if len(getattr(net, stage)) > 1}
            if len(nets) < 2 or not _is_sampled(getattr(bottom_ups[labels[0]], stage)):
                continue
            log(f"timing the steps of {stage}.1...")
            blocks, inp = {}, None
            for label, net in nets.items():
                block, inp = block_input(net, x, stage, 1)
                blocks[label] = block
            with _autocast(setup):
                result["blocks"][stage] = block_breakdown(
                    blocks, inp, iters=setup.iters, warmup=setup.warmup, clock=setup.clock)
    if macs:
        log("counting MACs (fvcore)...")
        result["macs"] = {label: part_macs(d.cpu(), setup.height, setup.width)
                          for label, d in detectors.items()}
    result["env"]["loadavg_end"] = environment(setup.device).get("loadavg")
    return result


def compile_bottom_ups(detectors: dict, x: torch.Tensor, setup: BenchmarkSetup, log
                       ) -> Dict[str, Dict[str, float]]:
    """Compile each detector's bottom-up in place (:func:`~ssb_det.engine.compile.
    compile_bottom_up`, backend ``setup.compile``) and time its first call in each mode,
    which compiles that mode's graph: ``{mode: {label: seconds}}`` on ``setup.clock``.

    Inductor's caches are off while it compiles, so every time is a cold compile (a graph
    cached by an earlier run would compile in a fraction of the time).
    """
    import torch._inductor.config as inductor_config

    from ..engine.compile import compile_bottom_up

    device = torch.device(setup.device)
    x = x.to(device)
    if setup.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    bottom_ups = {}
    for label, detector in detectors.items():
        prepare_model(detector, device, setup.channels_last)
        bottom_ups[label] = compile_bottom_up(detector, backend=setup.compile)
    now, times = CLOCKS[setup.clock], {}
    for mode in setup.modes:
        times[mode] = {}
        for label, net in bottom_ups.items():
            log(f"compiling the {label} bottom-up ({setup.compile}, {mode})...")
            net.train(mode == "train")
            step = make_step(net, x, mode, device, setup.amp)
            with inductor_config.patch(force_disable_caches=True):
                start = now()
                step()
                times[mode][label] = now() - start
            net.eval()
    return times


def _autocast(setup: BenchmarkSetup):
    from .benchmark import autocast_context

    return autocast_context(torch.device(setup.device), setup.amp)


def _is_sampled(stage) -> bool:
    from ..modeling.blocks import SSBBottleneckBlock

    return any(isinstance(b, SSBBottleneckBlock) for b in stage)


def _ms(s: Samples) -> str:
    return f"{s.median * 1e3:.0f} (IQR {100 * s.spread:.0f}%)"


def format_benchmark_markdown(result: dict) -> str:
    """Markdown tables: headline (MACs, params, latency, throughput, memory, ratios), per
    stage, and per block step, with the setup and environment they were measured in."""
    a, b = result["labels"]
    setup, env = result["setup"], result["env"]
    lines = [f"Input {setup['batch']}x3x{setup['height']}x{setup['width']}, device "
             f"{setup['device']}" + (f" ({env['gpu']})" if "gpu" in env else "")
             + f", AMP {setup['amp'] or 'off'}, channels_last {setup['channels_last']}, "
             f"{env['threads']} threads (OMP_WAIT_POLICY {env.get('omp_wait_policy')}), "
             f"{setup['clock']} clock, {setup['iters']} timed runs "
             f"after {setup['warmup']} warm-up, models interleaved. CPU: {env['cpu']} ({env['cpu_count']} cores); "
             f"torch {env['torch']}; load average {env.get('loadavg')} -> "
             f"{env.get('loadavg_end')}."
             + (f" Bottom-ups compiled ({setup['compile']}, fullgraph, dynamic shapes); "
                "per-stage and per-step timings run eager." if setup.get("compile") else ""),
             "",
             f"| metric | {a} | {b} | ratio |", "|---|---|---|---|"]

    def row(name, va, vb, fmt, ratio=True):
        r = f"{va / vb:.3f}" if ratio and vb else "-"
        lines.append(f"| {name} | {fmt(va)} | {fmt(vb)} | {r} |")

    macs = result.get("macs")
    if macs:
        for part in ("bottom-up", "backbone"):
            row(f"{part} GMACs", macs[a][part], macs[b][part], lambda v: f"{v / 1e9:.2f}")
    for mode, by_label in result.get("compile_s", {}).items():
        row(f"bottom-up compile ({mode}, first call), s", by_label[a], by_label[b],
            lambda v: f"{v:.1f}")
    for part, p in result["params"].items():
        row(f"{part} params (M)", p[a], p[b], lambda v: f"{v / 1e6:.2f}")
    for part, modes in result["latency"].items():
        for mode, lat in modes.items():
            lines.append(f"| {part} {mode} latency, ms median | {_ms(lat[a])} | {_ms(lat[b])} "
                         f"| {lat[a].median / lat[b].median:.3f} |")
            n = setup["batch"]
            row(f"{part} {mode} throughput, img/s", n / lat[a].median, n / lat[b].median,
                lambda v: f"{v:.2f}")
    for part, modes in result.get("memory", {}).items():
        for mode, mem in modes.items():
            row(f"{part} {mode} peak memory, MB", mem[a] / 1e6, mem[b] / 1e6,
                lambda v: f"{v:.0f}")
    if result.get("stages"):
        lines += ["", f"Per stage (inference, each stage on its own input; ms median"
                  + (", GMACs" if macs else "") + "):", "",
                  "| stage | " + f"{a} ms | {b} ms | ratio |"
                  + (f" {a} GMACs | {b} GMACs | ratio |" if macs else ""),
                  "|---|---|---|---|" + ("---|---|---|" if macs else "")]
        for stage, sa in result["stages"][a].items():
            sb = result["stages"][b][stage]
            cells = [stage, f"{sa.median * 1e3:.0f}", f"{sb.median * 1e3:.0f}",
                     f"{sa.median / sb.median:.3f}"]
            if macs:
                ma, mb = macs[a][stage], macs[b][stage]
                cells += [f"{ma / 1e9:.2f}", f"{mb / 1e9:.2f}", f"{ma / mb:.3f}"]
            lines.append("| " + " | ".join(cells) + " |")
    for stage, by_label in result.get("blocks", {}).items():
        steps = []
        for v in by_label.values():
            steps += [s for s in v if s not in steps]
        lines += ["", f"Block {stage}.1, per step (inference, ms median; steps timed "
                  "separately, so they need not add up to the block):", "",
                  "| step | " + " | ".join(by_label) + " |", "|---|" + "---|" * len(by_label)]
        for step in steps:
            cells = [step] + [f"{v[step].median * 1e3:.1f}" if step in v else "-"
                              for v in by_label.values()]
            lines.append("| " + " | ".join(cells) + " |")
        share = sampler_share(by_label[a])
        if share is not None:
            ratio = by_label[a]["block"].median / by_label[b]["block"].median
            lines.append(f"\nSampling (saliency + grid + sample + restore beyond a plain "
                         f"add+ReLU) = {100 * share:.0f}% of the {a} block; block ratio "
                         f"{ratio:.3f}.")
    return "\n".join(lines) + "\n"


def format_benchmark_csv(result: dict) -> str:
    """One row per measured quantity: ``kind,part,mode,label,median,q25,q75,n``."""
    rows = ["kind,part,mode,label,median,q25,q75,n"]
    for part, modes in result["latency"].items():
        for mode, lat in modes.items():
            for label, s in lat.items():
                rows.append(f"latency_s,{part},{mode},{label},{s.median},{s.q25},{s.q75},"
                            f"{len(s.values)}")
    for mode, by_label in result.get("compile_s", {}).items():
        for label, v in by_label.items():
            rows.append(f"compile_s,bottom-up,{mode},{label},{v},,,1")
    for part, modes in result.get("memory", {}).items():
        for mode, mem in modes.items():
            for label, v in mem.items():
                rows.append(f"peak_memory_bytes,{part},{mode},{label},{v},,,1")
    for label, stages in result.get("stages", {}).items():
        for stage, s in stages.items():
            rows.append(f"stage_latency_s,{stage},inference,{label},{s.median},{s.q25},"
                        f"{s.q75},{len(s.values)}")
    for label, parts in result.get("macs", {}).items():
        for part, v in parts.items():
            rows.append(f"macs,{part},,{label},{v},,,1")
    for stage, by_label in result.get("blocks", {}).items():
        for label, steps in by_label.items():
            for step, s in steps.items():
                rows.append(f"block_step_s,{stage}.1:{step},inference,{label},{s.median},"
                            f"{s.q25},{s.q75},{len(s.values)}")
    return "\n".join(rows) + "\n"


def benchmark_json(result: dict) -> str:
    """Everything, with every timing sample, as JSON."""

    def conv(v):
        if isinstance(v, Samples):
            return {"values": v.values, "median": v.median}
        if isinstance(v, dict):
            return {str(k): conv(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [conv(x) for x in v]
        return v

    return json.dumps(conv(result), indent=1) + "\n"


def write_benchmark_chart(result: dict, path: str, stage: Optional[str] = None) -> str:
    """The PNG chart of a benchmark result (needs ``stages``; MACs and the block breakdown
    of ``stage`` - default the first sampled one - when present)."""
    if not result.get("stages"):
        raise ValueError("the chart needs per-stage latencies: run the benchmark with stages")
    a, b = result["labels"]
    stage_ms = {label: {s: v.median * 1e3 for s, v in st.items()}
                for label, st in result["stages"].items()}
    gmacs = None
    if result.get("macs"):
        keys = list(stage_ms[a]) + (["fpn"] if "fpn" in result["macs"][a] else [])
        gmacs = {label: {k: result["macs"][label][k] / 1e9 for k in keys} for label in (a, b)}
    blocks = result.get("blocks") or {}
    block_ms = None
    if blocks:
        stage = stage or next(iter(blocks))
        block_ms = {label: {k: v.median * 1e3 for k, v in executed_steps(steps).items()}
                    for label, steps in blocks[stage].items()}
    s, env = result["setup"], result["env"]
    title = (f"{a} vs {b}: {s['batch']}x{s['height']}x{s['width']}, {s['device']}, "
             f"{env['threads']} threads, {s['clock']} clock, AMP {s['amp'] or 'off'}")
    return benchmark_chart(path, stage_ms=stage_ms, stage_gmacs=gmacs, block_ms=block_ms,
                           block_title=f"{stage}.1" if block_ms else "", title=title)
