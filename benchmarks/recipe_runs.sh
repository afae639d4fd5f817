#!/usr/bin/env bash
# Runs of the previous default's training recipe (EfficientNet-Lite2, blocks 5-6 + head fine-tuned on
# cached block-4 maps at 384 px, validated and run at 512 px, 4 heads, lambda 0.1, 12 epochs) with some
# flags changed, one folder each; the shipped recipe is this one with
# '--heads 1 --ema 0.998 --epochs 9 --lr-step 6' (its card's training.command). Resumable: a finished
# run is reported from its card, an interrupted one continues (--resume), so runs of 11-60 min each on
# 2 cores can span sessions. The feature cache
# ($CSRA_HOME/features) is shared by every run at the same input size.
# Usage: benchmarks/recipe_runs.sh VOCdevkit OUT_DIR 'NAME FLAG...' ...
#   e.g. benchmarks/recipe_runs.sh ../shared/data/voc2007/VOCdevkit runs/x 'ema --ema 0.998'
# (a flag given again overrides the recipe's: the last value counts)
set -euo pipefail
root=${1:?VOCdevkit folder} out=${2:?output folder}
shift 2
recipe=(--dataset voc --root "$root" --split train --val-split val --arch efficientnet_lite2 --input-size 384
        --test-size 512 --heads 4 --lam 0.1 --trainable-stages 3 --optimizer adamw --lr 1e-4 --head-lr-mult 10
        --weight-decay 0.01 --warmup-epochs 1 --lr-step 8 --epochs 12 --batch-size 16 --workers 2 --seed 0)
mkdir -p "$out"
for spec in "$@"; do
  read -r -a words <<< "$spec"
  name=${words[0]} flags=("${words[@]:1}")
  dir="$out/$name"
  if [ ! -f "$dir/$name.json" ]; then
    resume=()
    [ -f "$dir/checkpoint.pt" ] && resume=(--resume)
    start=$(date +%s)
    csra train "${recipe[@]}" ${flags[@]+"${flags[@]}"} --out "$dir" --name "$name" ${resume[@]+"${resume[@]}"} \
      >> "$dir.log" 2>&1 || { echo "$name: failed, see $dir.log" >&2; exit 1; }
    echo "$name: trained in $(( $(date +%s) - start )) s" >&2
  fi
  python3 - "$dir/$name.json" <<'PY'
import json, sys
card = json.load(open(sys.argv[1]))
m, h = card["metrics"], card["training"]["history"]
print(f"{card['name']}: val mAP {m['mAP']:.2f} CF1 {m['CF1']:.2f} OF1 {m['OF1']:.2f} at {card['input_size']} px "
      f"(last epoch at {h[-1]['val_size']} px: {h[-1]['val_mAP']:.2f}; {sum(r['seconds'] for r in h):.0f} s of epochs)")
PY
done
