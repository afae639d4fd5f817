#!/usr/bin/env bash
# What CSRA adds to the shipped model: its exact recipe (benchmarks/recipe_runs.sh), only the head
# changed: lambda = 0 (average pooling + linear, no attention) against CSRA with 1/2/4/6/8 heads.
# Resumable run by run (~45-60 min each on 2 cores after a shared feature cache); ends with the
# Markdown tables of every finished run (benchmarks/ablation_table.py).
# Usage: benchmarks/ablation_recipe.sh ../shared/data/voc2007/VOCdevkit [out_dir] [heads:lam ...]
set -euo pipefail
here=$(dirname "$0")
root=${1:?VOCdevkit folder}
out=${2:-runs/ablation-recipe}
case $out in *:*) echo "second argument: the output folder (heads:lam pairs come after it)" >&2; exit 2 ;; esac
shift $(( $# > 2 ? 2 : $# ))
configs=("$@")
# the shipped 4-head run last: its reproduction is already in RESULTS.md
[ ${#configs[@]} -gt 0 ] || configs=(1:0 1:0.1 8:0.1 2:0.1 6:0.1 4:0.1)
specs=()
for cfg in "${configs[@]}"; do
  heads=${cfg%%:*} lam=${cfg#*:}
  specs+=("heads${heads}_lam${lam} --heads $heads --lam $lam")
done
"$here/recipe_runs.sh" "$root" "$out" "${specs[@]}"
python3 "$here/ablation_table.py" "$out"
