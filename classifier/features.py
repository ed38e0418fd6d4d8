"""The scikit-learn feature pipeline for training: weighted TF-IDF per field, field codes and keyword priors over analysed documents."""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import sparse
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.compose import ColumnTransformer
from sklearn.feature_extraction.text import TfidfVectorizer

from classifier.analysis import (  # noqa: F401  (re-exported: the pipeline's analysis lives there)
    COLUMNS,
    TEXT_FIELDS,
    Analysed,
    FieldCodeAnalyzer,
    PriorMatcher,
    ProgramAnalyzer,
    analyse_documents,
    passthrough,
)


class KeywordPrior(BaseEstimator, TransformerMixin):
    """Counts of each label's taxonomy keywords in a document's text, log-scaled, one column per label.

    ``keywords`` maps a label id to its keyword list. Matching is one
    Aho-Corasick pass over the lower-cased text (ahocorasick_rs); an ASCII
    keyword must stand between word boundaries. With a ``crosswalk`` (5-digit
    field code → domain ids) and a second input column holding the field
    code, a section that maps to a domain counts as ``crosswalk_weight``
    keyword hits for it: the project's own training text has no field codes,
    so the crosswalk cannot be learned as a feature of its own.
    """

    def __init__(
        self,
        keywords: dict[str, list[str]] | None = None,
        crosswalk: dict[str, list[str]] | None = None,
        crosswalk_weight: float = 1.0,
    ) -> None:
        self.keywords = keywords
        self.crosswalk = crosswalk
        self.crosswalk_weight = crosswalk_weight

    def fit(self, X: Any, y: Any = None) -> KeywordPrior:
        self.labels_ = sorted(self.keywords or {})
        return self

    def matcher(self) -> PriorMatcher:
        """The fitted prior's keyword matcher (built once per process)."""
        matcher = self.__dict__.get("_matcher")
        if matcher is None:
            matcher = self._matcher = PriorMatcher(self.labels_, self.keywords or {}, self.crosswalk, self.crosswalk_weight)
        return matcher

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.pop("_matcher", None)
        return state

    def transform(self, X: Any) -> sparse.csr_matrix:
        X = np.asarray(X, dtype=object)
        if X.ndim == 1:
            X = X.reshape(-1, 1)
        matcher = self.matcher()
        out = np.zeros((X.shape[0], len(self.labels_)), dtype=np.float64)
        for i, row in enumerate(X):
            code = str(row[1] or "") if X.shape[1] > 1 else ""
            for j, value in matcher.values(str(row[0]), code).items():
                out[i, j] = value
        return sparse.csr_matrix(out)

    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:
        return np.asarray(["prior=" + label for label in self.labels_], dtype=object)


def build_features(
    weights: dict[str, float],
    crosswalk: dict[str, list[str]] | None = None,
    prior_keywords: dict[str, list[str]] | None = None,
    min_df: int = 1,
    crosswalk_weight: float = 1.0,
) -> ColumnTransformer:
    """Return the ColumnTransformer over analysed documents.

    ``weights`` gives each block's weight: title, abstract, keywords,
    program, field, prior, chars (0 or absent drops the block).
    """

    def vec(analyzer: Any, df: int = min_df) -> TfidfVectorizer:
        return TfidfVectorizer(analyzer=analyzer, min_df=df, sublinear_tf=True, dtype=np.float32)

    makers = {
        "title": lambda: vec(passthrough),
        "abstract": lambda: vec(passthrough),
        "keywords": lambda: vec(passthrough),
        "program": lambda: vec(ProgramAnalyzer(), 1),
        "field": lambda: vec(FieldCodeAnalyzer(crosswalk), 1),
        "prior": lambda: KeywordPrior(prior_keywords, crosswalk, crosswalk_weight),
        # Character 2-3-grams of the whole text, for words the tokenizer splits badly.
        "chars": lambda: TfidfVectorizer(
            analyzer="char", ngram_range=(2, 3), min_df=2, max_features=200_000, sublinear_tf=True, dtype=np.float32
        ),
    }
    blocks = []
    for name, make in makers.items():
        if weights.get(name, 0) and (name != "prior" or prior_keywords):
            column: Any = {"prior": [COLUMNS["text"], COLUMNS["field"]], "chars": COLUMNS["text"]}.get(name, COLUMNS.get(name))
            blocks.append((name, make(), column))
    return ColumnTransformer(
        blocks,
        transformer_weights={name: float(weights[name]) for name, _, _ in blocks},
        sparse_threshold=1.0,
    )
