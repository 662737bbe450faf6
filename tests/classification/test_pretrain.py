"""Classification pretraining (ssb_det.classification, tools/pretrain_cls.py)."""
import dataclasses
import glob
import json
import math
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from detectron2 import model_zoo
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from PIL import Image
from torch import nn

from ssb_det import add_ssb_config
from ssb_det.checkpoint import SSBCheckpointer, load_pth
from ssb_det.classification import (ClassificationTrainer, InfiniteShardedSampler, ModelEMA,
                                    ShardedEvalSampler, build_classifier, build_embedded_split,
                                    get_pretrain_cfg)
from ssb_det.classification.data import build_eval_transform
from ssb_det.classification.launch import main
from ssb_det.convert import conventions_mismatch

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG_DIR = os.path.join(REPO, "configs", "pretrain")
SHAPES_CONFIG = os.path.join(CONFIG_DIR, "ssb_r50_shapes.yaml")


def _tiny_overrides(output_dir, embedded_root, **extra):
    opts = {
        "CLS.DATA.TRAIN_SPLIT": "mini_train", "CLS.DATA.VAL_SPLIT": "mini_val",
        "CLS.DATA.EMBEDDED_ROOT": embedded_root, "CLS.DATA.EVAL_BATCH_SIZE": 16,
        "CLS.INPUT.TRAIN_SIZE": 32, "CLS.INPUT.EVAL_SIZE": 32, "CLS.LOG_PERIOD": 1,
        "SOLVER.IMS_PER_BATCH": 4, "SOLVER.MAX_ITER": 4, "SOLVER.CHECKPOINT_PERIOD": 2,
        "SOLVER.WARMUP_ITERS": 1, "MODEL.DEVICE": "cpu", "DATALOADER.NUM_WORKERS": 0,
        "OUTPUT_DIR": str(output_dir),
    }
    opts.update(extra)
    return [str(x) for kv in opts.items() for x in kv]


def _metrics(output_dir):
    with open(os.path.join(output_dir, "metrics.json")) as f:
        return [json.loads(line) for line in f]


# ------------------------------------------------------------------ config and pieces


def test_every_pretrain_config_builds_its_classifier():
    configs = sorted(glob.glob(os.path.join(CONFIG_DIR, "*.yaml")))
    models = {os.path.basename(p) for p in configs}
    assert {"ssb_r50_imagenet.yaml", "r50_imagenet.yaml", "ssb_r50_uniform_imagenet.yaml",
            "ssb_rs50_imagenet.yaml", "rs50_imagenet.yaml", "ssb_r50_shapes.yaml"} <= models
    seen = {}
    for path in configs:
        cfg = get_pretrain_cfg()
        cfg.merge_from_file(path)
        model = build_classifier(cfg, num_classes=7).eval()
        with torch.no_grad():
            logits = model(torch.randint(0, 256, (1, 3, 32, 32), dtype=torch.uint8))
        assert logits.shape == (1, 7)
        names = {k for k, _ in model.named_parameters()}
        seen[os.path.basename(path)] = (cfg, names)
    # Twins differ in the sampling only: saliency convs exist in the SSB model alone.
    ssb, plain, uniform = (seen[n][1] for n in ("ssb_r50_imagenet.yaml", "r50_imagenet.yaml",
                                                "ssb_r50_uniform_imagenet.yaml"))
    assert {n for n in ssb - plain} == {n for n in ssb if "saliency_conv" in n} != set()
    assert uniform == plain
    assert any(".se.fc1." in n for n in seen["ssb_rs50_imagenet.yaml"][1])
    assert seen["rs50_imagenet.yaml"][0].MODEL.SSB.ENABLED is False


def test_unknown_keys_are_errors():
    cfg = get_pretrain_cfg()
    with pytest.raises(Exception, match="Non-existent key: CLS.NOT_A_KEY"):
        cfg.merge_from_list(["CLS.NOT_A_KEY", "1"])
    with pytest.raises(SystemExit, match="before the overrides"):
        main(["MODEL.DEVICE", "cpu", "--eval-only"])


