"""Where the time goes: per-stage latency of a bottom-up network and per-op latency of a
block (conv1, saliency, grid, sample, 3x3, 1x1, inverse, add), SSB next to plain.
"""
from typing import Callable, Dict, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..layers import SaliencySampler
from ..modeling.blocks import SSBBottleneckBlock
from .benchmark import Samples, time_interleaved
from .models import capture_inputs, stage_names

__all__ = [
    "block_steps",
    "block_breakdown",
    "stage_latency",
    "sampler_share",
    "executed_steps",
    "block_input",
]


def block_steps(block: nn.Module, x: torch.Tensor) -> Dict[str, Callable[[], object]]:
    """Zero-argument functions running each step of ``block`` on ``x`` (no grad, as in
    inference), on inputs computed once beforehand. ``"block"`` is the whole forward, as
    the model runs it.

    For an :class:`SSBBottleneckBlock` the steps are the block's own named steps:
    ``conv1`` (``reduce``), ``saliency``, ``grid``, ``sample``, ``conv3x3``, ``conv1x1``
    (``expand_sampled`` or ``expand``), ``inverse``, ``add+relu`` (unfused, into a fresh
    map), the fused ``inverse+add+relu`` the block runs with
    ``inverse_position="after_conv3"``, and ``shortcut`` (``project``) when it is a
    projection. For a plain bottleneck (Detectron2's ``BottleneckBlock`` or
    ``RSBottleneckBlock``): ``conv1``, ``conv3x3``, ``conv1x1``, ``add+relu`` (in place into
    a private copy of the conv1x1 output, as Detectron2's block adds) and ``shortcut``.

    Args:
        block (nn.Module): an SSB or plain bottleneck block.
        x (Tensor): its input.
    """
    steps = {"block": lambda: block(x)}
    with torch.no_grad():
        if isinstance(block, SSBBottleneckBlock):
            _ssb_steps(block, x, steps)
        else:
            _plain_steps(block, x, steps)
    return steps


def _ssb_steps(block: SSBBottleneckBlock, x: torch.Tensor, steps: dict) -> None:
    a = block.reduce(x)
    shortcut = block.project(x)
    steps["conv1"] = lambda: block.reduce(x)
    sampler: SaliencySampler = block.sampler
    in_size = tuple(a.shape[-2:])
    grid = sampler(a)
    if sampler.uniform:
        steps["grid"] = lambda: sampler(a)
    else:
        saliency = sampler.saliency(a)
        steps["saliency"] = lambda: sampler.saliency(a)
        steps["grid"] = lambda: sampler.grid_from_saliency(saliency, in_size)
    s = grid.sample(a)
    b = block.conv3x3(s)
    steps["sample"] = lambda: grid.sample(a)
    steps["conv3x3"] = lambda: block.conv3x3(s)
    if block.inverse_position == "after_conv3":
        c = block.expand_sampled(b)
        full = grid.inverse(c)
        steps["conv1x1"] = lambda: block.expand_sampled(b)
        steps["inverse"] = lambda: grid.inverse(c)
        steps["inverse+add+relu"] = lambda: grid.inverse_add_relu(c, shortcut)
    else:
        restored = grid.inverse(b)
        full = block.expand(restored)
        steps["inverse"] = lambda: grid.inverse(b)
        steps["conv1x1"] = lambda: block.expand(restored)
    steps["add+relu"] = lambda: torch.relu_(full + shortcut)
    if block.shortcut is not None:
        steps["shortcut"] = lambda: block.project(x)


def _plain_steps(block: nn.Module, x: torch.Tensor, steps: dict) -> None:
    # Detectron2's BottleneckBlock has no named steps; RSBottleneckBlock has them.
    expand = getattr(block, "expand", block.conv3)
    project = getattr(block, "project", None)
    if project is None:
        def project(t):
            return t if block.shortcut is None else block.shortcut(t)
    a = F.relu(block.conv1(x))
    b = F.relu(block.conv2(a))
    full = expand(b)
    shortcut = project(x)
    steps["conv1"] = lambda: F.relu_(block.conv1(x))
    steps["conv3x3"] = lambda: F.relu_(block.conv2(a))
    steps["conv1x1"] = lambda: expand(b)
    summed = full.clone()
    steps["add+relu"] = lambda: summed.add_(shortcut).relu_()
    if block.shortcut is not None:
        steps["shortcut"] = lambda: project(x)


