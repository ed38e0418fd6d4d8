"""Validation of labeled data before anything is trained: a report naming file and line (issue 6).

Problems found, each with the file and line of the record:

- ``unreadable``: a malformed JSONL line, a row with the wrong number of cells;
- ``unknown_label``: a label id or name the taxonomy does not know, or a domain
  listed as a pillar (and the reverse);
- ``no_pillar``: a record without a pillar (every project has one);
- ``empty_text`` / ``undecodable``: no title, abstract or keywords; binary or
  undecodable bytes;
- ``duplicate``: the same text as an earlier record (in the file or in the
  store) with the same labels;
- ``conflict``: the same text as an earlier record with other labels;
- ``near_duplicate``: a text almost the same as an earlier one (Jaccard index of
  character 3-gram sets at or above a threshold, found by MinHash);
- ``too_few``: a label with too few examples in the data a retrain would use
  (fewer than classifier.model.MIN_POSITIVES), named with the file.

The operator then chooses: fix the file and validate again, skip the records
with problems (the rest is imported as a whole), or stop (nothing is imported).
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from classifier.corpus import LabeledSet, _label_list
from classifier.documents import make_document
from classifier.errors import InvalidInputError
from classifier.records import Columns, read_records
from classifier.taxonomy import Taxonomy

KINDS = ("unreadable", "unknown_label", "no_pillar", "empty_text", "undecodable", "duplicate", "conflict", "near_duplicate", "too_few")
#: Problems that concern the data as a whole, not one record: skipping records cannot remove them.
DATASET_KINDS = ("too_few",)
#: Jaccard similarity of character 3-gram sets at or above which two texts are near duplicates.
NEAR_DUPLICATE = 0.8


@dataclass
class Problem:
    """One problem, with the file and line it is on (line 0: the file as a whole)."""

    kind: str
    path: str
    line: int
    message: str
    record: int | None = None  # index of the record in the validated file, when it is one record's problem

    @property
    def where(self) -> str:
        return f"{self.path} line {self.line}" if self.line else self.path

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "where": self.where}

    def __str__(self) -> str:
        return f"{self.where}: [{self.kind}] {self.message}"


@dataclass
class ValidationReport:
    """The records read from files, and every problem found in them."""

    data: LabeledSet
    lines: list[tuple[str, int]]  # (path, line) of each record of ``data``
    problems: list[Problem] = field(default_factory=list)
    total: int = 0  # records in the files, readable or not

    @property
    def ok(self) -> bool:
        return not self.problems

    def counts(self) -> dict[str, int]:
        """Return the number of problems of each kind."""
        return dict(Counter(p.kind for p in self.problems))

    def blocking(self) -> list[Problem]:
        """Problems skipping cannot remove (the data as a whole)."""
        return [p for p in self.problems if p.kind in DATASET_KINDS]

    def clean(self) -> tuple[LabeledSet, list[str]]:
        """Return the records with no problem of their own, and the places of the skipped ones."""
        bad = {p.record for p in self.problems if p.record is not None}
        keep = [i for i in range(len(self.data)) if i not in bad]
        skipped = sorted({p.where for p in self.problems if p.kind not in DATASET_KINDS})
        return self.data.subset(keep), skipped

    def format(self, limit: int = 50) -> str:
        """Return the report as text: a summary line, then one line per problem."""
        if self.ok:
            return f"{self.total} records, no problems"
        summary = ", ".join(f"{n} {kind}" for kind, n in sorted(self.counts().items()))
        lines = [f"{self.total} records, {len(self.problems)} problem(s): {summary}"]
        lines += [f"  {p}" for p in self.problems[:limit]]
        if len(self.problems) > limit:
            lines.append(f"  ... and {len(self.problems) - limit} more")
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        return {"records": self.total, "problems": [p.as_dict() for p in self.problems], "counts": self.counts()}


def text_key(title: str, abstract: str) -> str:
    """Return the text two records must share to be duplicates: NFKC, lower case, no spaces or punctuation."""
    text = unicodedata.normalize("NFKC", f"{title} {abstract}").lower()
    return re.sub(r"[\W_]+", "", text)


def _resolve(names: list[str], kind: str, taxonomy: Taxonomy) -> tuple[list[str], list[str]]:
    ids, problems = taxonomy.resolve_ids(names, kind)
    return ids, [reason for _, reason in problems]


def read_labeled(paths: list[Path], taxonomy: Taxonomy, columns: Columns | None = None) -> ValidationReport:
    """Read labeled files record by record, collecting each record's own problems.

    A file that cannot be read at all (missing, empty, no text column) raises
    InvalidInputError; every other problem goes into the report.
    """
    cols = columns or Columns()
    cols.extra = {"domains": "domains", "pillars": "pillars", "lang": "lang"}
    report = ValidationReport(LabeledSet(), [])
    for path in paths:
        for rec in read_records(path, cols):
            report.total += 1
            p = str(path)
            if rec.error or rec.fields is None:
                kind = "undecodable" if "undecodable" in (rec.error or "") else "unreadable"
                report.problems.append(Problem(kind, p, rec.line, _strip_where(rec.error or "unreadable", rec.where)))
                continue
            if "domains" not in rec.fields or "pillars" not in rec.fields:
                report.problems.append(
                    Problem("unreadable", p, rec.line, "needs 'domains' and 'pillars' (an empty domains value means no domain)")
                )
                continue
            try:
                doc = make_document(rec.fields, rec.where)
            except InvalidInputError as exc:
                msg = _strip_where(str(exc), rec.where)
                kind = "undecodable" if "undecodable" in msg or "bytes" in msg else "empty_text" if "empty text" in msg else "unreadable"
                report.problems.append(Problem(kind, p, rec.line, msg))
                continue
            index = len(report.data)
            try:
                dom, dom_err = _resolve(_label_list(rec.fields.get("domains")), "domain", taxonomy)
                pil, pil_err = _resolve(_label_list(rec.fields.get("pillars")), "pillar", taxonomy)
            except InvalidInputError as exc:
                dom, pil, dom_err, pil_err = [], [], [str(exc)], []
            for err in dom_err + pil_err:
                report.problems.append(Problem("unknown_label", p, rec.line, err, index))
            if not pil and not pil_err:
                report.problems.append(Problem("no_pillar", p, rec.line, "no pillar; every project has at least one", index))
            report.data.docs.append(doc)
            report.data.domains.append(dom)
            report.data.pillars.append(pil)
            report.data.sources.append(rec.where)
            report.data.langs.append(str(rec.fields.get("lang") or ""))
            report.lines.append((p, rec.line))
    return report


def _strip_where(message: str, where: str) -> str:
    """Drop the leading "file line N: " a core message carries; the Problem names the place itself."""
    message = re.sub(r"^.*? (?:line|row) \d+", "", message, count=1)
    return re.sub(r"^ ?(?:\(id [^)]*\))?: ", "", message)


def _shingles(text: str, n: int = 3) -> set[str]:
    key = unicodedata.normalize("NFKC", text).lower()
    key = re.sub(r"\s+", " ", key).strip()
    return {key[i : i + n] for i in range(max(1, len(key) - n + 1))}


def _signatures(sets: list[set[str]], perms: int) -> Any:
    """Return the MinHash signature (perms values) of each shingle set, computed for all sets at once."""
    import zlib

    import numpy as np

    rng = np.random.default_rng(0)
    # Multiply-add hashing modulo 2**32 with odd multipliers: cheap and good enough for MinHash.
    a = rng.integers(1, 1 << 32, perms, dtype=np.uint64) | np.uint64(1)
    b = rng.integers(0, 1 << 32, perms, dtype=np.uint64)
    sizes = np.array([max(1, len(x)) for x in sets])
    flat = np.fromiter((zlib.crc32(sh.encode("utf-8")) for x in sets for sh in (x or {""})), dtype=np.uint64, count=int(sizes.sum()))
    starts = np.concatenate(([0], np.cumsum(sizes)[:-1]))
    mask = np.uint64(0xFFFFFFFF)
    sig = np.empty((len(sets), perms), dtype=np.uint64)
    for k in range(perms):
        sig[:, k] = np.minimum.reduceat((a[k] * flat + b[k]) & mask, starts)
    return sig


def near_pairs(
    new: list[str], old: list[str], threshold: float = NEAR_DUPLICATE, bands: int = 20, rows: int = 8
) -> list[tuple[int, int, float]]:
    """Return ``(i, j, similarity)`` for texts new[i] near old[j] (or, when ``old`` is ``new``, near an earlier new[j]).

    Similarity is the Jaccard index of character 3-gram sets. Candidate pairs
    come from MinHash locality-sensitive hashing (``bands`` x ``rows``), so the
    cost grows with the number of texts, not its square; each candidate is
    then checked exactly.
    """
    if not new or not old:
        return []
    same = old is new
    new_sets = [_shingles(t) for t in new]
    old_sets = new_sets if same else [_shingles(t) for t in old]
    sig_new = _signatures(new_sets, bands * rows)
    sig_old = sig_new if same else _signatures(old_sets, bands * rows)
    candidates: set[tuple[int, int]] = set()
    for band in range(bands):
        cols = slice(band * rows, (band + 1) * rows)
        buckets: dict[bytes, list[int]] = {}
        for j in range(len(old_sets)):
            buckets.setdefault(sig_old[j, cols].tobytes(), []).append(j)
        for i in range(len(new_sets)):
            for j in buckets.get(sig_new[i, cols].tobytes(), ()):
                if not same or j < i:
                    candidates.add((i, j))
    out = []
    for i, j in sorted(candidates):
        x, y = new_sets[i], old_sets[j]
        sim = len(x & y) / len(x | y) if x or y else 1.0
        if sim >= threshold:
            out.append((i, j, sim))
    return out


def check_duplicates(report: ValidationReport, existing: LabeledSet | None = None, threshold: float = NEAR_DUPLICATE) -> None:
    """Add duplicate, conflict and near-duplicate problems: within the report's records and against ``existing``."""
    data = report.data
    keys = [text_key(d.title, d.abstract) for d in data.docs]
    labels = [(tuple(dm), tuple(pl)) for dm, pl in zip(data.domains, data.pillars, strict=False)]
    seen: dict[str, tuple[str, tuple[Any, ...]]] = {}
    if existing is not None:
        for d, dm, pl, src in zip(existing.docs, existing.domains, existing.pillars, existing.sources, strict=False):
            seen.setdefault(text_key(d.title, d.abstract), (f"{src} (already in the data store)", (tuple(dm), tuple(pl))))
    # A record that already has a problem of its own (e.g. an unknown label) is no reference for the others.
    exact: set[int] = {p.record for p in report.problems if p.record is not None}
    for i, key in enumerate(keys):
        if i in exact:
            continue
        path, line = report.lines[i]
        here = f"{path} line {line}"
        if key in seen:
            first, first_labels = seen[key]
            exact.add(i)
            if first_labels == labels[i]:
                report.problems.append(Problem("duplicate", path, line, f"the same text as {first}", i))
            else:
                report.problems.append(
                    Problem(
                        "conflict",
                        path,
                        line,
                        f"the same text as {first} with other labels: {_show(labels[i])} here, {_show(first_labels)} there",
                        i,
                    )
                )
        else:
            seen[key] = (here, labels[i])
    rest = [i for i in range(len(keys)) if i not in exact]
    texts = [f"{data.docs[i].title} {data.docs[i].abstract}" for i in rest]
    flagged: set[int] = set()
    for a, b, cos in near_pairs(texts, texts, threshold):
        i, j = rest[a], rest[b]
        if i in flagged or keys[i] == keys[j]:
            continue
        flagged.add(i)
        path, line = report.lines[i]
        other = "{} line {}".format(*report.lines[j])
        report.problems.append(Problem("near_duplicate", path, line, f"almost the same text as {other} (similarity {cos:.2f})", i))
    if existing is not None and len(existing):
        old_texts = [f"{d.title} {d.abstract}" for d in existing.docs]
        old_keys = [text_key(d.title, d.abstract) for d in existing.docs]
        for a, b, cos in near_pairs(texts, old_texts, threshold):
            i = rest[a]
            if i in flagged or keys[i] == old_keys[b]:
                continue
            flagged.add(i)
            path, line = report.lines[i]
            report.problems.append(
                Problem(
                    "near_duplicate",
                    path,
                    line,
                    f"almost the same text as {existing.sources[b]} (already in the data store; similarity {cos:.2f})",
                    i,
                )
            )


