"""The accuracy study: committed variant configs, statistics, and the --quick pipeline."""
import json
import os
import subprocess
import sys

import pytest

from ssb_study import accuracy_study
from ssb_study.accuracy_study import (
    CONFIG_DIR,
    EVAL_ONLY,
    INIT_FROM,
    VARIANTS,
    _command,
    collect,
    format_csv,
    format_markdown,
    paired_difference,
    plan_runs,
    summarize,
)
from ssb_study import study_defaults
from test_configs import flat  # noqa: E402 (tests/ is on sys.path, see conftest.py)

PROJECT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The auxiliary box-supervised heads (SaliencySupervisedRCNN, BOX_SALIENCY_HEAD "auxiliary")
# on three networks; the same keys define their tiny-task twins.
_AUX = {"MODEL.META_ARCHITECTURE": "SaliencySupervisedRCNN", "SOLVER.SALIENCY_LR_FACTOR": 10.0,
        "MODEL.SSB_STUDY.BOX_SALIENCY_HEAD": "auxiliary"}
AUXILIARY_KEYS = {
    "SSB-R50 uniform, box-supervised auxiliary saliency LR x10": {
        **_AUX, "MODEL.SSB.UNIFORM": True},
    "R50, box-supervised auxiliary saliency LR x10": {**_AUX, "MODEL.SSB.ENABLED": False},
    "SSB-R50 bounded saliency LR x10 sigma 2, box-supervised auxiliary saliency": {
        **_AUX, "MODEL.SSB.SALIENCY_BOUND": 2.0, "MODEL.SSB.KERNEL_SIGMA": 2.0},
}
# Uniform SSB-R50's network sampling the ground-truth boxes (its config also spells out the
# default BOX_SALIENCY_MASS 0.5); the same keys define the tiny-task twins.
_ORACLE = {"MODEL.META_ARCHITECTURE": "OracleSamplingRCNN", "MODEL.SSB.UNIFORM": True}
ORACLE_KEYS = {"SSB-R50 oracle sampling": _ORACLE,
               "SSB-R50 oracle sampling sigma 2": {**_ORACLE, "MODEL.SSB.KERNEL_SIGMA": 2.0}}
