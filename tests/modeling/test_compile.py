"""torch.compile(backbone, fullgraph=True, dynamic=True): one graph, in eval and in training
(with the memory-efficient recomputation), equal to eager. Cheap backends: "eager" runs the
captured graph as is, "aot_eager" also traces the backward."""
import copy

import pytest
import torch

from ssb_det import ssb_resnet
from ssb_det.modeling.blocks import learned_ssb_blocks

NARROW = dict(depth=50, stem_out_channels=8, res2_out_channels=16, width_per_group=4)


def _model(**kw):
    torch.manual_seed(0)
    model = ssb_resnet(**NARROW, **kw).double()
    with torch.no_grad():  # a learned (non-uniform) sampling
        for block in learned_ssb_blocks(model).values():
            block.sampler.saliency_conv.weight.normal_(0, 1.0)
    return model


def _close(got, want, rtol=1e-9):
    """Equal within float64 rounding, relative to the map's scale (the compiled graph
    interpolates with gather + lerp, eager on the CPU with embedding_bag: other roundings,
    which a strongly peaked saliency amplifies; float64 keeps them far below any tolerance
    that would hide a real difference)."""
    assert (got - want).abs().max() <= rtol * want.abs().max(), (got - want).abs().max()


def _padded_batch():
    x = torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(1),
                    dtype=torch.float64)
    x[1, :, 50:] = 0  # the second image is smaller: padding-aware regions
    return x


def test_eval_compiles_to_one_graph_equal_to_eager():
    torch._dynamo.reset()
    model = _model(norm="FrozenBN").eval()
    compiled = torch.compile(model, fullgraph=True, dynamic=True, backend="eager")
    x = _padded_batch()
    with torch.no_grad():
        got, want = compiled(x), model(x)
    for k in want:
        _close(got[k], want[k])


@pytest.mark.slow
def test_training_compiles_to_one_graph_equal_to_eager_in_outputs_and_gradients():
    torch._dynamo.reset()
    model = _model(norm="BN").train()
    assert all(b.memory_efficient for b in learned_ssb_blocks(model).values())
    twin = copy.deepcopy(model)
    compiled = torch.compile(twin, fullgraph=True, dynamic=True, backend="aot_eager")
    x = _padded_batch()
    results = []
    for m in (compiled, model):
        out = m(x)
        sum((o * o).mean() for o in out.values()).backward()
        results.append(out)
    for k in results[1]:
        _close(results[0][k].detach(), results[1][k].detach())
    grads = {n: p.grad for n, p in model.named_parameters()}
    for n, p in twin.named_parameters():
        _close(p.grad, grads[n], rtol=1e-7)
    saliency = [b.sampler.saliency_conv.weight.grad for b in learned_ssb_blocks(twin).values()]
    assert all(g.abs().sum() > 0 for g in saliency)
