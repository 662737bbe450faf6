#!/usr/bin/env python
"""The Markdown tables of docs/accuracy.md, generated from the study's CSV results (results/).

Prints every table, or with --check FILE verifies that each one appears verbatim in FILE and
exits 1 naming those that do not (a test runs the check on docs/accuracy.md, so the docs and
the CSV files cannot drift apart).

Examples::

    python projects/SSBStudy/make_tables.py                                   # print them
    python projects/SSBStudy/make_tables.py --check projects/SSBStudy/docs/accuracy.md

Thin wrapper over :func:`ssb_study.cli.make_tables_main`.
"""
import sys

from ssb_study.cli import make_tables_main

if __name__ == "__main__":
    sys.exit(make_tables_main())
