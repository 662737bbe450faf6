"""End to end on the embedded dataset: train -> checkpoints/metrics/events -> --eval-only ->
--resume; Mask R-CNN with the SSB backbone trains a step; the demo; the missing-COCO error."""
import glob
import json
import math
import os
import shutil
import subprocess
import sys

import pytest
import torch
from detectron2.engine import default_argument_parser

from ssb_det.data import CATEGORIES
from ssb_det.engine import EVAL_RESULTS_FILE, Trainer, main, setup
from subprocess_env import env_with_test_datasets

pytestmark = pytest.mark.slow

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
QUICKSTART = os.path.join(REPO, "configs", "quickstart", "faster_rcnn_SSB_R_50_FPN_shapes.yaml")
MASK_CONFIG = os.path.join(REPO, "configs", "COCO-InstanceSegmentation",
                           "mask_rcnn_SSB_R_50_FPN_1x.yaml")
# The quickstart config on the tests' 16/8-image splits, 4 iterations of 2 images, a
# checkpoint every 2 iterations, fewer proposals: seconds, not minutes.
TINY = ["DATASETS.TRAIN", "('ssb_shapes_mini_train',)", "DATASETS.TEST", "('ssb_shapes_mini_val',)",
        "SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", "4", "SOLVER.CHECKPOINT_PERIOD", "2",
        "SOLVER.WARMUP_ITERS", "2", "SOLVER.STEPS", "()", "MODEL.RPN.POST_NMS_TOPK_TRAIN", "64",
        "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "32", "MODEL.RPN.POST_NMS_TOPK_TEST", "50",
        "DATALOADER.NUM_WORKERS", "0", "MODEL.DEVICE", "cpu"]
AP_KEYS = {"AP", "AP50", "AP75", "APs", "APm", "APl"} | {f"AP-{c}" for c in CATEGORIES}


