"""Speed of `granttag classify` over the first N KAKEN records against MeCab alone (issue 2).

Writes the records to a temporary JSONL file, times MeCab wakati parsing of the
same texts on one core, then times the whole `granttag classify -f … -o …`
command (start-up included, all cores) as a subprocess, and reports its peak
memory. The two are timed in turn ``R`` times and the fastest of each is
compared (on a shared virtual machine one run of either can be twice as slow
as the next); every run's times are printed too.
Usage: python3 bench/bench_classify_speed.py [N] [R] (default 20000 records, 3 rounds).
"""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from kaken import CREDIT, kaken_records  # noqa: E402


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20000
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    records = list(kaken_records(n))
    tmp = Path(tempfile.mkdtemp(prefix="granttag-bench-"))
    src = tmp / "kaken.jsonl"
    with src.open("w", encoding="utf-8") as fh:
        for r in records:
            fh.write(json.dumps(r, ensure_ascii=False) + "\n")
    texts = [r["title"] + "\n" + r["abstract"] + "\n" + " ".join(r["keywords"]) for r in records]

    import fugashi
    import unidic_lite

    tagger = fugashi.GenericTagger("-r /dev/null -Owakati -d " + unidic_lite.DICDIR)

    def time_mecab() -> float:
        start = time.perf_counter()
        for t in texts:
            tagger.parse(t)
        return time.perf_counter() - start

    # A model of the project corpus in a store of its own, so the timed run
    # measures classification only (never a first build or a rebuild).
    from classifier import store
    from classifier.columns import COMPILED
    from classifier.corpus import load_corpus
    from classifier.model import ModelConfig
    from classifier.taxonomy import load_taxonomy
    from classifier.training import train_and_save

    root = tmp / "models"
    root.mkdir()
    store.activate(train_and_save(load_corpus(load_taxonomy()), ModelConfig(n_jobs=2), root), root)
    env = {**os.environ, "GRANTTAG_MODELS_DIR": str(root)}
    out = tmp / "out.jsonl"
    mecab_runs: list[float] = []
    whole_runs: list[float] = []
    for _ in range(rounds):
        mecab_runs.append(time_mecab())
        start = time.perf_counter()
        proc = subprocess.run(["granttag", "classify", "-f", str(src), "-o", str(out)], capture_output=True, text=True, env=env)
        whole_runs.append(time.perf_counter() - start)
        print(f"MeCab wakati {mecab_runs[-1]:.2f} s, granttag classify {whole_runs[-1]:.2f} s", file=sys.stderr, flush=True)
    mecab, whole = min(mecab_runs), min(whole_runs)
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    lines = sum(1 for _ in out.open(encoding="utf-8"))
    result = {
        "records": n,
        "chars": sum(map(len, texts)),
        "rounds": rounds,
        "mecab_wakati_seconds_1core": round(mecab, 2),
        "granttag_classify_seconds": round(whole, 2),
        "mecab_wakati_runs": [round(x, 2) for x in mecab_runs],
        "granttag_classify_runs": [round(x, 2) for x in whole_runs],
        "speed_vs_mecab": round(mecab / whole, 3),
        "records_per_second": round(n / whole, 1),
        "peak_rss_mb_largest_process": round(peak_mb, 1),
        "output_rows": lines,
        "exit_status": proc.returncode,
        "machine": f"{platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}",
        "compiled_speedup": COMPILED,  # the optional compiled morpheme table (speedups/) was in use
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "command": f"python3 bench/bench_classify_speed.py {n} {rounds}",
        "data": CREDIT,
    }
    print(json.dumps(result, ensure_ascii=False, indent=2))
    Path(__file__).resolve().parent.joinpath("results", "bench_classify_speed.json").write_text(
        json.dumps(result, ensure_ascii=False, indent=2) + "\n", encoding="utf-8"
    )


if __name__ == "__main__":
    main()
