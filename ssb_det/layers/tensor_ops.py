"""Small tensor helpers shared by the sampling files: the grid's dtype, "are gradients
needed", sizes and regions as tensors, autocast off, and the residual add + ReLU into the
caller's own tensor."""
import contextlib

import torch

__all__ = ["grid_dtype", "to_grid_dtype", "as_grid_tensor", "needs_grad",
           "tracing_or_compiling", "may_cache", "size_tensor", "head", "autocast_off",
           "add_relu_"]


def grid_dtype(device) -> torch.dtype:
    """The grid's precision on ``device``: float64 (float32 on MPS, which has no float64).

    The grid tensors are tiny (``N x (G + 1)`` knots, ``N x h`` positions), so float64 costs
    nothing and keeps an identity grid exact to ~1e-7 px even at 4000 px, whatever the
    features' dtype (half and bfloat16 included). Image sizes and regions use it too.
    """
    return torch.float32 if torch.device(device).type == "mps" else torch.float64


def to_grid_dtype(t: torch.Tensor) -> torch.Tensor:
    """``t`` in :func:`grid_dtype` of its device."""
    return t.to(grid_dtype(t.device))


def as_grid_tensor(values, device) -> torch.Tensor:
    """``values`` (a tensor, or numbers such as ``ImageList.image_sizes``) as a tensor in
    :func:`grid_dtype` on ``device``. A tensor is converted with ``.to``, which a trace
    records (``torch.as_tensor`` would fix its traced value as a constant)."""
    if isinstance(values, torch.Tensor):
        return values.to(device=device, dtype=grid_dtype(device))
    return torch.as_tensor(values, device=device, dtype=grid_dtype(device))


def needs_grad(*tensors: torch.Tensor) -> bool:
    """Whether autograd records an op on ``tensors``: grad mode on and one of them requires
    a gradient."""
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def tracing_or_compiling() -> bool:
    """Whether ``torch.jit.trace`` (TorchScript/ONNX export, fvcore) or ``torch.export`` /
    ``torch.compile`` is recording the running code, rather than eager PyTorch running it."""
    return torch.jit.is_tracing() or torch.compiler.is_compiling()


def may_cache() -> bool:
    """Whether a tensor made now may be kept for later calls: eager PyTorch, no fake, proxy
    or functional tensor mode active (FLOP/memory estimators, ``make_fx``: their tensors are
    not real, and a cached one fails or poisons any later call), not tracing or compiling
    (a trace must record the ops, not a constant)."""
    if tracing_or_compiling():
        return False
    keys = torch._C._TorchDispatchModeKey
    return all(torch._C._get_dispatch_mode(k) is None
               for k in (keys.FAKE, keys.PROXY, keys.FUNCTIONAL))


def size_tensor(sizes, like: torch.Tensor) -> torch.Tensor:
    """``(len(sizes),)`` tensor of the sizes, in ``like``'s dtype and device.

    Made with ``new_full`` per entry, not ``new_tensor``: under ``torch.export`` with dynamic
    shapes a size is a ``torch.SymInt``, which ``new_tensor`` fixes to the example's value
    and ``new_full`` records in the graph.
    """
    return torch.stack([like.new_full((), s) for s in sizes])


def head(t: torch.Tensor, dim: int, n) -> torch.Tensor:
    """The first ``n`` entries of ``t`` along ``dim``: a view (``narrow``); under
    ``torch.jit.trace`` with a traced size, an ``index_select`` the trace records (slicing
    would fix ``n`` to the example's value)."""
    if isinstance(n, torch.Tensor):
        return t.index_select(dim, torch.arange(n, device=t.device))
    return t.narrow(dim, 0, n)


def autocast_off(device_type: str):
    """A context that turns autocast off on ``device_type``; nothing when it is already off.

    Entering ``torch.autocast(enabled=False)`` while autocast is off changes nothing in
    eager mode, but ``torch.export`` records it as a ``wrap_with_autocast`` node, which
    ``torch.export.save`` cannot serialize.
    """
    if torch.is_autocast_enabled(device_type):
        return torch.autocast(device_type=device_type, enabled=False)
    return contextlib.nullcontext()


def add_relu_(out: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """``relu(out + other)``, written into ``out`` when the sum keeps its dtype (as
    Detectron2's blocks do: no second full-size map). ``out`` must be the caller's own
    tensor, made in this call and seen by no one else."""
    # promote_types, not result_type: torch.compile cannot trace result_type (a graph break
    # in every block); dimensioned operands promote by dtype alone, like the sum does.
    same = out.dtype == other.dtype or out.dtype == torch.promote_types(out.dtype, other.dtype)
    out = out.add_(other) if same else out + other
    return out.relu_()
