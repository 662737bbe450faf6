"""Training never loses progress (issue 6): atomic checkpoints, SIGKILL then --resume,
2-process CPU training through Detectron2's launch (gloo), same seed -> same losses."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

import ssb_det
from ssb_det.checkpoint import SSBCheckpointer, load_checkpoint_file
from narrow_host import NARROW_HOST_OPTS
from subprocess_env import env_with_test_datasets

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TRAIN_NET = os.path.join(ROOT, "tools", "train_net.py")
CONFIG = os.path.join(ROOT, "configs", "quickstart", "faster_rcnn_SSB_R_50_FPN_shapes.yaml")

# The quickstart pipeline (SSB-R50-FPN Faster R-CNN on the embedded dataset), made tiny:
# narrow widths, 64 px images, 2 images per batch; about 0.1 s per iteration on one core.
TINY = [
    "DATASETS.TRAIN", "('ssb_shapes_mini_train',)", "DATASETS.TEST", "()",
    "DATALOADER.NUM_WORKERS", "0", "MODEL.DEVICE", "cpu",
    "SOLVER.IMS_PER_BATCH", "2", "SOLVER.WARMUP_ITERS", "2",
    "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "96",
    *NARROW_HOST_OPTS, "MODEL.ROI_BOX_HEAD.FC_DIM", "32",
]
ENV = env_with_test_datasets(dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1"))


def train_cmd(out_dir, *opts, flags=()):
    return [sys.executable, TRAIN_NET, *flags, "--config-file", CONFIG, *TINY,
            "OUTPUT_DIR", str(out_dir), *opts]


def run_training(out_dir, *opts, flags=(), timeout=240):
    proc = subprocess.run(train_cmd(out_dir, *opts, flags=flags), capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env=ENV)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc


def metrics(out_dir):
    with open(os.path.join(out_dir, "metrics.json")) as f:
        return [json.loads(line) for line in f if line.strip()]


def state(path):
    return load_checkpoint_file(path)


# ---------------------------------------------------------------------- atomic checkpoints


def _checkpointer(tmp_path, value):
    model = torch.nn.Linear(64, 64)
    torch.nn.init.constant_(model.weight, value)
    return SSBCheckpointer(model, save_dir=str(tmp_path)), model


def test_crash_mid_save_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    checkpointer, _ = _checkpointer(tmp_path, 1.0)
    checkpointer.save("model_final", iteration=10)
    path = tmp_path / "model_final.pth"
    good = path.read_bytes()

    real_save = torch.save

    def save_half_then_fail(obj, f, *args, **kwargs):
        # Write a real, but truncated, checkpoint into the file, then die (disk full, OOM,
        # preemption...).
        import io

        buf = io.BytesIO()
        real_save(obj, buf, *args, **kwargs)
        f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
        raise OSError("No space left on device")

    checkpointer2, _ = _checkpointer(tmp_path, 2.0)
    monkeypatch.setattr(torch, "save", save_half_then_fail)
    with pytest.raises(OSError, match="No space left"):
        checkpointer2.save("model_final", iteration=20)
    monkeypatch.undo()
    assert path.read_bytes() == good
    loaded = state(str(path))
    assert loaded["iteration"] == 10 and torch.all(loaded["model"]["weight"] == 1.0)
    assert (tmp_path / "last_checkpoint").read_text() == "model_final.pth"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last_checkpoint", "model_final.pth"]


def test_sigkill_mid_save_leaves_the_previous_checkpoint_intact(tmp_path):
    # A process killed (SIGKILL: no cleanup, no exception handler) half-way through writing.
    script = textwrap.dedent(f"""
        import io, os, signal, sys, torch
        import ssb_det
        from ssb_det.checkpoint import SSBCheckpointer
        model = torch.nn.Linear(64, 64)
        ckpt = SSBCheckpointer(model, save_dir={str(tmp_path)!r})
        torch.nn.init.constant_(model.weight, 1.0)
        ckpt.save("model_0000009", iteration=9)
        torch.nn.init.constant_(model.weight, 2.0)
        real_save = torch.save
        def save_half_then_die(obj, f, *a, **k):
            buf = io.BytesIO()
            real_save(obj, buf, *a, **k)
            f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
            f.flush()
            os.fsync(f.fileno())
            os.kill(os.getpid(), signal.SIGKILL)
        torch.save = save_half_then_die
        ckpt.save("model_0000009", iteration=19)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120, env=ENV)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    loaded = state(str(tmp_path / "model_0000009.pth"))
    assert loaded["iteration"] == 9 and torch.all(loaded["model"]["weight"] == 1.0)
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000009.pth"
    # What a kill leaves behind: one hidden temporary file, never under a checkpoint's name.
    leftovers = [p.name for p in tmp_path.iterdir()
                 if p.name not in ("model_0000009.pth", "last_checkpoint")]
    assert len(leftovers) == 1 and leftovers[0].startswith(".model_0000009.pth.")
    assert leftovers[0].endswith(".tmp")


