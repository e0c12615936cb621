#!/usr/bin/env bash
# Mutation testing of the core modules against their own tests (about an hour on 2 cores; not in CI).
# Works in a copy of the working tree under a temporary folder; writes benchmarks/results/mutation_<date>.{json,md}.
#   bash tools/mutation_check.sh                  # every module
#   bash tools/mutation_check.sh cohort rescale   # some (names in tools/mutation_check.py, MODULES)
# Needs mutmut 3.x in the environment: .venv/bin/pip install mutmut==3.8.1
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
if ! "$PYTHON" -c "import mutmut" 2>/dev/null; then
    echo "mutmut is not installed for $PYTHON; install it with: $PYTHON -m pip install mutmut==3.8.1" >&2
    exit 2
fi
export OMP_NUM_THREADS=1
exec "$PYTHON" tools/mutation_check.py "$@"
