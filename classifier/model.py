"""The multi-label model: training, calibrated per-label prediction and explanations."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from classifier.documents import Document
from classifier.errors import TrainingDataError
from classifier.features import Analysed, analyse_documents
from classifier.taxonomy import Taxonomy
from classifier.text import Tokenizer, normalize_with_offsets

#: Fewest positive examples a label needs to be trained (cross-validation needs both classes per fold).
MIN_POSITIVES = 6


@dataclass
class ModelConfig:
    """Training settings; stored with every model version."""

    weights: dict[str, float] = field(
        default_factory=lambda: {"title": 1.5, "abstract": 1.0, "keywords": 1.0, "program": 1.0, "field": 0.5, "prior": 0.5, "chars": 0.0}
    )
    C: float = 10.0
    class_weight: str | None = "balanced"
    cv: int = 5
    min_df: int = 1
    crosswalk_weight: float = 1.0
    compounds: bool = False
    seed: int = 0
    n_jobs: int = 1

    def as_dict(self) -> dict[str, Any]:
        """Return the settings as a JSON-ready dict."""
        return asdict(self)


@dataclass
class Evidence:
    """A term that raised a label's score, with its place in the original field text."""

    term: str
    field: str
    start: int
    end: int
    weight: float

    def as_dict(self) -> dict[str, Any]:
        return {"term": self.term, "field": self.field, "start": self.start, "end": self.end, "weight": round(self.weight, 4)}


@dataclass
class LabelScore:
    """One predicted label with its calibrated probability and evidence."""

    id: str
    score: float
    evidence: list[Evidence] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "score": round(self.score, 4), "evidence": [e.as_dict() for e in self.evidence]}


@dataclass
class Prediction:
    """The labels predicted for one document, highest score first."""

    id: str
    domains: list[LabelScore]
    pillars: list[LabelScore]
    scores: dict[str, float]
    model_version: str

    def as_dict(self, scores: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "domains": [d.as_dict() for d in self.domains],
            "pillars": [p.as_dict() for p in self.pillars],
            "model_version": self.model_version,
        }
        if scores:
            out["scores"] = {k: round(v, 4) for k, v in self.scores.items()}
        return out


def label_matrix(label_sets: list[list[str]], ids: list[str]) -> np.ndarray:
    """Return a 0/1 matrix (n, len(ids)) for the given label lists."""
    index = {label: j for j, label in enumerate(ids)}
    y = np.zeros((len(label_sets), len(ids)), dtype=np.int8)
    for i, labels in enumerate(label_sets):
        for label in labels:
            y[i, index[label]] = 1
    return y