def test_recipe_defaults_are_resnet_rs():
    cfg = get_pretrain_cfg()
    assert (cfg.SOLVER.MOMENTUM, cfg.SOLVER.BASE_LR, cfg.CLS.LR_REFERENCE_BATCH) == (0.9, 0.1, 256)
    assert cfg.SOLVER.LR_SCHEDULER_NAME == "WarmupCosineLR"
    assert (cfg.SOLVER.WEIGHT_DECAY, cfg.SOLVER.WEIGHT_DECAY_NORM,
            cfg.SOLVER.WEIGHT_DECAY_BIAS) == (4e-5, 0.0, 0.0)
    assert (cfg.CLS.LABEL_SMOOTHING, cfg.CLS.DROPOUT, cfg.CLS.EMA.DECAY) == (0.1, 0.25, 0.9999)
    assert cfg.CLS.INPUT.RANDAUGMENT_OPS == 2 and cfg.MODEL.RESNETS.NORM == "BN"


def test_float16_autocast_on_the_cpu_is_refused(tmp_path):
    _image_folder(str(tmp_path / "data"), {"train": {"a": 4, "b": 4}, "val": {"a": 1}})
    with pytest.raises(ValueError, match="float16.*needs a GPU"):
        main(["--config-file", SHAPES_CONFIG] + _tiny_overrides(tmp_path / "out", "", **{
            "CLS.DATA.ROOT": str(tmp_path / "data"), "CLS.DATA.TRAIN_SPLIT": "train",
            "CLS.DATA.VAL_SPLIT": "val", "SOLVER.AMP.ENABLED": True,
            "CLS.AMP_DTYPE": "float16"}))


def test_train_sampler_shards_and_resumes():
    size, batch, world = 23, 2, 3  # 3 steps per epoch (18 images), 5 dropped per epoch
    streams = [iter(InfiniteShardedSampler(size, batch, rank=r, world_size=world, seed=5))
               for r in range(world)]
    steps = [[[next(s) for _ in range(batch)] for s in streams] for _ in range(7)]
    for step in steps:
        flat = [i for shard in step for i in shard]
        assert len(set(flat)) == batch * world  # ranks never share an image within a step
    epoch0 = [i for step in steps[:3] for shard in step for i in shard]
    assert len(set(epoch0)) == 18  # an epoch has no repeats
    assert [i for step in steps[3:6] for shard in step for i in shard] != epoch0  # reshuffled
    resumed = iter(InfiniteShardedSampler(size, batch, rank=1, world_size=world, seed=5,
                                          start_step=4))
    assert [[next(resumed) for _ in range(batch)] for _ in range(3)] == [s[1] for s in steps[4:7]]
    with pytest.raises(ValueError, match="fewer than one global batch"):
        InfiniteShardedSampler(5, 2, world_size=3)


def test_eval_sampler_covers_every_image_once():
    shards = [list(ShardedEvalSampler(11, rank=r, world_size=3)) for r in range(3)]
    assert sorted(i for s in shards for i in s) == list(range(11))


def test_ema_update_rule():
    model = nn.Linear(3, 2)
    ema = ModelEMA(model, decay=0.9)
    before = ema.module.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update(model)
    d = 2.0 / 11.0  # min(0.9, (1 + 1) / (10 + 1))
    torch.testing.assert_close(ema.module.weight, d * before + (1 - d) * model.weight)
    for _ in range(200):
        ema.update(model)
    assert ema.current_decay() == 0.9
    assert not any(p.requires_grad for p in ema.module.parameters())


def test_zero_init_residual_only_touches_trainable_norms():
    cfg = get_pretrain_cfg()
    model = build_classifier(cfg, 3)
    last_norms = [m.norm.weight for n, m in model.backbone.named_modules() if n.endswith("conv3")]
    assert len(last_norms) == 16 and all(not w.any() for w in last_norms)
    cfg.MODEL.RESNETS.NORM = "FrozenBN"
    frozen = build_classifier(cfg, 3)
    assert all(m.norm.weight.eq(1).all() for n, m in frozen.backbone.named_modules()
               if n.endswith("conv3"))


def test_eval_transform_channel_order():
    cfg = get_pretrain_cfg()
    cfg.CLS.INPUT.EVAL_SIZE, cfg.CLS.INPUT.EVAL_CROP_RATIO = 8, 1.0
    image = Image.new("RGB", (8, 8), (10, 20, 30))
    assert build_eval_transform(cfg)(image)[:, 0, 0].tolist() == [10, 20, 30]
    cfg.INPUT.FORMAT = "BGR"
    out = build_eval_transform(cfg)(image)
    assert out.dtype == torch.uint8 and out[:, 0, 0].tolist() == [30, 20, 10]


