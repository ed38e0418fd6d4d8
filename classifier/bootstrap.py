"""Weak labels from a funder's own field codes, through a crosswalk (issue 6).

Many agencies already put a field code on every project (for KAKEN, the
review section, 小区分 5-digit code). A crosswalk (labels/crosswalk_kaken.yaml,
read with classifier.corpus.load_crosswalk) maps a code to the domains most
of its projects belong to. Each record with a code in the crosswalk becomes a
weakly labeled training record:

- domains: the crosswalk's domains for the code; a code the crosswalk maps to
  ``[]`` (a section of mixed or no domain) gives "no domain" with
  ``unmapped="none"`` or leaves the record out with ``unmapped="skip"``;
- pillars: ``science_renaissance`` (the default pillar of academic research,
  labeling guide) and ``strategic_technology`` too when the code maps to a
  domain. On ../shared/eval/dev.jsonl this rule agrees with the gold
  strategic_technology label on 70 of 100 mapped and 43 of 54 unmapped records.

The field code itself is dropped from the weak records by default: the model
reads field codes through the same crosswalk, and would otherwise learn to
repeat the crosswalk instead of learning from the text.
"""

from __future__ import annotations

import gzip
import json
import random
import re
import unicodedata
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from classifier.corpus import LabeledSet
from classifier.documents import make_document
from classifier.errors import InvalidInputError
from classifier.records import Columns, RawRecord, read_records

CODE = re.compile(r"(?<!\d)(\d{5})(?!\d)", re.ASCII)
PILLAR_ALWAYS = "science_renaissance"
PILLAR_WITH_DOMAIN = "strategic_technology"


def parse_code(*values: Any) -> str | None:
    """Return the first 5-digit field code in ``values`` ("19010", "小区分19010:流体工学関連"), or None."""
    for value in values:
        if value is None:
            continue
        m = CODE.search(unicodedata.normalize("NFKC", str(value)))  # full-width digits too
        if m:
            return m.group(1)
    return None


@dataclass
class BootstrapStats:
    """How the records of a bootstrap were used."""

    read: int = 0
    no_code: int = 0
    code_not_in_crosswalk: int = 0
    unmapped_skipped: int = 0
    unreadable: int = 0
    labeled: int = 0
    with_domain: int = 0
    sampled: int = 0
    domains: Counter[str] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, Any]:
        return {**{k: v for k, v in self.__dict__.items() if k != "domains"}, "domains": dict(self.domains.most_common())}


def iter_records(path: Path) -> Iterator[RawRecord]:
    """Yield the records of a file: JSONL (also gzip-compressed, ``.jsonl.gz``), CSV, TSV or XLSX.

    Field codes are read from ``review_code`` or from the field column
    (``field``/``review_section``/``審査区分``).
    """
    path = Path(path)
    if path.suffix == ".gz":
        if not path.exists():
            raise InvalidInputError(f"{path}: no such file")
        with gzip.open(path, "rt", encoding="utf-8") as fh:
            for n, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                where = f"{path} line {n}"
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as exc:
                    yield RawRecord(where, n, None, f"{where}: malformed JSON: {exc.msg}")
                    continue
                yield RawRecord(where, n, _fields(obj), raw_id=str(obj.get("award_number") or obj.get("id") or ""))
        return
    columns = Columns()
    columns.extra = {"review_code": "review_code"}
    yield from read_records(path, columns)


def _fields(obj: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": obj.get("id") or obj.get("award_number") or obj.get("project_id"),
        "title": obj.get("title"),
        "abstract": obj.get("abstract") if obj.get("abstract") is not None else obj.get("text"),
        "keywords": obj.get("keywords"),
        "program": obj.get("program") or obj.get("research_category"),
        "field": obj.get("field") or obj.get("review_section"),
        "review_code": obj.get("review_code"),
    }


def weak_label(code: str | None, crosswalk: dict[str, list[str]], unmapped: str = "none") -> tuple[list[str], list[str]] | None:
    """Return ``(domains, pillars)`` for a field code, or None when the code gives no label."""
    if code is None or code not in crosswalk:
        return None
    domains = list(crosswalk[code])
    if not domains and unmapped == "skip":
        return None
    pillars = [PILLAR_ALWAYS] + ([PILLAR_WITH_DOMAIN] if domains else [])
    return domains, pillars


def weak_labels(
    paths: list[Path],
    crosswalk: dict[str, list[str]],
    *,
    unmapped: str = "none",
    limit: int | None = None,
    seed: int = 0,
    keep_field: bool = False,
    exclude_ids: set[str] | None = None,
) -> tuple[LabeledSet, BootstrapStats]:
    """Turn the records of ``paths`` that carry a field code into weakly labeled records.

    ``limit`` keeps that many, drawn at random (reproducibly for ``seed``);
    ``exclude_ids`` leaves out records with those ids (a gold set's). Raises
    InvalidInputError for an unreadable file or an empty crosswalk.
    """
    if unmapped not in ("none", "skip"):
        raise InvalidInputError(f"unmapped must be 'none' or 'skip', not {unmapped!r}")
    if not crosswalk:
        raise InvalidInputError("the crosswalk maps no field code; check the file given with --field-crosswalk")
    stats = BootstrapStats()
    kept: list[tuple[Any, list[str], list[str], str]] = []
    exclude = exclude_ids or set()
    for path in paths:
        for rec in iter_records(path):
            stats.read += 1
            if rec.fields is None:
                stats.unreadable += 1
                continue
            code = parse_code(rec.fields.get("review_code"), rec.fields.get("field"))
            if code is None:
                stats.no_code += 1
                continue
            if code not in crosswalk:
                stats.code_not_in_crosswalk += 1
                continue
            labels = weak_label(code, crosswalk, unmapped)
            if labels is None:
                stats.unmapped_skipped += 1
                continue
            fields = dict(rec.fields)
            fields.pop("review_code", None)
            fields["field"] = (fields.get("field") or code) if keep_field else ""
            try:
                doc = make_document(fields, rec.where)
            except InvalidInputError:
                stats.unreadable += 1
                continue
            if doc.id in exclude:
                continue
            kept.append((doc, labels[0], labels[1], rec.where))
    stats.labeled = len(kept)
    if limit is not None and limit < len(kept):
        kept = random.Random(seed).sample(kept, limit)
    out = LabeledSet()
    for doc, dom, pil, where in kept:
        out.docs.append(doc)
        out.domains.append(dom)
        out.pillars.append(pil)
        out.sources.append(where)
        out.langs.append("")
        stats.domains.update(dom or ["(none)"])
        stats.with_domain += bool(dom)
    stats.sampled = len(out)
    return out, stats
