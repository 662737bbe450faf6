"""Test-session set-up: the tests' small ``ssb_shapes_mini_*`` datasets in Detectron2's catalogs.

``import ssb_det`` registers only the user-facing splits; the tests register their own, here
for the pytest process and, for the command-line tools they run in subprocesses, through
``subprocess_env.env_with_test_datasets``.

Tests mirror the package (tests/layers, tests/modeling, ...); this folder is on ``sys.path``
(pytest's rootdir conftest), so they import the shared helpers in it, e.g.
``sampling_reference``.
"""
from ssb_det.data.shapes import TEST_SPLITS, register_shapes_datasets

register_shapes_datasets(splits=TEST_SPLITS)
