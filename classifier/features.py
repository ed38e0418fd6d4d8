"""Feature extraction: weighted TF-IDF per field, field-code crosswalk and taxonomy keyword priors."""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

import numpy as np
from scipy import sparse
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.compose import ColumnTransformer
from sklearn.feature_extraction.text import TfidfVectorizer

from classifier.text import FieldAnalyzer, Tokenizer, normalize

#: Column order of the document matrix given to the pipeline (see Document.columns).
COLUMNS = {"title": 0, "abstract": 1, "keywords": 2, "program": 3, "field": 4}

_CODE = re.compile(r"(\d{5})")


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
        feats = []
        match = _CODE.search(value)
        if match:
            code = match.group(1)
            feats += ["field=" + code, "chu=" + code[:2]]
            feats += ["xw=" + d for d in self.crosswalk.get(code, [])]
        else:
            feats.append("field=" + value.lower())
        return feats


class KeywordPrior(BaseEstimator, TransformerMixin):
    """Counts of each label's taxonomy keywords in the title, abstract and keywords.

    ``keywords`` maps a label id to its keyword list; the output has one
    column per label, log-scaled.
    """

    def __init__(self, keywords: dict[str, list[str]] | None = None) -> None:
        self.keywords = keywords

    def fit(self, X: Any, y: Any = None) -> KeywordPrior:
        self.labels_ = sorted(self.keywords or {})
        return self

    def transform(self, X: Any) -> sparse.csr_matrix:
        rows = np.asarray(X, dtype=object)
        out = np.zeros((rows.shape[0], len(self.labels_)), dtype=np.float64)
        patterns = [_keyword_pattern(tuple((self.keywords or {})[label])) for label in self.labels_]
        for i, row in enumerate(rows):
            text = normalize(" ".join(str(v) for v in row)).lower()
            for j, pattern in enumerate(patterns):
                if pattern is not None:
                    n = len(pattern.findall(text))
                    if n:
                        out[i, j] = np.log1p(n)
        return sparse.csr_matrix(out)

    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:
        return np.asarray(["prior=" + label for label in self.labels_], dtype=object)


@lru_cache(maxsize=256)
def _keyword_pattern(words: tuple[str, ...]) -> re.Pattern[str] | None:
    parts = []
    for w in sorted({normalize(w).lower().strip() for w in words if w.strip()}, key=len, reverse=True):
        if w.isascii():
            parts.append(r"\b" + re.escape(w) + r"\b")
        else:
            parts.append(re.escape(w))
    return re.compile("|".join(parts)) if parts else None


def build_features(
    weights: dict[str, float],
    crosswalk: dict[str, list[str]] | None = None,
    prior_keywords: dict[str, list[str]] | None = None,
    min_df: int = 1,
) -> ColumnTransformer:
    """Return the ColumnTransformer over the document columns.

    ``weights`` gives each block's weight: title, abstract, keywords,
    program, field, prior (0 drops the block).
    """
    tok = Tokenizer()

    def vec(analyzer: Any) -> TfidfVectorizer:
        return TfidfVectorizer(analyzer=analyzer, min_df=min_df, sublinear_tf=True, dtype=np.float32)

    blocks: list[tuple[str, Any, Any]] = []
    if weights.get("title", 0):
        blocks.append(("title", vec(FieldAnalyzer("text", tok)), COLUMNS["title"]))
    if weights.get("abstract", 0):
        blocks.append(("abstract", vec(FieldAnalyzer("text", tok)), COLUMNS["abstract"]))
    if weights.get("keywords", 0):
        blocks.append(("keywords", vec(FieldAnalyzer("keywords", tok)), COLUMNS["keywords"]))
    if weights.get("program", 0):
        blocks.append(("program", TfidfVectorizer(analyzer=FieldAnalyzer("code"), dtype=np.float32), COLUMNS["program"]))
    if weights.get("field", 0):
        blocks.append(("field", TfidfVectorizer(analyzer=FieldCodeAnalyzer(crosswalk), dtype=np.float32), COLUMNS["field"]))
    if weights.get("prior", 0) and prior_keywords:
        blocks.append(("prior", KeywordPrior(prior_keywords), [COLUMNS["title"], COLUMNS["abstract"], COLUMNS["keywords"]]))
    return ColumnTransformer(
        blocks,
        transformer_weights={name: float(weights[name]) for name, _, _ in blocks},
        sparse_threshold=1.0,
    )
