"""SaliencySupervisedRCNN: its training loss against a reference computed outside the model,
its gradient, an unchanged inference, and no state left behind (threads included)."""
import threading

import pytest
import torch
import torch.nn.functional as F
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from ssb_det.modeling import SSBBottleneckBlock
from ssb_study import SaliencySupervisedRCNN, add_study_config
from ssb_study.meta_arch import _RECORD, sampled_positions
from narrow_host import NARROW_HOST_OPTS  # noqa: E402 (tests/ is on sys.path, see conftest.py)
from test_rcnn import random_batch, rcnn_cfg  # noqa: E402

ZOO = "COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml"


def supervised_cfg(**keys):
    cfg = add_study_config(rcnn_cfg(ZOO))
    cfg.merge_from_list(NARROW_HOST_OPTS)
    cfg.MODEL.META_ARCHITECTURE = "SaliencySupervisedRCNN"
    # The zoo's FrozenBN leaves a random network's activations in the hundreds; trained from
    # scratch (as in the study) BatchNorm keeps them near 1.
    cfg.MODEL.RESNETS.NORM = "BN"
    for k, v in keys.items():  # the study's keys, and the library's
        (cfg.MODEL.SSB_STUDY if k in cfg.MODEL.SSB_STUDY else cfg.MODEL.SSB)[k] = v
    return cfg


def build(seed=0, **ssb):
    torch.manual_seed(seed)
    model = build_model(supervised_cfg(**ssb))
    for m in model.modules():  # a saliency that is not uniform, so the loss is not trivial
        if isinstance(m, SSBBottleneckBlock):
            torch.nn.init.normal_(m.sampler.saliency_conv.weight, std=0.05)
    return model


def sampler_taps(model):
    """Where the sampler-supervised loss reads: each learned sampler's input and conv."""
    return [(m.sampler, lambda inputs: inputs[0], m.sampler.saliency_conv.weight)
            for m in model.modules() if isinstance(m, SSBBottleneckBlock)]


def reference_loss(model, batch, mass, taps=None):
    """Saliencies recomputed from features recorded by hooks of this test: ``taps`` lists
    (module, features from its inputs, saliency conv weight), by default the samplers'; then
    conv, pool, softmax; the target rasterised cell by cell; KL summed per image, averaged."""
    seen, handles = [], []
    for module, features, weight in (sampler_taps(model) if taps is None else taps):
        handles.append(module.register_forward_pre_hook(
            lambda mod, inputs, f=features, w=weight: seen.append((w, f(inputs)))))
    with torch.no_grad():
        model.backbone(model.preprocess_image(batch).tensor)
    for h in handles:
        h.remove()
    g = 31  # MODEL.SSB.GRID_SIZE (default)
    terms = []
    for weight, a in seen:
        logits = F.adaptive_avg_pool2d(F.conv2d(a, weight), g).double()
        s = torch.softmax(logits.flatten(1), dim=1)
        for n, x in enumerate(batch):
            inst = x["instances"]
            t = reference_box_target(inst.gt_boxes.tensor.tolist(), *inst.image_size, g, mass)
            terms.append((t * (t.log() - s[n].log())).sum() / len(batch))
    return torch.stack(terms).sum() / len(seen)


def reference_box_target(boxes, h, w, g, mass):
    """The box target rasterised cell by cell: each cell's largest covered share over the
    ``(x0, y0, x1, y1)`` boxes of an ``h x w`` image, scaled to ``mass``, plus the uniform
    rest; flattened, float64."""
    t = torch.zeros(g, g, dtype=torch.float64)
    for i in range(g):
        for j in range(g):
            for x0, y0, x1, y1 in boxes:
                dy = max(0.0, min((i + 1) * h / g, y1) - max(i * h / g, y0)) / (h / g)
                dx = max(0.0, min((j + 1) * w / g, x1) - max(j * w / g, x0)) / (w / g)
                t[i, j] = max(t[i, j], dy * dx)
    return (t / t.sum() * mass + (1 - mass) / g ** 2).flatten()


