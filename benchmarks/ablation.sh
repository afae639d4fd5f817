#!/usr/bin/env bash
# What CSRA adds, measured here: the same frozen EfficientNet-Lite0 features (320 px, cached once),
# heads trained with lambda = 0 (plain average pooling + linear) against CSRA with 1/2/4/6/8 heads.
# Usage: benchmarks/ablation.sh ../shared/data/voc2007/VOCdevkit [out_dir]
set -euo pipefail
root=${1:?VOCdevkit folder}
out=${2:-runs/ablation}
common=(--dataset voc --root "$root" --split train --val-split val --arch efficientnet_lite0 --input-size 320
        --freeze-backbone --optimizer adamw --lr 1e-4 --head-lr-mult 10 --weight-decay 0.01 --warmup-epochs 1
        --epochs 15 --lr-step 10 --batch-size 32 --seed 0)
for cfg in "1 0" "1 0.1" "1 0.3" "2 0.1" "4 0.1" "6 0.1" "8 0.1"; do
  set -- $cfg
  name="heads$1_lam$2"
  printf '%s: ' "$name"
  csra train "${common[@]}" --heads "$1" --lam "$2" --out "$out/$name" --name "$name" 2>&1 | grep -E "val mAP [0-9.]+  CF1"
done