def _show(labels: tuple[Any, ...]) -> str:
    dom, pil = labels
    return f"domains [{', '.join(dom)}] pillars [{', '.join(pil)}]"


def check_support(report: ValidationReport, taxonomy: Taxonomy, existing: LabeledSet | None = None, minimum: int | None = None) -> None:
    """Add a ``too_few`` problem for each label with fewer than ``minimum`` examples in existing + clean new records."""
    from classifier.model import MIN_POSITIVES

    minimum = MIN_POSITIVES if minimum is None else minimum
    bad = {p.record for p in report.problems if p.record is not None}
    counts: Counter[str] = Counter()
    total = 0
    for part, skip in ((existing, set()), (report.data, bad)):
        if part is None:
            continue
        for i, (dm, pl) in enumerate(zip(part.domains, part.pillars, strict=False)):
            if i in skip:
                continue
            total += 1
            counts.update(dm + pl)
    files = sorted({path for path, _ in report.lines}) or ["the training data"]
    for label in taxonomy.domain_ids + taxonomy.pillar_ids:
        n = counts[label]
        if n < minimum:
            report.problems.append(
                Problem(
                    "too_few",
                    ", ".join(files),
                    0,
                    f"label {label!r} has {n} example(s) among {total} records; training needs at least {minimum}",
                )
            )
        elif total - n < minimum:
            report.problems.append(
                Problem(
                    "too_few",
                    ", ".join(files),
                    0,
                    f"label {label!r} is on {n} of {total} records; training needs at least {minimum} without it",
                )
            )


