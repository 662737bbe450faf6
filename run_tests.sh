#!/usr/bin/env bash
# The test commands of README.md: installs into .venv/ if needed, then runs
#   bash run_tests.sh          the library's fast tests (tests/, no end-to-end runs): minutes
#   bash run_tests.sh --all    everything: slow end-to-end tests and projects/ included (CI)
# Other arguments go to pytest (e.g. `bash run_tests.sh -x -k export`).
set -euo pipefail
cd "$(dirname "$0")"
bash install.sh
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} MPLBACKEND=Agg
if [ "${1:-}" = "--all" ]; then
  shift
  exec .venv/bin/python -m pytest tests projects --durations=15 "$@"
fi
exec .venv/bin/python -m pytest tests -m "not slow" --durations=15 "$@"
