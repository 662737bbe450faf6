"""SamplingStatsHook: every learned SSB block's statistics reach the EventStorage in training,
read from the device once per logging period (no sync in the other steps)."""
import types

import torch
from detectron2.utils.events import EventStorage
from torch.utils._python_dispatch import TorchDispatchMode

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


def _syncs():
    """A dispatch mode counting device-to-host reads of a scalar (``.item()``, ``float()``)."""
    class Count(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func is torch.ops.aten._local_scalar_dense.default:
                Count.n += 1
            return func(*args, **(kwargs or {}))
    return Count()


def test_hook_logs_the_period_means_of_each_learned_block_reading_only_at_logging_steps():
    model = _model()
    names = {n: b.sampler for n, b in learned_ssb_blocks(model).items()}
    # depth 50, ratios 0.5/0.5/0.5/1: every stride-1 block of res2..res4 samples (all of
    # res2; res3 and res4 but their strided first blocks).
    assert sorted(names) == sorted([f"res2.{i}" for i in range(3)] + [f"res3.{i}" for i in (1, 2, 3)]
                                   + [f"res4.{i}" for i in range(1, 6)])
    period, steps = 2, 3
    hook = SamplingStatsHook(period=period)
    hook.trainer = types.SimpleNamespace(model=model, iter=0, max_iter=steps)
    expected = {}  # name -> per-step [kl, ratio], recorded independently of the hook

    def record(name):
        def hook(module, inputs, grid):
            if module.training:
                stats = separable_statistics(grid.knots_y.detach(), grid.knots_x.detach())
                expected.setdefault(name, []).append([v.mean() for v in stats])  # read later
        return hook

    hook.before_train()
    for name, sampler in names.items():
        sampler.register_forward_hook(record(name))
    logged_at = {}
    with EventStorage(0) as storage:
        for step in range(steps):
            hook.trainer.iter = storage.iter = step
            model.train()
            x = torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(step))
            counter = _syncs()
            with counter:
                model(x)
                model.eval()
                with torch.no_grad():
                    model(x)  # evaluation forwards are not logged
            assert counter.n == 0  # the training forward read nothing from the device
            hook.after_step()
            logged_at[step] = {k: v for k, v in storage.latest().items()}
    hook.after_train()
    # Logging steps: the 2nd (period) and the 3rd (the last), each with the mean of the
    # training forwards since the previous one.
    assert logged_at[0] == {}
    assert {v[1] for v in logged_at[1].values()} == {1}
    assert {v[1] for v in logged_at[2].values()} == {2}
    assert set(logged_at[2]) == {f"ssb/{n}/{s}" for n in names for s in ("kl", "density_ratio")}
    for name, per_step in expected.items():
        for key, i in (("kl", 0), ("density_ratio", 1)):
            values = [float(step[i]) for step in per_step]
            assert abs(logged_at[1][f"ssb/{name}/{key}"][0] - (values[0] + values[1]) / 2) < 1e-12
            assert logged_at[2][f"ssb/{name}/{key}"][0] == values[2]
            assert values[0] > (0 if key == "kl" else 1)
    # after_train removed its hooks: only the recording hook of this test is left.
    assert all(len(s._forward_hooks) == 1 for s in names.values())


def test_the_statistics_hook_is_placed_just_before_the_writer():
    from detectron2.engine import hooks
    from ssb_det.engine.sampling_log import insert_before_writer

    writer, other = hooks.PeriodicWriter([], period=5), hooks.IterationTimer()
    stats = SamplingStatsHook(period=5)
    assert insert_before_writer([other, writer], stats) == [other, stats, writer]
    assert insert_before_writer([other], stats) == [other, stats]


def test_uniform_and_plain_models_have_nothing_to_log():
    assert learned_ssb_blocks(ssb_resnet(**NARROW, uniform=True)) == {}
    assert learned_ssb_blocks(ssb_resnet(**NARROW, enabled=False)) == {}


def test_hook_logs_the_ssb_bot_blocks_too():
    model = _model(host="botnet")  # res5's three blocks attend over sampled maps
    hook = SamplingStatsHook(period=1)
    hook.trainer = types.SimpleNamespace(model=model, iter=0, max_iter=1)
    hook.before_train()
    with EventStorage(0) as storage:
        model.train()
        model(torch.randn(2, 3, 64, 96))
        hook.after_step()  # a logging step
        logged = set(storage.latest())
    hook.after_train()
    assert {f"ssb/res5.{i}/kl" for i in range(3)} <= logged
    assert len(logged) == 2 * (11 + 3)
