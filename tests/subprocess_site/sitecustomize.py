"""Registers the tests' ``ssb_shapes_mini_*`` datasets in every Python process the tests start.

Tests run the real command-line tools (``tools/train_net.py``) in subprocesses, which spawn
workers of their own (``--num-gpus 2``); each is a fresh interpreter that has only what
``import ssb_det`` registers, and that no longer includes the tests' splits. Python imports
``sitecustomize`` at start-up from ``PYTHONPATH``, where ``tests/subprocess_env.py`` puts
this folder for the subprocesses that need it, so these processes see the tests' datasets as
a user's own ``train_net.py`` sees theirs.
"""
from ssb_det.data.shapes import TEST_SPLITS, register_shapes_datasets

register_shapes_datasets(splits=TEST_SPLITS)
