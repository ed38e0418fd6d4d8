"""Where `granttag classify` spends its time, per record and step, on one core (issue 2).

Classifies the first WARM KAKEN records to fill the per-process caches, then
times each step over the next N records, in chunks of 500 as the batch path
runs them, with timers wrapped around the steps. MeCab's own word splitting
(`-Owakati`, the issue's yardstick) is timed on the same chunks in turn, so
both see the same minute of this shared machine. Steps nest: "analysis"
includes "MeCab", "columns" includes "new morphemes", "scoring" includes
analysis, columns and explanations... the table lists each with its time per
record. Uses the active model (the default one is built if needed).
Usage: python3 bench/classify_steps.py [WARM] [N] (default 8000 4000).
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from kaken import CREDIT, kaken_records  # noqa: E402


def main() -> None:
    warm = int(sys.argv[1]) if len(sys.argv) > 1 else 8000
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 4000
    import fugashi
    import unidic_lite

    import classifier.batch as batch
    import classifier.scorer as scorer_module
    from classifier import store
    from classifier.columns import COMPILED
    from classifier.records import RawRecord
    from granttag.output import render

    store.ensure_default_model()
    model = store.load_model()
    records = [RawRecord(f"record {i}", i, r, raw_id=r["id"]) for i, r in enumerate(kaken_records(warm + n))]
    batch._WORKER_MODEL, batch._WORKER_OPTS = model, {"explain": True}
    batch._WORKER_RENDER = lambda outcome: render("jsonl", outcome)
    for i in range(0, warm, 500):
        batch._classify_chunk(records[i : i + 500])

    spent: dict[str, float] = defaultdict(float)

    def timed(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[name] += time.perf_counter() - start

        return wrapper

    tokenizer = model.tokenizer()
    tokenizer.parse = timed("MeCab", tokenizer.parse)  # type: ignore[method-assign]
    tokenizer.key_feature = timed("new morphemes' features", tokenizer.key_feature)  # type: ignore[method-assign]
    scorer_module.analyse_document = timed("analysis (normalise, MeCab)", scorer_module.analyse_document)  # type: ignore[assignment]
    model._entries = timed("feature entries (all blocks)", model._entries)  # type: ignore[method-assign]
    model._token_entries = timed("morphemes to columns", model._token_entries)  # type: ignore[method-assign]
    model._explain = timed("explanations", model._explain)  # type: ignore[method-assign]
    model._score = timed("scoring (analysis, entries, NumPy)", model._score)  # type: ignore[method-assign]
    model.predict = timed("predict (scoring, labels, explanations)", model.predict)  # type: ignore[method-assign]
    batch._WORKER_RENDER = timed("JSON line", batch._WORKER_RENDER)

    tagger = fugashi.GenericTagger("-r /dev/null -Owakati -d " + unidic_lite.DICDIR)
    for i in range(warm, warm + n, 500):
        chunk = records[i : i + 500]
        texts = [r.fields["title"] + "\n" + r.fields["abstract"] + "\n" + " ".join(r.fields["keywords"]) for r in chunk]  # type: ignore[index]
        start = time.perf_counter()
        for text in texts:
            tagger.parse(text)
        spent["MeCab wakati alone (yardstick)"] += time.perf_counter() - start
        start = time.perf_counter()
        batch._classify_chunk(chunk)
        spent["whole chunk (records to JSON lines)"] += time.perf_counter() - start

    steps = {name: round(seconds / n * 1e6, 1) for name, seconds in sorted(spent.items(), key=lambda kv: -kv[1])}
    for name, us in steps.items():
        print(f"{name:44s} {us:8.1f} µs/record")
    ratio = spent["MeCab wakati alone (yardstick)"] / spent["whole chunk (records to JSON lines)"]
    print(f"one core: granttag runs at {ratio:.3f} of MeCab's speed")
    result = {
        "warm_records": warm,
        "timed_records": n,
        "microseconds_per_record": steps,
        "one_core_speed_vs_mecab": round(ratio, 3),
        "model_version": model.version,
        "machine": f"{platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}",
        "compiled_speedup": COMPILED,  # the optional compiled morpheme table (speedups/) was in use
        "command": f"python3 bench/classify_steps.py {warm} {n}",
        "data": CREDIT,
    }
    Path(__file__).resolve().parent.joinpath("results", "classify_steps.json").write_text(
        json.dumps(result, ensure_ascii=False, indent=2) + "\n", encoding="utf-8"
    )


if __name__ == "__main__":
    main()
