#!/usr/bin/env bash
# The main job on the embedded dataset: train MutualNet and US-Net (each ends with a width sweep),
# plot their accuracy-efficiency trade-off, write the query tables, render side-by-side demos.
# Interrupted? Run it again: training resumes from the last checkpoint, finished steps are skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup_env.sh
PY=.venv/bin/python
export PYTHONWARNINGS=ignore
for method in mutualnet usnet; do
  out=output/shapes_$method
  if [ -f "$out/inference/shapes_val/width_sweep.json" ] && [ -f "$out/model_final.pth" ]; then
    echo "[main] $method: already trained and evaluated ($out)"
    continue
  fi
  echo "[main] training $method on the embedded dataset -> $out"
  $PY tools/train_net.py --config-file configs/Shapes/${method}_mask_rcnn_R_18_FPN.yaml --resume
done
echo "[main] query tables"
for method in mutualnet usnet; do
  $PY tools/query_table.py output/shapes_$method/inference/shapes_val/width_sweep.json
done
$PY tools/plot_tradeoff.py output/shapes_mutualnet/inference/shapes_val/width_sweep.json \
  output/shapes_usnet/inference/shapes_val/width_sweep.json --labels MutualNet US-Net \
  --title "Embedded shapes dataset (R-18 FPN)" -o output/tradeoff.png
echo "[main] demo: MutualNet vs US-Net at widths 1.0 and 0.25 (scores >= 0.3) -> output/demo"
$PY demo/demo.py --config-file configs/Shapes/mutualnet_mask_rcnn_R_18_FPN.yaml \
  --compare-config configs/Shapes/usnet_mask_rcnn_R_18_FPN.yaml --dataset shapes_val --num-images 4 \
  --widths 1.0 0.25 --confidence-threshold 0.3 --output output/demo
echo "[main] done: output/tradeoff.png, output/demo/, output/shapes_*/"