# What defines each variant against the study's base config, and nothing else.
DEFINING_KEYS = {
    "R50": {"MODEL.SSB.ENABLED": False},
    "SSB-R50": {},
    "SSB-R50 uniform": {"MODEL.SSB.UNIFORM": True},
    "SSB-R101": {"MODEL.RESNETS.DEPTH": 101},
    "R101": {"MODEL.SSB.ENABLED": False, "MODEL.RESNETS.DEPTH": 101},
    "SSB-R50 saliency LR x3": {"SOLVER.SALIENCY_LR_FACTOR": 3.0},
    "SSB-R50 saliency LR x10": {"SOLVER.SALIENCY_LR_FACTOR": 10.0},
    "SSB-R50 bounded saliency LR x10": {"SOLVER.SALIENCY_LR_FACTOR": 10.0,
                                        "MODEL.SSB.SALIENCY_BOUND": 2.0},
    "SSB-R50 sigma 2": {"MODEL.SSB.KERNEL_SIGMA": 2.0},
    "SSB-R50 bounded saliency LR x10 sigma 2": {"SOLVER.SALIENCY_LR_FACTOR": 10.0,
                                                "MODEL.SSB.SALIENCY_BOUND": 2.0,
                                                "MODEL.SSB.KERNEL_SIGMA": 2.0},
    "SSB-R50 box-supervised saliency LR x10": {
        "MODEL.META_ARCHITECTURE": "SaliencySupervisedRCNN", "SOLVER.SALIENCY_LR_FACTOR": 10.0},
    "SSB-R50 box-supervised saliency LR x10 detached": {
        "MODEL.META_ARCHITECTURE": "SaliencySupervisedRCNN", "SOLVER.SALIENCY_LR_FACTOR": 10.0,
        "MODEL.SSB_STUDY.BOX_SALIENCY_DETACH": True},
    **AUXILIARY_KEYS,
    **ORACLE_KEYS,
    # The pretrained path: same configs, the weights come from the R50 run (INIT_FROM).
    "R50 continued": {"MODEL.SSB.ENABLED": False},
    "SSB-R50 from R50": {},
    "SSB-R50 uniform from R50": {"MODEL.SSB.UNIFORM": True},
    "SSB-R50 continued": {},
    "SSB-R50 uniform continued": {"MODEL.SSB.UNIFORM": True},
    "SSB-R50 bounded saliency LR x10 from R50": {"SOLVER.SALIENCY_LR_FACTOR": 10.0,
                                                 "MODEL.SSB.SALIENCY_BOUND": 2.0},
    "SSB-R101 continued": {"MODEL.RESNETS.DEPTH": 101},
    # The tiny-object task: the same definitions against Base-Study-FPN-tiny.yaml.
    "R50 tiny": {"MODEL.SSB.ENABLED": False},
    "SSB-R50 tiny": {},
    "SSB-R50 uniform tiny": {"MODEL.SSB.UNIFORM": True},
    "SSB-R50 bounded saliency LR x10 sigma 2 tiny": {"SOLVER.SALIENCY_LR_FACTOR": 10.0,
                                                     "MODEL.SSB.SALIENCY_BOUND": 2.0,
                                                     "MODEL.SSB.KERNEL_SIGMA": 2.0},
    # (its config also spells out the default BOX_SALIENCY_WEIGHT 1 and MASS 0.5)
    "SSB-R50 box-supervised saliency tiny": {"MODEL.META_ARCHITECTURE": "SaliencySupervisedRCNN"},
    "SSB-R50 box-supervised saliency LR x10 tiny": {
        "MODEL.META_ARCHITECTURE": "SaliencySupervisedRCNN", "SOLVER.SALIENCY_LR_FACTOR": 10.0},
    "SSB-R50 box-supervised saliency LR x10 detached tiny": {
        "MODEL.META_ARCHITECTURE": "SaliencySupervisedRCNN", "SOLVER.SALIENCY_LR_FACTOR": 10.0,
        "MODEL.SSB_STUDY.BOX_SALIENCY_DETACH": True},
    **{f"{v} tiny": keys for v, keys in {**AUXILIARY_KEYS, **ORACLE_KEYS}.items()},
    "SSB-R50 oracle sampling mass 0.2 tiny": {**_ORACLE, "MODEL.SSB_STUDY.BOX_SALIENCY_MASS": 0.2},
    # Trained adaptive weights evaluated with the saliency ignored (EVAL_ONLY).
    "SSB-R50, uniform at test": {"MODEL.SSB.UNIFORM": True},
    "SSB-R50 tiny, uniform at test": {"MODEL.SSB.UNIFORM": True},
    "SSB-R50 box-supervised saliency LR x10 tiny, uniform at test": {"MODEL.SSB.UNIFORM": True},
    "SSB-R50 box-supervised saliency LR x10, uniform at test": {"MODEL.SSB.UNIFORM": True},
    "SSB-R50 box-supervised saliency LR x10 detached tiny, uniform at test": {
        "MODEL.SSB.UNIFORM": True},
    "SSB-R50 oracle sampling, uniform at test": {"MODEL.SSB.UNIFORM": True},
    "SSB-R50 oracle sampling tiny, uniform at test": {"MODEL.SSB.UNIFORM": True},
    "SSB-R50 uniform, oracle sampling at test": _ORACLE,
    "SSB-R50 uniform tiny, oracle sampling at test": _ORACLE,
    # Longer schedules: the same configs, the weights come from a finished run (INIT_FROM).
    "SSB-R50 uniform tiny continued": {"MODEL.SSB.UNIFORM": True},
    "SSB-R50 oracle sampling from uniform": _ORACLE,
    "SSB-R50 oracle sampling tiny from uniform": _ORACLE,
    # Per-stage sampling ratios (res2..res5).
    **{f"SSB-R50 uniform, {what}{task}": {"MODEL.SSB.UNIFORM": True, "MODEL.SSB.RATIOS": ratios}
       for what, ratios in (("res2 at full resolution", [1.0, 0.5, 0.5, 1.0]),
                            ("res5 sampled", [0.5, 0.5, 0.5, 0.5]))
       for task in ("", " tiny")},
    "SSB-R50, res2 at full resolution tiny": {"MODEL.SSB.RATIOS": [1.0, 0.5, 0.5, 1.0]},
    "SSB-R50, res2 at full resolution from R50": {"MODEL.SSB.RATIOS": [1.0, 0.5, 0.5, 1.0]},
    "SSB-R50 uniform, res2 at full resolution from R50": {"MODEL.SSB.UNIFORM": True,
                                                          "MODEL.SSB.RATIOS": [1.0, 0.5, 0.5, 1.0]},
    "BoT50": {"MODEL.SSB.HOST": "botnet", "MODEL.SSB.ENABLED": False},
    "SSB-BoT50": {"MODEL.SSB.HOST": "botnet", "MODEL.SSB.RATIOS": [0.5, 0.5, 0.5, 0.5]},
    "SSB-BoT50 uniform": {"MODEL.SSB.HOST": "botnet", "MODEL.SSB.RATIOS": [0.5, 0.5, 0.5, 0.5],
                          "MODEL.SSB.UNIFORM": True},
}
# What the tiny-object task changes against the first one: its data and its anchors only.
TINY_TASK_KEYS = {"DATASETS.TRAIN": ("ssb_shapes_tiny_train",),
                  "DATASETS.TEST": ("ssb_shapes_tiny_val",),
                  "MODEL.ANCHOR_GENERATOR.SIZES": [[8], [16], [32], [64], [128]]}