def test_embedded_set_crops_every_object(tmp_path):
    from ssb_det.data.shapes import CATEGORIES, get_shapes_split

    out = build_embedded_split("mini_val", str(tmp_path), context=0.1, min_size=8)
    _, json_path = get_shapes_split("mini_val")
    with open(json_path) as f:
        coco = json.load(f)
    kept = [a for a in coco["annotations"] if min(a["bbox"][2:]) >= 8]
    files = {c: sorted(os.listdir(os.path.join(out, c))) for c in CATEGORIES}
    assert sum(len(v) for v in files.values()) == len(kept) > 0
    names = {c["id"]: c["name"] for c in coco["categories"]}
    ann = kept[0]
    path = os.path.join(out, names[ann["category_id"]],
                        f"{ann['image_id']:06d}_{ann['id']:06d}.png")
    x, y, w, h = ann["bbox"]
    image = next(im for im in coco["images"] if im["id"] == ann["image_id"])
    x0, x1 = max(0, round(x - 0.1 * w)), min(image["width"], round(x + 1.1 * w))
    y0, y1 = max(0, round(y - 0.1 * h)), min(image["height"], round(y + 1.1 * h))
    with Image.open(path) as crop:  # the box plus 10% on each side, clipped to the image
        assert crop.size == (x1 - x0, y1 - y0)
    stamp = os.path.getmtime(os.path.join(out, ".complete"))
    assert build_embedded_split("mini_val", str(tmp_path), context=0.1, min_size=8) == out
    assert os.path.getmtime(os.path.join(out, ".complete")) == stamp  # not rebuilt


def test_embedded_set_of_whole_images_labels_each_by_its_object(tmp_path, monkeypatch):
    from ssb_det.data import shapes

    # A few images of the single_* splits' kind (one object per canvas), in a private cache.
    spec = dataclasses.replace(shapes.SPLITS["single_val"], num_images=6)
    monkeypatch.setitem(shapes.SPLITS, "single_mini", spec)
    shapes_root = str(tmp_path / "shapes")
    out = build_embedded_split("single_mini", str(tmp_path / "cls"), min_size=0, crop="image",
                               shapes_root=shapes_root)
    assert os.path.basename(out) == "single_mini_image"
    files = sorted(glob.glob(os.path.join(out, "*", "*.png")))
    assert len(files) == spec.num_images
    for i in range(spec.num_images):  # independently: the drawn canvas and its one object
        bgr, objects = shapes.render_image(spec, i)
        assert len(objects) == 1
        name = shapes.CATEGORIES[objects[0]["category_id"] - 1]
        (path,) = [f for f in files if os.path.basename(f).startswith(f"{i + 1:06d}_")]
        assert os.path.basename(os.path.dirname(path)) == name
        with Image.open(path) as im:
            np.testing.assert_array_equal(np.asarray(im.convert("RGB")), bgr[..., ::-1])
    # Box crops of the same split go to their own folder; the image set is not rebuilt.
    stamp = os.path.getmtime(os.path.join(out, ".complete"))
    boxes = build_embedded_split("single_mini", str(tmp_path / "cls"), min_size=0,
                                 shapes_root=shapes_root)
    assert boxes != out and os.path.getmtime(os.path.join(out, ".complete")) == stamp


def test_embedded_whole_images_need_one_object_per_image(tmp_path):
    with pytest.raises(ValueError, match="several objects"):  # mini_val: 2-6 objects each
        build_embedded_split("mini_val", str(tmp_path), crop="image")
    assert not os.path.exists(os.path.join(tmp_path, "mini_val_image"))
    with pytest.raises(ValueError, match="EMBEDDED_CROP='whole'"):
        build_embedded_split("mini_val", str(tmp_path), crop="whole")


