"""Quality of the default model on a gold set, overall and by language, with a reliability curve (issues 2, 3).

Trains the default model from labels/ (timed), evaluates it on GOLD (default
../shared/eval/dev.jsonl) for all documents and for the Japanese and English
subsets, and draws the reliability curve of the domain probabilities to
bench/results/reliability.png. Prints and writes bench/results/quality.json.
Usage: python3 bench/quality.py [GOLD.jsonl]
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

from classifier.corpus import load_corpus
from classifier.evaluation import evaluate_model, load_gold
from classifier.model import ModelConfig, label_matrix
from classifier.taxonomy import load_taxonomy
from classifier.training import fit_labeled

RESULTS = Path(__file__).resolve().parent / "results"
DEV = Path(__file__).resolve().parent.parent.parent / "shared" / "eval" / "dev.jsonl"
KEYS = ("domains.micro_f1", "domains.macro_f1", "domains.micro_precision", "domains.micro_recall", "domains.ece", "pillars.micro_f1", "pillars.macro_f1", "pillars.ece")


def main() -> None:
    gold_path = Path(sys.argv[1]) if len(sys.argv) > 1 else DEV
    if not gold_path.exists():
        sys.exit(f"needs {gold_path}")
    taxonomy = load_taxonomy()
    data = load_corpus(taxonomy)
    start = time.perf_counter()
    model = fit_labeled(data, ModelConfig(n_jobs=2))
    seconds = time.perf_counter() - start
    gold = load_gold(gold_path)
    result: dict[str, object] = {
        "gold": str(gold_path.name),
        "training_records": len(data),
        "training_seconds": round(seconds, 1),
        "machine": f"{platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}",
        "command": "python3 bench/quality.py",
    }
    for name, keep in (("all", None), ("ja", "ja"), ("en", "en")):
        idx = [i for i, lang in enumerate(gold.langs) if keep is None or lang == keep]
        if not idx:
            continue
        flat = evaluate_model(model, gold.subset(idx)).flat()
        result[name] = {"documents": len(idx), **{k: flat[k] for k in KEYS}}
    # Reliability curve of domain probabilities (10 equal bins).
    proba = model.predict_proba(gold.docs)[:, : len(model.domain_ids)]
    truth = label_matrix(gold.domains, model.domain_ids)
    p, t = proba.ravel(), truth.ravel()
    bins = np.minimum((p * 10).astype(int), 9)
    curve = [(float(p[bins == b].mean()), float(t[bins == b].mean()), int((bins == b).sum())) for b in range(10) if (bins == b).any()]
    result["reliability_domains"] = [{"confidence": round(c, 3), "accuracy": round(a, 3), "n": n} for c, a, n in curve]
    RESULTS.mkdir(exist_ok=True)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(4.5, 4.5))
        ax.plot([0, 1], [0, 1], "--", color="grey", label="perfect")
        ax.plot([c for c, _, _ in curve], [a for _, a, _ in curve], "o-", label="domains")
        ax.set_xlabel("predicted probability")
        ax.set_ylabel("observed frequency")
        ax.set_title(f"Reliability on {gold_path.name} (ECE {result['all']['domains.ece']:.3f})")  # type: ignore[index]
        ax.legend()
        fig.tight_layout()
        fig.savefig(RESULTS / "reliability.png", dpi=100)
    except ImportError:
        print("matplotlib not installed: no plot", file=sys.stderr)
    print(json.dumps(result, ensure_ascii=False, indent=2))
    (RESULTS / "quality.json").write_text(json.dumps(result, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
