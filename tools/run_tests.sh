#!/usr/bin/env bash
# Set up the environment if needed, then run the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup_env.sh
# Small tensors: one thread per process is faster here and keeps the 2-process test from oversubscribing.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
exec .venv/bin/python -m pytest -q -p no:cacheprovider -W ignore::DeprecationWarning -W ignore::FutureWarning tests "$@"
