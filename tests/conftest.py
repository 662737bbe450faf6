"""Tests mirror the package (tests/layers, tests/modeling, ...). This file's folder is on
``sys.path`` (pytest's rootdir conftest), so tests import the shared references in it, e.g.
``sampling_reference``."""
