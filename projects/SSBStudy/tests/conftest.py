"""Test-session set-up of the study project: its folder (``ssb_study`` and its command lines)
and the library's tests/ folders whose helpers the study's tests share (``narrow_host``,
``test_configs.flat``, ``test_rcnn.rcnn_cfg``) on ``sys.path``, and
the tests' ``ssb_shapes_mini_*`` datasets in Detectron2's catalogs, as tests/conftest.py does
for the library's tests."""
import os
import sys

PROJECT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPO_TESTS = os.path.join(os.path.dirname(os.path.dirname(PROJECT)), "tests")
for path in (REPO_TESTS, os.path.join(REPO_TESTS, "modeling"), PROJECT):
    if path not in sys.path:
        sys.path.insert(0, path)

from ssb_det.data.shapes import TEST_SPLITS, register_shapes_datasets  # noqa: E402

register_shapes_datasets(splits=TEST_SPLITS)
