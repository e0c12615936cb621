#!/usr/bin/env bash
# Build a wheelhouse for setting up on a machine without network that has its own (CUDA) torch,
# e.g. a cluster GPU node: everything the project needs beyond torch, torchvision and the common
# scientific stack (numpy, Pillow, matplotlib, PyYAML, tqdm, tabulate, opencv, ...), as wheels
# for one Python version on manylinux x86-64.
#
#   bash tools/build_wheelhouse.sh OUT_DIR [--python 3.12]     # here, with network or a package index
#   bash tools/setup_env.sh --offline OUT_DIR                   # there (docs/installation.md)
#
# Holds: Detectron2's pinned wheel (sha256-checked, re-packed pure Python: tools/install_detectron2.py),
# fvcore, iopath, yacs, termcolor, pycocotools, faster-coco-eval, omegaconf, antlr4-python3-runtime,
# hydra-core, portalocker, setuptools < 81 (Detectron2's model zoo imports pkg_resources), wheel,
# onnx / onnxruntime are not included (the image may have them; the deploy extra is optional) and
# the project itself. Packages published only as source are built into wheels here (all pure
# Python). Writes OUT_DIR/SHA256SUMS and refuses a wheelhouse over 64 MiB.
set -euo pipefail
cd "$(dirname "$0")/.."
usage="usage: bash tools/build_wheelhouse.sh OUT_DIR [--python X.Y]"
[ $# -ge 1 ] || { echo "$usage" >&2; exit 2; }
out=$1; shift
version=3.12
while [ $# -gt 0 ]; do
  case $1 in
    --python) [ $# -ge 2 ] || { echo "$usage" >&2; exit 2; }; version=$2; shift 2 ;;
    *) echo "unknown argument $1; $usage" >&2; exit 2 ;;
  esac
done
[[ $version =~ ^3\.[0-9]+$ ]] || { echo "--python $version: give a version like 3.12" >&2; exit 2; }
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
mkdir -p "$out"
tag=cp${version/./}

echo "[wheelhouse] Detectron2 (pinned, checked, pure Python)"
"$PY" tools/install_detectron2.py --wheel-into "$out" >/dev/null

# Binary wheels for the target Python; pure-Python ones are version independent.
echo "[wheelhouse] binary wheels for Python $version (manylinux x86-64)"
"$PY" -m pip download -q --no-deps --only-binary :all: --python-version "$version" --implementation cp \
  --abi "$tag" --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
  -d "$out" "pycocotools>=2.0.2" faster-coco-eval

echo "[wheelhouse] pure-Python wheels (sdists built here)"
"$PY" -m pip wheel -q --no-deps -w "$out" \
  "fvcore>=0.1.5,<0.1.6" "iopath>=0.1.7,<0.1.10" "yacs>=0.1.8" "termcolor>=1.1" "omegaconf>=2.1,<2.4" \
  "antlr4-python3-runtime==4.9.*" "hydra-core>=1.1" portalocker "setuptools<81" wheel
had_build=$([ -e build ] && echo yes || true)
"$PY" -m pip wheel -q --no-deps --no-build-isolation -w "$out" .
[ -n "$had_build" ] || rm -rf build  # setuptools' scratch folder, not left in the checkout

(cd "$out" && sha256sum ./*.whl > SHA256SUMS)
size=$(du -sm "$out" | cut -f1)
if [ "$size" -gt 64 ]; then
  echo "[wheelhouse] $out is ${size} MiB, over the 64 MiB a device run carries" >&2
  exit 1
fi
echo "[wheelhouse] $(ls "$out"/*.whl | wc -l) wheels, ${size} MiB in $out (hashes in SHA256SUMS)"
