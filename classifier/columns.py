"""Morphemes to model columns, counted per document: the inner loop of prediction (issue 2).

MeCab's output for a text field is a string of whitespace-separated
morphemes (:meth:`classifier.text.Tokenizer.parse`). A
:class:`MorphemeColumns` table remembers, per process, the model column of
each morpheme seen (-1 for none); :func:`count_columns` counts the columns
of a chunk's texts with it. The compiled module ``_granttag_speedups``
(``speedups/``, built by ``pip install .`` when a C compiler is present)
does this without making a ``str`` of every morpheme, and hashes the
morpheme where it stands in the text; without it the pure-Python table
below gives the same answers (a test compares them).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

try:
    from _granttag_speedups import MorphemeColumns as _CompiledTable
except ImportError:  # built without a C compiler: the pure-Python table below
    _CompiledTable = None

#: Whether the compiled speed-up is in use.
COMPILED = _CompiledTable is not None


class PyMorphemeColumns(dict[str, int]):
    """The pure-Python :class:`MorphemeColumns`: a dict with :meth:`count`."""

    def first_with(self, text: str, column: int) -> str | None:
        """The first whitespace-separated morpheme of ``text`` whose column in the table is ``column``, or None."""
        return next((key for key in text.split() if self.get(key) == column), None)

    def count(self, texts: list[str], width: int, resolve: Callable[[str], int]) -> tuple[bytes, bytes, bytes]:
        """As the compiled table's ``count``: entries (rows, columns, counts) as int64/int64/float64 bytes."""
        keys: list[str] = []
        lens: list[int] = []
        for text in texts:
            tokens = text.split()
            keys.extend(tokens)
            lens.append(len(tokens))
        try:
            found = np.fromiter(map(self.__getitem__, keys), dtype=np.int64, count=len(keys))
        except KeyError:
            for key in dict.fromkeys(keys):
                if key not in self:
                    self[key] = int(resolve(key))
            found = np.fromiter(map(self.__getitem__, keys), dtype=np.int64, count=len(keys))
        if found.size and int(found.max()) >= width:
            raise ValueError(f"a column is outside the {width} columns")
        rows = np.repeat(np.arange(len(texts), dtype=np.int64), lens)
        known = found >= 0
        span = max(width, 1)
        pairs, counts = np.unique(rows[known] * span + found[known], return_counts=True)
        return (pairs // span).tobytes(), (pairs % span).tobytes(), counts.astype(np.float64).tobytes()


#: Morpheme → column table: the compiled one when it was built.
MorphemeColumns: Any = _CompiledTable if _CompiledTable is not None else PyMorphemeColumns


def count_columns(
    table: Any, texts: list[str], width: int, resolve: Callable[[str], int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Count the columns of the whitespace-separated morphemes of each of ``texts``.

    ``table`` is a :data:`MorphemeColumns`; a morpheme it does not hold is
    given to ``resolve``, which returns its column in ``[0, width)`` or -1,
    and the table keeps the answer. Returns ``(rows, columns, counts)``
    (int64, int64, float64): one entry per (text, column) with a count,
    sorted by text then column.
    """
    rows, cols, counts = table.count(texts, width, resolve)
    return np.frombuffer(rows, np.int64), np.frombuffer(cols, np.int64), np.frombuffer(counts, np.float64)