def block_breakdown(blocks: Dict[str, nn.Module], x: torch.Tensor, *, iters: int,
                    warmup: int = 1, clock: str = "wall") -> Dict[str, Dict[str, Samples]]:
    """Per-step latency of several blocks on the same input, every step of every block
    interleaved (see :func:`block_steps`). Returns ``{label: {step: Samples}}``."""
    fns = {}
    for label, block in blocks.items():
        block.eval()
        for step, fn in block_steps(block, x).items():
            fns[(label, step)] = _no_grad(fn)
    timed = time_interleaved(fns, iters=iters, warmup=warmup, device=x.device, clock=clock)
    out: Dict[str, Dict[str, Samples]] = {label: {} for label in blocks}
    for (label, step), samples in timed.items():
        out[label][step] = samples
    return out


def _no_grad(fn):
    def run():
        with torch.no_grad():
            return fn()
    return run


def executed_steps(steps: Dict[str, Samples]) -> Dict[str, Samples]:
    """The steps that make up the block as it runs: with the fused ``inverse+add+relu``,
    the separately timed ``inverse`` and ``add+relu`` are left out."""
    skip = {"block"}
    if "inverse+add+relu" in steps:
        skip |= {"inverse", "add+relu"}
    return {k: v for k, v in steps.items() if k not in skip}


def sampler_share(steps: Dict[str, Samples]) -> Optional[float]:
    """Share of an SSB block's median time spent on sampling; None for a plain block.

    Sampling = saliency + grid + sample + the restore. Where the block restores with the
    fused ``inverse+add+relu``, the restore is that step minus ``add+relu`` timed alone
    (the add and ReLU writing a fresh full-size map: what any block does to produce its
    output); otherwise it is ``inverse``.
    """
    if "sample" not in steps:
        return None
    extra = sum(steps[s].median for s in ("saliency", "grid", "sample") if s in steps)
    if "inverse+add+relu" in steps:
        extra += max(0.0, steps["inverse+add+relu"].median - steps["add+relu"].median)
    else:
        extra += steps["inverse"].median
    return extra / steps["block"].median


def stage_latency(bottom_ups: Dict[str, nn.Module], x: torch.Tensor, *, iters: int,
                  warmup: int = 1, clock: str = "wall") -> Dict[str, Dict[str, Samples]]:
    """Inference latency of each stage (``stem``, ``res2``..) of Detectron2 ResNets, each
    stage run on the inputs it gets in the full network (for an :class:`SSBResNet`'s
    stages, the image sizes too); all stages of all models interleaved. Returns
    ``{label: {stage: Samples}}``."""
    fns = {}
    for label, net in bottom_ups.items():
        net.eval()
        names = stage_names(net)
        inputs = capture_inputs(net, names, x)
        for name in names:
            module = getattr(net, name)
            fns[(label, name)] = _no_grad(lambda m=module, i=inputs[name]: m(*i))
    timed = time_interleaved(fns, iters=iters, warmup=warmup, device=x.device, clock=clock)
    out: Dict[str, Dict[str, Samples]] = {label: {} for label in bottom_ups}
    for (label, name), samples in timed.items():
        out[label][name] = samples
    return out


def block_input(bottom_up: nn.Module, x: torch.Tensor, stage: str, index: int = 1):
    """Block ``index`` of ``stage`` of a Detectron2 ResNet and the input it receives."""
    name = f"{stage}.{index}"
    inputs = capture_inputs(bottom_up, [name], x)
    return dict(bottom_up.named_modules())[name], inputs[name][0]