def test_the_training_loss_is_the_log_density_distance_to_the_box_target():
    model = build(BOX_SALIENCY_WEIGHT=2.0, BOX_SALIENCY_MASS=0.3)
    assert isinstance(model, SaliencySupervisedRCNN)
    model.train()
    batch = random_batch(with_masks=False, h=64, w=96)
    with EventStorage(0):
        losses = model(batch)
    expect = 2.0 * reference_loss(model, batch, 0.3)
    assert expect > 0.01
    assert losses["loss_saliency"].item() == pytest.approx(expect.item(), rel=1e-5)
    assert _RECORD.get() is None  # nothing kept after the forward


def test_the_loss_teaches_the_saliency_convs_to_sample_the_boxes():
    torch.manual_seed(0)
    model = build_model(supervised_cfg())  # saliency convs at zero: uniform sampling
    model.train()
    batch = random_batch(with_masks=False, h=64, w=96)
    convs = [m.sampler.saliency_conv.weight for m in model.modules()
             if isinstance(m, SSBBottleneckBlock) and m.sampler.saliency_conv.weight.requires_grad]
    assert len(convs) == 8  # res2 is frozen (FREEZE_AT 2)
    optimizer = torch.optim.Adam(convs, lr=0.01)
    with EventStorage(0):
        first = None
        for _ in range(10):
            loss = model(batch)["loss_saliency"]
            first = loss.item() if first is None else first
            optimizer.zero_grad()
            loss.backward()
            assert all(c.grad is not None and c.grad.abs().sum() > 0 for c in convs)
            optimizer.step()
    assert loss.item() < 0.8 * first


def test_inference_is_generalized_rcnn_with_the_same_weights():
    model = build().eval()
    cfg = supervised_cfg()
    cfg.MODEL.META_ARCHITECTURE = "GeneralizedRCNN"
    plain = build_model(cfg).eval()
    plain.load_state_dict(model.state_dict())
    batch = [{"image": x["image"], "height": 64, "width": 96}
             for x in random_batch(with_masks=False, h=64, w=96)]
    with torch.no_grad():
        got, want = model(batch), plain(batch)
    for a, b in zip(got, want):
        assert torch.equal(a["instances"].pred_boxes.tensor, b["instances"].pred_boxes.tensor)
        assert torch.equal(a["instances"].scores, b["instances"].scores)


def test_weight_zero_is_the_plain_detector_loss():
    model = build(BOX_SALIENCY_WEIGHT=0.0).train()
    with EventStorage(0):
        losses = model(random_batch(with_masks=False, h=64, w=96))
    assert "loss_saliency" not in losses and "loss_cls" in losses


def test_threads_each_get_the_loss_of_their_own_batch():
    model = build().train()
    batches = [random_batch(with_masks=False, h=64, w=96, seed=s) for s in (0, 1)]
    for b in batches[1]:  # other boxes, so the two targets differ
        b["instances"].gt_boxes.tensor[:, :2] += 4
    with EventStorage(0):
        alone = [model(b)["loss_saliency"].item() for b in batches]
    assert alone[0] != alone[1]
    results = {}

    def run(i):
        results[i] = [model(batches[i])["loss_saliency"].item() for _ in range(3)]

    threads = [threading.Thread(target=run, args=(i,)) for i in (0, 1)]
    with EventStorage(0):  # Detectron2's storage stack is global, not per thread
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    for i in (0, 1):
        assert results[i] == pytest.approx([alone[i]] * 3, rel=1e-6)


def test_bad_settings_are_refused_with_their_key():
    with pytest.raises(ValueError, match="BOX_SALIENCY_MASS"):
        build(BOX_SALIENCY_MASS=1.0)
    with pytest.raises(ValueError, match="BOX_SALIENCY_WEIGHT"):
        build(BOX_SALIENCY_WEIGHT=-1.0)
    cfg = supervised_cfg(UNIFORM=True)
    model = build_model(cfg).train()
    with EventStorage(0), pytest.raises(ValueError, match="no learned saliency"):
        model(random_batch(with_masks=False, h=64, w=96))
    model = build().train()
    with EventStorage(0), pytest.raises(ValueError, match="instances"):
        model([{"image": torch.zeros(3, 64, 96)}])


