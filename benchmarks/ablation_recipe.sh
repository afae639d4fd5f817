#!/usr/bin/env bash
# What CSRA adds to the shipped model: its exact recipe (EfficientNet-Lite2, blocks 5-6 + head
# fine-tuned on cached block-4 maps at 384 px, run and validated at 512 px), only the head changed:
# lambda = 0 (average pooling + linear, no attention) against CSRA with 1/2/4/6/8 heads.
# Resumable: a finished run is reported from its card, an interrupted one continues (--resume),
# so the six runs (~45 min each on 2 cores, features cached once for all) can span sessions.
# Usage: benchmarks/ablation_recipe.sh ../shared/data/voc2007/VOCdevkit [out_dir] [heads:lam ...]
# Ends with the Markdown tables of every finished run (benchmarks/ablation_table.py).
set -euo pipefail
root=${1:?VOCdevkit folder}
out=${2:-runs/ablation-recipe}
case $out in *:*) echo "second argument: the output folder (heads:lam pairs come after it)" >&2; exit 2 ;; esac
shift $(( $# > 2 ? 2 : $# ))
configs=("$@")
# the shipped 4-head run last: its reproduction is already in RESULTS.md
[ ${#configs[@]} -gt 0 ] || configs=(1:0 1:0.1 8:0.1 2:0.1 6:0.1 4:0.1)
mkdir -p "$out"
common=(--dataset voc --root "$root" --split train --val-split val --arch efficientnet_lite2 --input-size 384
        --test-size 512 --trainable-stages 3 --optimizer adamw --lr 1e-4 --head-lr-mult 10 --weight-decay 0.01
        --warmup-epochs 1 --lr-step 8 --epochs 12 --batch-size 16 --workers 2 --seed 0)
for cfg in "${configs[@]}"; do
  heads=${cfg%%:*} lam=${cfg#*:}
  name="heads${heads}_lam${lam}"
  dir="$out/$name"
  if [ ! -f "$dir/$name.json" ]; then
    resume=()
    [ -f "$dir/checkpoint.pt" ] && resume=(--resume)
    start=$(date +%s)
    csra train "${common[@]}" --heads "$heads" --lam "$lam" --out "$dir" --name "$name" ${resume[@]+"${resume[@]}"} \
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
python3 "$(dirname "$0")/ablation_table.py" "$out"