def run_cli(script, *args, cwd=REPO, check=True):
    env = env_with_test_datasets(dict(
        os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"), MPLBACKEND="Agg"))
    proc = subprocess.run([sys.executable, os.path.join(REPO, "tools", script), *args],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"{script} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n"
                             f"{proc.stderr[-3000:]}")
    return proc


def parse_args(*argv):
    return default_argument_parser().parse_args(list(argv))


def metrics(output_dir):
    with open(os.path.join(output_dir, "metrics.json")) as f:
        return [json.loads(line) for line in f if line.strip()]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One 4-iteration training run through the real command line."""
    out = str(tmp_path_factory.mktemp("train") / "run")
    proc = run_cli("train_net.py", "--config-file", QUICKSTART, *TINY, "OUTPUT_DIR", out)
    return out, proc.stdout + proc.stderr


def test_training_writes_checkpoints_metrics_events_and_evaluation(trained):
    out, log = trained
    for name in ("model_0000001.pth", "model_0000003.pth", "model_final.pth", "last_checkpoint",
                 "config.yaml", "log.txt"):
        assert os.path.isfile(os.path.join(out, name)), name
    with open(os.path.join(out, "last_checkpoint")) as f:
        assert f.read().strip() == "model_final.pth"
    assert glob.glob(os.path.join(out, "events.out.tfevents.*"))
    rows = [r for r in metrics(out) if "total_loss" in r]
    assert [r["iteration"] for r in rows] == [3]  # the writer's period is 20; the last is written
    assert math.isfinite(rows[0]["total_loss"]) and rows[0]["lr"] > 0
    assert "eta:" in log and "Starting training from iteration 0" in log
    # The final evaluation: pycocotools COCOeval, per-category table, results JSONs.
    assert "Per-category bbox AP" in log and "copypaste: AP,AP50,AP75,APs,APm,APl" in log
    assert os.path.isfile(os.path.join(out, "inference", "ssb_shapes_mini_val",
                                       "coco_instances_results.json"))
    with open(os.path.join(out, "inference", EVAL_RESULTS_FILE)) as f:
        assert set(json.load(f)["ssb_shapes_mini_val"]["bbox"]) == AP_KEYS
    # Saved through SSBCheckpointer: a plain state dict readable with weights_only=True.
    ckpt = torch.load(os.path.join(out, "model_final.pth"), weights_only=True)
    assert ckpt["iteration"] == 3 and ckpt["trainer"]["iteration"] == 3
    assert "optimizer" in ckpt["trainer"]["_trainer"]
    assert any(k.endswith("LRScheduler") for k in ckpt["trainer"]["hooks"])
    assert any(k.endswith("sampler.saliency_conv.weight") for k in ckpt["model"])


def test_eval_only_returns_the_ap_dict(trained, tmp_path):
    out, _ = trained
    results = main(parse_args("--config-file", QUICKSTART, "--eval-only", *TINY,
                              "MODEL.WEIGHTS", os.path.join(out, "model_final.pth"),
                              "OUTPUT_DIR", str(tmp_path)))
    assert set(results) == {"bbox"}
    assert set(results["bbox"]) == AP_KEYS
    for key, value in results["bbox"].items():
        assert isinstance(value, float) and (math.isnan(value) or 0.0 <= value <= 100.0), key
    with open(os.path.join(str(tmp_path), "inference", EVAL_RESULTS_FILE)) as f:
        written = json.load(f)["ssb_shapes_mini_val"]["bbox"]
    assert written["AP50"] == pytest.approx(results["bbox"]["AP50"])


def test_resume_continues_at_the_saved_iteration(trained, tmp_path):
    out = str(tmp_path / "run")
    shutil.copytree(trained[0], out)
    with open(os.path.join(out, "last_checkpoint"), "w") as f:
        f.write("model_0000001.pth")  # pretend the run stopped after iteration 1
    before = torch.load(os.path.join(out, "model_0000001.pth"), weights_only=True)
    cfg_args = ["--config-file", QUICKSTART, *TINY, "OUTPUT_DIR", out, "SOLVER.MAX_ITER", "3",
                "DATASETS.TEST", "()"]
    trainer = Trainer(setup(parse_args("--resume", *cfg_args)))
    trainer.resume_or_load(resume=True)
    assert trainer.start_iter == 2
    loaded = trainer.checkpointer.model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in before["model"].items())
    # The optimizer's momentum buffers come back too, not only the weights.
    saved_state = before["trainer"]["_trainer"]["optimizer"]["state"]
    restored_state = trainer.optimizer.state_dict()["state"]
    assert saved_state and saved_state.keys() == restored_state.keys()
    assert all(torch.equal(saved_state[k]["momentum_buffer"], restored_state[k]["momentum_buffer"])
               for k in saved_state)
    trainer.train()
    assert trainer.iter == trainer.max_iter == 3  # the loop ran from 2 to the end
    rows = [r for r in metrics(out) if "total_loss" in r]
    assert [r["iteration"] for r in rows] == [3, 2]  # appended to the first run's metrics
    ckpt = torch.load(os.path.join(out, "model_final.pth"), weights_only=True)
    assert ckpt["iteration"] == 2


def test_mask_rcnn_with_ssb_backbone_trains_a_step_with_masks(tmp_path):
    args = parse_args("--config-file", MASK_CONFIG, *TINY, "MODEL.WEIGHTS", "",
                      "MODEL.ROI_HEADS.NUM_CLASSES", str(len(CATEGORIES)),
                      "INPUT.MIN_SIZE_TRAIN", "(144,)", "INPUT.MAX_SIZE_TRAIN", "192",
                      "SOLVER.MAX_ITER", "1", "SOLVER.BASE_LR", "0.001", "DATASETS.TEST", "()",
                      "OUTPUT_DIR", str(tmp_path))
    trainer = Trainer(setup(args))
    trainer.resume_or_load(resume=False)
    mask_head = trainer.model.roi_heads.mask_head
    before = {k: v.clone() for k, v in mask_head.state_dict().items()}
    trainer.train()
    (row,) = [r for r in metrics(str(tmp_path)) if "total_loss" in r]
    assert math.isfinite(row["loss_mask"]) and row["loss_mask"] > 0
    after = mask_head.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)  # masks got gradients
    assert trainer.model.backbone.bottom_up.res2[0].__class__.__name__ == "SSBBottleneckBlock"


def test_demo_writes_png_and_json_and_skips_unreadable_files(trained, tmp_path):
    out, _ = trained
    from ssb_det.data import get_shapes_split

    image_dir, _ = get_shapes_split("mini_val")
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for name in ("000000.png", "000001.png"):
        shutil.copy(os.path.join(image_dir, name), inputs / name)
    (inputs / "broken.png").write_bytes(b"this is not an image")
    result_dir = tmp_path / "demo"
    proc = run_cli("demo.py", "--config-file", QUICKSTART,
                   "--input", str(inputs), os.path.join(image_dir, "00000[23].png"),
                   os.path.join(image_dir, "000000.png"),
                   "--output", str(result_dir), "--confidence-threshold", "0.0",
                   "--opts", *TINY, "MODEL.WEIGHTS", os.path.join(out, "model_final.pth"))
    assert "unreadable image" in proc.stderr + proc.stdout
    assert str(inputs / "broken.png") in proc.stderr + proc.stdout
    with open(result_dir / "predictions.json") as f:
        report = json.load(f)
    assert [os.path.basename(i["file_name"]) for i in report["images"]] == [
        "000000.png", "000001.png", "000002.png", "000003.png", "000000.png"]
    assert [s["file_name"] for s in report["skipped"]] == [str(inputs / "broken.png")]
    for item in report["images"]:
        assert os.path.isfile(item["output"]) and item["output"].endswith(".png")
        assert (item["height"], item["width"]) == (144, 192)
        for det in item["instances"]:
            assert det["category_name"] in CATEGORIES and 0.0 <= det["score"] <= 1.0
            x0, y0, x1, y1 = det["bbox_xyxy"]
            assert 0 <= x0 <= x1 <= 192 and 0 <= y0 <= y1 <= 144
    # Two files of the same name (000000.png from two folders) do not overwrite each other.
    assert os.path.basename(report["images"][-1]["output"]) == "000000_1.png"


def test_missing_coco_is_a_clear_error(tmp_path):
    env_free = tmp_path / "empty"
    env_free.mkdir()
    proc = run_cli("train_net.py", "--config-file", os.path.join(REPO, "configs",
                                                                 "ssb_r50_fpn_1x.yaml"),
                   "OUTPUT_DIR", str(tmp_path / "out"), "MODEL.DEVICE", "cpu",
                   cwd=str(env_free), check=False)
    err = proc.stderr
    assert proc.returncode != 0
    assert "dataset 'coco_2017_train' not found" in err
    assert os.path.join(str(env_free), "datasets", "coco", "annotations",
                        "instances_train2017.json") in err
    assert "DETECTRON2_DATASETS" in err and "run_quickstart.sh" in err
    assert "Traceback" not in err


def test_report_prints_the_ap_table_of_a_run(trained, capsys):
    from ssb_det.engine import report

    assert report.main([trained[0]]) == 0
    table = capsys.readouterr().out
    assert "bbox AP on ssb_shapes_mini_val:" in table
    header = [c.strip() for c in table.splitlines()[2].strip("|").split("|")]
    assert header == ["run", "AP", "AP50", "AP75", "APs", "APm", "APl"] + [
        f"AP-{c}" for c in CATEGORIES]
    assert table.splitlines()[4].startswith("| run |")
