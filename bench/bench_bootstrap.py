"""Does a model bootstrapped from KAKEN review sections beat the default model on ../shared/eval/dev.jsonl? (issue 6)

Models, all with the same training settings (``--cv`` folds for calibration,
default 3: 5, the default model's, takes about twice as long):

- default: the project's corpus only (what `granttag classify` builds);
- bootstrap: the corpus plus N KAKEN records weakly labeled from their
  review section through labels/crosswalk_kaken.yaml (classifier.bootstrap,
  the path of `granttag bootstrap`), with sections mapped to no domain kept
  as "no domain" (``--unmapped none``, the default);
- bootstrap-skip: the same with those records left out (``--unmapped skip``).

Dev records are left out of the weak pool (by id). Figures: domain and
pillar micro/macro-F1 on all of dev, and domain micro-F1 on its Japanese and
English parts. KAKEN records are read at run time from ../shared/data:
「KAKEN：科学研究費助成事業データベース（国立情報学研究所）」.

Usage: python3 bench/bench_bootstrap.py [--weak N] [--cv K] [--variants default,bootstrap,bootstrap-skip]
Writes bench/results/bootstrap.json.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_train_scale import CREDIT, KAKEN, REPO, machine  # noqa: E402

DEV = REPO.parent / "shared" / "eval" / "dev.jsonl"


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weak", type=int, default=10000)
    parser.add_argument("--cv", type=int, default=3)
    parser.add_argument("--variants", default="default,bootstrap,bootstrap-skip")
    args = parser.parse_args()
    n = args.weak
    wanted = args.variants.split(",")
    if not (KAKEN.exists() and DEV.exists()):
        sys.exit("needs ../shared/data/kaken and ../shared/eval/dev.jsonl (the project's workplace data)")
    from classifier.bootstrap import weak_labels
    from classifier.corpus import load_corpus, load_crosswalk
    from classifier.evaluation import evaluate_model, load_gold
    from classifier.model import ModelConfig
    from classifier.taxonomy import load_taxonomy
    from classifier.training import fit_labeled

    info = machine()
    dev = load_gold(DEV)
    ja = [i for i, lang in enumerate(dev.langs) if lang == "ja"]
    en = [i for i, lang in enumerate(dev.langs) if lang != "ja"]
    exclude = {d.id for d in dev.docs}
    crosswalk = load_crosswalk()
    runs = {}
    corpus = load_corpus(load_taxonomy())  # read once: the same corpus for every model
    for name, unmapped in (("default", None), ("bootstrap", "none"), ("bootstrap-skip", "skip")):
        if name not in wanted:
            continue
        data = corpus.subset(list(range(len(corpus))))
        stats = None
        if unmapped is not None:
            weak, stats = weak_labels([KAKEN], crosswalk, unmapped=unmapped, limit=n, seed=0, exclude_ids=exclude)
            data.extend(weak)
        start = time.perf_counter()
        model = fit_labeled(data, ModelConfig(cv=args.cv, n_jobs=2))
        seconds = time.perf_counter() - start
        flat = evaluate_model(model, dev).flat()
        run = {
            "records": len(data),
            "weak": 0 if stats is None else stats.sampled,
            "train_seconds": round(seconds, 1),
            **{k: flat[k] for k in ("domains.micro_f1", "domains.macro_f1", "pillars.micro_f1", "pillars.macro_f1", "domains.ece")},
            "domains.micro_f1.ja": evaluate_model(model, dev.subset(ja)).flat()["domains.micro_f1"],
            "domains.micro_f1.en": evaluate_model(model, dev.subset(en)).flat()["domains.micro_f1"],
            "per_label": {r["label"]: r["f1"] for r in flat["domains.per_label"]},
        }
        if stats is not None:
            run["weak_stats"] = stats.as_dict()
        runs[name] = run
        print(
            f"{name:<15} {len(data):>6} records  domains micro-F1 {run['domains.micro_f1']:.3f} (ja {run['domains.micro_f1.ja']:.3f}, "
            f"en {run['domains.micro_f1.en']:.3f})  macro {run['domains.macro_f1']:.3f}  pillars micro-F1 {run['pillars.micro_f1']:.3f}  "
            f"train {seconds:.0f} s",
            flush=True,
        )
    base = runs.get("default")
    for name in [v for v in ("bootstrap", "bootstrap-skip") if v in runs and base]:
        runs[name]["delta_domains.micro_f1"] = round(runs[name]["domains.micro_f1"] - base["domains.micro_f1"], 4)
        print(f"{name}: domain micro-F1 {runs[name]['delta_domains.micro_f1']:+.3f} against the default model")
    result = {"machine": info, "calibration_cv": args.cv, "weak_records": n, "dev_documents": len(dev), "data": CREDIT, "runs": runs}
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "bootstrap.json").write_text(json.dumps(result, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
