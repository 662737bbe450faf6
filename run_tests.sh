#!/usr/bin/env bash
# The test command of README.md (and of CI): installs into .venv/ if needed, then runs the
# whole suite, slow end-to-end tests included. Extra arguments go to pytest
# (e.g. `bash run_tests.sh -m "not slow"` for the quick part only).
set -euo pipefail
cd "$(dirname "$0")"
bash install.sh
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} MPLBACKEND=Agg
exec .venv/bin/python -m pytest tests "$@"
