"""Provenance check: does any training record share a clause-length run of text with the real data?

Scans every KAKEN, SBIR and NSF abstract in ../shared/data against the
project's corpus (25-character runs for Japanese, 60 for English) and prints
the matches. Usage: python3 bench/corpus_overlap.py
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


def main() -> None:
    index: dict[str, str] = {}
    for path in corpus_files():
        for line in path.open(encoding="utf-8"):
            r = json.loads(line)
            t = r["abstract"]
            w = width(t)
            for i in range(0, len(t) - w + 1, 5):
                index[t[i : i + w]] = r["id"]
    hits = 0
    scanned = 0
    for src in SOURCES:
        if not src.exists():
            sys.exit(f"needs {src}")
        with gzip.open(src, "rt", encoding="utf-8") as fh:
            for line in fh:
                scanned += 1
                t = json.loads(line).get("abstract") or ""
                w = width(t)
                for i in range(0, len(t) - w + 1):
                    rid = index.get(t[i : i + w])
                    if rid:
                        hits += 1
                        print(f"{rid} shares {t[i:i + w]!r} with a record of {src.name}")
                        break
    print(json.dumps({"records_scanned": scanned, "corpus_records_sharing_text": hits}))


if __name__ == "__main__":
    main()
