#!/usr/bin/env bash
# Training levers tried on the previous default's recipe (benchmarks/recipe_runs.sh: 4 heads, 12 epochs),
# one changed at a time against its run (91.25 val mAP at 512 px; its reproduction 91.20); emashort with
# --heads 1 became the shipped recipe (91.83). Resumable run by run.
#   ema      --ema 0.998: ship an exponential moving average of the weights   (~1 h on 2 cores)
#   emalong  --ema 0.998 over 18 epochs, lr step at 12: a longer schedule     (45 min alone on 2 cores)
#   emashort --ema 0.998 over 9 epochs, lr step at 6 (EMA peaked at the step) (~45 min)
#   asl      --loss asl: the asymmetric loss (Ridnik et al., ICCV 2021)        (~1 h)
#   crops    --crop-scale-min 0.3: stronger random resized crops               (~1 h)
#   train448 --input-size 448: train at 448 px (new feature cache, ~25 min)    (~2 h)
#   deeper   --trainable-stages 4: block 4 fine-tuned too (block-3 maps cached) (43 min alone on 2 cores, ~2 h beside other work)
# Usage: benchmarks/levers_recipe.sh ../shared/data/voc2007/VOCdevkit [out_dir] [lever ...]
set -euo pipefail
here=$(dirname "$0")
root=${1:?VOCdevkit folder}
out=${2:-runs/levers-recipe}
shift $(( $# > 2 ? 2 : $# ))
levers=("$@")
[ ${#levers[@]} -gt 0 ] || levers=(ema emalong emashort asl crops train448 deeper)
specs=()
for lever in "${levers[@]}"; do
  case $lever in
    ema) specs+=("ema --ema 0.998") ;;
    emalong) specs+=("emalong --ema 0.998 --epochs 18 --lr-step 12") ;;
    emashort) specs+=("emashort --ema 0.998 --epochs 9 --lr-step 6") ;;
    asl) specs+=("asl --loss asl") ;;
    crops) specs+=("crops --crop-scale-min 0.3") ;;
    train448) specs+=("train448 --input-size 448") ;;
    deeper) specs+=("deeper --trainable-stages 4") ;;
    *) echo "unknown lever $lever: use ema, emalong, emashort, asl, crops, train448 or deeper" >&2; exit 2 ;;
  esac
done
"$here/recipe_runs.sh" "$root" "$out" "${specs[@]}"
python3 "$here/ablation_table.py" "$out"
