"""Feature extraction: each document analysed once, then weighted TF-IDF per field, field codes and keyword priors."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import sparse
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.compose import ColumnTransformer
from sklearn.feature_extraction.text import TfidfVectorizer

from classifier.documents import Document
from classifier.text import Tokenizer, normalize, split_keywords

#: Columns of the analysed-document matrix the feature pipeline takes.
COLUMNS = {"title": 0, "abstract": 1, "keywords": 2, "program": 3, "field": 4, "text": 5}
TEXT_FIELDS = ("title", "abstract", "keywords")

_CODE = re.compile(r"(\d{5})")


def passthrough(tokens: list[str]) -> list[str]:
    """Analyzer for already-analysed fields: the token list is the features."""
    return tokens


@dataclass
class Analysed:
    """A document after text analysis: (feature, surface) pairs per text field and the normalised fields."""

    pairs: dict[str, list[tuple[str, str]]]
    norm: dict[str, str]


def analyse_documents(docs: list[Document], tokenizer: Tokenizer) -> tuple[np.ndarray, list[Analysed]]:
    """Analyse every text field of ``docs`` once.

    Returns the (n, 6) object matrix for the feature pipeline (token lists for
    title, abstract and keywords; program; field code; the lower-cased text for
    keyword priors) and each document's analysis, kept for explanations.
    """
    matrix = np.empty((len(docs), len(COLUMNS)), dtype=object)
    analysed = []
    for i, doc in enumerate(docs):
        pairs: dict[str, list[tuple[str, str]]] = {}
        norms: dict[str, str] = {}
        for name in TEXT_FIELDS:
            norm = normalize(getattr(doc, name))
            norms[name] = norm
            pairs[name] = tokenizer.pairs(norm)
        kw_feats = ["kw=" + k.strip().lower() for k in split_keywords(norms["keywords"]) if k.strip()]
        matrix[i, 0] = [f for f, _ in pairs["title"]]
        matrix[i, 1] = [f for f, _ in pairs["abstract"]]
        matrix[i, 2] = kw_feats + [f for f, _ in pairs["keywords"]]
        matrix[i, 3] = doc.program
        matrix[i, 4] = doc.field
        matrix[i, 5] = " ".join((norms["title"], norms["abstract"], norms["keywords"])).lower()
        analysed.append(Analysed(pairs, norms))
    return matrix, analysed


_WORD = re.compile(r"[a-z][a-z&]+")


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


class KeywordPrior(BaseEstimator, TransformerMixin):
    """Counts of each label's taxonomy keywords in a document's text, log-scaled, one column per label.

    ``keywords`` maps a label id to its keyword list. Matching is one
    Aho-Corasick pass over the lower-cased text (pyahocorasick); an ASCII
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

    def _automaton(self) -> Any:
        auto = getattr(self, "_auto", None)
        if auto is None:
            import ahocorasick

            auto = ahocorasick.Automaton()
            index = {label: j for j, label in enumerate(self.labels_)}
            entries: dict[str, set[int]] = {}
            for label, words in (self.keywords or {}).items():
                for w in words:
                    key = normalize(w).strip().lower()
                    if key:
                        entries.setdefault(key, set()).add(index[label])
            for key, cols in entries.items():
                auto.add_word(key, (len(key), key.isascii(), tuple(sorted(cols))))
            auto.make_automaton()
            self._auto = auto
        return auto

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.pop("_auto", None)
        return state

    def transform(self, X: Any) -> sparse.csr_matrix:
        X = np.asarray(X, dtype=object)
        if X.ndim == 1:
            X = X.reshape(-1, 1)
        texts = X[:, 0]
        auto = self._automaton()
        out = np.zeros((len(texts), len(self.labels_)), dtype=np.float64)
        if self.crosswalk and X.shape[1] > 1:
            index = {label: j for j, label in enumerate(self.labels_)}
            for i, code in enumerate(X[:, 1]):
                match = _CODE.search(str(code or ""))
                for domain in self.crosswalk.get(match.group(1), []) if match else []:
                    if domain in index:
                        out[i, index[domain]] += self.crosswalk_weight
        for i, text in enumerate(texts):
            text = str(text)
            for end, (length, ascii_word, cols) in auto.iter(text):
                if ascii_word:
                    start = end - length + 1
                    if (start > 0 and text[start - 1].isalnum()) or (end + 1 < len(text) and text[end + 1].isalnum()):
                        continue
                for j in cols:
                    out[i, j] += 1
        return sparse.csr_matrix(np.log1p(out))

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
