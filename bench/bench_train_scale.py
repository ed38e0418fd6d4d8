"""Training time and peak memory for 1,000, 10,000 and 100,000 examples (issue 6).

Examples are the project's corpus (up to half of each set, at most all of it)
and the rest KAKEN records weakly labeled from their review section through
labels/crosswalk_kaken.yaml (classifier.bootstrap), read at run time from
../shared/data. Each size is trained in a fresh subprocess; the peak memory is
the largest sum of the resident memory of that process and its worker
processes, sampled every 0.2 s. Training goes through
classifier.training.fit_labeled, the same path as `granttag train` and
`granttag retrain`.

Usage: python3 bench/bench_train_scale.py [SIZE[:CV[:MIN_DF]] ...]
(default: 1000 10000 100000:2:3, i.e. 100,000 with 2-fold calibration and
min_df 3). Writes bench/results/train_scale.json.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
KAKEN = REPO.parent / "shared" / "data" / "kaken" / "kaken_projects_2018-2025.jsonl.gz"
CREDIT = "KAKEN：科学研究費助成事業データベース（国立情報学研究所）"


def tree_rss_mb(pid: int) -> float:
    """Return the resident memory of ``pid`` and all its descendants, in MB (Linux /proc)."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                parts = fh.read().rsplit(")", 1)[1].split()
            ppid, pages = int(parts[1]), int(parts[21])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
        rss[int(entry)] = pages
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        total += rss.get(p, 0)
        todo += children.get(p, [])
    return total * os.sysconf("SC_PAGE_SIZE") / 1e6


class PeakSampler:
    """Samples the memory of a process tree in a thread; ``peak`` is the largest seen (MB)."""

    def __init__(self, pid: int, every: float = 0.2) -> None:
        self.pid, self.every, self.peak = pid, every, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, tree_rss_mb(self.pid))
            self._stop.wait(self.every)

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def machine() -> dict[str, object]:
    """Return what the figures were measured on."""
    import sklearn

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "classifier"], capture_output=True, text=True, cwd=REPO).stdout.strip()
    return {
        "commit": commit + (" (classifier/ has uncommitted changes)" if dirty else ""),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "scikit-learn": sklearn.__version__,
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def training_set(size: int, seed: int = 0, exclude_ids: set[str] | None = None):  # type: ignore[no-untyped-def]
    """Return ``size`` examples: part of the corpus and weakly labeled KAKEN records."""
    import random

    from classifier.bootstrap import weak_labels
    from classifier.corpus import load_corpus, load_crosswalk
    from classifier.taxonomy import load_taxonomy

    corpus = load_corpus(load_taxonomy())
    n_corpus = min(len(corpus), size // 2)
    index = sorted(random.Random(seed).sample(range(len(corpus)), n_corpus))
    data = corpus.subset(index)
    weak, _ = weak_labels([KAKEN], load_crosswalk(), limit=size - n_corpus, seed=seed, exclude_ids=exclude_ids)
    data.extend(weak)
    return data


def child(size: int, cv: int, min_df: int) -> None:
    """Train once (in the subprocess) and print the timing as JSON."""
    from classifier.model import ModelConfig
    from classifier.training import fit_labeled

    start = time.perf_counter()
    data = training_set(size)
    prepared = time.perf_counter() - start
    start = time.perf_counter()
    model = fit_labeled(data, ModelConfig(cv=cv, min_df=min_df, n_jobs=2))
    seconds = time.perf_counter() - start
    features = int(model.transform(data.docs[:1]).shape[1])
    print(
        json.dumps(
            {
                "examples": len(data),
                "cv": cv,
                "min_df": min_df,
                "train_seconds": round(seconds, 1),
                "load_seconds": round(prepared, 1),
                "features": features,
            }
        )
    )


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        child(*(int(x) for x in sys.argv[2:5]))
        return
    if not KAKEN.exists():
        sys.exit(f"needs {KAKEN} (the project's workplace data)")
    specs = sys.argv[1:] or ["1000", "10000", "100000:2:3"]
    rows = []
    info = machine()
    for spec in specs:
        parts = [int(x) for x in spec.split(":")]
        size, cv, min_df = parts[0], parts[1] if len(parts) > 1 else 5, parts[2] if len(parts) > 2 else 1
        proc = subprocess.Popen(
            [sys.executable, __file__, "--child", str(size), str(cv), str(min_df)], stdout=subprocess.PIPE, text=True, cwd=REPO
        )
        start = time.perf_counter()
        with PeakSampler(proc.pid) as sampler:
            out, _ = proc.communicate()
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            rows.append({"examples": size, "cv": cv, "min_df": min_df, "error": f"exit {proc.returncode}"})
            print(f"{size:>7} examples: failed (exit {proc.returncode})", flush=True)
            save(info, rows)
            continue
        row = json.loads(out.strip().splitlines()[-1])
        row.update(
            {
                "wall_seconds": round(wall, 1),
                "peak_memory_mb": round(sampler.peak, 0),
                "load_average_after": [round(x, 2) for x in os.getloadavg()],
            }
        )
        rows.append(row)
        print(
            f"{row['examples']:>7} examples  cv={cv} min_df={min_df}  train {row['train_seconds']:>7.1f} s  "
            f"(whole run {wall:.1f} s)  peak memory {row['peak_memory_mb']:>6.0f} MB  features {row['features']}",
            flush=True,
        )
        save(info, rows)  # after every size, so a long run that is stopped keeps what it measured


def save(info: dict[str, object], rows: list[dict[str, object]]) -> None:
    """Write bench/results/train_scale.json."""
    result = {"machine": info, "data": f"labels/corpus + KAKEN weak labels; {CREDIT}", "rows": rows}
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "train_scale.json").write_text(json.dumps(result, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
