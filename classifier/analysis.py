"""Document analysis shared by training and prediction: each text field analysed once, program and field codes, keyword priors.

Nothing here imports scikit-learn or SciPy: the prediction path
(:mod:`classifier.scorer`) runs on this module and NumPy alone, so a command
that classifies starts without them (issue 2).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

from classifier.documents import Document
from classifier.text import Tokenizer, normalize, split_keywords

#: Columns of the analysed-document matrix the feature pipeline takes.
COLUMNS = {"title": 0, "abstract": 1, "keywords": 2, "program": 3, "field": 4, "text": 5}
TEXT_FIELDS = ("title", "abstract", "keywords")

_CODE = re.compile(r"(\d{5})")
_WORD = re.compile(r"[a-z][a-z&]+")


def passthrough(tokens: list[str]) -> list[str]:
    """Analyzer for already-analysed fields: the token list is the features."""
    return tokens


@dataclass
class Analysed:
    """A document after text analysis: normalised text and tokens per text field.

    ``counts`` (feature counts, the keywords field with its ``kw=`` features)
    is filled for training; ``mecab`` for prediction, which maps tokens to
    columns itself and keeps surfaces for explanations: each field's MeCab
    output (:meth:`Tokenizer.parse`: the morphemes in order, repeats kept,
    space-separated), or with compound nouns its list of features.
    """

    counts: dict[str, dict[str, int]]
    norm: dict[str, str]
    text: str = field(default="")
    mecab: dict[str, Any] = field(default_factory=dict)
    #: The lower-cased normalised fields (``text`` is them joined).
    low: dict[str, str] = field(default_factory=dict)

    def tokens(self, name: str) -> list[str]:
        """The features of text field ``name``, each repeated as often as it occurs."""
        return [f for f, n in self.counts[name].items() for _ in range(n)]


def analyse_document(doc: Document, tokenizer: Tokenizer, *, for_prediction: bool = False) -> Analysed:
    """Analyse the text fields of one document: each field normalised, lower-cased and parsed by MeCab once.

    For training (the default) the analysis holds feature counts, the
    keywords field also one ``kw=<keyword>`` feature per whole keyword; with
    ``for_prediction`` it holds MeCab's morphemes instead (see
    :class:`Analysed`). ``text`` is the lower-cased normalised title, abstract
    and keywords, where keyword priors are looked for.
    """
    counts: dict[str, dict[str, int]] = {}
    mecab: dict[str, Any] = {}
    norms: dict[str, str] = {}
    lows: dict[str, str] = {}
    for name in TEXT_FIELDS:
        norm = normalize(getattr(doc, name))
        low = norm.lower()
        norms[name], lows[name] = norm, low
        if tokenizer.compounds:
            found: Any = tokenizer.counts(norm)  # compound nouns are built from surfaces
            if for_prediction:
                mecab[name] = [f for f, n in found.items() for _ in range(n)]
            else:
                counts[name] = found
        elif for_prediction:
            mecab[name] = tokenizer.parse(low)
        else:
            counts[name] = tokenizer.features_of(tokenizer.token_counts(low))
    if not for_prediction and norms["keywords"]:
        counts["keywords"] = {**keyword_features(norms["keywords"]), **counts["keywords"]}
    return Analysed(counts, norms, " ".join(lows[name] for name in TEXT_FIELDS), mecab, lows)


def keyword_features(norm: str) -> dict[str, int]:
    """Return a ``kw=<keyword>`` feature for each whole keyword of a normalised keywords field, with its count."""
    whole: dict[str, int] = {}
    for k in split_keywords(norm):
        k = "kw=" + k.strip().lower()
        if len(k) > 3:
            whole[k] = whole.get(k, 0) + 1
    return whole


def analyse_documents(docs: list[Document], tokenizer: Tokenizer) -> tuple[Any, list[Analysed]]:
    """Analyse every text field of ``docs`` once.

    Returns the (n, 6) object matrix for the scikit-learn feature pipeline
    (token lists for title, abstract and keywords; program; field code; the
    lower-cased text for keyword priors) and each document's analysis.
    """
    import numpy as np

    matrix = np.empty((len(docs), len(COLUMNS)), dtype=object)
    analysed = []
    for i, doc in enumerate(docs):
        a = analyse_document(doc, tokenizer)
        matrix[i, 0] = a.tokens("title")
        matrix[i, 1] = a.tokens("abstract")
        matrix[i, 2] = a.tokens("keywords")
        matrix[i, 3] = doc.program
        matrix[i, 4] = doc.field
        matrix[i, 5] = a.text
        analysed.append(a)
    return matrix, analysed


class ProgramAnalyzer:
    """Analyzer for a funding program name: the whole name, and its English words.

    Real SBIR/NSF program strings name the agency ("SBIR Phase II Department
    of Defense Navy"); their words (sbir, defense, navy…) carry over to
    programs the training text never spelt exactly that way.
    """

    def __call__(self, value: str) -> list[str]:
        value = normalize(value or "").strip().lower()
        if not value:
            return []
        return ["program=" + value] + sorted(set(_WORD.findall(value)))


class FieldCodeAnalyzer:
    """Analyzer for a funder's field code (e.g. KAKEN "小区分19010:流体工学関連").

    Yields the code, its 中区分 prefix and, through the crosswalk, the
    domains the section maps to (``xw=<domain>``).
    """

    def __init__(self, crosswalk: dict[str, list[str]] | None = None) -> None:
        self.crosswalk = crosswalk or {}

    def __call__(self, value: str) -> list[str]:
        value = normalize(value or "").strip()
        if not value:
            return []
        match = _CODE.search(value)
        if not match:
            return ["field=" + value.lower()]
        code = match.group(1)
        return ["field=" + code, "chu=" + code[:2]] + ["xw=" + d for d in self.crosswalk.get(code, [])]


class PriorMatcher:
    """Counts each label's taxonomy keywords in lower-cased text, plus crosswalk hits for a field code.

    ``keywords`` maps a label id to its keyword list; ``labels`` fixes the
    column order. Matching is one Aho-Corasick pass that reports every
    occurrence, overlapping ones included (ahocorasick_rs, about four times
    faster than pyahocorasick here: issue 2); an ASCII keyword must stand
    between word boundaries. A field code whose section maps to a domain
    counts as ``crosswalk_weight`` hits for it.
    """

    def __init__(
        self,
        labels: list[str],
        keywords: dict[str, list[str]],
        crosswalk: dict[str, list[str]] | None = None,
        crosswalk_weight: float = 1.0,
    ) -> None:
        import ahocorasick_rs

        self.labels = labels
        self.crosswalk = crosswalk or {}
        self.crosswalk_weight = crosswalk_weight
        self._index = {label: j for j, label in enumerate(labels)}
        entries: dict[str, set[int]] = {}
        for label, words in keywords.items():
            for w in words:
                key = normalize(w).strip().lower()
                if key and label in self._index:
                    entries.setdefault(key, set()).add(self._index[label])
        patterns = sorted(entries)
        #: Per pattern: whether it is an ASCII word (checked for word boundaries) and its label columns.
        self._ascii = [p.isascii() for p in patterns]
        self._cols = [tuple(sorted(entries[p])) for p in patterns]
        self._auto = ahocorasick_rs.AhoCorasick(patterns) if patterns else None

    def counts(self, text: str, code: str = "") -> dict[int, float]:
        """Return {label column: count} for lower-cased ``text`` and field ``code``."""
        out: dict[int, float] = {}
        if code and self.crosswalk:
            match = _CODE.search(code)
            for domain in self.crosswalk.get(match.group(1), []) if match else []:
                j = self._index.get(domain)
                if j is not None:
                    out[j] = out.get(j, 0.0) + self.crosswalk_weight
        if self._auto is None or not text:
            return out
        last = len(text)
        for k, start, end in self._auto.find_matches_as_indexes(text, overlapping=True):
            if self._ascii[k] and ((start > 0 and text[start - 1].isalnum()) or (end < last and text[end].isalnum())):
                continue
            for j in self._cols[k]:
                out[j] = out.get(j, 0.0) + 1.0
        return out

    def values(self, text: str, code: str = "") -> dict[int, float]:
        """Return {label column: log(1 + count)}, the prior block's values."""
        return {j: math.log1p(n) for j, n in self.counts(text, code).items()}
