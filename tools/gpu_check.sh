#!/usr/bin/env bash
# The GPU check: on a CUDA machine, set up (from a wheelhouse where there is no network), run the
# CUDA tests and the rest of the suite, measure training (float32, float16, bfloat16), a sweep
# and inference against stock Detectron2, and write benchmarks/results/gpu_<date>.{json,md}.
# Planned to take <= 8 minutes on one GPU (mutualnet_det/benchmark/gpu_check.py says each step).
#
#   bash tools/gpu_check.sh [--wheelhouse DIR] [--iters 30] [--steps cuda_tests suite ...]
#   bash tools/gpu_check.sh --dry-run        # the plan, on any machine (sets up .venv if needed)
#
# --wheelhouse DIR: bash tools/setup_env.sh --offline DIR (made here by tools/build_wheelhouse.sh);
# without it, tools/setup_env.sh as usual (network or a configured index).
set -euo pipefail
cd "$(dirname "$0")/.."
setup=(bash tools/setup_env.sh)
args=()
while [ $# -gt 0 ]; do
  case $1 in
    --wheelhouse) [ $# -ge 2 ] || { echo "--wheelhouse needs a folder" >&2; exit 2; }
                  setup=(bash tools/setup_env.sh --offline "$2"); shift 2 ;;
    *) args+=("$1"); shift ;;
  esac
done
"${setup[@]}"
export PYTHONWARNINGS=ignore
exec .venv/bin/python -m mutualnet_det.benchmark.gpu_check ${args[@]+"${args[@]}"}
