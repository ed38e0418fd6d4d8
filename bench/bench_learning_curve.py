"""Learning curve: domain micro-F1 on ../shared/eval/dev.jsonl as labeled examples grow (issue 6).

Two curves:

- real labels: n records drawn from the project's corpus (labels/corpus), for
  n = 100, 300, 1,000, 3,000 and all of it. The draw first takes up to 6
  examples of every label (the fewest training accepts), then fills up at
  random; a size too small for that is reported as not trainable.
- weak labels: the whole corpus plus n KAKEN records weakly labeled from their
  review section (classifier.bootstrap), n = 100, 300, 1,000, 3,000, 10,000.
  Weak labels cannot be trained alone: every weak record carries the pillar
  science_renaissance, and training needs examples without each label.

Dev records are left out of the weak pool (by id). Every model uses the same
cheaper settings (3-fold calibration, ``--cv``), stated in the output.
KAKEN records are read at run time from ../shared/data and credited as
「KAKEN：科学研究費助成事業データベース（国立情報学研究所）」.

Usage: python3 bench/bench_learning_curve.py [--cv 3] [--seed 0]
Writes bench/results/learning_curve.json and bench/results/learning_curve.png.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_train_scale import CREDIT, KAKEN, REPO, machine  # noqa: E402

DEV = REPO.parent / "shared" / "eval" / "dev.jsonl"
REAL_SIZES = [100, 300, 1000, 3000, None]
WEAK_SIZES = [100, 300, 1000, 3000, 10000]


def draw(data, n: int, seed: int):  # type: ignore[no-untyped-def]
    """Return ``n`` records of ``data``: up to 6 of each label first, then at random."""
    from classifier.model import MIN_POSITIVES

    rng = random.Random(seed)
    order = list(range(len(data)))
    rng.shuffle(order)
    chosen: list[int] = []
    taken: set[int] = set()
    counts: dict[str, int] = {}
    for i in order:
        labels = data.domains[i] + data.pillars[i]
        if any(counts.get(x, 0) < MIN_POSITIVES for x in labels):
            chosen.append(i)
            taken.add(i)
            for x in labels:
                counts[x] = counts.get(x, 0) + 1
    chosen = chosen[:n]
    for i in order:
        if len(chosen) >= n:
            break
        if i not in taken:
            chosen.append(i)
    return data.subset(sorted(chosen))


def score(train, dev, cv: int, seed: int) -> dict[str, object]:  # type: ignore[no-untyped-def]
    from classifier.errors import TrainingDataError
    from classifier.evaluation import evaluate_model
    from classifier.model import ModelConfig
    from classifier.training import fit_labeled

    start = time.perf_counter()
    try:
        model = fit_labeled(train, ModelConfig(cv=cv, seed=seed, n_jobs=2))
    except TrainingDataError as exc:
        return {"records": len(train), "error": str(exc).split(";")[0]}
    flat = evaluate_model(model, dev).flat()
    return {
        "records": len(train),
        "domains.micro_f1": flat["domains.micro_f1"],
        "domains.macro_f1": flat["domains.macro_f1"],
        "pillars.micro_f1": flat["pillars.micro_f1"],
        "train_seconds": round(time.perf_counter() - start, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cv", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--plot-only", action="store_true", help="Redraw the PNG from results/learning_curve.json.")
    args = parser.parse_args()
    if args.plot_only:
        saved = json.loads((HERE / "results" / "learning_curve.json").read_text(encoding="utf-8"))
        corpus_rows = [r for r in saved["rows"] if r["kind"] == "real"]
        plot(saved["rows"], int(corpus_rows[-1]["examples"]), HERE / "results" / "learning_curve.png")
        return
    if not (KAKEN.exists() and DEV.exists()):
        sys.exit("needs ../shared/data/kaken and ../shared/eval/dev.jsonl (the project's workplace data)")
    from classifier.bootstrap import weak_labels
    from classifier.corpus import load_corpus, load_crosswalk
    from classifier.evaluation import load_gold
    from classifier.taxonomy import load_taxonomy

    info = machine()
    dev = load_gold(DEV)
    corpus = load_corpus(load_taxonomy())
    weak_pool, stats = weak_labels([KAKEN], load_crosswalk(), limit=max(WEAK_SIZES), seed=args.seed, exclude_ids={d.id for d in dev.docs})
    rows = []
    for n in REAL_SIZES:
        size = len(corpus) if n is None else n
        row = {"kind": "real", "examples": size, **score(draw(corpus, size, args.seed), dev, args.cv, args.seed)}
        rows.append(row)
        print(json.dumps(row, ensure_ascii=False), flush=True)
    for n in WEAK_SIZES:
        train = corpus.subset(list(range(len(corpus))))  # the corpus as read once at the start
        train.extend(weak_pool.subset(list(range(n))))
        row = {"kind": "weak", "examples": n, "plus_corpus": len(corpus), **score(train, dev, args.cv, args.seed)}
        rows.append(row)
        print(json.dumps(row, ensure_ascii=False), flush=True)
    result = {
        "machine": info,
        "settings": {"calibration_cv": args.cv, "seed": args.seed},
        "dev": {"path": "../shared/eval/dev.jsonl", "documents": len(dev)},
        "weak_labels": {"source": f"KAKEN review_code via labels/crosswalk_kaken.yaml; {CREDIT}", **stats.as_dict()},
        "rows": rows,
    }
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    (out / "learning_curve.json").write_text(json.dumps(result, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    plot(rows, len(corpus), out / "learning_curve.png")
    print()
    print(f"{'labels':<6}{'examples':>10}{'trained on':>12}{'domain micro-F1':>17}{'pillar micro-F1':>17}")
    for r in rows:
        f1 = r.get("domains.micro_f1")
        pf = r.get("pillars.micro_f1")
        f1s = "-" if f1 is None else f"{f1:.3f}"
        pfs = "-" if pf is None else f"{pf:.3f}"
        print(f"{r['kind']:<6}{r['examples']:>10}{r['records']:>12}{f1s:>17}{pfs:>17}")


def plot(rows: list[dict[str, object]], corpus_size: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for kind, label, style in (
        ("real", "real labels (corpus sample)", "o-"),
        ("weak", f"weak KAKEN labels added to the corpus ({corpus_size:,})", "s--"),
    ):
        pts = [(r["examples"], r["domains.micro_f1"]) for r in rows if r["kind"] == kind and "domains.micro_f1" in r]
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], style, label=label)
    full = [r for r in rows if r["kind"] == "real" and r["examples"] == corpus_size and "domains.micro_f1" in r]
    if full:
        ax.axhline(float(full[0]["domains.micro_f1"]), color="grey", linestyle=":", label=f"whole corpus alone ({corpus_size:,})")  # type: ignore[arg-type]
    ax.set_xscale("log")
    ax.set_xlabel("labeled examples (log scale)")
    ax.set_ylabel("domain micro-F1 on dev (215 projects)")
    ax.set_title("granttag learning curve")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)


if __name__ == "__main__":
    main()