class Model:
    """A fitted granttag model: feature pipeline, calibrated per-label classifier and thresholds."""

    def __init__(
        self,
        features: Any,
        classifier: Any,
        domain_ids: list[str],
        pillar_ids: list[str],
        taxonomy_version: str,
        config: dict[str, Any],
        prior_keywords: dict[str, list[str]] | None = None,
    ) -> None:
        self.features = features
        self.classifier = classifier
        self.domain_ids = domain_ids
        self.pillar_ids = pillar_ids
        self.taxonomy_version = taxonomy_version
        self.config = config
        self.prior_keywords = prior_keywords or {}
        self.version = "unsaved"
        self._names: list[tuple[str, str]] | None = None
        self._priors: dict[str, list[str]] | None = None
        self._tokenizer: Tokenizer | None = None

    @property
    def label_ids(self) -> list[str]:
        """Domain ids then pillar ids, the classifier's column order."""
        return self.domain_ids + self.pillar_ids

    @property
    def thresholds(self) -> np.ndarray:
        """The tuned decision threshold of each label (probability scale)."""
        return np.asarray(self.classifier.thresholds_, dtype=float)

    def tokenizer(self) -> Tokenizer:
        """Return this model's tokenizer (created once per process)."""
        if self._tokenizer is None:
            self._tokenizer = Tokenizer(compounds=bool(self.config.get("compounds", False)))
        return self._tokenizer

    def analyse(self, docs: list[Document]) -> tuple[Any, list[Analysed]]:
        """Return the feature matrix of ``docs`` and their text analysis."""
        matrix, analysed = analyse_documents(docs, self.tokenizer())
        return self._transform(matrix), analysed

    def _transform(self, matrix: np.ndarray) -> Any:
        """The fitted ColumnTransformer's transform, block by block.

        Same output as ``self.features.transform`` (blocks in order, each
        times its weight), without its per-call validation and dispatch,
        which cost more than the blocks themselves for one document.
        """
        from scipy import sparse

        ct = self.features
        weights = ct.transformer_weights or {}
        blocks = []
        for name, transformer, columns in ct.transformers_:
            if isinstance(transformer, str):  # "drop" (the remainder)
                continue
            block = transformer.transform(matrix[:, columns])
            weight = weights.get(name)
            blocks.append(block * weight if weight not in (None, 1) else block)
        return sparse.hstack(blocks, format="csr")

    def transform(self, docs: list[Document]) -> Any:
        """Return the sparse feature matrix of ``docs``."""
        return self.analyse(docs)[0]

    def predict_proba(self, docs: list[Document] | None = None, X: Any = None) -> np.ndarray:
        """Return calibrated probabilities, shape (n_docs, n_labels)."""
        if X is None:
            X = self.transform(docs or [])
        return np.asarray(self.classifier.predict_proba(X))

    def decide(self, proba: np.ndarray, threshold: float | None = None) -> np.ndarray:
        """Return the 0/1 decisions for ``proba``; every row gets at least one pillar."""
        cut = self.thresholds if threshold is None else np.full(proba.shape[1], float(threshold))
        yes = proba >= cut
        nd = len(self.domain_ids)
        if yes.shape[1] > nd:
            empty = ~yes[:, nd:].any(axis=1)
            best = proba[:, nd:].argmax(axis=1)
            yes[np.flatnonzero(empty), nd + best[empty]] = True
        return yes

    def predict(
        self,
        docs: list[Document],
        *,
        explain: bool = True,
        top_terms: int = 5,
        threshold: float | None = None,
        top_k: int | None = None,
    ) -> list[Prediction]:
        """Classify ``docs``; return one Prediction each, labels highest score first.

        ``threshold`` overrides every tuned threshold; ``top_k`` keeps at most
        that many labels of each kind; ``explain`` adds evidence terms.
        """
        if not docs:
            return []
        X, analysed = self.analyse(docs)
        proba = self.predict_proba(X=X)
        yes = self.decide(proba, threshold)
        ids = self.label_ids
        nd = len(self.domain_ids)
        out = []
        for i, doc in enumerate(docs):
            picked: dict[str, list[LabelScore]] = {"domain": [], "pillar": []}
            for j in np.flatnonzero(yes[i]):
                picked["domain" if j < nd else "pillar"].append(LabelScore(ids[j], float(proba[i, j])))
            for kind in picked:
                picked[kind].sort(key=lambda s: -s.score)
                if top_k is not None:
                    picked[kind] = picked[kind][:top_k]
            if explain:
                row = slice(X.indptr[i], X.indptr[i + 1])
                self._explain(doc, analysed[i], X.indices[row], X.data[row], picked["domain"] + picked["pillar"], top_terms)
            out.append(
                Prediction(
                    id=doc.id,
                    domains=picked["domain"],
                    pillars=picked["pillar"],
                    scores={ids[j]: float(proba[i, j]) for j in range(len(ids))},
                    model_version=self.version,
                )
            )
        return out

    # --- explanations -------------------------------------------------
    def _feature_names(self) -> list[tuple[str, str]]:
        if self._names is None:
            self._names = [(str(n).partition("__")[0], str(n).partition("__")[2]) for n in self.features.get_feature_names_out()]
        return self._names

    def _prior_words(self) -> dict[str, list[str]]:
        if self._priors is None:
            self._priors = {
                label: sorted({w.lower() for w in words if w.strip()}, key=len, reverse=True) for label, words in self.prior_keywords.items()
            }
        return self._priors

    def _explain(self, doc: Document, analysed: Analysed, cols: np.ndarray, vals: np.ndarray, labels: list[LabelScore], top_terms: int) -> None:
        if not labels:
            return
        names = self._feature_names()
        coef = self.classifier.coef_
        index = {label: j for j, label in enumerate(self.label_ids)}
        locator = _SpanLocator(doc, analysed, self._prior_words())
        for score in labels:
            contrib = vals * coef[index[score.id], cols]
            for k in np.argsort(-contrib):
                if contrib[k] <= 0 or len(score.evidence) >= top_terms:
                    break
                block, term = names[cols[k]]
                ev = locator.find(block, term, float(contrib[k]))
                if ev is not None and all(e.term != ev.term for e in score.evidence):
                    score.evidence.append(ev)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_names"] = state["_tokenizer"] = state["_priors"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update({"_names": None, "_tokenizer": None, "_priors": None, **state})


