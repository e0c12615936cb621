#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment in .venv: torch, Detectron2, mutualnet_det.
# Re-runs the installs only when this script, setup.py or the Detectron2 installer changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${MUTUALNET_VENV:-.venv}
stamp="$VENV/.mutualnet-setup"
want=$(cat tools/setup_env.sh setup.py tools/install_detectron2.py | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
echo "[setup] creating the environment in $VENV (first run: a few minutes)"
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade "pip<25" >/dev/null
# On this machine torch 2.14.1 / torchvision 0.29.1 come from the local wheel cache; elsewhere any
# torch >= 2.1 works (set TORCH_SPEC, e.g. TORCH_SPEC="torch torchvision").
if ! "$VENV/bin/python" -c "import torch, torchvision" 2>/dev/null; then
  "$VENV/bin/python" -m pip install -q ${TORCH_SPEC:-torch==2.14.1 torchvision==0.29.1}
fi
"$VENV/bin/python" tools/install_detectron2.py
"$VENV/bin/python" -m pip install -q -e ".[test]"
"$VENV/bin/python" -c "import mutualnet_det, detectron2; print('[setup] ready: detectron2', detectron2.__version__)"
echo "$want" > "$stamp"