@pytest.mark.parametrize("detach", [False, True])
def test_detach_keeps_the_loss_off_the_features(detach):
    model = build(BOX_SALIENCY_DETACH=detach).train()
    with EventStorage(0):
        loss = model(random_batch(with_masks=False, h=64, w=96))["loss_saliency"]
    loss.backward()
    blocks = [m for m in model.modules()
              if isinstance(m, SSBBottleneckBlock) and m.conv1.weight.requires_grad]
    assert all(b.sampler.saliency_conv.weight.grad.abs().sum() > 0 for b in blocks)
    conv1_grads = [b.conv1.weight.grad for b in blocks]
    if detach:
        assert all(g is None or g.abs().sum() == 0 for g in conv1_grads)
    else:
        assert all(g is not None and g.abs().sum() > 0 for g in conv1_grads)


def build_auxiliary(seed=0, **ssb):
    """An auxiliary-head detector with random (non-zero) heads, so the loss is not trivial."""
    torch.manual_seed(seed)
    model = build_model(supervised_cfg(BOX_SALIENCY_HEAD="auxiliary", **ssb))
    for head in model.aux_saliency.values():
        torch.nn.init.normal_(head.saliency_conv.weight, std=0.05)
    return model


def aux_taps(model):
    """Where the auxiliary loss reads: relu(conv1(x)) of every sampled block, by its own
    conv1 called on the block's input, with the head of the block's name."""
    return [(m, lambda inputs, m=m: F.relu(m.conv1(inputs[0])),
             model.aux_saliency[name.replace(".", "_")].saliency_conv.weight)
            for name, m in model.backbone.bottom_up.named_modules()
            if name.replace(".", "_") in model.aux_saliency]


@pytest.mark.parametrize("uniform", [True, False])
def test_auxiliary_heads_get_the_same_loss_on_the_same_features(uniform):
    model = build_auxiliary(UNIFORM=uniform, BOX_SALIENCY_MASS=0.3).train()
    blocks = [m for m in model.modules() if isinstance(m, SSBBottleneckBlock)]
    assert set(model.aux_saliency) == {"res2_0", "res2_1", "res2_2", "res3_1", "res3_2", "res3_3",
                                       "res4_1", "res4_2", "res4_3", "res4_4", "res4_5"}
    assert all(b.sampler.uniform == uniform for b in blocks)
    batch = random_batch(with_masks=False, h=64, w=96)
    with EventStorage(0):
        losses = model(batch)
    expect = reference_loss(model, batch, 0.3, taps=aux_taps(model))
    assert expect > 0.01
    assert losses["loss_saliency"].item() == pytest.approx(expect.item(), rel=1e-5)
    losses["loss_saliency"].backward()
    trained = [b for b in blocks if b.conv1.weight.requires_grad]
    assert trained and all(b.conv1.weight.grad.abs().sum() > 0 for b in trained)
    assert all(h.saliency_conv.weight.grad.abs().sum() > 0 for h in model.aux_saliency.values()
               if h.saliency_conv.weight.requires_grad)


def test_auxiliary_heads_sample_nothing():
    """With trained (random) heads, the detector's training losses but the saliency one, and
    its detections, are GeneralizedRCNN's with the other weights."""
    batch = random_batch(with_masks=False, h=64, w=96)
    model = build_auxiliary(UNIFORM=True)
    cfg = supervised_cfg(UNIFORM=True)
    cfg.MODEL.META_ARCHITECTURE = "GeneralizedRCNN"
    plain = build_model(cfg)
    missing, unexpected = plain.load_state_dict(model.state_dict(), strict=False)
    assert not missing and unexpected and all(k.startswith("aux_saliency.") for k in unexpected)
    losses = []
    for m in (model, plain):
        torch.manual_seed(1)  # the RPN and ROI heads sample their training proposals at random
        with EventStorage(0), torch.no_grad():
            losses.append(m.train()(batch))
    assert set(losses[0]) == set(losses[1]) | {"loss_saliency"}
    assert all(torch.equal(losses[0][k], v) for k, v in losses[1].items())
    inputs = [{"image": x["image"], "height": 64, "width": 96} for x in batch]
    with torch.no_grad():
        got, want = model.eval()(inputs), plain.eval()(inputs)
    for a, b in zip(got, want):
        assert torch.equal(a["instances"].pred_boxes.tensor, b["instances"].pred_boxes.tensor)


