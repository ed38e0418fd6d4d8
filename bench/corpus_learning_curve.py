"""Learning curve of the project's own corpus: dev-set domain micro-F1 against corpus size (issue 3).

Trains on 25%, 50%, 75% and 100% of labels/corpus (nested random subsets, three
seeds each for the partial sizes) and evaluates on GOLD (default
../shared/eval/dev.jsonl). Prints a table, writes
bench/results/corpus_learning_curve.json and .png.
Usage: python3 bench/corpus_learning_curve.py [GOLD.jsonl]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from classifier.corpus import load_corpus
from classifier.evaluation import evaluate_model, load_gold
from classifier.model import ModelConfig
from classifier.taxonomy import load_taxonomy
from classifier.training import fit_labeled

RESULTS = Path(__file__).resolve().parent / "results"
DEV = Path(__file__).resolve().parent.parent.parent / "shared" / "eval" / "dev.jsonl"


def main() -> None:
    gold_path = Path(sys.argv[1]) if len(sys.argv) > 1 else DEV
    if not gold_path.exists():
        sys.exit(f"needs {gold_path}")
    data = load_corpus(load_taxonomy())
    gold = load_gold(gold_path)
    rows = []
    for frac in (0.25, 0.5, 0.75, 1.0):
        scores = []
        for seed in (0, 1, 2) if frac < 1 else (0,):
            order = np.random.default_rng(seed).permutation(len(data))
            sub = data.subset(sorted(order[: int(len(data) * frac)].tolist()))
            try:
                model = fit_labeled(sub, ModelConfig(n_jobs=2, seed=seed))
            except Exception as exc:  # a label may have too few examples in a small subset
                print(f"{frac:.0%} seed {seed}: {exc}", file=sys.stderr)
                continue
            flat = evaluate_model(model, gold).flat()
            scores.append((flat["domains.micro_f1"], flat["domains.macro_f1"], flat["pillars.micro_f1"]))
        s = np.array(scores)
        rows.append({"fraction": frac, "records": int(len(data) * frac), "runs": len(scores),
                     "domains_micro_f1": round(float(s[:, 0].mean()), 4), "domains_micro_f1_sd": round(float(s[:, 0].std()), 4),
                     "domains_macro_f1": round(float(s[:, 1].mean()), 4), "pillars_micro_f1": round(float(s[:, 2].mean()), 4)})
        print(f"{frac:>5.0%} {rows[-1]['records']:>6} records  domains micro-F1 {rows[-1]['domains_micro_f1']:.3f} "
              f"(sd {rows[-1]['domains_micro_f1_sd']:.3f})  macro-F1 {rows[-1]['domains_macro_f1']:.3f}  pillars micro-F1 {rows[-1]['pillars_micro_f1']:.3f}", flush=True)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "corpus_learning_curve.json").write_text(json.dumps({"gold": gold_path.name, "command": "python3 bench/corpus_learning_curve.py", "rows": rows}, indent=2) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.errorbar([r["records"] for r in rows], [r["domains_micro_f1"] for r in rows], yerr=[r["domains_micro_f1_sd"] for r in rows], marker="o", label="domains micro-F1")
    ax.plot([r["records"] for r in rows], [r["domains_macro_f1"] for r in rows], marker="s", label="domains macro-F1")
    ax.set_xlabel("training records (project corpus)")
    ax.set_ylabel(f"F1 on {gold_path.name}")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(RESULTS / "corpus_learning_curve.png", dpi=100)


if __name__ == "__main__":
    main()
