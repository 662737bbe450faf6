"""projects/SSBStudy/pretrain_compare.py (ssb_study.pretrain_compare): classification twins
trained as separate processes over seeds, resumed, tabulated with paired differences."""
import json
import statistics

import pytest
import yaml

from ssb_study import pretrain_compare as pc

from ssb_study.cli import pretrain_compare_args as parse_args


def _args(tmp_path, *extra):
    overrides = ["CLS.DATA.TRAIN_SPLIT", "mini_train", "CLS.DATA.VAL_SPLIT", "mini_val",
                 "CLS.DATA.EMBEDDED_ROOT", str(tmp_path / "cls"), "CLS.DATA.EVAL_BATCH_SIZE",
                 "16", "CLS.INPUT.TRAIN_SIZE", "32", "CLS.INPUT.EVAL_SIZE", "32",
                 "CLS.LOG_PERIOD", "1", "SOLVER.IMS_PER_BATCH", "4", "SOLVER.WARMUP_ITERS",
                 "1", "MODEL.RESNETS.WIDTH_PER_GROUP", "8", "MODEL.RESNETS.STEM_OUT_CHANNELS",
                 "8", "MODEL.RESNETS.RES2_OUT_CHANNELS", "32"]
    return parse_args(["--iters", "2", "--seeds", "1", "2", "--jobs", "2", "--threads", "1",
                       "--output", str(tmp_path / "out"), *extra, *overrides])


@pytest.mark.slow
def test_runs_every_twin_and_seed_then_resumes_and_tabulates(tmp_path, capsys):
    results, pairs = pc.main(_args(tmp_path))
    assert set(results) == {v[0] for v in pc.VARIANTS}
    for name, folder, _ in pc.VARIANTS:
        for seed in (1, 2):
            run = tmp_path / "out" / folder / f"seed{seed}"
            config = yaml.safe_load((run / "config.yaml").read_text())
            assert config["SEED"] == seed and config["SOLVER"]["MAX_ITER"] == 2
            ssb = config["MODEL"]["SSB"]
            assert (ssb["ENABLED"], ssb["UNIFORM"]) == {
                "SSB-R50": (True, False), "R50 (plain host)": (False, False),
                "SSB-R50 uniform sampling": (True, True)}[name]
            with open(run / "metrics.json") as f:
                final = [json.loads(line) for line in f][-1]
            assert final["iteration"] == 2
            assert results[name][seed]["top1"] == final["val/top1"]
    # Only the adaptive SSB model has saliency convs, so only it logs sampling statistics.
    assert "density_ratio" in results["SSB-R50"][1]
    assert "density_ratio" not in results["SSB-R50 uniform sampling"][1]
    d = pairs["SSB-R50 - SSB-R50 uniform sampling (top1)"]
    diffs = [results["SSB-R50"][s]["top1"] - results["SSB-R50 uniform sampling"][s]["top1"]
             for s in (1, 2)]
    assert d["n"] == 2 and d["mean"] == pytest.approx(statistics.fmean(diffs))
    table = (tmp_path / "out" / "table.md").read_text()
    assert table.count("| SSB-R50 uniform sampling - R50 (plain host) |") == 2  # top1, EMA
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["runs"]["R50 (plain host)"]["2"]["top1"] == results["R50 (plain host)"][2]["top1"]

    # A second call trains nothing: every run's final evaluation is already there.
    before = {p: p.stat().st_mtime for p in (tmp_path / "out").rglob("model_final.pth")}
    capsys.readouterr()
    again, _ = pc.main(_args(tmp_path))
    assert "6 of 6 runs done, 0 to run" in capsys.readouterr().out
    assert {p: p.stat().st_mtime for p in before} == before and again == results


def test_an_unfinished_run_is_not_reported(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    # The final evaluation of a shorter schedule, or one without model_final.pth, is not done.
    (run / "metrics.json").write_text(json.dumps({"iteration": 2, "val/top1": 50.0}) + "\n")
    assert pc.run_result(str(run), 2) is None
    (run / "model_final.pth").write_bytes(b"")
    assert pc.run_result(str(run), 4) is None
    assert pc.run_result(str(run), 2)["top1"] == 50.0


def test_bad_options_are_refused(tmp_path):
    with pytest.raises(SystemExit):
        parse_args(["--jobs", "0"])
    with pytest.raises(SystemExit):
        parse_args(["--variants", "SSB-R101"])
    with pytest.raises(SystemExit):
        parse_args(["SOLVER.MAX_ITER"])  # a key without its value
