"""Clear failures for the export routes an SSB sampler cannot take (issue 13).

The sampler computes its sampled size ``round(r * H)`` and its pixel lattices from the
feature map's size in Python, and returns grid objects. ``torch.export`` records that size
arithmetic symbolically (one program for every size, see ``ssb_det.export.export_program``);
the older routes cannot, so

- ``torch.jit.script`` cannot compile it: :func:`refuse_scripting` fails at once with the
  supported routes, instead of a type error deep in the sampler;
- ``torch.jit.trace`` (and the TorchScript-based ONNX export, which traces) records one
  size: :func:`guard_traced_size` records in the trace a check of the feature map's size,
  so the traced model raises a clear error at another size instead of silently returning
  wrong features.
"""
import functools
import warnings
from typing import List

import torch

__all__ = ["SUPPORTED_EXPORT_ROUTES", "refuse_scripting", "guard_traced_size"]

SUPPORTED_EXPORT_ROUTES = (
    "torch.export.export with dynamic height/width (ssb_det.export.export_program, any size "
    "in its range); ONNX with dynamic height/width (ssb_det.export.export_onnx_dynamic); "
    "torch.jit.trace or ONNX at a fixed input size; all through "
    "python tools/export_model.py (see docs/reliability.md, 'Export')"
)


def refuse_scripting(module) -> None:
    """Raise the error ``torch.jit.script`` gives for a module holding an SSB sampler."""
    raise RuntimeError(
        f"ssb_det: {type(module).__name__} (the SSB saliency sampler) cannot be compiled with "
        "torch.jit.script, which PyTorch deprecates: its sampled sizes and grids are computed "
        f"in Python. Supported routes: {SUPPORTED_EXPORT_ROUTES}."
    )


def ssb_check_traced_size(x: torch.Tensor, size: List[int]) -> torch.Tensor:
    if x.shape[-2] != size[0] or x.shape[-1] != size[1]:
        raise RuntimeError(
            "ssb_det: an SSB sampler of this traced/exported model got a feature map of "
            + str(x.shape[-2]) + "x" + str(x.shape[-1]) + ", but was traced at "
            + str(size[0]) + "x" + str(size[1]) + " (the sampled size and lattices are fixed "
            "when tracing). Feed inputs of the traced size, or trace/export again at this "
            "size (tools/export_model.py --input-size)."
        )
    return x


@functools.lru_cache(maxsize=1)
def _scripted_check():
    # Scripted (so its control flow survives in a trace) on first use, not at import.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.script's deprecation
        return torch.jit.script(ssb_check_traced_size)


def guard_traced_size(x: torch.Tensor) -> torch.Tensor:
    """``x``; under ``torch.jit.trace``, through a recorded check of its spatial size.

    Use the returned tensor, so that what depends on the traced size depends on the check.
    """
    if not torch.jit.is_tracing():
        return x
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # the size is meant constant
        size = [int(x.shape[-2]), int(x.shape[-1])]
    return _scripted_check()(x, size)
