"""Reading KAKEN records from ../shared/data for benchmarks (never copied into the repository)."""

from __future__ import annotations

import gzip
import itertools
import json
import sys
from collections.abc import Iterator
from pathlib import Path

SHARED = Path(__file__).resolve().parent.parent.parent / "shared"
KAKEN = SHARED / "data" / "kaken" / "kaken_projects_2018-2025.jsonl.gz"
CREDIT = "KAKEN：科学研究費助成事業データベース（国立情報学研究所）"


def require(path: Path = KAKEN) -> Path:
    """Return ``path`` or exit with a clear message when ../shared is absent."""
    if not path.exists():
        sys.exit(f"needs {path} (the project's workplace data); not available here")
    return path


def kaken_records(limit: int | None = None) -> Iterator[dict]:
    """Yield KAKEN records as granttag documents (id, title, abstract, keywords, program, field)."""
    with gzip.open(require(), "rt", encoding="utf-8") as fh:
        for line in itertools.islice(fh, limit):
            r = json.loads(line)
            yield {
                "id": r["award_number"],
                "title": r.get("title") or "",
                "abstract": r.get("abstract") or "",
                "keywords": r.get("keywords") or [],
                "program": r.get("research_category") or "",
                "field": r.get("review_section") or "",
            }