def validate_files(
    paths: list[Path],
    taxonomy: Taxonomy,
    existing: LabeledSet | None = None,
    columns: Columns | None = None,
    threshold: float = NEAR_DUPLICATE,
    minimum: int | None = None,
) -> ValidationReport:
    """Read and check labeled files against the taxonomy and the ``existing`` training data.

    Returns the report; raises InvalidInputError only for a file that cannot be
    read at all.
    """
    report = read_labeled(paths, taxonomy, columns)
    check_duplicates(report, existing, threshold)
    check_support(report, taxonomy, existing, minimum)
    report.problems.sort(key=lambda p: (p.line == 0, p.path, p.line, KINDS.index(p.kind)))
    return report


def validate_set(data: LabeledSet, taxonomy: Taxonomy, threshold: float = NEAR_DUPLICATE, minimum: int | None = None) -> ValidationReport:
    """Check records already loaded (a retrain's snapshot of the store): duplicates, conflicts and support."""
    lines = []
    for where in data.sources:
        m = re.match(r"^(.*) (?:line|row) (\d+)", where)
        lines.append((m.group(1), int(m.group(2))) if m else (where, 0))
    report = ValidationReport(data, lines, total=len(data))
    check_duplicates(report, None, threshold)
    check_support(report, taxonomy, None, minimum)
    return report
