"""Test-session set-up: the tests' small ``ssb_shapes_mini_*`` datasets in Detectron2's catalogs.

``import ssb_det`` registers only the user-facing splits; the tests register their own, here
for the pytest process and through ``subprocess_site/sitecustomize.py`` for every Python
subprocess (command-line tools and the workers they spawn inherit ``PYTHONPATH``).
"""
import os

from ssb_det.data.shapes import TEST_SPLITS, register_shapes_datasets

SUBPROCESS_SITE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "subprocess_site")

register_shapes_datasets(splits=TEST_SPLITS)
os.environ["PYTHONPATH"] = os.pathsep.join(
    [SUBPROCESS_SITE] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])
