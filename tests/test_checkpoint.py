"""SSBCheckpointer: resuming into a model that does not fit is an error, initialising is not."""
import os

import pytest
import torch
from torch import nn

from ssb_det.checkpoint import SSBCheckpointer


def test_resume_with_a_mismatched_checkpoint_raises_and_keeps_the_file(tmp_path):
    SSBCheckpointer(nn.Sequential(nn.Linear(4, 3)), save_dir=str(tmp_path)).save("model_0000009")
    saved = (tmp_path / "model_0000009.pth").read_bytes()
    other = nn.Sequential(nn.Linear(4, 5))
    with pytest.raises(ValueError) as err:
        SSBCheckpointer(other, save_dir=str(tmp_path)).resume_or_load("", resume=True)
    msg = str(err.value)
    assert "model_0000009.pth" in msg and "shape of 0.weight" in msg and "(3, 4)" in msg
    assert (tmp_path / "model_0000009.pth").read_bytes() == saved


def test_initialising_from_mismatched_weights_only_skips_them(tmp_path):
    src = nn.Sequential(nn.Linear(4, 3))
    path = os.path.join(tmp_path, "init.pth")
    torch.save({"model": src.state_dict()}, path)
    dst = nn.Sequential(nn.Linear(4, 5))
    before = dst[0].weight.clone()
    SSBCheckpointer(dst, save_dir=str(tmp_path / "run")).resume_or_load(path, resume=True)
    assert torch.equal(dst[0].weight, before)  # skipped, as Detectron2 does for MODEL.WEIGHTS


def test_atomic_writes_get_the_mode_a_plain_open_gives(tmp_path):
    from ssb_det.checkpoint import atomic_path, atomic_torch_save

    plain = tmp_path / "plain.bin"
    plain.write_bytes(b"x")
    atomic_torch_save({"a": 1}, str(tmp_path / "saved.pth"))
    with atomic_path(str(tmp_path / "exported.onnx")) as tmp:
        with open(tmp, "wb") as f:
            f.write(b"graph")
    expected = os.stat(plain).st_mode & 0o777
    for name in ("saved.pth", "exported.onnx"):
        assert os.stat(tmp_path / name).st_mode & 0o777 == expected, name
