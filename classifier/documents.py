"""Documents to classify: a project's title, abstract, keywords, program and field code."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass

from classifier.errors import InvalidInputError

# NUL, the replacement character and lone surrogates (what undecodable bytes become under
# errors="surrogateescape"): signs of binary or undecodable input.
_BAD = re.compile("[\x00\ufffd\ud800-\udfff]")

#: The longest text accepted in one document (title + abstract + keywords), in characters.
MAX_TEXT_CHARS = 1_000_000
FIELDS = ("title", "abstract", "keywords", "program", "field")


@dataclass(frozen=True)
class Document:
    """One project to classify; ``keywords`` is a single string joined with "; "."""

    id: str
    title: str = ""
    abstract: str = ""
    keywords: str = ""
    program: str = ""
    field: str = ""

    def as_dict(self) -> dict[str, str]:
        """Return the document as a dict of its fields."""
        return asdict(self)

    def columns(self) -> list[str]:
        """Return the field values in the model's column order."""
        return [self.title, self.abstract, self.keywords, self.program, self.field]


def _text(value: object, name: str, where: str) -> str:
    if type(value) is not str:  # text is the common case: it goes straight to the check
        if value is None:
            return ""
        if isinstance(value, float) and value != value:  # NaN from a spreadsheet
            return ""
        if isinstance(value, (list, tuple)):
            parts = [_text(v, name, where) for v in value]
            return "; ".join(p for p in parts if p.strip())
        if isinstance(value, bytes):
            raise InvalidInputError(f"{where}: field {name!r} holds bytes, not text")
        if not isinstance(value, (str, int, float)):
            raise InvalidInputError(f"{where}: field {name!r} must be text, not {type(value).__name__}")
        value = str(value)
    if _BAD.search(value):
        raise InvalidInputError(f"{where}: field {name!r} holds binary or undecodable bytes (save the file as UTF-8 or CP932)")
    return value


def make_document(record: Mapping[str, object], where: str, default_id: str | None = None) -> Document:
    """Build a Document from a mapping with keys id, title, abstract (or text), keywords, program, field.

    ``where`` names the record in error messages ("projects.csv line 12").
    Raises InvalidInputError for a missing id, empty or binary text, or text over 1 MB.
    """
    raw_id = record.get("id", default_id)
    if raw_id is None or str(raw_id).strip() == "":
        raise InvalidInputError(f"{where}: the record has no id")
    doc_id = str(raw_id).strip()
    where = f"{where} (id {doc_id})" if doc_id not in where else where
    abstract = record.get("abstract")
    if abstract is None:
        abstract = record.get("text")
    doc = Document(
        id=doc_id,
        title=_text(record.get("title"), "title", where),
        abstract=_text(abstract, "abstract", where),
        keywords=_text(record.get("keywords"), "keywords", where),
        program=_text(record.get("program"), "program", where),
        field=_text(record.get("field"), "field", where),
    )
    size = len(doc.title) + len(doc.abstract) + len(doc.keywords)
    if size > MAX_TEXT_CHARS:
        raise InvalidInputError(f"{where}: text is {size:,} characters; the limit is {MAX_TEXT_CHARS:,} (1 MB)")
    if not (doc.title.strip() or doc.abstract.strip() or doc.keywords.strip()):
        raise InvalidInputError(f"{where}: empty text (no title, abstract or keywords)")
    return doc