def _load(name):
    cfg = study_defaults()
    cfg.merge_from_file(os.path.join(CONFIG_DIR, name), allow_unsafe=False)
    return flat(cfg)


def test_each_variant_differs_from_the_base_only_in_its_defining_keys():
    assert set(DEFINING_KEYS) == set(VARIANTS)
    bases = {"small": _load("Base-Study-FPN-small.yaml"), "tiny": _load("Base-Study-FPN-tiny.yaml")}
    for variant, config in VARIANTS.items():
        tiny = " tiny" in variant
        base = bases["tiny" if tiny else "small"]
        assert config.endswith("_tiny.yaml") == tiny, variant
        cfg = _load(config)
        diff = {k: cfg[k] for k in cfg if cfg[k] != base[k]}
        assert diff == DEFINING_KEYS[variant], variant


def test_the_tiny_object_task_changes_only_the_data_and_the_anchors():
    small, tiny = _load("Base-Study-FPN-small.yaml"), _load("Base-Study-FPN-tiny.yaml")
    assert {k: tiny[k] for k in tiny if tiny[k] != small[k]} == TINY_TASK_KEYS


def test_paired_difference_by_hand():
    # differences 1, 2, 3: mean 2, sd 1, t(0.975, 2) = 4.303 -> 2 -+ 4.303 / sqrt(3)
    d = paired_difference([11.0, 12.0, 13.0], [10.0, 10.0, 10.0])
    half = 4.302652729911275 / 3 ** 0.5
    assert d["mean"] == pytest.approx(2.0)
    assert d["low"] == pytest.approx(2.0 - half, abs=1e-3)
    assert d["high"] == pytest.approx(2.0 + half, abs=1e-3)
    assert d["within_noise"]  # 2 - 2.48 < 0
    clear = paired_difference([12.0, 12.1, 11.9], [10.0, 10.0, 10.0])
    assert not clear["within_noise"] and clear["low"] > 0
    with pytest.raises(ValueError, match="same, non-zero length"):
        paired_difference([1.0], [1.0, 2.0])


