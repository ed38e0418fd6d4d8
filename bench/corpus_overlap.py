"""Provenance check: does any training record share a long run of text with the real data?

Scans every KAKEN, SBIR and NSF abstract in ../shared/data against the
project's corpus: seeds are shared 25-character runs (60 for English), each
extended to the longest common run. Runs of at least 40 characters of
Japanese or 120 of English are printed as findings; shorter ones are stock
phrases ("This Small Business Innovation Research (SBIR) Phase II project")
and technical terms, counted but not listed. Usage: python3 bench/corpus_overlap.py
"""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from kaken import SHARED  # noqa: E402

from classifier.corpus import corpus_files  # noqa: E402

SOURCES = [
    SHARED / "data" / "kaken" / "kaken_projects_2018-2025.jsonl.gz",
    SHARED / "data" / "sbir" / "sbir_awards_2002-2018_phase2mostly.jsonl.gz",
    SHARED / "data" / "nsf" / "nsf_awards_fy2017.jsonl.gz",
]


def width(text: str) -> int:
    return 60 if text.isascii() else 25


def longest_run(a: str, i: int, b: str, j: int) -> int:
    """Length of the common run through a[i] == b[j], extended both ways."""
    s, t = i, j
    while s > 0 and t > 0 and a[s - 1] == b[t - 1]:
        s, t = s - 1, t - 1
    e, f = i, j
    while e < len(a) and f < len(b) and a[e] == b[f]:
        e, f = e + 1, f + 1
    return e - s


def main() -> None:
    index: dict[str, tuple[str, int]] = {}
    texts: dict[str, str] = {}
    for path in corpus_files():
        for line in path.open(encoding="utf-8"):
            r = json.loads(line)
            t = r["abstract"]
            texts[r["id"]] = t
            for w in {25, width(t)}:
                for i in range(0, len(t) - w + 1):
                    index.setdefault(t[i : i + w], (r["id"], i))
    findings = 0
    stock = 0
    scanned = 0
    for src in SOURCES:
        if not src.exists():
            sys.exit(f"needs {src}")
        with gzip.open(src, "rt", encoding="utf-8") as fh:
            for line in fh:
                scanned += 1
                t = json.loads(line).get("abstract") or ""
                w = width(t)
                best = (0, "", 0)
                for i in range(0, len(t) - w + 1):
                    hit = index.get(t[i : i + w])
                    if hit:
                        n = longest_run(t, i, texts[hit[0]], hit[1])
                        if n > best[0]:
                            # where the common run starts in t
                            start = i
                            j = hit[1]
                            src_text = texts[hit[0]]
                            while start > 0 and j > 0 and t[start - 1] == src_text[j - 1]:
                                start, j = start - 1, j - 1
                            best = (n, hit[0], start)
                n, rid, i = best
                if not n:
                    continue
                run = t[i : i + n]
                if n >= (120 if run.isascii() else 40):
                    findings += 1
                    print(f"{rid} shares {n} characters with a record of {src.name}: {run[:100]!r}")
                else:
                    stock += 1
    print(json.dumps({"records_scanned": scanned, "findings": findings, "stock_phrase_matches": stock}))


if __name__ == "__main__":
    main()
