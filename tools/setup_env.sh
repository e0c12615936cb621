#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment in .venv: torch, Detectron2, mutualnet_det.
# Re-runs the installs only when this script, setup.py or the Detectron2 installer changed.
#
#   bash tools/setup_env.sh                       # with a package index (this machine, a laptop)
#   bash tools/setup_env.sh --offline WHEELHOUSE  # no network, the machine's own (CUDA) torch
#
# --offline: PYTHON (default python3) must already import torch and torchvision. The venv sees its
# packages (--system-site-packages, plus a .pth naming its site-packages when PYTHON is itself a
# venv, as on the GPU image) and gets every wheel of WHEELHOUSE (tools/build_wheelhouse.sh; hashes
# checked against its SHA256SUMS) installed into it, with no index; the project is installed
# editable from this checkout, so tools/ and tests/ run this code.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${MUTUALNET_VENV:-.venv}
wheelhouse=""
if [ $# -gt 0 ]; then
  if [ "$1" = "--offline" ] && [ $# -eq 2 ]; then
    wheelhouse=$2
  else
    echo "usage: bash tools/setup_env.sh [--offline WHEELHOUSE]" >&2; exit 2
  fi
fi
stamp="$VENV/.mutualnet-setup"
want=$( (cat tools/setup_env.sh setup.py tools/install_detectron2.py; [ -z "$wheelhouse" ] || cat "$wheelhouse/SHA256SUMS" 2>/dev/null || true) \
  | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
if [ -n "$wheelhouse" ]; then
  [ -f "$wheelhouse/SHA256SUMS" ] || {
    echo "[setup] $wheelhouse/SHA256SUMS not found: make the wheelhouse with bash tools/build_wheelhouse.sh $wheelhouse --python X.Y" >&2; exit 1; }
  (cd "$wheelhouse" && sha256sum --quiet -c SHA256SUMS) || {
    echo "[setup] a wheel in $wheelhouse does not match its SHA256SUMS: rebuild or copy the wheelhouse again" >&2; exit 1; }
  "$PYTHON" -c "import torch, torchvision" 2>/dev/null || {
    echo "[setup] --offline uses the machine's torch, but $PYTHON cannot import torch and torchvision: set PYTHON to the interpreter that has them" >&2; exit 1; }
  echo "[setup] creating $VENV offline: $PYTHON's torch, the wheels of $wheelhouse"
  [ -x "$VENV/bin/python" ] || "$PYTHON" -m venv --system-site-packages "$VENV"
  # a venv's --system-site-packages reaches the base interpreter's packages, not those of a venv
  # PYTHON may itself be: add PYTHON's site-packages from a .pth (after the venv's own), as site
  # directories, so that their own .pth files are read too
  venv_site=$("$VENV/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
  "$PYTHON" -c "import site; print('\n'.join('import site; site.addsitedir(%r)' % p for p in site.getsitepackages()))" \
    > "$venv_site/_mutualnet_base_site.pth"
  wheels=()  # all but the project's own wheel (installed editable below)
  for wheel in "$wheelhouse"/*.whl; do
    case $(basename "$wheel") in mutualnet_det-*) ;; *) wheels+=("$wheel") ;; esac
  done
  "$VENV/bin/python" -m pip install -q --no-index --no-deps --ignore-installed "${wheels[@]}"
  "$VENV/bin/python" -m pip install -q --no-index --no-deps --no-build-isolation --use-pep517 -e .
  "$VENV/bin/python" -c "import torch, mutualnet_det, detectron2; print('[setup] ready: detectron2', detectron2.__version__, '| torch', torch.__version__, '| CUDA', torch.cuda.is_available())"
  echo "$want" > "$stamp"
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