def test_summary_pairs_runs_by_seed_and_ignores_unpaired_seeds():
    records = [dict(variant="SSB-R50", seed=s, AP=ap, AP50=0.0, APs=0.0, APm=0.0)
               for s, ap in ((1, 10.0), (2, 12.0), (3, 14.0))]
    records += [dict(variant="R50", seed=s, AP=ap, AP50=0.0, APs=0.0, APm=0.0)
                for s, ap in ((1, 9.0), (2, 11.5))]
    summary = summarize(records, {})
    assert summary["variants"]["SSB-R50"]["AP"]["mean"] == pytest.approx(12.0)
    assert summary["variants"]["SSB-R50"]["AP"]["std"] == pytest.approx(2.0)
    (pair,) = summary["pairs"]
    assert (pair["a"], pair["b"], pair["seeds"]) == ("SSB-R50", "R50", [1, 2])
    assert pair["mean"] == pytest.approx(0.75)


def test_a_metric_cocoeval_leaves_undefined_is_left_out_of_the_summary(tmp_path):
    # The tiny-object task has no medium objects: COCOeval's APm is NaN in every run.
    runs = plan_runs(["SSB-R50 tiny"], [1, 2], str(tmp_path))
    for run, ap in zip(runs, (8.0, 10.0)):
        os.makedirs(os.path.dirname(run.results_file))
        with open(run.results_file, "w") as f:
            json.dump({"ssb_shapes_tiny_val": {"bbox": dict(
                AP=ap, AP50=2 * ap, APs=ap, APm=float("nan"))}}, f)
    records = collect(runs)
    assert [r["AP"] for r in records] == [8.0, 10.0] and all("APm" not in r for r in records)
    summary = summarize(records, {})
    row = summary["variants"]["SSB-R50 tiny"]
    assert row["AP"]["mean"] == pytest.approx(9.0) and "APm" not in row
    del row["APs"]  # as if no image had small objects either
    assert "| SSB-R50 tiny | 2 | 9.00 ± 1.41 (8.00-10.00) | 18.00 | - |" in format_markdown(summary)


def test_the_per_run_csv_has_the_committed_results_schema_so_rows_append_to_it():
    records = [dict(variant="SSB-R50 tiny", seed=2, AP=8.5, AP50=21.0, APs=8.5,
                    density_ratio=1.25, kl=0.003)]
    costs = {"SSB-R50 tiny": dict(bottom_up_gmacs=0.302, backbone_gmacs=0.593, latency_ms=36.1)}
    header, row, end = format_csv(records, costs).split("\n")
    with open(os.path.join(PROJECT, "results", "per_seed.csv")) as f:
        assert header == f.readline().rstrip("\n")
    assert row == ",,ssb_shapes_tiny,SSB-R50 tiny,2,8.5,21.0,8.5,,1.25,0.003,0.302,0.593,36.1,run"
    assert end == ""


def test_unknown_variant_is_refused_with_the_known_ones():
    with pytest.raises(ValueError, match="unknown study variants.*SSB-R50"):
        plan_runs(["SSB-R51"], [1], "/tmp/x")


def test_pretrained_variants_start_from_their_sources_run_of_the_same_seed(tmp_path):
    assert set(INIT_FROM) <= set(VARIANTS) and set(INIT_FROM.values()) <= set(VARIANTS)
    runs = plan_runs(["SSB-R50 from R50", "SSB-R50"], [1, 2], str(tmp_path))
    # The source variant is added, and comes before the runs that need it within each seed.
    assert [(r.variant, r.seed) for r in runs] == [
        ("R50", 1), ("SSB-R50", 1), ("SSB-R50 from R50", 1),
        ("R50", 2), ("SSB-R50", 2), ("SSB-R50 from R50", 2)]
    by_key = {(r.variant, r.seed): r for r in runs}
    fine_tune, source = by_key["SSB-R50 from R50", 2], by_key["R50", 2]
    assert fine_tune.init_weights == os.path.join(source.output_dir, "model_final.pth")
    assert by_key["SSB-R50", 2].init_weights is None and by_key["SSB-R50", 2].ready
    cmd = _command(fine_tune, [])
    assert cmd[cmd.index("MODEL.WEIGHTS") + 1] == fine_tune.init_weights
    assert "MODEL.WEIGHTS" not in _command(source, [])
    assert not fine_tune.ready  # the R50 run has not trained yet
    os.makedirs(source.output_dir)
    open(fine_tune.init_weights, "w").close()
    assert fine_tune.ready


