"""The Markdown tables of recipe runs (benchmarks/ablation_recipe.sh, levers_recipe.sh), from the
cards they wrote: final val metrics per run and val mAP per epoch. Unfinished runs are left out.

Usage: python benchmarks/ablation_table.py [runs/ablation-recipe]
"""
import json
import sys
from pathlib import Path


def label(card: dict) -> str:
    if not card["name"].startswith("heads"):  # a lever's run (benchmarks/levers_recipe.sh): its name
        return card["name"]
    if card["lam"] == 0:
        return "λ = 0 (average pooling + linear, no attention)"
    heads = card["num_heads"]
    return f"CSRA {heads} head{'s' if heads > 1 else ''}, λ {card['lam']:g}"


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/ablation-recipe")
    cards = [json.loads(p.read_text()) for p in sorted(out.glob("*/*.json")) if p.stem == p.parent.name]
    cards.sort(key=lambda c: (c["lam"] != 0, c["num_heads"], c["lam"]))
    if not cards:
        sys.exit(f"{out}: no finished run")
    size = cards[0]["input_size"]
    print(f"| run (VOC val at {size} px) | val mAP | CF1 | OF1 | epochs' time |")
    print("|---|---|---|---|---|")
    for c in cards:
        m, h = c["metrics"], c["training"]["history"]
        print(f"| {label(c)} | {m['mAP']:.2f} | {m['CF1']:.2f} | {m['OF1']:.2f} | {sum(r['seconds'] for r in h):,.0f} s |")
    epochs = max(len(c["training"]["history"]) for c in cards)
    print()
    print("| epoch | " + " | ".join(str(e) for e in range(1, epochs + 1)) + " |")
    print("|---" * (epochs + 1) + "|")
    for c in cards:
        print(f"| {label(c)} | " + " | ".join(f"{r['val_mAP']:.2f}" for r in c["training"]["history"]) + " |")


if __name__ == "__main__":
    main()
