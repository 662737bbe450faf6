"""Weights from the internet must not run code when loaded (issue 6, "Security").

Every test plants a payload that would create a marker file if it ran, and checks both that
loading fails with a clear error and that the marker does not exist.
"""
import argparse
import io
import os
import pickle
import re
import subprocess

import numpy as np
import pytest
import torch

import ssb_det
from ssb_det.checkpoint import (
    RestrictedUnpickler,
    SSBCheckpointer,
    UnsafeCheckpointError,
    load_checkpoint_file,
    load_pkl,
    load_pth,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class _Payload:
    """Pickles to "call ``func(*args)``": what a malicious weights file does."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _touch_payloads(marker):
    """Different ways of running code on unpickling; each creates ``marker`` if it runs."""
    return {
        "os.system": _Payload(os.system, f"touch '{marker}'"),
        "subprocess.call": _Payload(subprocess.call, ["touch", marker]),
        "builtins.exec": _Payload(exec, f"open({marker!r}, 'w').close()"),
        "builtins.open": _Payload(open, marker, "w"),
    }


def _raw_pickles(marker):
    """Hand-written protocol-0 pickles, including Python 2 names that ``fix_imports`` maps."""
    cmd = f"touch '{marker}'".encode()
    code = f"open({marker!r}, 'w').close()".encode()
    return {
        "posix.system": b"cposix\nsystem\n(S'" + cmd + b"'\ntR.",
        "__builtin__.eval (py2 name)": b"c__builtin__\neval\n(S'" + code + b"'\ntR.",
        "numpy.load": b"cnumpy\nload\n(S'" + marker.encode() + b"'\ntR.",
    }


@pytest.fixture
def marker(tmp_path):
    path = str(tmp_path / "code_was_executed")
    yield path
    assert not os.path.exists(path), "a weights file executed code"


def _weights(payload):
    """A weights dict that looks legitimate, with the payload hidden among the arrays."""
    return {"model": {"conv.weight": np.ones((2, 2), np.float32), "conv.bias": payload},
            "__author__": "someone"}


@pytest.mark.parametrize("name", ["os.system", "subprocess.call", "builtins.exec", "builtins.open"])
def test_malicious_pkl_is_refused_without_running(tmp_path, marker, name):
    path = str(tmp_path / "evil.pkl")
    with open(path, "wb") as f:
        pickle.dump(_weights(_touch_payloads(marker)[name]), f, protocol=2)
    with pytest.raises(UnsafeCheckpointError) as err:
        load_pkl(path)
    assert path in str(err.value)  # the error names the file ...
    func = _touch_payloads(marker)[name].func.__name__
    assert re.search(rf"refusing to unpickle global '[\w.]+\.{func}'", str(err.value))  # and the global
    # The checkpointer (MODEL.WEIGHTS, --resume) goes through the same unpickler.
    with pytest.raises(UnsafeCheckpointError):
        SSBCheckpointer(torch.nn.Linear(2, 2)).load(path)


@pytest.mark.parametrize("name", ["posix.system", "__builtin__.eval (py2 name)", "numpy.load"])
def test_handwritten_malicious_pkl_is_refused(tmp_path, marker, name):
    path = str(tmp_path / "evil.pkl")
    with open(path, "wb") as f:
        f.write(_raw_pickles(marker)[name])
    with pytest.raises(UnsafeCheckpointError):
        load_checkpoint_file(path)


@pytest.mark.parametrize("protocol", [
    0, 2, 4,
    5,
])
def test_legitimate_detectron2_pkl_loads(tmp_path, protocol):
    weight = np.arange(4, dtype=np.float32).reshape(2, 2)
    data = {"model": {"weight": weight, "bias": np.array([5.0, 6.0], np.float32)},
            "__author__": "Detectron2 model zoo", "step": np.int64(7)}
    path = str(tmp_path / "r.pkl")
    with open(path, "wb") as f:
        pickle.dump(data, f, protocol=protocol)
    model = torch.nn.Linear(2, 2)
    SSBCheckpointer(model).load(path)
    assert torch.equal(model.weight.data, torch.from_numpy(weight))
    assert torch.equal(model.bias.data, torch.tensor([5.0, 6.0]))


def test_caffe2_style_pkl_with_python2_strings_loads(tmp_path):
    # Detectron1/Caffe2 files: {"blobs": {...}} pickled by Python 2 (byte strings read with
    # encoding="latin1"; momentum blobs dropped).
    blob = np.full((3,), 2.0, np.float32)
    raw = pickle.dumps({"blobs": {"fc_w": blob, "fc_w_momentum": blob}}, protocol=2)
    assert load_pkl.__module__ == "ssb_det.checkpoint"
    path = str(tmp_path / "c2.pkl")
    with open(path, "wb") as f:
        f.write(raw)
    loaded = SSBCheckpointer(torch.nn.Linear(1, 1))._load_file(path)
    assert list(loaded["model"]) == ["fc_w"] and loaded["matching_heuristics"] is True
    np.testing.assert_array_equal(loaded["model"]["fc_w"], blob)


def test_restricted_unpickler_refuses_globals_hidden_in_containers():
    evil = pickle.dumps({"a": [({"b": _Payload(os.getcwd)},)]}, protocol=4)
    with pytest.raises(UnsafeCheckpointError, match="posix.getcwd|nt.getcwd"):
        RestrictedUnpickler(io.BytesIO(evil), source="mem").load()


@pytest.mark.parametrize("force_unsafe_env", ["", "1"])
@pytest.mark.parametrize("suffix", [".pth", ".pt", ".ckpt"])
def test_malicious_pth_is_refused_without_running(tmp_path, marker, monkeypatch, suffix,
                                                  force_unsafe_env):
    # TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 turns torch.load's *default* into weights_only=False;
    # ssb_det passes weights_only=True explicitly, which the variable cannot override.
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", force_unsafe_env)
    path = str(tmp_path / ("evil" + suffix))
    torch.save({"model": {"w": torch.ones(2)}, "extra": _touch_payloads(marker)["os.system"]}, path)
    with pytest.raises(pickle.UnpicklingError):
        load_pth(path)
    with pytest.raises(pickle.UnpicklingError):
        SSBCheckpointer(torch.nn.Linear(2, 2)).load(path)


def test_malicious_pyth_is_refused_even_with_unsafe_torch_default(tmp_path, marker, monkeypatch):
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    path = str(tmp_path / "evil.pyth")
    torch.save({"model_state": {"w": torch.ones(1)}, "x": _touch_payloads(marker)["os.system"]}, path)
    try:
        with pytest.raises(pickle.UnpicklingError):
            SSBCheckpointer(torch.nn.Linear(1, 1)).load(path)
    finally:
        ran = os.path.exists(marker)
        if ran:
            os.unlink(marker)  # let the xfail report the refusal, not the fixture
    assert not ran


def test_resume_from_a_planted_last_checkpoint_is_refused(tmp_path, marker):
    # An attacker who can write into OUTPUT_DIR plants model_0000999.pth and points
    # last_checkpoint at it: --resume must refuse it like any other file.
    out = tmp_path / "output"
    out.mkdir()
    torch.save({"model": {}, "iteration": _touch_payloads(marker)["os.system"]},
               str(out / "model_0000999.pth"))
    (out / "last_checkpoint").write_text("model_0000999.pth")
    checkpointer = SSBCheckpointer(torch.nn.Linear(1, 1), save_dir=str(out))
    with pytest.raises(pickle.UnpicklingError):
        checkpointer.resume_or_load("", resume=True)


def _lines_matching(pattern, except_in):
    """``path:line: text`` of each line of ssb_det/ and tools/ matching ``pattern`` (comments
    aside), outside the file ``except_in`` (relative to the repository)."""
    offenders = []
    for top in ("ssb_det", "tools"):
        for dirpath, _, files in os.walk(os.path.join(ROOT, top)):
            for name in files:
                path = os.path.join(dirpath, name)
                if not name.endswith(".py") or path == os.path.join(ROOT, except_in):
                    continue
                for lineno, line in enumerate(open(path, encoding="utf-8"), start=1):
                    if pattern.search(line.split("#")[0]):
                        offenders.append(f"{os.path.relpath(path, ROOT)}:{lineno}: {line.strip()}")
    return offenders


def test_no_unsafe_loading_outside_the_checkpoint_module():
    # One place reads weights; a torch.load / pickle.load elsewhere would bypass it.
    pattern = re.compile(r"\btorch\.load\(|\bpickle\.loads?\(|\bUnpickler\(|\btorch\.jit\.load\(|"
                         r"allow_pickle\s*=\s*True|\byaml\.(unsafe_)?load\(")
    offenders = _lines_matching(pattern, os.path.join("ssb_det", "checkpoint.py"))
    assert not offenders, "load weights through ssb_det.checkpoint:\n" + "\n".join(offenders)


def test_no_config_is_merged_outside_the_loader():
    # One config loader (ssb_det.config.load_config, allow_unsafe=False): a merge_from_file
    # elsewhere could read YAML unsafely again (test_config_loading checks every entry point).
    offenders = _lines_matching(re.compile(r"\.merge_from_file\("),
                                os.path.join("ssb_det", "config.py"))
    assert not offenders, "load configs with ssb_det.config.load_config:\n" + "\n".join(offenders)


def test_yaml_config_cannot_run_code(tmp_path, marker):
    engine = pytest.importorskip("ssb_det.engine")
    path = tmp_path / "evil.yaml"
    path.write_text(f"MODEL:\n  DEVICE: !!python/object/apply:os.system [\"touch '{marker}'\"]\n")
    args = argparse.Namespace(config_file=str(path), opts=[], eval_only=False, resume=False,
                              num_gpus=0, num_machines=1, machine_rank=0, dist_url="auto")
    try:
        with pytest.raises(Exception):
            engine.setup(args)
    finally:
        ran = os.path.exists(marker)
        if ran:
            os.unlink(marker)
    assert not ran
