#!/usr/bin/env bash
# What CSRA adds to the shipped model: its exact recipe, only the head changed: lambda = 0 (average
# pooling + linear, no attention) against CSRA with 1/2/4/6/8 heads. The recipe is
# benchmarks/recipe_runs.sh's (the previous default's) with the shipped model's changes, the EMA short
# schedule (--ema 0.998 --epochs 9 --lr-step 6); ABLATION_RECIPE=previous runs it on the previous
# recipe instead (12 epochs, lr step at 8, no EMA), the table of benchmarks/RESULTS.md's older part.
# Resumable run by run (~11-16 min each alone on 2 cores after a shared feature cache of ~10 min);
# ends with the Markdown tables of every finished run (benchmarks/ablation_table.py).
# Usage: benchmarks/ablation_recipe.sh ../shared/data/voc2007/VOCdevkit [out_dir] [heads:lam ...]
set -euo pipefail
here=$(dirname "$0")
root=${1:?VOCdevkit folder}
case ${ABLATION_RECIPE:-shipped} in
  shipped) changes="--ema 0.998 --epochs 9 --lr-step 6" default_out=runs/ablation-emashort ;;
  previous) changes="" default_out=runs/ablation-recipe ;;
  *) echo "ABLATION_RECIPE=$ABLATION_RECIPE: use shipped or previous" >&2; exit 2 ;;
esac
out=${2:-$default_out}
case $out in *:*) echo "second argument: the output folder (heads:lam pairs come after it)" >&2; exit 2 ;; esac
shift $(( $# > 2 ? 2 : $# ))
configs=("$@")
[ ${#configs[@]} -gt 0 ] || configs=(1:0 1:0.1 2:0.1 4:0.1 6:0.1 8:0.1)
specs=()
for cfg in "${configs[@]}"; do
  heads=${cfg%%:*} lam=${cfg#*:}
  specs+=("heads${heads}_lam${lam} --heads $heads --lam $lam $changes")
done
"$here/recipe_runs.sh" "$root" "$out" "${specs[@]}"
python3 "$here/ablation_table.py" "$out"