def test_every_source_run_is_queued_before_the_runs_waiting_for_one(tmp_path, monkeypatch):
    queued = []
    monkeypatch.setattr(accuracy_study, "run_jobs",
                        lambda jobs, **kw: queued.extend(j.label for j in jobs))
    runs = plan_runs(["SSB-R50 from R50", "SSB-R50"], [1, 2], str(tmp_path))
    os.makedirs(os.path.dirname(runs[0].results_file))
    open(runs[0].results_file, "w").close()  # R50 seed 1 is done
    accuracy_study.run_all(runs, log=lambda _: None)
    assert queued == ["SSB-R50 seed 1", "R50 seed 2", "SSB-R50 seed 2",
                      "SSB-R50 from R50 seed 1", "SSB-R50 from R50 seed 2"]


def test_eval_only_variants_evaluate_their_sources_weights_without_training(tmp_path):
    assert set(EVAL_ONLY) <= set(INIT_FROM)
    runs = plan_runs(["SSB-R50 tiny, uniform at test"], [3], str(tmp_path))
    assert [(r.variant, r.eval_only) for r in runs] == [
        ("SSB-R50 tiny", False), ("SSB-R50 tiny, uniform at test", True)]
    source, probe = runs
    cmd = _command(probe, [])
    assert "--eval-only" in cmd and "--resume" not in cmd
    assert cmd[cmd.index("MODEL.WEIGHTS") + 1] == os.path.join(source.output_dir,
                                                              "model_final.pth")
    assert "--resume" in _command(source, []) and "--eval-only" not in _command(source, [])


@pytest.mark.slow
def test_quick_study_trains_evaluates_tabulates_and_resumes(tmp_path):
    cmd = [sys.executable, os.path.join(PROJECT, "accuracy_study.py"), "--quick",
           "--seeds", "2", "--variants", "SSB-R50", "SSB-R50 from R50", "--output", str(tmp_path)]
    env = dict(os.environ, MPLBACKEND="Agg")
    first = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert "0 of 6 runs done" in first.stdout  # R50 added as the fine-tuned runs' source
    with open(tmp_path / "accuracy_study.json") as f:
        result = json.load(f)
    assert sorted((r["variant"], r["seed"]) for r in result["runs"]) == [
        ("R50", 1), ("R50", 2), ("SSB-R50", 1), ("SSB-R50", 2),
        ("SSB-R50 from R50", 1), ("SSB-R50 from R50", 2)]
    assert [(p["a"], p["b"]) for p in result["pairs"]] == [("SSB-R50", "R50")]
    adaptive, plain = result["variants"]["SSB-R50"], result["variants"]["R50"]
    # The adaptive runs logged their sampling statistics; the plain ones have none.
    assert "density_ratio" in adaptive and "density_ratio" not in plain
    assert adaptive["bottom_up_gmacs"] > 0 and adaptive["latency_ms"] > 0
    for ext in ("md", "csv", "png"):
        assert (tmp_path / f"accuracy_study.{ext}").stat().st_size > 0
    # Each fine-tuned run loaded its own seed's R50 weights.
    for seed in (1, 2):
        log = (tmp_path / "runs" / "SSB-R50_from_R50" / f"seed{seed}" / "log.txt").read_text()
        source = tmp_path / "runs" / "R50" / f"seed{seed}" / "model_final.pth"
        assert f"Loading from {source}" in log
    again = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    assert again.returncode == 0 and "6 of 6 runs done, 0 to run" in again.stdout