def _image_folder(root, spec, seed=0, solid=False):
    """Random images (``solid``: one random colour each, which every crop and flip keeps)."""
    rng = np.random.default_rng(seed)
    for split, classes in spec.items():
        for cls, count in classes.items():
            os.makedirs(os.path.join(root, split, cls), exist_ok=True)
            for i in range(count):
                pixels = rng.integers(0, 256, (1, 1, 3) if solid else (40, 36, 3), dtype=np.uint8)
                pixels = np.ascontiguousarray(np.broadcast_to(pixels, (40, 36, 3)))
                Image.fromarray(pixels).save(os.path.join(root, split, cls, f"{i}.png"))


def test_imagefolder_trainer_applies_the_recipe(tmp_path):
    # A val split lacking a class keeps the training split's label indices.
    _image_folder(str(tmp_path / "data"), {"train": {"cat": 6, "dog": 6, "emu": 4},
                                           "val": {"cat": 2, "emu": 2}})
    cfg = get_pretrain_cfg()
    cfg.merge_from_list(_tiny_overrides(tmp_path / "out", "", **{
        "CLS.DATA.ROOT": str(tmp_path / "data"), "CLS.DATA.TRAIN_SPLIT": "train",
        "CLS.DATA.VAL_SPLIT": "val", "CLS.EPOCHS": 2, "MODEL.SSB.DROP_PATH_RATE": 0.1}))
    cfg.freeze()
    trainer = ClassificationTrainer(cfg)
    assert trainer.classes == ["cat", "dog", "emu"] and trainer.model.num_classes == 3
    assert {label for _, label in trainer.val_set.samples} == {0, 2}
    assert trainer.max_iter == 2 * (16 // 4)  # CLS.EPOCHS replaces SOLVER.MAX_ITER
    assert trainer.base_lr == pytest.approx(0.1 * 4 / 256)
    assert trainer.criterion.label_smoothing == 0.1 and trainer.model.dropout.p == 0.25
    decay = {}
    for group in trainer.optimizer.param_groups:
        for p in group["params"]:
            decay[p] = group["weight_decay"]
    named = dict(trainer.model.named_parameters())
    assert decay[named["backbone.res2.0.conv1.weight"]] == 4e-5
    assert decay[named["fc.weight"]] == 4e-5
    assert decay[named["backbone.res2.0.conv1.norm.weight"]] == 0.0
    assert decay[named["fc.bias"]] == 0.0
    drops = [m.drop_prob for m in trainer.model.modules() if type(m).__name__ == "DropPath"]
    assert drops and max(drops) == pytest.approx(0.1)


def _reference_lr(step, base_lr, max_iter, warmup_iters, warmup_factor, decay):
    """Detectron2's schedule written out: a line from ``warmup_factor * decay(0)`` to
    ``decay(warmup_iters)`` over the warm-up, then ``decay(step)``; times ``base_lr``."""
    if step < warmup_iters:
        start = warmup_factor * decay(0)
        return base_lr * (start + (decay(warmup_iters) - start) * step / warmup_iters)
    return base_lr * decay(step)


def _lrs(trainer, steps):
    """The LR of each of the next ``steps`` steps, advancing the trainer's schedule."""
    lrs = []
    for _ in range(steps):
        lrs.append(trainer.optimizer.param_groups[0]["lr"])
        trainer.optimizer.step()  # no gradients: the weights stay, the schedule advances
        trainer.scheduler.step()
    return lrs


def test_lr_schedule_follows_the_closed_form_and_resumes(tmp_path):
    _image_folder(str(tmp_path / "data"), {"train": {"a": 4, "b": 4}, "val": {"a": 1}})
    max_iter, warmup, factor = 10, 3, 0.1  # CLS.EPOCHS 5 of 2 steps replaces SOLVER.MAX_ITER 4

    def trainer_for(**extra):
        cfg = get_pretrain_cfg()
        cfg.merge_from_list(_tiny_overrides(tmp_path / "out", "", **{
            "CLS.DATA.ROOT": str(tmp_path / "data"), "CLS.DATA.TRAIN_SPLIT": "train",
            "CLS.DATA.VAL_SPLIT": "val", "CLS.EPOCHS": 5, "CLS.EMA.ENABLED": False,
            "SOLVER.WARMUP_ITERS": warmup, "SOLVER.WARMUP_FACTOR": factor, **extra}))
        cfg.freeze()
        return ClassificationTrainer(cfg)

    base = 0.1 * 4 / 256
    cosine = [_reference_lr(t, base, max_iter, warmup, factor,
                            lambda s: 0.5 * (1.0 + math.cos(math.pi * s / max_iter)))
              for t in range(max_iter)]
    trainer = trainer_for()
    assert trainer.max_iter == max_iter
    assert _lrs(trainer, 4) == pytest.approx(cosine[:4], rel=1e-9)
    # A run resumed from the checkpoint of step 4 uses the LRs the uninterrupted one uses.
    trainer.save_checkpoint(4, "model_0000004")
    resumed = trainer_for()
    resumed.resume_or_load(resume=True)
    assert resumed.start_iter == 4
    assert _lrs(resumed, 6) == pytest.approx(cosine[4:], rel=1e-9)
    assert _lrs(trainer, 6) == pytest.approx(cosine[4:], rel=1e-9)

    step = trainer_for(**{"SOLVER.LR_SCHEDULER_NAME": "WarmupMultiStepLR",
                          "SOLVER.STEPS": (6, 8), "SOLVER.GAMMA": 0.5})
    multistep = [_reference_lr(t, base, max_iter, warmup, factor,
                               lambda s: 0.5 ** ((s >= 6) + (s >= 8)))
                 for t in range(max_iter)]
    assert _lrs(step, max_iter) == pytest.approx(multistep, rel=1e-9)
    with pytest.raises(ValueError, match="Unknown LR scheduler: Linear"):
        trainer_for(**{"SOLVER.LR_SCHEDULER_NAME": "Linear"})


@pytest.mark.slow
def test_imagefolder_training_runs(tmp_path):
    _image_folder(str(tmp_path / "data"), {"train": {"a": 4, "b": 4}, "val": {"a": 1, "b": 2}})
    result = main(["--config-file", SHAPES_CONFIG] + _tiny_overrides(tmp_path / "out", "", **{
        "CLS.DATA.ROOT": str(tmp_path / "data"), "CLS.DATA.TRAIN_SPLIT": "train",
        "CLS.DATA.VAL_SPLIT": "val", "CLS.EPOCHS": 1, "SOLVER.CHECKPOINT_PERIOD": 100,
        "CLS.EMA.ENABLED": False, "INPUT.FORMAT": "BGR",
        # bfloat16 autocast on the CPU and channels_last, as the ImageNet configs use them.
        "SOLVER.AMP.ENABLED": True, "CLS.CHANNELS_LAST": True}))
    assert result["num_samples"] == 3 and result["samples_seen"] == 8
    assert math.isfinite(result["loss"])
    assert result["top5_k"] == 2  # top-k accuracy itself: test_evaluate_counts_top1_and_top5
    lines = [m for m in _metrics(tmp_path / "out") if "loss" in m]
    assert [m["iteration"] for m in lines] == [1, 2]
    # The sampling statistics of every learned SSB block, on each step's line (issue 11).
    for m in lines:
        blocks = {k.split("/")[1] for k in m if k.startswith("ssb/")}
        assert {"res2.0", "res3.1", "res4.1"} <= blocks
        for b in blocks:
            assert m[f"ssb/{b}/density_ratio"] >= 1.0 and m[f"ssb/{b}/kl"] >= 0.0


# ------------------------------------------------------------------ end to end


@pytest.mark.slow
def test_pretrain_checkpoint_resume_export_and_load_into_faster_rcnn(tmp_path):
    crops = str(tmp_path / "crops")
    run1, run2 = tmp_path / "run1", tmp_path / "run2"
    short = {"SOLVER.MAX_ITER": 2, "SOLVER.CHECKPOINT_PERIOD": 1, "CLS.DATA.EVAL_BATCH_SIZE": 64}
    result1 = main(["--config-file", SHAPES_CONFIG] + _tiny_overrides(run1, crops, **short))
    assert result1["samples_seen"] == 8 and result1["num_samples"] > 0
    assert os.path.isfile(run1 / "model_0000001.pth") and os.path.isfile(run1 / "model_final.pth")
    assert [m["iteration"] for m in _metrics(run1) if "loss" in m] == [1, 2]
    assert glob.glob(str(run1 / "events.out.tfevents.*"))  # TensorBoard

    # Resume from the iteration-1 checkpoint in a fresh directory: it must continue at 2 and
    # end exactly where the uninterrupted run ended.
    os.makedirs(run2)
    shutil.copy(run1 / "model_0000001.pth", run2 / "model_0000001.pth")
    (run2 / "last_checkpoint").write_text("model_0000001.pth")
    exported = str(tmp_path / "ssb_r50_d2.pth")
    result2 = main(["--config-file", SHAPES_CONFIG, "--resume", "--export-d2", exported]
                   + _tiny_overrides(run2, crops, **short))
    assert [m["iteration"] for m in _metrics(run2) if "loss" in m] == [2]
    assert result2["samples_seen"] == 8
    final1, final2 = load_pth(str(run1 / "model_final.pth")), load_pth(str(run2 / "model_final.pth"))
    assert final2["iteration"] == 2
    for name, t in final1["model"].items():
        assert torch.equal(final2["model"][name], t), name
    for name, t in final1["ema"]["module"].items():
        assert torch.equal(final2["ema"]["module"][name], t), name
    assert result2["top1"] == result1["top1"] and result2["ema_top1"] == result1["ema_top1"]

    # --eval-only of the final checkpoint reproduces the final evaluation.
    result3 = main(["--config-file", SHAPES_CONFIG, "--eval-only"] + _tiny_overrides(
        tmp_path / "eval", crops, **short, **{"MODEL.WEIGHTS": str(run1 / "model_final.pth")}))
    assert (result3["top1"], result3["ema_top1"]) == (result1["top1"], result1["ema_top1"])

    # The export holds the EMA backbone under Detectron2's ResNet names ...
    export = load_pth(exported)
    ema_backbone = {k[len("backbone."):]: v for k, v in final2["ema"]["module"].items()
                    if k.startswith("backbone.") and not k.endswith("num_batches_tracked")}
    assert set(export["model"]) == set(ema_backbone)
    assert export["matching_heuristics"] is True

    # ... and a Faster R-CNN with the SSB-R50-FPN backbone loads every backbone tensor.
    cfg = add_ssb_config(get_cfg())
    cfg.merge_from_file(model_zoo.get_config_file("COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml"))
    cfg.MODEL.BACKBONE.NAME = "build_ssb_resnet_fpn_backbone"
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = exported
    cfg.MODEL.RESNETS.STRIDE_IN_1X1 = False
    cfg.INPUT.FORMAT = "RGB"
    cfg.MODEL.PIXEL_MEAN = [123.675, 116.280, 103.530]
    cfg.MODEL.PIXEL_STD = [58.395, 57.120, 57.375]
    assert conventions_mismatch(cfg, export["conventions"]) == []
    model = build_model(cfg)
    bottom_up = model.backbone.bottom_up
    for checkpointer_class in (DetectionCheckpointer, SSBCheckpointer):
        with torch.no_grad():
            for t in bottom_up.state_dict().values():
                t.fill_(3.0)
        checkpointer = checkpointer_class(model)
        incompatible = checkpointer._load_model(checkpointer._load_file(cfg.MODEL.WEIGHTS))
        assert [k for k in incompatible.missing_keys if k.startswith("backbone.bottom_up.")] == []
        assert not incompatible.incorrect_shapes
        state = bottom_up.state_dict()
        assert set(state) == set(ema_backbone)  # FrozenBN: no BN counters on either side
        for name, t in state.items():
            assert torch.equal(t, ema_backbone[name]), name
    # The public entry point too (as train_net calls it).
    with torch.no_grad():
        bottom_up.res4[1].sampler.saliency_conv.weight.fill_(3.0)
    DetectionCheckpointer(model).resume_or_load(cfg.MODEL.WEIGHTS, resume=False)
    assert torch.equal(bottom_up.res4[1].sampler.saliency_conv.weight,
                       ema_backbone["res4.1.sampler.saliency_conv.weight"])


def _run(cmd, env_extra):
    env = dict(os.environ, OMP_NUM_THREADS="1", MPLBACKEND="Agg", **env_extra)
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def _relative_error(a, b):
    """||a - b|| / ||b|| over lists of tensors, in float64."""
    a = torch.cat([t.double().flatten() for t in a])
    b = torch.cat([t.double().flatten() for t in b])
    return float((a - b).norm() / b.norm())


@pytest.mark.slow
def test_two_process_ddp_trains_the_same_model_as_one_process(tmp_path):
    # 2 processes x 2 images and 1 process x 4 images see the same images at every step. With
    # per-process BN (the default) they would compute different functions (each rank
    # normalises by its own 2 images), so both use Detectron2's naiveSyncBN (statistics
    # all-reduced; gloo on the CPU), which is BatchNorm2d in one process. Solid-colour
    # images and no dropout / RandAugment make the augmentation, whose RNG is seeded per rank,
    # give every rank the pixels the one process sees.
    _image_folder(str(tmp_path / "data"), {"train": {"a": 6, "b": 6}, "val": {"a": 2, "b": 3}},
                  solid=True)
    extra = {"CLS.DATA.ROOT": str(tmp_path / "data"), "CLS.DATA.TRAIN_SPLIT": "train",
             "CLS.DATA.VAL_SPLIT": "val", "SOLVER.MAX_ITER": 3, "SOLVER.CHECKPOINT_PERIOD": 1,
             "CLS.EMA.ENABLED": False, "MODEL.RESNETS.NORM": "naiveSyncBN",
             "CLS.DROPOUT": 0.0, "CLS.INPUT.RANDAUGMENT_OPS": 0,
             # BASE_LR 0.05 unscaled: updates well above float rounding.
             "CLS.LR_REFERENCE_BATCH": 0}
    common = ["--config-file", SHAPES_CONFIG]
    script = os.path.join(REPO, "tools", "pretrain_cls.py")
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc_per_node", "2"]
    _run(torchrun + [script] + common + _tiny_overrides(tmp_path / "ddp", "", **extra), {})
    _run([sys.executable, script] + common + _tiny_overrides(tmp_path / "one", "", **extra), {})

    ddp, one = _metrics(tmp_path / "ddp"), _metrics(tmp_path / "one")
    ddp_train, one_train = [m for m in ddp if "loss" in m], [m for m in one if "loss" in m]
    assert [m["samples_seen"] for m in ddp_train] == [m["samples_seen"] for m in one_train] \
        == [4, 8, 12]
    ddp_loss, one_loss = [m["loss"] for m in ddp_train], [m["loss"] for m in one_train]
    assert ddp[-1]["val/num_samples"] == one[-1]["val/num_samples"] == 5

    def checkpoint(run, name):
        return load_pth(str(tmp_path / run / f"{name}.pth"))

    ddp_final, one_final = checkpoint("ddp", "model_final"), checkpoint("one", "model_final")
    ddp_before, one_before = checkpoint("ddp", "model_0000002"), checkpoint("one", "model_0000002")
    assert ddp_final["samples_seen"] == 12
    # BN step counters and running_var are left out: naiveSyncBN counts no steps and updates
    # running_var with the biased batch variance, BatchNorm2d (what it is in one process)
    # counts them and uses the unbiased variance.
    names = [k for k, v in one_final["model"].items()
             if v.is_floating_point() and not k.endswith("running_var")]
    buffers = sorted(one_final["optimizer"]["state"])
    assert sorted(ddp_final["optimizer"]["state"]) == buffers != []
    # Relative errors, measured: weights 7e-7, last update 2e-5, SGD momentum (the summed
    # gradients) 1e-4, losses 1e-5: float32 rounding (batch-2 vs batch-4 kernels, all-reduce
    # order, and naiveSyncBN's E[x^2] - E[x]^2 variance, which cancels much on solid-colour
    # images). Without gradient averaging (DDP wrapper removed): 1e-2, 0.3, 1.7, 0.7. Each
    # bound sits about midway (log scale) between the two.
    errors = {
        "weights": _relative_error([ddp_final["model"][k] for k in names],
                                   [one_final["model"][k] for k in names]),
        "last update": _relative_error(
            [ddp_final["model"][k] - ddp_before["model"][k] for k in names],
            [one_final["model"][k] - one_before["model"][k] for k in names]),
        "momentum": _relative_error(
            [ddp_final["optimizer"]["state"][i]["momentum_buffer"] for i in buffers],
            [one_final["optimizer"]["state"][i]["momentum_buffer"] for i in buffers]),
        "losses": _relative_error([torch.tensor(ddp_loss)], [torch.tensor(one_loss)]),
    }
    bounds = {"weights": 1e-4, "last update": 1e-3, "momentum": 1e-2, "losses": 1e-3}
    assert all(errors[k] < bounds[k] for k in bounds), errors


def test_evaluate_counts_top1_and_top5():
    # 7 classes, fixed logits: each image's label ranks 1st, 3rd, 5th or 6th; top-5 counts
    # the first three kinds only (top-5 with 2 classes would be 100 % by definition).
    from ssb_det.classification import get_pretrain_cfg
    from ssb_det.classification.engine import evaluate

    ranks = [1, 3, 5, 6, 1, 6, 3, 2]  # rank of the label among the 7 scores, per image
    logits, labels = [], []
    for i, rank in enumerate(ranks):
        scores = torch.arange(7, 0, -1, dtype=torch.float32)  # class c ranks c + 1
        perm = torch.randperm(7, generator=torch.Generator().manual_seed(i))
        logits.append(scores[perm])  # class j scores 7 - perm[j]: it ranks perm[j] + 1
        labels.append(int((perm == rank - 1).nonzero()))

    class Fixed(nn.Module):
        num_classes = 7

        def forward(self, images):
            return torch.stack([logits[int(i)] for i in images[:, 0, 0, 0]])

    dataset = [(torch.full((3, 2, 2), i, dtype=torch.uint8), labels[i]) for i in range(len(ranks))]
    cfg = get_pretrain_cfg()
    cfg.MODEL.DEVICE = "cpu"
    cfg.CLS.DATA.EVAL_BATCH_SIZE = 3
    cfg.DATALOADER.NUM_WORKERS = 0
    result = evaluate(Fixed(), dataset, cfg)
    assert result["top5_k"] == 5 and result["num_samples"] == 8
    assert result["top1"] == pytest.approx(100.0 * 2 / 8)
    assert result["top5"] == pytest.approx(100.0 * 6 / 8)


@pytest.mark.slow
def test_botnet_s1_pretrain_twins_build_the_s1_family_and_train(tmp_path):
    # The S1-59 pair, narrow (WIDTH_PER_GROUP 4): c5 of six attention blocks at stride 16,
    # twins differing in the saliency convs only; the SSB one trains two steps.
    from ssb_det.modeling import BoTBlock, SSBBoTBlock

    _image_folder(str(tmp_path / "data"), {"train": {"a": 4, "b": 4}, "val": {"a": 1, "b": 1}})
    narrow = {"MODEL.RESNETS.WIDTH_PER_GROUP": 4, "MODEL.RESNETS.RES2_OUT_CHANNELS": 16,
              "MODEL.RESNETS.STEM_OUT_CHANNELS": 8, "CLS.DATA.ROOT": str(tmp_path / "data"),
              "CLS.DATA.TRAIN_SPLIT": "train", "CLS.DATA.VAL_SPLIT": "val", "SOLVER.MAX_ITER": 2,
              "CLS.EMA.ENABLED": False, "SOLVER.AMP.ENABLED": False, "CLS.CHANNELS_LAST": False}
    trainers = {}
    for name in ("ssb_botnet_s1_59_imagenet.yaml", "botnet_s1_59_imagenet.yaml"):
        cfg = get_pretrain_cfg()
        cfg.merge_from_file(os.path.join(CONFIG_DIR, name))
        cfg.merge_from_list(_tiny_overrides(tmp_path / name, "", **narrow))
        cfg.freeze()
        trainers[name] = ClassificationTrainer(cfg)
    ssb, plain = (trainers[n].model for n in ("ssb_botnet_s1_59_imagenet.yaml",
                                              "botnet_s1_59_imagenet.yaml"))
    assert [len(s) for s in ssb.backbone.stages] == [3, 4, 6, 6]
    assert [type(b) for b in ssb.backbone.res5] == [SSBBoTBlock] * 6
    assert [type(b) for b in plain.backbone.res5] == [BoTBlock] * 6
    assert ssb.backbone.output_shape()["res5"].stride == 16
    names = {k for k, _ in ssb.named_parameters()}
    plain_names = {k for k, _ in plain.named_parameters()}
    assert names - plain_names == {n for n in names if "saliency_conv" in n} != set()
    assert plain_names <= names
    result = trainers["ssb_botnet_s1_59_imagenet.yaml"].train()
    assert math.isfinite(result["loss"])
