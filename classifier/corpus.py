"""Labeled training data: the project's own corpus in labels/corpus and operator files."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from classifier.documents import Document, make_document
from classifier.errors import InvalidInputError, TrainingDataError
from classifier.records import Columns, read_records
from classifier.resources import labels_dir
from classifier.taxonomy import Taxonomy


@dataclass
class LabeledSet:
    """Documents with their domain and pillar labels, and where each came from."""

    docs: list[Document] = field(default_factory=list)
    domains: list[list[str]] = field(default_factory=list)
    pillars: list[list[str]] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    langs: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.docs)

    def extend(self, other: LabeledSet) -> None:
        """Append all records of ``other``."""
        self.docs += other.docs
        self.domains += other.domains
        self.pillars += other.pillars
        self.sources += other.sources
        self.langs += other.langs

    def subset(self, index: list[int]) -> LabeledSet:
        """Return the records at ``index``."""
        return LabeledSet(
            [self.docs[i] for i in index],
            [self.domains[i] for i in index],
            [self.pillars[i] for i in index],
            [self.sources[i] for i in index],
            [self.langs[i] for i in index],
        )

    def fingerprint(self) -> str:
        """Return a SHA-256 over the records' text and labels (order-independent)."""
        lines = sorted(
            json.dumps([d.as_dict(), sorted(dm), sorted(pl)], ensure_ascii=False, sort_keys=True)
            for d, dm, pl in zip(self.docs, self.domains, self.pillars)
        )
        h = hashlib.sha256()
        for line in lines:
            h.update(line.encode("utf-8") + b"\n")
        return h.hexdigest()


def _label_list(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        parts = value.replace("；", ";").replace("、", ";").replace(",", ";").replace("|", ";").split(";")
        return [p.strip() for p in parts if p.strip()]
    if isinstance(value, (list, tuple)):
        return [str(v).strip() for v in value if str(v).strip()]
    raise InvalidInputError(f"labels must be a list or a ';'-separated string, not {type(value).__name__}")


def _resolve(names: list[str], kind: str, taxonomy: Taxonomy, where: str) -> list[str]:
    ids, problems = taxonomy.resolve_ids(names, kind)
    if problems:
        raise InvalidInputError(f"{where}: {problems[0][1]}")
    return ids


def load_labeled(paths: list[Path], taxonomy: Taxonomy, columns: Columns | None = None) -> LabeledSet:
    """Read labeled records (CSV/TSV/JSONL/XLSX with ``domains`` and ``pillars`` columns).

    Labels may be ids or Japanese/English names. Every problem in every file is
    collected first; if there is any, TrainingDataError lists them (file and
    line) and nothing is loaded.
    """
    columns = columns or Columns()
    columns.extra = {"domains": "domains", "pillars": "pillars", "lang": "lang", "source": "source"}
    out = LabeledSet()
    problems: list[str] = []
    for path in paths:
        try:
            records = list(read_records(path, columns))
        except InvalidInputError as exc:
            problems.append(str(exc))
            continue
        for rec in records:
            if rec.error or rec.fields is None:
                problems.append(rec.error or f"{rec.where}: unreadable")
                continue
            try:
                if "pillars" not in rec.fields or "domains" not in rec.fields:
                    raise InvalidInputError(f"{rec.where}: needs 'domains' and 'pillars' columns (an empty domains value means no domain)")
                doc = make_document(rec.fields, rec.where)
                dom = _resolve(_label_list(rec.fields.get("domains")), "domain", taxonomy, rec.where)
                pil = _resolve(_label_list(rec.fields.get("pillars")), "pillar", taxonomy, rec.where)
                if not pil:
                    raise InvalidInputError(f"{rec.where}: no pillar; every project has at least one")
            except InvalidInputError as exc:
                problems.append(str(exc))
                continue
            lang = str(rec.fields.get("lang") or "")
            out.docs.append(doc)
            out.domains.append(dom)
            out.pillars.append(pil)
            out.sources.append(str(rec.fields.get("source") or path))
            out.langs.append(lang)
    if problems:
        shown = "\n  ".join(problems[:50])
        more = f"\n  ... and {len(problems) - 50} more" if len(problems) > 50 else ""
        raise TrainingDataError(f"{len(problems)} problem(s) in the training data; nothing was loaded:\n  {shown}{more}")
    return out


def corpus_files(directory: Path | None = None) -> list[Path]:
    """Return the project's own training files (labels/corpus/*.jsonl), sorted."""
    directory = directory or labels_dir() / "corpus"
    files = sorted(directory.glob("*.jsonl"))
    if not files:
        raise TrainingDataError(f"no training files (*.jsonl) in {directory}")
    return files


def load_corpus(taxonomy: Taxonomy) -> LabeledSet:
    """Load the project's own labeled corpus from labels/corpus."""
    return load_labeled(corpus_files(), taxonomy)


def load_crosswalk(path: Path | None = None) -> dict[str, list[str]]:
    """Read the KAKEN review-section crosswalk: 5-digit 小区分 code → domain ids.

    Returns an empty mapping when the file does not exist.
    """
    import yaml

    path = path or labels_dir() / "crosswalk_kaken.yaml"
    if not path.exists():
        return {}
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    out: dict[str, list[str]] = {}
    for code, entry in (data.get("sho") or {}).items():
        out[str(code)] = list((entry or {}).get("domains") or [])
    return out
