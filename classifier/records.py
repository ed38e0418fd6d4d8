"""Reading records from CSV/TSV, JSONL and XLSX files, with encoding detection and per-record errors."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from dataclasses import field as dc_field
from pathlib import Path
from typing import Any

from classifier.errors import InvalidInputError

FORMATS = ("csv", "tsv", "jsonl", "xlsx")


@dataclass
class Columns:
    """Which source column holds each document field; None means "use the usual names"."""

    id: str | None = None
    title: str | None = None
    text: str | None = None
    keywords: str | None = None
    program: str | None = None
    field: str | None = None
    extra: dict[str, str] = dc_field(default_factory=dict)

    _DEFAULTS = {
        "id": ("id", "award_number", "project_id", "ID"),
        "title": ("title", "タイトル", "研究課題名"),
        "text": ("abstract", "text", "概要", "研究概要", "研究開始時の研究の概要"),
        "keywords": ("keywords", "キーワード"),
        "program": ("program", "research_category", "研究種目"),
        "field": ("field", "review_section", "審査区分"),
    }

    def resolve(self, header: list[str], where: str) -> dict[str, str]:
        """Map each document field to a column of ``header``.

        Raises InvalidInputError when a configured column is missing, or when no
        id or text column can be found.
        """
        present = set(header)
        out: dict[str, str] = {}
        for name, defaults in self._DEFAULTS.items():
            chosen = getattr(self, name)
            if chosen is not None:
                if chosen not in present:
                    raise InvalidInputError(
                        f"{where}: no column {chosen!r} (--{name if name != 'text' else 'text'}-col); columns are: {', '.join(header)}"
                    )
                out[name] = chosen
                continue
            for candidate in defaults:
                if candidate in present:
                    out[name] = candidate
                    break
        for key, col in self.extra.items():
            if col in present:
                out[key] = col
        if "id" not in out:
            raise InvalidInputError(f"{where}: no id column (looked for {', '.join(self._DEFAULTS['id'])}); name it with --id-col. Columns are: {', '.join(header)}")
        if "text" not in out and "title" not in out:
            raise InvalidInputError(f"{where}: no text column (looked for {', '.join(self._DEFAULTS['text'])}); name it with --text-col. Columns are: {', '.join(header)}")
        return out


@dataclass
class RawRecord:
    """One input record: where it came from, and either its fields or the problem."""

    where: str
    line: int
    fields: dict[str, Any] | None
    error: str | None = None
    raw_id: str | None = None
    #: A JSONL line read but not parsed yet (``read_records(..., lazy=True)``) and its column mapping.
    pending: tuple[bytes, dict[str, str]] | None = None

    def parsed(self) -> RawRecord:
        """This record with a pending JSONL line parsed: fields, or the line's problem."""
        if self.pending is None:
            return self
        raw, mapping = self.pending
        return _jsonl_record(self.where, self.line, raw, mapping)[0]


def detect_format(path: Path, fmt: str | None = None) -> str:
    """Return the format of ``path`` from ``fmt`` or its suffix; raises InvalidInputError."""
    if fmt:
        if fmt not in FORMATS:
            raise InvalidInputError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
        return fmt
    suffix = path.suffix.lower().lstrip(".")
    if suffix in ("jsonl", "ndjson", "json"):
        return "jsonl"
    if suffix in ("csv", "tsv", "xlsx"):
        return suffix
    if suffix == "txt":
        return "tsv"
    raise InvalidInputError(f"{path}: cannot tell the format from the suffix {path.suffix!r}; give --input-format csv|tsv|jsonl|xlsx")


