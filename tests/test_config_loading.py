"""Every entry point reads configs through ``ssb_det.config.load_config``, which refuses
YAML tags that would run code (issue 12: five loaders with inconsistent safety)."""
import pytest
import yaml
from detectron2.engine import default_argument_parser


def _train(path, out):
    from ssb_det.engine import setup

    setup(default_argument_parser().parse_args(["--config-file", path]))


def _demo(path, out):
    from ssb_det.engine.demo import demo_main

    demo_main(["--config-file", path, "--input", out, "--output", out])


def _analyze(path, out):
    from ssb_det.analysis.cli import analyze_main

    analyze_main(["--config-file", path, "--baseline", "none"])


def _benchmark(path, out):
    from ssb_det.analysis.cli import benchmark_main

    benchmark_main(["--config-file", path])


def _visualize(path, out):
    from ssb_det.analysis.cli import visualize_main

    visualize_main(["--config-file", path, "--input", out, "--output", out])


def _pretrain(path, out):
    from ssb_det.classification.launch import main

    main(["--config-file", path])


def _export(path, out):
    from ssb_det.export import export_main

    export_main(["--config-file", path, "--output", out])


@pytest.mark.parametrize("entry", [_train, _demo, _analyze, _benchmark, _visualize, _pretrain,
                                   _export], ids=lambda f: f.__name__.strip("_"))
@pytest.mark.parametrize("where", ["file", "base"])
def test_every_entry_point_refuses_an_unsafe_yaml_tag(tmp_path, entry, where):
    marker = tmp_path / "code_was_executed"
    evil = f"MODEL:\n  DEVICE: !!python/object/apply:os.system [\"touch '{marker}'\"]\n"
    path = tmp_path / "evil.yaml"
    if where == "base":  # the payload hidden in a _BASE_ file
        (tmp_path / "base.yaml").write_text(evil)
        path.write_text("_BASE_: base.yaml\n")
    else:
        path.write_text(evil)
    with pytest.raises(yaml.constructor.ConstructorError, match="python/object/apply"):
        entry(str(path), str(tmp_path))
    assert not marker.exists()