class _SpanLocator:
    """Finds where a feature stands in a document's original field text, from its analysis."""

    def __init__(self, doc: Document, analysed: Analysed, prior_keywords: dict[str, list[str]]) -> None:
        """``prior_keywords``: each label's lower-cased taxonomy keywords, longest first."""
        self.doc = doc
        self.analysed = analysed
        self.prior_keywords = prior_keywords
        self._maps: dict[str, tuple[list[int], list[int], str, dict[str, str]]] = {}
        self._found: dict[tuple[str, str], Evidence | None] = {}

    def _field(self, name: str) -> tuple[list[int], list[int], str, dict[str, str]]:
        if name not in self._maps:
            norm, starts, ends = normalize_with_offsets(getattr(self.doc, name))
            low = norm.lower()
            if len(low) != len(norm):
                low = norm
            # dict() keeps the last value of a key: reversed, the first occurrence wins.
            surfaces = dict(reversed(self.analysed.pairs.get(name, [])))
            self._maps[name] = (starts, ends, low, surfaces)
        return self._maps[name]

    def _at(self, name: str, needle: str, weight: float) -> Evidence | None:
        starts, ends, low, _ = self._field(name)
        a = low.find(needle) if needle else -1
        if a < 0:
            return None
        b = a + len(needle)
        s, e = starts[a], ends[b - 1]
        return Evidence(getattr(self.doc, name)[s:e], name, s, e, weight)

    def find(self, block: str, term: str, weight: float) -> Evidence | None:
        """Return the evidence for feature ``term`` of feature block ``block``, or None if it cannot be placed."""
        key = (block, term)
        if key not in self._found:
            self._found[key] = self._find(block, term)
        ev = self._found[key]
        return None if ev is None else Evidence(ev.term, ev.field, ev.start, ev.end, weight)

    def _find(self, block: str, term: str) -> Evidence | None:
        weight = 0.0
        if block in ("title", "abstract", "keywords"):
            if term.startswith("kw="):
                return self._at(block, term[3:], weight)
            surface = self._field(block)[3].get(term)
            return self._at(block, surface, weight) if surface else None
        if block in ("program", "field"):
            text = getattr(self.doc, block)
            return Evidence(text, block, 0, len(text), weight) if text else None
        if block == "prior":
            words = self.prior_keywords.get(term.partition("=")[2], [])
            for name in ("title", "abstract", "keywords"):
                low = self._field(name)[2]
                for w in words:
                    if w in low:
                        return self._at(name, w, weight)
        return None


def train_model(
    docs: list[Document],
    domains: list[list[str]],
    pillars: list[list[str]],
    taxonomy: Taxonomy,
    config: ModelConfig | None = None,
    crosswalk: dict[str, list[str]] | None = None,
) -> Model:
    """Fit a model on labeled documents; deterministic for ``config.seed``.

    Raises TrainingDataError when a label has fewer than MIN_POSITIVES
    positive or negative examples.
    """
    from classifier.estimators import CalibratedLinearOVR
    from classifier.features import COLUMNS, build_features

    config = config or ModelConfig()
    ids = taxonomy.domain_ids + taxonomy.pillar_ids
    y = label_matrix([d + p for d, p in zip(domains, pillars)], ids)
    counts = y.sum(axis=0)
    short = [f"{label} ({int(n)})" for label, n in zip(ids, counts) if n < MIN_POSITIVES or n > len(docs) - MIN_POSITIVES]
    if short:
        raise TrainingDataError(
            f"too few positive or negative examples to train: {', '.join(short)}; each label needs at least "
            f"{MIN_POSITIVES} of each (add labeled records, or train together with the project corpus)"
        )
    prior = {label.id: list(label.keywords_ja) + list(label.keywords_en) for label in taxonomy.labels}
    tokenizer = Tokenizer(compounds=config.compounds)
    matrix, _ = analyse_documents(docs, tokenizer)
    # A field no training document fills cannot be learned from: leave its block out.
    weights = {
        name: w
        for name, w in config.weights.items()
        if name not in COLUMNS or any(len(v) if isinstance(v, list) else str(v).strip() for v in matrix[:, COLUMNS[name]])
    }
    features = build_features(weights, crosswalk, prior, min_df=config.min_df, crosswalk_weight=config.crosswalk_weight)
    X = features.fit_transform(matrix).tocsr()
    X.sum_duplicates()
    X.sort_indices()
    clf = CalibratedLinearOVR(C=config.C, class_weight=config.class_weight, cv=config.cv, random_state=config.seed, n_jobs=config.n_jobs)
    clf.fit(X, y)
    model = Model(features, clf, taxonomy.domain_ids, taxonomy.pillar_ids, taxonomy.version, config.as_dict(), prior)
    model._tokenizer = tokenizer
    return model
