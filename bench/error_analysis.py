"""Error analysis on a gold set: false positives and false negatives per label, with evidence terms (issue 3).

Usage: python3 bench/error_analysis.py [GOLD.jsonl] [--model VERSION] [--label ID] [--lang ja|en]
Prints, for each label, its FP and FN documents (id, title, score vs threshold,
top evidence terms), so the training text can be grown where the model is wrong.
Default GOLD: ../shared/eval/dev.jsonl. Uses the active model (built if missing).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from classifier.evaluation import load_gold
from classifier.store import ensure_default_model, load_model

DEV = Path(__file__).resolve().parent.parent.parent / "shared" / "eval" / "dev.jsonl"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("gold", nargs="?", default=str(DEV))
    ap.add_argument("--model", default=None)
    ap.add_argument("--label", default=None, help="only this label")
    ap.add_argument("--lang", default=None, help="only documents of this language (ja/en)")
    args = ap.parse_args()
    if args.model is None:
        ensure_default_model(echo=print)
    model = load_model(args.model)
    gold = load_gold(Path(args.gold))
    keep = [i for i, lang in enumerate(gold.langs) if args.lang is None or lang == args.lang]
    gold = gold.subset(keep)
    preds = model.predict(gold.docs, threshold=0.0, top_terms=6)
    thresholds = dict(zip(model.label_ids, model.thresholds))
    for label in model.label_ids:
        if args.label and label != args.label:
            continue
        kind_truth = gold.domains if label in model.domain_ids else gold.pillars
        fps, fns = [], []
        for doc, truth, pred in zip(gold.docs, kind_truth, preds):
            entry = next(s for s in pred.domains + pred.pillars if s.id == label)
            said = entry.score >= thresholds[label]
            line = f"    {doc.id}  p={entry.score:.2f} (t={thresholds[label]:.2f})  {doc.title[:60]}  [{', '.join(e.term for e in entry.evidence)}]"
            if said and label not in truth:
                fps.append(line + f"  gold={truth}")
            elif not said and label in truth:
                fns.append(line)
        print(f"== {label}: {len(fps)} false positives, {len(fns)} false negatives")
        if fps:
            print("  FP:")
            print("\n".join(fps))
        if fns:
            print("  FN:")
            print("\n".join(fns))


if __name__ == "__main__":
    main()
