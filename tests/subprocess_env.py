"""Environment of subprocesses that must see the tests' ``ssb_shapes_mini_*`` datasets.

A command-line tool run by a test (``tools/train_net.py``), and each worker it spawns
(``--num-gpus 2``), is a fresh interpreter that has only what ``import ssb_det`` registers.
Python imports ``sitecustomize`` at start-up from ``PYTHONPATH``; the one in
``subprocess_site/`` registers the tests' splits, as a user's own ``train_net.py`` registers
their datasets. Only subprocesses given this environment get it.
"""
import os

SUBPROCESS_SITE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "subprocess_site")


def env_with_test_datasets(env):
    """``env`` (a dict) with ``subprocess_site/`` first on its ``PYTHONPATH``."""
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    return dict(env, PYTHONPATH=os.pathsep.join([SUBPROCESS_SITE] + paths))
