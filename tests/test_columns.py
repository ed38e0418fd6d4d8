"""The morpheme → column table of the prediction path: compiled and pure-Python alike (issue 2)."""

from __future__ import annotations

import random

import numpy as np
import pytest

from classifier import columns
from classifier.columns import PyMorphemeColumns, count_columns

try:
    from _granttag_speedups import MorphemeColumns as Compiled
except ImportError:
    Compiled = None

needs_compiled = pytest.mark.skipif(Compiled is None, reason="the optional compiled speed-up was not built (no C compiler at install)")

TEXTS = [
    "1,量子 2,ビット 1,量子 3,の ",
    "",
    " \t\n ",
    "2,ビット\u30001,量子\x852,ビット\u00a0new 9,é 9,ü",  # ideographic space, NEL, NBSP: whitespace to str.split
    "5,😀 5,😀x 5,abc 6,ａｂｃ",  # astral and ASCII-only keys inside a wider string
    "1,量子",
    "unknown-only",
]


def _table(kind: type) -> object:
    table = kind()
    for key, col in {"1,量子": 4, "2,ビット": 1, "3,の": -1, "9,é": 0}.items():
        table[key] = col
    return table


def _resolver(asked: list[str]):  # type: ignore[no-untyped-def]
    def resolve(key: str) -> int:
        asked.append(key)
        return -1 if key.startswith("unknown") else len(key) % 7

    return resolve


def _expected(texts: list[str], table: dict[str, int], width: int) -> list[tuple[int, int, float]]:
    out = []
    for row, text in enumerate(texts):
        counts: dict[int, int] = {}
        for key in text.split():
            col = table[key]
            if col >= 0:
                counts[col] = counts.get(col, 0) + 1
        out += [(row, col, float(counts[col])) for col in sorted(counts)]
    return out


@pytest.mark.parametrize("kind", [PyMorphemeColumns, pytest.param(Compiled, marks=needs_compiled)], ids=["python", "compiled"])
def test_count_columns_counts_each_text_and_resolves_new_morphemes_once(kind: type) -> None:
    table = _table(kind)
    asked: list[str] = []
    rows, cols, counts = count_columns(table, TEXTS, 7, _resolver(asked))
    assert sorted(asked) == sorted({"new", "9,ü", "5,😀", "5,😀x", "5,abc", "6,ａｂｃ", "unknown-only"})
    reference = {k: table[k] for t in TEXTS for k in t.split()}
    assert list(zip(rows.tolist(), cols.tolist(), counts.tolist(), strict=True)) == _expected(TEXTS, reference, 7)
    assert rows.dtype == np.int64 and counts.dtype == np.float64
    # A second pass asks for nothing and counts the same.
    again = count_columns(table, TEXTS, 7, _resolver(asked))
    assert len(asked) == 7 and all(np.array_equal(a, b) for a, b in zip(again, (rows, cols, counts), strict=True))


@pytest.mark.parametrize("kind", [PyMorphemeColumns, pytest.param(Compiled, marks=needs_compiled)], ids=["python", "compiled"])
def test_table_behaves_as_a_dict(kind: type) -> None:
    table = _table(kind)
    assert len(table) == 4 and table["1,量子"] == 4 and table.get("3,の") == -1
    assert table.get("nope") is None and table.get("nope", -1) == -1 and "nope" not in table and "9,é" in table
    with pytest.raises(KeyError):
        table["nope"]
    table["1,量子"] = 2
    assert table["1,量子"] == 2 and len(table) == 4
    # Many keys: the table grows and keeps every one.
    rng = random.Random(7)
    keys = {"".join(rng.choice("ab量子é😀,1") for _ in range(rng.randint(1, 8))): rng.randint(-1, 99) for _ in range(5000)}
    for key, col in keys.items():
        table[key] = col
    assert all(table[key] == col for key, col in keys.items())
    assert list(map(table.get, ["1,量子", "zz-absent"])) == [keys.get("1,量子", 2), None]
    table.clear()
    assert len(table) == 0 and "9,é" not in table


@pytest.mark.parametrize("kind", [PyMorphemeColumns, pytest.param(Compiled, marks=needs_compiled)], ids=["python", "compiled"])
def test_a_column_outside_the_model_is_refused(kind: type) -> None:
    table = _table(kind)
    with pytest.raises(ValueError, match="outside the 3 columns"):
        count_columns(table, ["1,量子"], 3, _resolver([]))


@needs_compiled
def test_compiled_and_python_tables_agree_on_random_text() -> None:
    rng = random.Random(11)
    alphabet = ["1,量子", "2,計算", "3,の", "4,abc", "5,😀", "6,ｶﾞ", " ", "  ", "\u3000", "\t"]
    texts = ["".join(rng.choice(alphabet) + rng.choice([" ", ""]) for _ in range(rng.randint(0, 60))) for _ in range(300)]
    answers = {}

    def resolve(key: str) -> int:
        return answers.setdefault(key, rng.randint(-1, 40))

    compiled = count_columns(Compiled(), texts, 41, resolve)
    python = count_columns(PyMorphemeColumns(), texts, 41, resolve)
    assert all(np.array_equal(a, b) for a, b in zip(compiled, python, strict=True))


def test_the_scorer_uses_the_compiled_table_when_it_is_built() -> None:
    assert columns.COMPILED == (Compiled is not None)
    assert (columns.MorphemeColumns is Compiled) if Compiled is not None else (columns.MorphemeColumns is PyMorphemeColumns)


@needs_compiled
def test_compiled_table_splits_on_exactly_what_str_split_splits_on() -> None:
    # Every code point Python counts as whitespace separates morphemes; others (U+200B, U+180E) do not.
    import sys

    spaces = [chr(c) for c in range(sys.maxunicode + 1) if chr(c).isspace()]
    others = ["\u200b", "\u180e", "\u3001", "\x00", "\x7f", "\u2030", "\u3001"]
    text = "".join(f"k{i}{sep}" for i, sep in enumerate(spaces)) + "x" + "y".join(others) + "z"
    assert len(text.split()) == len(spaces) + 1
    asked: list[str] = []
    table = Compiled()
    count_columns(table, [text], 1, lambda key: asked.append(key) or 0)  # type: ignore[func-returns-value]
    assert asked == text.split()


@pytest.mark.parametrize("kind", [PyMorphemeColumns, pytest.param(Compiled, marks=needs_compiled)], ids=["python", "compiled"])
def test_first_with_finds_the_first_morpheme_of_a_column(kind: type) -> None:
    # Explanations place a feature through the first morpheme that gave it.
    table = _table(kind)
    table["7,ビット"] = 1  # two morphemes, one column
    text = "3,の 7,ビット\u30002,ビット 1,量子 unseen"
    assert table.first_with(text, 1) == "7,ビット"
    assert table.first_with(text, 4) == "1,量子"
    assert table.first_with(text, -1) == "3,の"
    assert table.first_with(text, 5) is None and table.first_with("", 1) is None


@pytest.mark.parametrize("kind", [PyMorphemeColumns, pytest.param(Compiled, marks=needs_compiled)], ids=["python", "compiled"])
def test_a_pickled_table_is_a_working_table(kind: type) -> None:
    # The table is a cache: the compiled one pickles as an empty table, the dict with its entries.
    import pickle

    copy = pickle.loads(pickle.dumps(_table(kind)))
    assert type(copy) is kind and len(copy) in (0, 4)
    rows, cols, counts = count_columns(copy, ["1,量子 1,量子"], 7, lambda key: 4)
    assert cols.tolist() == [4] and counts.tolist() == [2.0]