def test_auxiliary_heads_learn_with_the_saliency_learning_rate():
    from ssb_det.engine.optim import saliency_parameters
    model = build_auxiliary(UNIFORM=True)
    heads = {id(h.saliency_conv.weight) for h in model.aux_saliency.values()}
    assert {id(p) for p in saliency_parameters(model)} == heads  # uniform: no other saliency


def test_sampled_positions_are_the_ssb_blocks_and_their_plain_twins():
    ssb = build_model(supervised_cfg())
    positions = sampled_positions(ssb.backbone, (0.5, 0.5, 0.5, 1.0))
    blocks = {n: m for n, m in ssb.backbone.bottom_up.named_modules()
              if isinstance(m, SSBBottleneckBlock)}
    assert {n: b for n, (b, _, _) in positions.items()} == blocks
    assert {n: s for n, (_, s, _) in positions.items()} == {
        n: {"res2": 4, "res3": 8, "res4": 16}[n[:4]] for n in blocks}
    plain = build_model(supervised_cfg(ENABLED=False))
    assert set(sampled_positions(plain.backbone, (0.5, 0.5, 0.5, 1.0))) == set(blocks)
    assert set(sampled_positions(plain.backbone, (1.0, 0.5, 1.0, 0.5))) == {
        "res3.1", "res3.2", "res3.3", "res5.1", "res5.2"}


def test_the_plain_host_gets_the_auxiliary_loss_at_the_same_blocks():
    model = build_auxiliary(ENABLED=False, BOX_SALIENCY_MASS=0.3).train()
    assert not any(isinstance(m, SSBBottleneckBlock) for m in model.modules())
    assert len(model.aux_saliency) == 11
    batch = random_batch(with_masks=False, h=64, w=96)
    with EventStorage(0):
        loss = model(batch)["loss_saliency"]
    expect = reference_loss(model, batch, 0.3, taps=aux_taps(model))
    assert expect > 0.01
    assert loss.item() == pytest.approx(expect.item(), rel=1e-5)
    loss.backward()
    assert all(b.conv1.weight.grad.abs().sum() > 0
               for b, _, _ in sampled_positions(model.backbone, (0.5, 0.5, 0.5, 1.0)).values()
               if b.conv1.weight.requires_grad)


def test_auxiliary_heads_need_sampled_blocks():
    with pytest.raises(ValueError, match="BOX_SALIENCY_HEAD"):
        build_model(supervised_cfg(BOX_SALIENCY_HEAD="nearby"))
    with pytest.raises(ValueError, match="has none"):
        build_model(supervised_cfg(BOX_SALIENCY_HEAD="auxiliary", RATIOS=[1.0, 1.0, 1.0, 1.0]))


def test_auxiliary_heads_take_the_grid_but_not_the_collapse_bound():
    model = build_model(supervised_cfg(BOX_SALIENCY_HEAD="auxiliary", SALIENCY_BOUND=2.0,
                                       KERNEL_SIGMA=2.0, GRID_SIZE=15, GRID_PADDING=7))
    samplers = [m.sampler for m in model.modules() if isinstance(m, SSBBottleneckBlock)]
    assert samplers and all(s.saliency_bound == 2.0 for s in samplers)
    heads = list(model.aux_saliency.values())
    assert all((h.grid_size, h.padding, h.sigma, h.saliency_bound) == (15, 7, 2.0, 0.0)
               for h in heads)