def test_crash_while_tagging_keeps_the_previous_last_checkpoint(tmp_path, monkeypatch):
    checkpointer, _ = _checkpointer(tmp_path, 1.0)
    checkpointer.save("model_0000004", iteration=4)

    def failing_fsync(fd):
        raise OSError("I/O error")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OSError):
        checkpointer.save("model_0000009", iteration=9)
    monkeypatch.undo()
    # The new checkpoint never became visible and the pointer still names the old one.
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000004.pth"
    assert not (tmp_path / "model_0000009.pth").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


# ------------------------------------------------------------------------- training runs


@pytest.mark.slow
def test_sigkill_mid_training_then_resume_continues_and_finishes(tmp_path):
    out = tmp_path / "run"
    opts = ["SOLVER.MAX_ITER", "30", "SOLVER.CHECKPOINT_PERIOD", "10", "SOLVER.STEPS", "(15,)",
            "SOLVER.BASE_LR", "0.01", "SEED", "3"]
    log = open(tmp_path / "first.log", "w")
    proc = subprocess.Popen(train_cmd(out, *opts), stdout=log, stderr=subprocess.STDOUT,
                            cwd=ROOT, env=ENV)
    first_ckpt = out / "model_0000009.pth"
    deadline = time.time() + 240
    try:
        while time.time() < deadline and proc.poll() is None:
            tag = out / "last_checkpoint"
            if first_ckpt.exists() and tag.exists() and tag.read_text() == first_ckpt.name:
                break
            time.sleep(0.02)
        assert proc.poll() is None, "training ended before it could be killed: " + \
            open(tmp_path / "first.log").read()[-3000:]
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "model_final.pth").exists()
    assert state(str(first_ckpt))["iteration"] == 9

    resumed = run_training(out, *opts, flags=("--resume",))
    text = resumed.stdout + resumed.stderr
    assert f"Loading from {first_ckpt}" in text or "model_0000009.pth" in text
    # Detectron2 restarts after the checkpoint's iteration.
    assert "Starting training from iteration 10" in text, text[-3000:]
    final = state(str(out / "model_final.pth"))
    assert final["iteration"] == 29
    # The scheduler was restored too: after step 15 the learning rate is BASE_LR * 0.1.
    last = metrics(out)[-1]
    assert last["iteration"] == 29 and last["lr"] == pytest.approx(0.001)
    assert all(torch.isfinite(torch.tensor(last[k])) for k in last if k.startswith("loss"))


@pytest.mark.slow
def test_same_seed_same_machine_gives_identical_losses(tmp_path):
    opts = ["SOLVER.MAX_ITER", "6", "SOLVER.CHECKPOINT_PERIOD", "100", "SOLVER.STEPS", "()"]
    for name, seed in (("a", "5"), ("b", "5"), ("c", "6")):
        run_training(tmp_path / name, *opts, "SEED", seed)
    runs = {name: metrics(tmp_path / name)[-1] for name in "abc"}
    weights = {name: state(str(tmp_path / name / "model_final.pth"))["model"] for name in "abc"}
    loss_keys = [k for k in runs["a"] if k.startswith("loss") or k == "total_loss"]
    assert len(loss_keys) >= 4
    # Same seed: the same losses, bit for bit, and the same weights after 6 iterations.
    assert {k: runs["a"][k] for k in loss_keys} == {k: runs["b"][k] for k in loss_keys}
    assert all(torch.equal(weights["a"][k], weights["b"][k]) for k in weights["a"])
    # Another seed: different (the comparison above can fail).
    assert {k: runs["a"][k] for k in loss_keys} != {k: runs["c"][k] for k in loss_keys}


@pytest.mark.slow
def test_two_process_cpu_training_through_launch_with_gloo(tmp_path):
    out = tmp_path / "ddp"
    run_training(out, "SOLVER.MAX_ITER", "4", "SOLVER.CHECKPOINT_PERIOD", "100",
                 "SOLVER.STEPS", "()", "SEED", "1", flags=("--num-gpus", "2"), timeout=300)
    rank0 = (out / "log.txt").read_text()
    rank1 = (out / "log.txt.rank1").read_text()
    assert "World size: 2" in rank0 and "World size: 2" in rank1
    assert state(str(out / "model_final.pth"))["iteration"] == 3
    assert metrics(out)[-1]["iteration"] == 3