def decode_bytes(data: bytes, where: str) -> tuple[str, str]:
    """Decode a text file: UTF-8 (with or without BOM), then CP932/Shift_JIS, then charset detection.

    Returns ``(text, encoding)``. Undecodable bytes that remain are kept as
    surrogate escapes so the records holding them can be reported one by one.
    """
    if data.startswith(b"\xef\xbb\xbf"):
        try:
            return data[3:].decode("utf-8"), "utf-8-sig"
        except UnicodeDecodeError:
            pass
    try:
        return data.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        pass
    try:
        return data.decode("cp932"), "cp932"
    except UnicodeDecodeError:
        pass
    # Mostly UTF-8 with a few bad bytes: keep going; the records holding them become error rows.
    loose = data.decode("utf-8", errors="surrogateescape")
    bad = sum(1 for c in loose if "\udc80" <= c <= "\udcff")
    if bad <= max(1, len(loose) // 100):
        return loose, "utf-8"
    from charset_normalizer import from_bytes

    best = from_bytes(data[:200_000]).best()
    if best is not None:
        try:
            return data.decode(best.encoding), best.encoding
        except (UnicodeDecodeError, LookupError):
            pass
    raise InvalidInputError(f"{where}: not text in UTF-8 or CP932/Shift_JIS (binary file?)")


def read_records(path: Path | str, columns: Columns | None = None, fmt: str | None = None, *, lazy: bool = False) -> Iterator[RawRecord]:
    """Yield the records of a CSV/TSV/JSONL/XLSX file with their fields mapped to document names.

    With ``lazy``, JSONL lines after the first are yielded unparsed
    (:meth:`RawRecord.parsed` parses one), so the process that classifies
    them parses them too. Raises InvalidInputError for a missing or empty
    file or missing columns; a bad individual record is yielded with
    ``error`` set, never dropped.
    """
    path = Path(path)
    columns = columns or Columns()
    if not path.exists():
        raise InvalidInputError(f"{path}: no such file")
    kind = detect_format(path, fmt)
    if path.stat().st_size == 0:
        raise InvalidInputError(f"{path}: the file is empty")
    if kind == "jsonl":
        yield from _read_jsonl(path, columns, lazy)
    elif kind == "xlsx":
        yield from _read_xlsx(path, columns)
    else:
        yield from _read_delimited(path, columns, "\t" if kind == "tsv" else ",")


def _mapped(row: dict[str, Any], mapping: dict[str, str]) -> dict[str, Any]:
    out = {name: row.get(col) for name, col in mapping.items()}
    if "text" in out:
        out["abstract"] = out.pop("text")
    return out


def _read_delimited(path: Path, columns: Columns, delimiter: str) -> Iterator[RawRecord]:
    text, _ = decode_bytes(path.read_bytes(), str(path))
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        header = next(reader)
    except StopIteration:
        raise InvalidInputError(f"{path}: the file is empty") from None
    header = [h.strip() for h in header]
    mapping = columns.resolve(header, str(path))
    count = 0
    for row in reader:
        line = reader.line_num
        if not any(cell.strip() for cell in row):
            continue
        count += 1
        where = f"{path} line {line}"
        record = dict(zip(header, row))
        raw_id = record.get(mapping["id"])
        if len(row) != len(header):
            yield RawRecord(where, line, None, f"{where}: {len(row)} cells where the header has {len(header)}", raw_id)
            continue
        yield RawRecord(where, line, _mapped(record, mapping), raw_id=raw_id)
    if count == 0:
        raise InvalidInputError(f"{path}: no records under the header")


def _read_jsonl(path: Path, columns: Columns, lazy: bool = False) -> Iterator[RawRecord]:
    mapping: dict[str, str] | None = None
    count = 0
    with path.open("rb") as fh:
        for line_no, raw in enumerate(fh, 1):
            if not raw.strip():
                continue
            count += 1
            where = f"{path} line {line_no}"
            if mapping is not None and lazy:
                yield RawRecord(where, line_no, None, pending=(raw, mapping))
                continue
            record, obj = _jsonl_record(where, line_no, raw, mapping)
            if obj is not None and mapping is None:
                # The first object's keys name the columns for the whole file.
                mapping = columns.resolve(list(obj.keys()), str(path))
                record = _mapped_record(where, line_no, obj, mapping)
            yield record
    if count == 0:
        raise InvalidInputError(f"{path}: the file is empty")


def _jsonl_record(where: str, line_no: int, raw: bytes, mapping: dict[str, str] | None) -> tuple[RawRecord, dict[str, Any] | None]:
    """Parse one JSONL line into a record (with ``mapping``), or a record naming its problem; also the object."""
    try:
        line = raw.decode("utf-8-sig" if line_no == 1 else "utf-8")
    except UnicodeDecodeError:
        return RawRecord(where, line_no, None, f"{where}: undecodable bytes (JSONL must be UTF-8)"), None
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        # json's message for a control character ends in "at"; the column follows it here.
        return RawRecord(where, line_no, None, f"{where}: malformed JSON: {exc.msg.removesuffix(' at')} at column {exc.colno}"), None
    if not isinstance(obj, dict):
        return RawRecord(where, line_no, None, f"{where}: expected a JSON object, got {type(obj).__name__}"), None
    if mapping is None:
        return RawRecord(where, line_no, None), obj
    return _mapped_record(where, line_no, obj, mapping), obj


def _mapped_record(where: str, line_no: int, obj: dict[str, Any], mapping: dict[str, str]) -> RawRecord:
    raw_id = obj.get(mapping["id"])
    return RawRecord(where, line_no, _mapped(obj, mapping), raw_id=None if raw_id is None else str(raw_id))


def _read_xlsx(path: Path, columns: Columns) -> Iterator[RawRecord]:
    from openpyxl import load_workbook

    try:
        book = load_workbook(path, read_only=True, data_only=True)
    except Exception as exc:  # openpyxl raises many types for a broken file
        raise InvalidInputError(f"{path}: not a readable XLSX workbook ({exc})") from exc
    try:
        rows = book.active.iter_rows(values_only=True)
        try:
            header = ["" if h is None else str(h).strip() for h in next(rows)]
        except StopIteration:
            raise InvalidInputError(f"{path}: the workbook is empty") from None
        mapping = columns.resolve(header, str(path))
        count = 0
        for line, row in enumerate(rows, 2):
            if row is None or all(c is None or str(c).strip() == "" for c in row):
                continue
            count += 1
            record = dict(zip(header, row))
            raw_id = record.get(mapping["id"])
            yield RawRecord(f"{path} row {line}", line, _mapped(record, mapping), raw_id=None if raw_id is None else str(raw_id))
        if count == 0:
            raise InvalidInputError(f"{path}: no records under the header")
    finally:
        book.close()
