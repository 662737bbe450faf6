"""Every shipped detection config builds and runs one CPU forward; twins differ as documented."""
import functools
import json
import math
import glob
import os

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_model

import ssb_det
from ssb_det.engine import setup
from ssb_det.modeling import BoTBlock, SSBBoTBlock, SSBBottleneckBlock

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_DIR = os.path.join(REPO, "configs")
# configs/pretrain/ (classification) and configs/lazy/ (LazyConfig) are tested elsewhere.
DETECTION_CONFIGS = sorted(
    os.path.relpath(p, CONFIG_DIR)
    for pattern in ("*.yaml", "COCO-Detection/*.yaml", "COCO-InstanceSegmentation/*.yaml",
                    "quickstart/*.yaml")
    for p in glob.glob(os.path.join(CONFIG_DIR, pattern))
)
BUILDABLE = [c for c in DETECTION_CONFIGS if not os.path.basename(c).startswith("Base-")]


def load_cfg(name, opts=()):
    cfg = get_cfg()
    ssb_det.add_ssb_config(cfg)
    cfg.merge_from_file(os.path.join(CONFIG_DIR, name))
    cfg.merge_from_list(list(opts))
    return cfg


def flat(cfg, prefix=""):
    out = {}
    for k, v in cfg.items():
        if isinstance(v, dict):
            out.update(flat(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def diff(a, b):
    fa, fb = flat(a), flat(b)
    return {k: (fa.get(k), fb.get(k)) for k in set(fa) | set(fb) if fa.get(k) != fb.get(k)}


def test_layout_is_complete():
    expected = {"ssb_r50_fpn_1x.yaml", "Base-SSB-RCNN-FPN.yaml",
                "quickstart/faster_rcnn_SSB_R_50_FPN_shapes.yaml",
                "quickstart/faster_rcnn_R_50_FPN_shapes.yaml",
                "quickstart/Base-Shapes-FPN-small.yaml"}
    for arch, folder in (("faster_rcnn", "COCO-Detection"),
                         ("mask_rcnn", "COCO-InstanceSegmentation")):
        for backbone in ("R_50", "R_101", "RS_50"):
            for sched in ("1x", "3x"):
                expected.add(f"{folder}/{arch}_SSB_{backbone}_FPN_{sched}.yaml")
                expected.add(f"{folder}/{arch}_{backbone}_FPN_{sched}.yaml")
        expected.add(f"{folder}/{arch}_SSB_R_50_FPN_1x_res2full.yaml")
        expected.add(f"{folder}/{arch}_SSB_BoT_50_FPN_1x.yaml")
        expected.add(f"{folder}/{arch}_BoT_50_FPN_1x.yaml")
    expected.add("quickstart/faster_rcnn_SSB_BoT_50_FPN_shapes.yaml")
    expected.add("quickstart/faster_rcnn_BoT_50_FPN_shapes.yaml")
    assert expected <= set(DETECTION_CONFIGS), sorted(expected - set(DETECTION_CONFIGS))
    assert len(DETECTION_CONFIGS) == 37


@functools.lru_cache(maxsize=None)
def _forward_outputs(model_dump):
    """Build the model a config's MODEL node describes and run one 64x48 inference."""
    cfg = get_cfg()
    ssb_det.add_ssb_config(cfg)
    cfg.MODEL.merge_from_other_cfg(type(cfg).load_cfg(model_dump))
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    image = torch.rand(3, 48, 64) * 255
    with torch.no_grad():
        out = model([{"image": image, "height": 48, "width": 64}])
    n_ssb = sum(isinstance(m, SSBBottleneckBlock) for m in model.modules())
    bot = [type(b) for b in model.backbone.bottom_up.res5 if isinstance(b, BoTBlock)]
    return out, n_ssb, type(model.backbone.bottom_up.stem).__name__, bot


@pytest.mark.parametrize("name", BUILDABLE)
def test_config_builds_and_runs_one_forward(name):
    cfg = load_cfg(name)
    # 1x and 3x configs of one model share the built model (the MODEL node is the key).
    out, n_ssb, stem, bot = _forward_outputs(cfg.MODEL.dump())
    assert len(out) == 1
    inst = out[0]["instances"]
    assert inst.image_size == (48, 64)
    assert inst.pred_boxes.tensor.shape[1] == 4
    assert inst.has("scores") and inst.has("pred_classes")
    assert inst.has("pred_masks") == cfg.MODEL.MASK_ON
    if cfg.MODEL.MASK_ON:
        assert inst.pred_masks.shape[1:] == (48, 64)
    # Stride-1 blocks of sampled stages (ratio < 1) are SSB blocks in SSB configs, none in
    # twins: all of res2 (its first block has stride 1), all but the strided first of res3-res5.
    stride1 = {50: (3, 3, 5, 2), 101: (3, 3, 22, 2)}[cfg.MODEL.RESNETS.DEPTH]
    botnet = cfg.MODEL.SSB.HOST == "botnet"
    stages = stride1[:3] if botnet else stride1  # the botnet host's res5 is BoT blocks
    expected = sum(n for n, r in zip(stages, cfg.MODEL.SSB.RATIOS) if r < 1.0)
    assert n_ssb == (expected if cfg.MODEL.SSB.ENABLED else 0)
    # The botnet host: all three res5 blocks attend, sampled (SSB-BoT) unless the twin.
    sampled_res5 = cfg.MODEL.SSB.ENABLED and cfg.MODEL.SSB.RATIOS[3] < 1.0
    assert bot == ([SSBBoTBlock if sampled_res5 else BoTBlock] * 3 if botnet else [])
    assert stem == ("RSStem" if cfg.MODEL.SSB.HOST == "resnet-rs" else "BasicStem")


@pytest.mark.parametrize("name", [c for c in BUILDABLE if "rcnn_" in c and "_SSB_" not in c])
def test_baseline_twin_differs_only_in_ssb_enabled(name):
    twin = os.path.join(os.path.dirname(name),
                        os.path.basename(name).replace("rcnn_", "rcnn_SSB_", 1))
    differences = diff(load_cfg(twin), load_cfg(name))
    if name.startswith("quickstart/"):  # each quickstart run has its own output folder
        assert differences.pop("OUTPUT_DIR")[1].endswith(os.path.basename(name)[:-len(".yaml")])
    assert differences == {"MODEL.SSB.ENABLED": (True, False)}


@pytest.mark.parametrize("name", [c for c in BUILDABLE if c.endswith("_res2full.yaml")])
def test_res2full_differs_from_its_default_only_in_res2s_ratio(name):
    default = name.replace("_1x_res2full.yaml", "_1x.yaml")
    assert diff(load_cfg(default), load_cfg(name)) == {
        "MODEL.SSB.RATIOS": ([0.5, 0.5, 0.5, 1.0], [1.0, 0.5, 0.5, 1.0])}


@pytest.mark.parametrize("name", [c for c in BUILDABLE if c.endswith("_3x.yaml")])
def test_3x_differs_from_1x_only_in_schedule(name):
    one_x = name.replace("_3x.yaml", "_1x.yaml")
    assert diff(load_cfg(one_x), load_cfg(name)) == {
        "SOLVER.STEPS": ((60000, 80000), (210000, 250000)),
        "SOLVER.MAX_ITER": (90000, 270000),
    }


def test_ssb_r50_fpn_1x_is_detectron2_r50_fpn_1x_with_the_ssb_backbone():
    zoo = pytest.importorskip("detectron2.model_zoo")
    try:
        zoo_file = zoo.get_config_file("COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml")
    except RuntimeError:
        pytest.skip("Detectron2's model-zoo configs are not installed")
    ref = get_cfg()
    ssb_det.add_ssb_config(ref)
    ref.merge_from_file(zoo_file)
    ours = load_cfg("ssb_r50_fpn_1x.yaml")
    assert diff(ref, ours) == {
        "MODEL.BACKBONE.NAME": ("build_resnet_fpn_backbone", "build_ssb_resnet_fpn_backbone")}
    assert ours.SOLVER.IMS_PER_BATCH == 16 and ours.SOLVER.BASE_LR == 0.02
    assert ours.SOLVER.STEPS == (60000, 80000) and ours.SOLVER.MAX_ITER == 90000
    assert ours.MODEL.SSB.ENABLED and not ours.MODEL.MASK_ON
    assert diff(ours, load_cfg("COCO-Detection/faster_rcnn_SSB_R_50_FPN_1x.yaml")) == {}


def test_resnet_rs_configs_use_the_torchvision_convention():
    for name in BUILDABLE:
        cfg = load_cfg(name)
        if cfg.MODEL.SSB.HOST == "resnet-rs":
            assert not cfg.MODEL.RESNETS.STRIDE_IN_1X1, name
            assert cfg.INPUT.FORMAT == "RGB", name
            assert list(cfg.MODEL.PIXEL_STD) == [58.395, 57.12, 57.375], name


def test_unknown_config_key_is_detectron2s_error(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text('_BASE_: "%s"\nMODEL:\n  SSB:\n    NOT_A_KEY: 1\n'
                   % os.path.join(CONFIG_DIR, "ssb_r50_fpn_1x.yaml"))
    with pytest.raises(KeyError, match="Non-existent config key: MODEL.SSB.NOT_A_KEY"):
        load_cfg(str(bad))

    class Args:
        config_file = os.path.join(CONFIG_DIR, "ssb_r50_fpn_1x.yaml")
        opts = ["MODEL.RESNETS.NOT_A_KEY", "1", "OUTPUT_DIR", str(tmp_path)]
        eval_only = False

    # yacs' merge_from_list reports unknown KEY VALUE pairs with an AssertionError.
    with pytest.raises(AssertionError, match="Non-existent key: MODEL.RESNETS.NOT_A_KEY"):
        setup(Args)


def test_weights_with_other_input_conventions_are_refused(tmp_path):
    from ssb_det.checkpoint import atomic_torch_save
    from ssb_det.engine import WeightsConventionError, check_weights_conventions

    rgb = {"INPUT.FORMAT": "RGB", "MODEL.PIXEL_STD": [58.395, 57.12, 57.375],
           "MODEL.RESNETS.STRIDE_IN_1X1": False}
    path = str(tmp_path / "converted.pth")
    atomic_torch_save({"model": {}, "conventions": rgb}, path)
    cfg = load_cfg("ssb_r50_fpn_1x.yaml", ["MODEL.WEIGHTS", path])  # MSRA: BGR, std 1, True
    with pytest.raises(WeightsConventionError) as err:
        check_weights_conventions(cfg)
    message = str(err.value)
    for key in rgb:
        assert key in message
    assert "Append to the command line: INPUT.FORMAT" in message
    # The same file with a config that follows its conventions passes.
    ok = load_cfg("ssb_r50_fpn_1x.yaml", ["MODEL.WEIGHTS", path, "INPUT.FORMAT", "RGB",
                                           "MODEL.PIXEL_STD", "[58.395, 57.12, 57.375]",
                                           "MODEL.RESNETS.STRIDE_IN_1X1", "False"])
    check_weights_conventions(ok)
    # Files without a record (MSRA .pkl, plain checkpoints) are not checked.
    atomic_torch_save({"model": {}}, str(tmp_path / "plain.pth"))
    check_weights_conventions(load_cfg("ssb_r50_fpn_1x.yaml",
                                       ["MODEL.WEIGHTS", str(tmp_path / "plain.pth")]))


@pytest.mark.parametrize("name", [c for c in BUILDABLE if "BoT_50" in c])
def test_botnet_configs_train_a_few_iterations(name, tmp_path):
    # The config itself (narrow host, the tests' mini split at 144x192, no COCO weights):
    # two iterations through Detectron2's trainer, every attention getting gradients.
    from detectron2.engine import default_argument_parser

    from narrow_host import NARROW_HOST_OPTS
    from ssb_det.data import CATEGORIES
    from ssb_det.engine import Trainer

    args = default_argument_parser().parse_args([
        "--config-file", os.path.join(CONFIG_DIR, name), *NARROW_HOST_OPTS,
        "MODEL.WEIGHTS", "", "MODEL.DEVICE", "cpu", "DATALOADER.NUM_WORKERS", "0",
        "DATASETS.TRAIN", "('ssb_shapes_mini_train',)", "DATASETS.TEST", "()",
        "MODEL.ROI_HEADS.NUM_CLASSES", str(len(CATEGORIES)), "INPUT.MIN_SIZE_TRAIN", "(144,)",
        "INPUT.MAX_SIZE_TRAIN", "192", "SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", "2",
        "SOLVER.BASE_LR", "0.001", "SOLVER.STEPS", "()", "SOLVER.WARMUP_ITERS", "1",
        "SOLVER.CHECKPOINT_PERIOD", "100", "MODEL.RPN.POST_NMS_TOPK_TRAIN", "64",
        "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "32", "OUTPUT_DIR", str(tmp_path)])
    trainer = Trainer(setup(args))
    trainer.resume_or_load(resume=False)
    res5 = trainer.model.backbone.bottom_up.res5
    before = [b.attn.qkv.weight.detach().clone() for b in res5]
    trainer.train()
    assert all(isinstance(b, BoTBlock) for b in res5)
    for b, w in zip(res5, before):
        assert not torch.equal(b.attn.qkv.weight, w)  # trained
    with open(os.path.join(str(tmp_path), "metrics.json")) as f:
        rows = [json.loads(line) for line in f if "total_loss" in line]
    assert [r["iteration"] for r in rows][-1] == 1
    assert all(math.isfinite(r["total_loss"]) for r in rows)
