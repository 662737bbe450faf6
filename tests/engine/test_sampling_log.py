"""SamplingStatsHook: every learned SSB block's statistics reach the EventStorage in training."""
import types

import torch
from detectron2.utils.events import EventStorage

from ssb_det import ssb_resnet
from ssb_det.engine.sampling_log import SamplingStatsHook
from ssb_det.modeling.blocks import learned_ssb_blocks
from ssb_det.layers.sampling_stats import separable_statistics

NARROW = dict(depth=50, norm="BN", stem_out_channels=8, res2_out_channels=32,
              width_per_group=8, out_features=["res2", "res3", "res4", "res5"])


def _model(**kw):
    torch.manual_seed(0)
    model = ssb_resnet(**NARROW, **kw)
    with torch.no_grad():
        for name, block in learned_ssb_blocks(model).items():
            block.sampler.saliency_conv.weight.normal_(0, 1.0)
    return model


def test_hook_logs_each_learned_block_with_the_grid_statistics():
    model = _model()
    names = {n: b.sampler for n, b in learned_ssb_blocks(model).items()}
    # depth 50, ratios 0.5/0.5/0.5/1: every stride-1 block of res2..res4 samples (all of
    # res2; res3 and res4 but their strided first blocks).
    assert sorted(names) == sorted([f"res2.{i}" for i in range(3)] + [f"res3.{i}" for i in (1, 2, 3)]
                                   + [f"res4.{i}" for i in range(1, 6)])
    hook = SamplingStatsHook()
    hook.trainer = types.SimpleNamespace(model=model)
    x = torch.randn(2, 3, 64, 96)
    expected = {}

    def record(name):
        def hook(module, inputs, grid):
            if name not in expected:  # the training forward's grid
                stats = separable_statistics(grid.knots_y.detach(), grid.knots_x.detach())
                expected[name] = [float(v.mean()) for v in stats]
        return hook

    for name, sampler in names.items():  # the grids each block builds, recorded independently
        sampler.register_forward_hook(record(name))
    hook.before_train()
    with EventStorage(0) as storage:
        model.train()
        model(x)
        logged = {k: v[0] for k, v in storage.latest().items()}
        model.eval()
        with torch.no_grad():
            model(x)  # evaluation forwards are not logged
        assert {k: v[0] for k, v in storage.latest().items()} == logged
    hook.after_train()
    assert set(logged) == {f"ssb/{n}/{s}" for n in names for s in ("kl", "density_ratio")}
    for name, (kl, ratio) in expected.items():
        assert logged[f"ssb/{name}/kl"] == kl > 0
        assert logged[f"ssb/{name}/density_ratio"] == ratio > 1
    # after_train removed its hooks: only the recording hook of this test is left.
    assert all(len(s._forward_hooks) == 1 for s in names.values())


def test_uniform_and_plain_models_have_nothing_to_log():
    assert learned_ssb_blocks(ssb_resnet(**NARROW, uniform=True)) == {}
    assert learned_ssb_blocks(ssb_resnet(**NARROW, enabled=False)) == {}


def test_hook_logs_the_ssb_bot_blocks_too():
    model = _model(host="botnet")  # res5's three blocks attend over sampled maps
    hook = SamplingStatsHook()
    hook.trainer = types.SimpleNamespace(model=model)
    hook.before_train()
    with EventStorage(0) as storage:
        model.train()
        model(torch.randn(2, 3, 64, 96))
        logged = set(storage.latest())
    hook.after_train()
    assert {f"ssb/res5.{i}/kl" for i in range(3)} <= logged
    assert len(logged) == 2 * (11 + 3)
