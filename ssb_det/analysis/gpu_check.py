"""One-shot check of SSB-R50 against R50 on a GPU (``benchmarks/gpu_check.py``).

For each model (the SSB-R50 bottom-up and its plain twin, ``MODEL.SSB.ENABLED False``),
eager (fp32 and AMP fp16/bf16, NCHW and channels-last) and compiled (inductor: fp32 NCHW and
fp16 channels-last, two compilations per model), and each batch at 800x1216: inference latency, throughput, peak memory and kernel launches (profiler); then
one 224-px training step (forward, backward, SGD) per model with
``torch.cuda.set_sync_debug_mode("error")`` (a host sync inside it is reported), and the
eager fp32 outputs compared with the same model on the CPU. ``small=True`` shrinks it all
(narrow host, small maps, one batch) so that CI runs it on the CPU for correctness.
"""
import copy
import statistics
import time
from typing import Dict, List

import torch

from ..modeling.backbone import ssb_resnet
from .op_count import OpCounter

__all__ = ["gpu_check", "format_rows"]

NARROW = dict(stem_out_channels=8, res2_out_channels=16, width_per_group=4)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _autocast(device, dtype):
    return torch.autocast(device_type=device.type, dtype=dtype, enabled=dtype != torch.float32)


def _launches(model, x, device, dtype) -> int:
    """Kernels one forward launches: CUDA kernels from the profiler, on the CPU the aten ops
    (:class:`~ssb_det.analysis.op_count.OpCounter`)."""
    with torch.no_grad(), _autocast(device, dtype):
        if device.type != "cuda":
            counter = OpCounter()
            with counter:
                model(x)
            return counter.total
        from torch.profiler import ProfilerActivity, profile
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            model(x)
            _sync(device)
    return sum(1 for e in prof.events() if e.device_type.name == "CUDA")


def _latency(model, x, device, dtype, iters: int) -> List[float]:
    times = []
    with torch.no_grad(), _autocast(device, dtype):
        for i in range(iters + 2):  # two warm-up runs (and compilation)
            _sync(device)
            start = time.perf_counter()
            model(x)
            _sync(device)
            if i >= 2:
                times.append(time.perf_counter() - start)
    return times


def _train_step(model, x, device, dtype) -> str:
    """One SGD step; on CUDA inside ``set_sync_debug_mode("error")``: "none" or the error."""
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    model.train()
    if device.type == "cuda":
        torch.cuda.set_sync_debug_mode("error")
    try:
        with _autocast(device, dtype):
            loss = sum(o.float().mean() for o in model(x).values())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        result = "none" if device.type == "cuda" else "n/a (cpu)"
    except RuntimeError as e:  # a sync in the step
        result = f"sync: {str(e).splitlines()[0][:80]}"
    finally:
        if device.type == "cuda":
            torch.cuda.set_sync_debug_mode(0)
    model.eval()
    return result


def gpu_check(device: str = "cuda", small: bool = False, iters: int = 10,
              compile_backend: str = "inductor") -> Dict[str, list]:
    """Run the checks; returns ``{"inference": rows, "train": rows, "correctness": rows}``.

    Args:
        device (str): ``"cuda"`` (the point) or ``"cpu"`` (with ``small``, for CI).
        small (bool): narrow host, 64x96 maps, batch 1, fp32/bf16, the 224-px step at 64 px.
        iters (int): timed forwards per configuration.
        compile_backend (str): ``torch.compile`` backend of the compiled rows.
    """
    dev = torch.device(device)
    host = NARROW if small else {}
    size, batches = ((64, 96), (1,)) if small else ((800, 1216), (1, 2, 8))
    train_size, train_batch = (64, 2) if small else (224, 64)
    dtypes = [torch.float32, torch.bfloat16]
    if dev.type == "cuda":
        dtypes.insert(1, torch.float16)
    torch.manual_seed(0)
    cpu_models = {name: ssb_resnet(enabled=name == "SSB-R50", norm="FrozenBN", **host).eval()
                  for name in ("SSB-R50", "R50")}
    gen = torch.Generator().manual_seed(0)
    rows = {"inference": [], "train": [], "correctness": []}
    for name, cpu_model in cpu_models.items():
        base = copy.deepcopy(cpu_model).to(dev)
        for layout in (torch.contiguous_format, torch.channels_last):
            model = base.to(memory_format=layout)
            variants = {"eager": model}
            variants["compiled"] = torch.compile(model, dynamic=True, backend=compile_backend)
            for mode, m in variants.items():
                for dtype in dtypes:
                    if mode == "compiled" and not small and (dtype, layout) not in (
                            (torch.float32, torch.contiguous_format),
                            (torch.float16, torch.channels_last)):
                        continue  # two compilations per model: the 5-minute budget
                    for batch in batches:
                        x = torch.randn(batch, 3, *size, generator=gen).to(dev, memory_format=layout)
                        if dev.type == "cuda":
                            torch.cuda.reset_peak_memory_stats(dev)
                        times = _latency(m, x, dev, dtype, iters)
                        peak = (torch.cuda.max_memory_allocated(dev) / 2 ** 20
                                if dev.type == "cuda" else float("nan"))
                        median = statistics.median(times)
                        rows["inference"].append(dict(
                            model=name, mode=mode, dtype=str(dtype).split(".")[-1],
                            layout="NHWC" if layout == torch.channels_last else "NCHW",
                            batch=batch, ms=median * 1e3, img_s=batch / median, peak_mb=peak,
                            launches=_launches(model, x, dev, dtype) if mode == "eager" else None))
        x = torch.randn(train_batch, 3, train_size, train_size, generator=gen).to(dev)
        trainable = ssb_resnet(enabled=name == "SSB-R50", norm="BN", **host).to(dev)
        for dtype in dtypes:
            start = time.perf_counter()
            syncs = _train_step(trainable, x, dev, dtype)
            _sync(dev)
            rows["train"].append(dict(model=name, dtype=str(dtype).split(".")[-1],
                                      batch=train_batch, size=train_size,
                                      ms=(time.perf_counter() - start) * 1e3, syncs=syncs))
        # correctness: the device's eager fp32 outputs against the CPU's
        x = torch.randn(1, 3, *size, generator=gen)
        tf32 = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
        try:  # full fp32 on the device: TF32 would err by ~1e-3 on its own
            with torch.no_grad():
                want = cpu_model(x)
                got = base.to(memory_format=torch.contiguous_format)(x.to(dev))
        finally:
            torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32
        err = max(float((got[k].cpu() - want[k]).abs().max() / want[k].abs().max().clamp(min=1e-12))
                  for k in want)
        rows["correctness"].append(dict(model=name, max_rel_err=err, ok=err < 1e-3))
    return rows


def format_rows(rows: Dict[str, list]) -> str:
    """Markdown tables of :func:`gpu_check`'s rows."""
    out = []
    for title, table in rows.items():
        if not table:
            continue
        keys = list(table[0])
        out += [f"### {title}", "", "| " + " | ".join(keys) + " |",
                "|" + "---|" * len(keys)]
        for row in table:
            cells = [f"{v:.4g}" if isinstance(v, float) else str(v) for v in row.values()]
            out.append("| " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)
