"""Writing classification outcomes as a terminal table, CSV, JSONL or XLSX."""

from __future__ import annotations

import csv
import io
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import IO, Any

import orjson

CSV_COLUMNS = ["id", "status", "domains", "domain_scores", "pillars", "pillar_scores", "evidence", "model_version", "error"]


def flat_row(outcome: dict[str, Any]) -> dict[str, str]:
    """Return one outcome as flat strings for CSV/XLSX."""
    if outcome.get("status") != "ok":
        return {"id": outcome["id"], "status": "error", "error": outcome.get("error") or ""} | {
            k: "" for k in CSV_COLUMNS if k not in ("id", "status", "error")
        }
    evidence = []
    for label in outcome["domains"] + outcome["pillars"]:
        terms = ", ".join(e["term"] for e in label.get("evidence", []))
        if terms:
            evidence.append(f"{label['id']}: {terms}")
    return {
        "id": outcome["id"],
        "status": "ok",
        "domains": ";".join(d["id"] for d in outcome["domains"]),
        "domain_scores": ";".join(f"{d['score']:.3f}" for d in outcome["domains"]),
        "pillars": ";".join(p["id"] for p in outcome["pillars"]),
        "pillar_scores": ";".join(f"{p['score']:.3f}" for p in outcome["pillars"]),
        "evidence": " | ".join(evidence),
        "model_version": outcome.get("model_version", ""),
        "error": "",
    }


class Writer:
    """Streams outcomes to a file or stdout in one format; close() finishes the file."""

    def __init__(self, fmt: str, path: Path | None) -> None:
        self.fmt = fmt
        self.path = path
        self._fh: IO[str] | None = None
        self._book: Any = None
        self._sheet: Any = None
        if fmt == "xlsx":
            if path is None:
                raise ValueError("XLSX output needs -o FILE")
            from openpyxl import Workbook

            self._book = Workbook(write_only=True)
            self._sheet = self._book.create_sheet("tags")
            self._sheet.append(CSV_COLUMNS)
            return
        self._fh = path.open("w", encoding="utf-8", newline="") if path else sys.stdout
        if fmt in ("csv", "tsv"):
            csv.DictWriter(self._fh, CSV_COLUMNS, delimiter="\t" if fmt == "tsv" else ",").writeheader()

    def renderer(self) -> Callable[[dict[str, Any]], str] | None:
        """Return a function giving an outcome's exact text in this format (None for XLSX), to run in worker processes."""
        if self.fmt == "xlsx":
            return None
        return partial(render, self.fmt)

    def write(self, outcome: dict[str, Any]) -> None:
        if self.fmt == "xlsx":
            row = flat_row(outcome)
            self._sheet.append([row[c] for c in CSV_COLUMNS])
        else:
            self.write_text(render(self.fmt, outcome))

    def write_text(self, text: str) -> None:
        """Write an outcome already rendered by :meth:`renderer`."""
        assert self._fh is not None
        self._fh.write(text)

    def close(self) -> None:
        if self._book is not None and self.path is not None:
            self._book.save(self.path)
        elif self._fh is not None and self._fh is not sys.stdout:
            self._fh.close()
        elif self._fh is not None:
            self._fh.flush()


def render(fmt: str, outcome: dict[str, Any]) -> str:
    """Return one outcome as text in ``fmt`` (jsonl, csv, tsv or table), ending with a newline."""
    if fmt == "jsonl":
        # orjson writes the same JSON as json.dumps(ensure_ascii=False), without the spaces, about 5x faster (issue 2).
        return orjson.dumps(outcome, option=orjson.OPT_APPEND_NEWLINE | orjson.OPT_SERIALIZE_NUMPY).decode()
    if fmt in ("csv", "tsv"):
        buf = io.StringIO()
        csv.DictWriter(buf, CSV_COLUMNS, delimiter="\t" if fmt == "tsv" else ",").writerow(flat_row(outcome))
        return buf.getvalue()
    return table_line(outcome) + "\n"


def table_line(outcome: dict[str, Any]) -> str:
    """Return a readable multi-line block for one outcome."""
    if outcome.get("status") == "error":
        return f"{outcome['id']}\tERROR\t{outcome.get('error')}"
    lines = [f"{outcome['id']}"]
    for kind in ("domains", "pillars"):
        labels = outcome[kind]
        if not labels:
            lines.append(f"  {kind[:-1]:<7} (none)")
        for label in labels:
            terms = ", ".join(e["term"] for e in label.get("evidence", []))
            lines.append(f"  {kind[:-1]:<7} {label['id']:<24} {label['score']:.2f}  {terms}")
    return "\n".join(lines)
