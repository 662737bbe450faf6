"""Kernel launches of a training step on the GPU path: issue 31's bound, counted
deterministically (``ssb_det.analysis.op_count.OpCounter``: aten ops that do work, not views).

Autograd cannot run on fake CUDA tensors, so the step runs on the CPU with the CPU kernels
switched off: the same ops as on a GPU (gather + lerp resampling, the same grid maths)."""
import torch

import ssb_det.layers.grid as grid_module
import ssb_det.modeling.blocks as blocks_module
from ssb_det import ssb_resnet
from ssb_det.analysis.op_count import OpCounter


def _step(enabled: bool, memory_format=torch.contiguous_format, **kw) -> OpCounter:
    torch.manual_seed(0)
    model = ssb_resnet(enabled=enabled, norm="FrozenBN", **kw).train()
    model = model.to(memory_format=memory_format)
    x = torch.randn(1, 3, 256, 320).contiguous(memory_format=memory_format)
    model(x)  # fills the size-only caches, as any step after the first
    counter = OpCounter()
    with counter:
        out = model(x)
        sum(o.sum() for o in out.values()).backward()
    assert all(o.is_contiguous(memory_format=memory_format) for o in out.values())
    return counter


def _step_ops(enabled: bool) -> int:
    return _step(enabled).total


def test_an_ssb_r50_training_step_launches_at_most_4x_the_ops_of_its_plain_twin(monkeypatch):
    for module in (grid_module, blocks_module):
        monkeypatch.setattr(module, "cpu_kernels", lambda *tensors: False)
    ssb, plain = _step_ops(True), _step_ops(False)
    assert ssb <= 4 * plain, (ssb, plain)


def test_a_channels_last_training_step_makes_no_more_ops_than_nchw(monkeypatch):
    # No hidden layout copies, in backward either (an in-place add on a permuted view would
    # cost autograd full-size copies). Channels-last maps take the GPU path on the CPU too.
    narrow = dict(stem_out_channels=8, res2_out_channels=16, width_per_group=4)
    nhwc = _step(True, torch.channels_last, **narrow).ops
    for module in (grid_module, blocks_module):
        monkeypatch.setattr(module, "cpu_kernels", lambda *tensors: False)
    assert nhwc == _step(True, **narrow).ops
