"""Count what a forward asks of a device, on any machine: kernel-level ops, device-to-host
syncs and the devices, dtypes and layouts of what it makes.

On a GPU every op is a kernel launch, so the op count of a forward is its host-side cost
(and a floor on its latency) whatever the compute. :class:`OpCounter` counts the aten ops
that do work (not views, nor metadata such as ``prim.device``); :func:`fake_device_call`
runs a model on a device this machine may not have (``"cuda"``) under
``torch._subclasses.fake_tensor.FakeTensorMode``: shapes, dtypes, layouts and devices are
computed, no data, so the CUDA path is counted and checked on a CPU-only machine.
"""
import collections
import contextlib
from typing import Optional

import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ["OpCounter", "fake_device_call"]

# Views in all but name (matmul's reshapes, autograd's detach): no kernel.
_METADATA = {"_unsafe_view", "detach", "lift_fresh", "alias", "_reshape_alias"}


class OpCounter(TorchDispatchMode):
    """Counts the aten ops that launch a kernel, the syncs (``_local_scalar_dense``: a value
    read by the host) and the devices of the tensors the ops make.

    Attributes:
        ops (Counter): op name -> count.
        syncs (int): device-to-host reads.
        devices (Counter): device type -> tensors made there.
    """

    def __init__(self):
        super().__init__()
        self.ops = collections.Counter()
        self.syncs = 0
        self.devices = collections.Counter()

    @property
    def total(self) -> int:
        return sum(self.ops.values())

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = func.overloadpacket.__name__
        if func is torch.ops.aten._local_scalar_dense.default:
            self.syncs += 1
        if func.namespace == "aten" and not func.is_view and name not in _METADATA:
            self.ops[name] += 1
            for t in out if isinstance(out, (tuple, list)) else (out,):
                if isinstance(t, torch.Tensor):
                    self.devices[t.device.type] += 1
        return out


def fake_device_call(model: torch.nn.Module, *inputs: torch.Tensor, device: str = "cuda",
                     memory_format=torch.contiguous_format, autocast: Optional[torch.dtype] = None,
                     counter: Optional[OpCounter] = None):
    """``model(*inputs)`` as it would run on ``device``, without one.

    The model is built normally (on the CPU); under a fresh ``FakeTensorMode`` its parameters
    and buffers and the inputs are moved to ``device`` (fake tensors: no memory, no data) and
    the forward runs with ``torch.func.functional_call``, so the model itself is untouched.

    Args:
        model: any module.
        inputs: its inputs (CPU tensors).
        device (str): the device to pretend.
        memory_format: of the 4-D inputs and parameters (``torch.channels_last`` as users
            set it with ``model.to(memory_format=...)``).
        autocast (torch.dtype or None): run under ``torch.autocast(device, dtype)``.
        counter (OpCounter or None): counts the forward's ops if given.

    Returns:
        The outputs: fake tensors (shape, dtype, device and strides only).
    """
    mode = FakeTensorMode()

    def move(t):
        fmt = memory_format if t.dim() == 4 else torch.preserve_format
        return mode.from_tensor(t).to(device, memory_format=fmt)

    with mode:
        state = {name: move(t) for name, t in
                 [*model.named_parameters(), *model.named_buffers()]}
        fake_inputs = [move(x) for x in inputs]
        amp = (_autocast(torch.device(device).type, autocast)
               if autocast is not None else contextlib.nullcontext())
        with amp, (counter if counter is not None else contextlib.nullcontext()):
            return torch.func.functional_call(model, state, tuple(fake_inputs))


@contextlib.contextmanager
def _autocast(device_type: str, dtype: torch.dtype):
    """``torch.autocast(device_type, dtype)``, also where that device is absent (the context
    manager turns itself off there; the dispatch keys of fake tensors still route to it)."""
    enabled, old_dtype = torch.is_autocast_enabled(device_type), torch.get_autocast_dtype(device_type)
    torch.set_autocast_enabled(device_type, True)
    torch.set_autocast_dtype(device_type, dtype)
    torch.autocast_increment_nesting()
    try:
        yield
    finally:
        if torch.autocast_decrement_nesting() == 0:
            torch.clear_autocast_cache()
        torch.set_autocast_enabled(device_type, enabled)
        torch.set_autocast_dtype(device_type, old_dtype)
