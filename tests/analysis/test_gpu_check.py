"""benchmarks/gpu_check.py --small --device cpu: the GPU check runs end to end in CI, every
configuration is measured, and the outputs match the CPU's."""
import importlib.util
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_gpu_check_small_on_the_cpu(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    out = tmp_path / "check.md"
    assert script.main(["--small", "--device", "cpu", "--iters", "1", "--output", str(out)]) == 0
    import json
    rows = json.loads(out.with_suffix(".json").read_text())
    # 2 models x 2 layouts x (eager, compiled) x (fp32, bf16) x batch 1
    assert len(rows["inference"]) == 16
    assert {(r["model"], r["mode"], r["dtype"], r["layout"]) for r in rows["inference"]} == {
        (m, mode, d, layout) for m in ("SSB-R50", "R50") for mode in ("eager", "compiled")
        for d in ("float32", "bfloat16") for layout in ("NCHW", "NHWC")}
    assert all(r["ms"] > 0 and (r["launches"] or 0) >= 0 for r in rows["inference"])
    eager = {r["model"]: r["launches"] for r in rows["inference"]
             if r["mode"] == "eager" and r["dtype"] == "float32" and r["layout"] == "NCHW"}
    assert eager["SSB-R50"] > eager["R50"] > 0
    assert [r["model"] for r in rows["train"]] == ["SSB-R50"] * 2 + ["R50"] * 2
    assert all(r["ok"] for r in rows["correctness"])
    assert "### inference" in out.read_text() and "### inference" in capsys.readouterr().out
