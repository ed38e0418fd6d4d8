"""The project's own training text: valid, original, and meeting the counts of issue 3."""

from __future__ import annotations

import json
import re
from collections import Counter

import pytest

from classifier.corpus import corpus_files, load_corpus
from classifier.taxonomy import load_taxonomy

from .conftest import shared_or_skip


@pytest.fixture(scope="module")
def records() -> list[dict]:
    rows = []
    for path in corpus_files():
        for line in path.open(encoding="utf-8"):
            if line.strip():
                rows.append(json.loads(line))
    return rows


def test_corpus_loads_without_problems() -> None:
    data = load_corpus(load_taxonomy())
    assert len(data) > 0


def test_corpus_ids_unique_and_provenance(records: list[dict]) -> None:
    ids = [r["id"] for r in records]
    assert len(ids) == len(set(ids))
    for r in records:
        assert r.get("source") == "written-for-granttag", r["id"]
        assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", r.get("written", "")), r["id"]


def test_corpus_no_duplicate_texts(records: list[dict]) -> None:
    texts = Counter(r["abstract"].strip() for r in records)
    assert [t[:40] for t, n in texts.items() if n > 1] == []


def test_corpus_meets_label_counts(records: list[dict]) -> None:
    tax = load_taxonomy()
    counts = Counter(label for r in records for label in r["domains"] + r["pillars"])
    for domain in tax.domain_ids:
        assert counts[domain] >= 120, (domain, counts[domain])
    assert sum(1 for r in records if not r["domains"]) >= 600
    for pillar in tax.pillar_ids[1:]:
        assert counts[pillar] >= 60, (pillar, counts[pillar])


def test_corpus_languages_and_lengths(records: list[dict]) -> None:
    english = sum(1 for r in records if r["lang"] == "en")
    assert english / len(records) >= 0.20
    # Mixed: Japanese text with several English words in it.
    mixed = sum(1 for r in records if r["lang"] == "ja" and len(re.findall(r"[A-Za-z]{3,}", r["abstract"])) >= 3)
    assert mixed >= 50
    lengths = [len(r["abstract"]) for r in records]
    assert min(lengths) >= 20
    assert sum(1 for n in lengths if n < 150) >= 100, "some short records"
    assert sum(1 for n in lengths if n >= 400) >= 100, "some long records"


def _shingles(text: str) -> set[str]:
    # 25 characters of Japanese is a clause; English needs 60 to rise above stock phrases.
    width = 60 if text.isascii() else 25
    return {text[i : i + width] for i in range(0, max(0, len(text) - width + 1))}


def test_corpus_shares_no_text_with_dev_set(records: list[dict]) -> None:
    """No clause-length run of a dev-set abstract appears in the training text."""
    dev = shared_or_skip("eval/dev.jsonl")
    shingles: set[str] = set()
    for r in records:
        shingles |= _shingles(r["abstract"])
    hits = []
    for line in dev.open(encoding="utf-8"):
        item = json.loads(line)
        if _shingles(item["abstract"]) & shingles:
            hits.append(item["id"])
    assert hits == []
