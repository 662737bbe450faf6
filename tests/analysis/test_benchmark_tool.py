"""Benchmark tool (ssb_det.analysis.benchmark*): interleaving, statistics, peak memory, and
one tiny end-to-end run of tools/benchmark.py's entry point. No timing is asserted."""
import csv
import json

import cv2
import pytest
import torch

from ssb_det.analysis.benchmark import BenchmarkSetup, Samples, peak_memory, time_interleaved
from ssb_det.analysis.breakdown import executed_steps, sampler_share
from ssb_det.analysis.cli import benchmark_main


def test_time_interleaved_alternates_models_after_warmup():
    calls = []
    out = time_interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")},
                           iters=3, warmup=2)
    assert calls == ["a", "b"] * 5
    assert [len(s.values) for s in out.values()] == [3, 3]
    assert all(v >= 0 for s in out.values() for v in s.values)


def test_cpu_clock_counts_work_and_unknown_clock_is_named():
    def work():
        torch.randn(256, 256) @ torch.randn(256, 256)

    out = time_interleaved({"w": work}, iters=2, warmup=0, clock="cpu")
    assert all(v > 0 for v in out["w"].values)
    with pytest.raises(ValueError, match="clock"):
        time_interleaved({"w": work}, iters=1, clock="sundial")


def test_samples_statistics():
    s = Samples([4.0, 1.0, 3.0, 2.0, 10.0])
    assert s.median == 3.0
    assert s.q25 == 2.0 and s.q75 == 4.0
    assert s.spread == pytest.approx(2.0 / 3.0)


def test_cpu_peak_memory_counts_live_tensors():
    def two_live_then_one():
        a = torch.ones(1 << 20)  # 4 MiB
        b = torch.ones(1 << 20)
        del a
        c = b * 2  # 2 x 4 MiB live again
        return c.sum()

    peak = peak_memory(two_live_then_one, torch.device("cpu"))
    assert 8 * 2**20 <= peak < 9 * 2**20


def test_setup_errors_name_the_problem():
    with pytest.raises(ValueError, match="unknown modes"):
        BenchmarkSetup(modes=("fast",)).validate()
    with pytest.raises(ValueError, match="batch"):
        BenchmarkSetup(batch=0).validate()
    with pytest.raises(ValueError, match="clock"):
        BenchmarkSetup(clock="sundial").validate()
    with pytest.raises(ValueError, match="unknown torch.compile backend 'inductr'"):
        BenchmarkSetup(compile="inductr").validate()
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="cuda"):
            BenchmarkSetup(device="cuda").validate()


def _argv(tmp_path, *extra):
    return ["--size", "64", "96", "--iters", "1", "--warmup", "0",
            "--chart", str(tmp_path / "chart.png"), "--output", str(tmp_path / "bench"), *extra]


@pytest.mark.slow
def test_benchmark_runs_one_tiny_iteration_and_writes_reports(tmp_path, capsys):
    assert benchmark_main(_argv(tmp_path)) == 0
    text = (tmp_path / "bench.md").read_text()
    for row in ("bottom-up GMACs", "backbone inference latency", "bottom-up train peak memory",
                "Block res2.1, per step", "Sampling (saliency + grid + sample + restore"):
        assert row in text, row
    assert text == capsys.readouterr().out.split("wrote ")[0]
    rows = list(csv.DictReader((tmp_path / "bench.csv").open()))
    kinds = {(r["kind"], r["part"], r["mode"]) for r in rows}
    for part in ("bottom-up", "backbone"):
        for mode in ("inference", "train"):
            assert ("latency_s", part, mode) in kinds
            assert ("peak_memory_bytes", part, mode) in kinds
    data = json.loads((tmp_path / "bench.json").read_text())
    assert data["labels"] == ["SSB-R50-FPN", "R50-FPN"]
    lat = data["latency"]["bottom-up"]["inference"]["SSB-R50-FPN"]
    assert len(lat["values"]) == 1 and lat["values"][0] > 0
    # MACs in the report are the per-stage sums the analysis tool also reports
    macs = data["macs"]["SSB-R50-FPN"]
    assert macs["bottom-up"] == sum(macs[s] for s in ("stem", "res2", "res3", "res4", "res5"))
    img = cv2.imread(str(tmp_path / "chart.png"))
    assert img is not None and img.shape[:2] == (420, 1560)


@pytest.mark.slow
def test_benchmark_compiles_both_bottom_ups_and_reports_each_compile(tmp_path):
    argv = ["--size", "64", "96", "--iters", "1", "--warmup", "0", "--output",
            str(tmp_path / "bench"), "--compile", "eager", "--parts", "bottom-up", "--modes",
            "inference", "--no-stages", "--no-breakdown", "--no-macs", "--no-memory"]
    assert benchmark_main(argv) == 0
    text = (tmp_path / "bench.md").read_text()
    assert "Bottom-ups compiled (eager, fullgraph, dynamic shapes)" in text
    assert "| bottom-up compile (inference, first call), s |" in text
    rows = [r for r in csv.DictReader((tmp_path / "bench.csv").open()) if r["kind"] == "compile_s"]
    assert {r["label"] for r in rows} == {"SSB-R50-FPN", "R50-FPN"}
    assert all(float(r["median"]) > 0 for r in rows)


def test_sampler_share_counts_the_restore_beyond_the_add():
    steps = {k: Samples([v]) for k, v in dict(block=10.0, saliency=0.5, grid=0.25, sample=0.25,
                                               inverse=3.0, **{"inverse+add+relu": 2.5,
                                                               "add+relu": 1.5}).items()}
    assert sampler_share(steps) == pytest.approx((0.5 + 0.25 + 0.25 + 1.0) / 10.0)
    assert "inverse" not in executed_steps(steps) and "add+relu" not in executed_steps(steps)
    del steps["inverse+add+relu"]
    assert sampler_share(steps) == pytest.approx(4.0 / 10.0)
    assert sampler_share({"block": Samples([1.0]), "conv1": Samples([0.5])}) is None


def test_benchmark_refuses_no_baseline(tmp_path):
    with pytest.raises(ValueError, match="two models"):
        benchmark_main(_argv(tmp_path, "--baseline", "none"))
