"""A forward of an SSB-ResNet has no side effects: it is re-entrant (threads sharing one
model), it never writes into a tensor anyone outside a block can hold, and each SSB block
samples exactly its image's region of the map (issue 12, defects 1-3)."""
import math
import threading

import pytest
import torch

import ssb_det
from ssb_det.layers import SaliencySampler
from ssb_det.modeling import SSBBottleneckBlock
from threads import assert_threads_match_sequential  # tests/ is on sys.path


def _model(**kwargs):
    torch.manual_seed(0)
    model = ssb_det.ssb_resnet(depth=50, norm="FrozenBN", stem_out_channels=8,
                               res2_out_channels=32, width_per_group=8, **kwargs).eval()
    gen = torch.Generator().manual_seed(1)
    for m in model.modules():  # trained-like saliency: non-uniform sampling
        if isinstance(m, SaliencySampler):
            w = m.saliency_conv.weight
            w.data.copy_(torch.randn(w.shape, generator=gen))
    return model


def _forward_then_remove(model, x, handles):
    """``model(x)`` without gradients, then the hooks ``handles`` removed."""
    try:
        with torch.no_grad():
            return model(x)
    finally:
        for h in handles:
            h.remove()


def _padded(sizes, batch_size, seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.zeros(len(sizes), 3, *batch_size)
    for i, (h, w) in enumerate(sizes):
        x[i, :, :h, :w] = torch.randn(3, h, w, generator=gen)
    return x


# ----------------------------------------------------------------------- defect 1: threads


def test_a_forward_paused_inside_a_block_is_not_disturbed_by_another_forward():
    # Thread A stops inside res2.1 while the main thread runs a whole forward of another
    # batch; A's result must equal its sequential result bit for bit.
    model = _model()
    xa = _padded([(70, 90), (50, 64)], (70, 96), seed=2)
    xb = _padded([(40, 100), (33, 47), (40, 61)], (40, 100), seed=3)
    with torch.no_grad():
        expected_a, expected_b = model(xa), model(xb)
    paused, resume = threading.Event(), threading.Event()

    def pause(module, args):
        if threading.current_thread() is not threading.main_thread() and not paused.is_set():
            paused.set()
            assert resume.wait(60)

    handle = model.res2[1].conv2.register_forward_pre_hook(pause)
    result = {}

    def run_a():
        with torch.no_grad():
            result["a"] = model(xa)

    thread = threading.Thread(target=run_a)
    try:
        thread.start()
        assert paused.wait(60)
        with torch.no_grad():
            out_b = model(xb)
        resume.set()
        thread.join(60)
    finally:
        resume.set()
        handle.remove()
    for name in expected_a:
        assert torch.equal(result["a"][name], expected_a[name]), name
        assert torch.equal(out_b[name], expected_b[name]), name


def test_threads_sharing_one_model_match_sequential_runs():
    model = _model()
    inputs = [_padded([(45 + 7 * i, 61), (33, 40 + 5 * i)], (45 + 7 * i, 61 + 3 * i), seed=i)
              for i in range(4)]
    assert_threads_match_sequential(model, inputs, repeats=3)


def test_a_forward_leaves_no_state_on_the_modules():
    model = _model()
    before = {name: dict(vars(m)) for name, m in model.named_modules()}
    with torch.no_grad():
        model(_padded([(64, 80), (40, 50)], (64, 80), seed=0))
    after = {name: dict(vars(m)) for name, m in model.named_modules()}
    for name in before:
        assert before[name].keys() == after[name].keys(), name
        for key, value in before[name].items():
            if not isinstance(value, dict):  # parameter/buffer/module dicts compared by key
                assert after[name][key] is value or after[name][key] == value, (name, key)


# ----------------------------------------------------------- defect 2: no foreign writes


def test_no_tensor_seen_outside_a_block_is_overwritten():
    # Forward hooks on every module (the projection shortcut included) and instance
    # wrappers of every block's forward keep what they saw; after the forward each kept
    # tensor must still hold the value it had when it was handed out.
    model = _model(out_features=("stem", "res2", "res3", "res4", "res5"))
    seen = []

    def keep(module, args, output):
        if torch.is_tensor(output):
            seen.append((output, output.clone()))

    handles = [model.res2[0].shortcut.register_forward_hook(keep)]
    for stage in model.stages:
        for block in stage:
            def forward(x, *args, inner=block.forward):
                out = inner(x, *args)
                seen.append((out, out.clone()))
                seen.append((x, x.clone()))
                return out
            block.forward = forward
    x = _padded([(64, 96), (50, 70)], (64, 96), seed=4)
    out = _forward_then_remove(model, x, handles)
    assert len(seen) > 20
    for kept, value in seen:
        assert torch.equal(kept, value)
    for name, feature in out.items():
        assert torch.isfinite(feature).all(), name


# ---------------------------------------------------------------- defect 3: image regions


@pytest.mark.parametrize("host", ["resnet", "resnet-rs"])
def test_each_block_samples_the_region_an_image_alone_would_fill(host):
    # Batch height 803 (SIZE_DIVISIBILITY 0, as Detectron2's C4 models use): the region of
    # an image of 600 rows in a stride-s map is ceil(600 / s) rows, the map the image alone
    # would give (150 / 75 / 38 rows at res2 / res3 / res4), whatever the batch height.
    model = _model(host=host, stride_in_1x1=host == "resnet")
    sizes = [(803, 41), (600, 37)]
    x = _padded(sizes, (803, 41), seed=6)
    regions = {}
    handles = []
    for name, m in model.named_modules():
        if isinstance(m, SSBBottleneckBlock):
            def hook(module, args, name=name):  # the stage's Regions, shared by its blocks
                regions[name.split(".")[0]] = args[1].sizes.tolist()
            handles.append(m.sampler.register_forward_pre_hook(hook))
    with torch.no_grad():
        model(x)
        for h in handles:
            h.remove()
        alone = [model(torch.zeros(1, 3, h, w)) for h, w in sizes]
    assert set(regions) == {"res2", "res3", "res4"}
    for stage, got in regions.items():
        want = [list(a[stage].shape[-2:]) for a in alone]
        assert [[int(v) for v in row] for row in got] == want, stage
    assert [int(v) for v in regions["res4"][1]] == [38, math.ceil(37 / 16)]


# ------------------------------------------------------------- defect 6: one grid dtype


def test_one_grid_dtype_helper_float32_on_mps_only():
    from ssb_det.layers import grid_dtype
    from ssb_det.modeling import image_sizes_from_padding

    assert grid_dtype(torch.device("mps")) == torch.float32
    assert grid_dtype("cpu") == grid_dtype(torch.device("cuda")) == torch.float64
    assert image_sizes_from_padding(torch.ones(1, 3, 5, 7)).dtype == torch.float64
