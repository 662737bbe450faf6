"""Latency, throughput and peak memory of a model and its baseline, measured in one run.

Every measurement interleaves the models (SSB, baseline, SSB, baseline, ...) after a
warm-up, so both see the same machine state; on a CPU shared with other processes that is
the only way a ratio means something. Results keep every sample: medians, spreads and
ratios are computed from them.
"""
import contextlib
import os
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

import torch
from torch import nn

__all__ = [
    "Samples",
    "CLOCKS",
    "time_interleaved",
    "peak_memory",
    "autocast_context",
    "prepare_model",
    "make_step",
    "BenchmarkSetup",
    "benchmark_parts",
]


@dataclass
class Samples:
    """Timings of one thing, in seconds.

    Attributes:
        values (list[float]): one per measured run, in run order.
    """

    values: List[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    @property
    def q25(self) -> float:
        return _quantile(self.values, 0.25)

    @property
    def q75(self) -> float:
        return _quantile(self.values, 0.75)

    @property
    def spread(self) -> float:
        """Interquartile range relative to the median (0.1 = +-5 % around it)."""
        return (self.q75 - self.q25) / self.median if self.median > 0 else 0.0


def _quantile(values: Sequence[float], q: float) -> float:
    v = sorted(values)
    if len(v) == 1:
        return v[0]
    pos = q * (len(v) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (pos - lo)


def _synchronize(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# Clocks a benchmark can use. "wall": elapsed time. "cpu": CPU time of this process (user +
# system, all threads) - on a CPU shared with other processes, time spent descheduled is not
# counted, which makes single-thread comparisons reproducible; with several threads it also
# counts threads spinning while they wait for each other.
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def time_interleaved(fns: Dict[str, Callable[[], object]], *, iters: int, warmup: int = 1,
                     device: Optional[torch.device] = None,
                     clock: str = "wall") -> Dict[str, Samples]:
    """Time each callable ``iters`` times, interleaved, after ``warmup`` untimed rounds.

    Args:
        fns (dict[str, callable]): name -> zero-argument function running one step.
        iters (int): timed rounds (each runs every function once, in dict order).
        warmup (int): untimed rounds first.
        device (torch.device): synchronised around each timing when it is a GPU.
        clock (str): "wall" or "cpu" (see :data:`CLOCKS`).

    Returns:
        dict[str, Samples]: seconds per run.
    """
    if iters < 1:
        raise ValueError(f"iters must be >= 1, got {iters}")
    if clock not in CLOCKS:
        raise ValueError(f"clock must be one of {sorted(CLOCKS)}, got {clock!r}")
    now = CLOCKS[clock]
    device = device or torch.device("cpu")
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    out = {name: Samples() for name in fns}
    for _ in range(iters):
        for name, fn in fns.items():
            _synchronize(device)
            start = now()
            fn()
            _synchronize(device)
            out[name].values.append(now() - start)
    return out


def peak_memory(fn: Callable[[], object], device: torch.device) -> int:
    """Peak bytes allocated by tensors while ``fn()`` runs, above what was allocated before.

    On CUDA: ``torch.cuda.max_memory_allocated``. On CPU, where PyTorch keeps no allocator
    statistics, the profiler's allocation events are replayed in time order (profiler
    overhead does not matter here; only sizes are used).
    """
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return int(torch.cuda.max_memory_allocated(device) - base)
    from torch.profiler import ProfilerActivity, profile

    with _quiet_native_stderr(), profile(activities=[ProfilerActivity.CPU],
                                         profile_memory=True) as prof:
        fn()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"
              and e.device_type() == torch.autograd.DeviceType.CPU]
    events.sort(key=lambda e: e.start_ns())
    current = peak = 0
    for e in events:
        current += e.nbytes()
        peak = max(peak, current)
    return int(peak)


@contextlib.contextmanager
def _quiet_native_stderr():
    """Silence the profiler's native start/stop chatter (printed by C++ to fd 2)."""
    try:
        saved = os.dup(2)
    except OSError:  # no usable fd 2 (e.g. some embedded interpreters)
        yield
        return
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            try:
                yield
            finally:
                os.dup2(saved, 2)
    finally:
        os.close(saved)


def autocast_context(device: torch.device, amp: Optional[str]):
    """``torch.autocast`` for ``amp`` in (None, "fp16", "bf16")."""
    if amp is None:
        return contextlib.nullcontext()
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(amp)
    if dtype is None:
        raise ValueError(f"amp must be None, 'fp16' or 'bf16', got {amp!r}")
    return torch.autocast(device_type=device.type, dtype=dtype)


def prepare_model(model: nn.Module, device: torch.device, channels_last: bool) -> nn.Module:
    model = model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


@dataclass
class BenchmarkSetup:
    """How to run a benchmark.

    Attributes:
        height, width (int): input size.
        batch (int): images per step.
        iters (int): timed runs per model and mode.
        warmup (int): untimed runs first.
        device (str): "cpu" or "cuda".
        amp (str or None): autocast dtype ("fp16", "bf16") or None for float32.
        channels_last (bool): NHWC memory format for model and input.
        modes (tuple[str]): "inference" (forward, no grad, eval) and/or "train" (forward +
            backward of a synthetic loss, train mode).
        memory (bool): also measure the peak memory of each mode.
        clock (str): "wall" or "cpu" (see :data:`CLOCKS`).
        compile (str or None): ``torch.compile`` backend of both bottom-ups (e.g.
            "inductor"), compiled as ``tools/train_net.py --compile`` does; None: eager.
    """

    height: int = 800
    width: int = 1216
    batch: int = 1
    iters: int = 5
    warmup: int = 1
    device: str = "cpu"
    amp: Optional[str] = None
    channels_last: bool = False
    modes: Sequence[str] = ("inference", "train")
    memory: bool = True
    clock: str = "wall"
    compile: Optional[str] = None

    def validate(self):
        errors = []
        if self.height < 1 or self.width < 1:
            errors.append(f"input size must be positive, got {self.height}x{self.width}")
        if self.batch < 1:
            errors.append(f"batch must be >= 1, got {self.batch}")
        if self.iters < 1 or self.warmup < 0:
            errors.append(f"iters must be >= 1 and warmup >= 0, got {self.iters}, {self.warmup}")
        bad = [m for m in self.modes if m not in ("inference", "train")]
        if bad:
            errors.append(f"unknown modes {bad}: use 'inference' and/or 'train'")
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            errors.append("device cuda requested but torch.cuda.is_available() is False")
        if self.clock not in CLOCKS:
            errors.append(f"clock must be one of {sorted(CLOCKS)}, got {self.clock!r}")
        if self.amp not in (None, "fp16", "bf16"):
            errors.append(f"amp must be fp16, bf16 or None, got {self.amp!r}")
        if self.compile is not None:
            backends = torch._dynamo.list_backends(exclude_tags=())
            if self.compile not in backends:
                errors.append(f"unknown torch.compile backend {self.compile!r}: use one of "
                              f"{', '.join(backends)}")
        if errors:
            raise ValueError("invalid benchmark setup: " + "; ".join(errors))


def _synthetic_loss(output) -> torch.Tensor:
    values = output.values() if isinstance(output, dict) else [output]
    return sum(v.float().mean() for v in values)


def make_step(model: nn.Module, x: torch.Tensor, mode: str, device, amp) -> Callable[[], None]:
    """A zero-argument function running one step of ``mode`` on ``model``."""
    if mode == "inference":
        def run():
            with torch.no_grad(), autocast_context(device, amp):
                model(x)
        return run

    def run():
        model.zero_grad(set_to_none=True)
        with autocast_context(device, amp):
            loss = _synthetic_loss(model(x))
        if loss.requires_grad:
            loss.backward()
    return run


def benchmark_parts(models: Dict[str, Dict[str, nn.Module]], setup: BenchmarkSetup,
                    x: Optional[torch.Tensor] = None) -> Dict[str, dict]:
    """Latency (and peak memory) of named model parts, models interleaved per part and mode.

    Args:
        models (dict): part name (e.g. "bottom-up") -> {model label -> module}. The first
            label of each part is the one ratios are taken of (the SSB model), the second
            the baseline.
        setup (BenchmarkSetup): sizes, iterations, device, precision, modes.
        x (Tensor or None): input batch; default a fixed-seed random normalised batch.

    Returns:
        dict: ``results[part][mode] = {"latency": {label: Samples}, "memory": {label: int}}``.
    """
    setup.validate()
    device = torch.device(setup.device)
    if x is None:
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(setup.batch, 3, setup.height, setup.width, generator=gen)
    x = x.to(device)
    if setup.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    results = {}
    for part, by_label in models.items():
        results[part] = {}
        for mode in setup.modes:
            steps = {}
            for label, module in by_label.items():
                module = prepare_model(module, device, setup.channels_last)
                module.train(mode == "train")
                steps[label] = make_step(module, x, mode, device, setup.amp)
            entry = {"latency": time_interleaved(steps, iters=setup.iters, warmup=setup.warmup,
                                                 device=device, clock=setup.clock)}
            if setup.memory:
                entry["memory"] = {label: peak_memory(step, device)
                                   for label, step in steps.items()}
            results[part][mode] = entry
            for module in by_label.values():
                module.eval()
    return results
