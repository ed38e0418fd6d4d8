"""The multi-label model: training, calibrated per-label prediction and explanations."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from classifier.documents import Document
from classifier.errors import TrainingDataError
from classifier.taxonomy import Taxonomy
from classifier.text import Tokenizer, normalize, normalize_with_offsets, split_keywords

#: Fewest positive examples a label needs to be trained (cross-validation needs both classes per fold).
MIN_POSITIVES = 6


@dataclass
class ModelConfig:
    """Training settings; stored with every model version."""

    weights: dict[str, float] = field(
        default_factory=lambda: {"title": 1.5, "abstract": 1.0, "keywords": 1.0, "program": 0.3, "field": 0.5, "prior": 0.5}
    )
    C: float = 10.0
    class_weight: str | None = "balanced"
    calibration: str = "sigmoid"
    cv: int = 5
    min_df: int = 1
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


def documents_matrix(docs: list[Document]) -> np.ndarray:
    """Return the (n, 5) object array of document columns the pipeline takes."""
    arr = np.empty((len(docs), 5), dtype=object)
    for i, d in enumerate(docs):
        arr[i] = d.columns()
    return arr


def label_matrix(label_sets: list[list[str]], ids: list[str]) -> np.ndarray:
    """Return a 0/1 matrix (n, len(ids)) for the given label lists."""
    index = {label: j for j, label in enumerate(ids)}
    y = np.zeros((len(label_sets), len(ids)), dtype=np.int8)
    for i, labels in enumerate(label_sets):
        for label in labels:
            y[i, index[label]] = 1
    return y


def _classifier(config: ModelConfig) -> Any:
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, TunedThresholdClassifierCV
    from sklearn.multiclass import OneVsRestClassifier

    folds = StratifiedKFold(n_splits=config.cv, shuffle=True, random_state=config.seed)
    base = LogisticRegression(C=config.C, class_weight=config.class_weight, solver="liblinear", max_iter=1000)
    calibrated = CalibratedClassifierCV(base, method=config.calibration, cv=folds, ensemble=False)
    # The per-label decision threshold is tuned for F1 on out-of-fold predictions (issue 2).
    tuned = TunedThresholdClassifierCV(calibrated, scoring="f1", cv=folds, random_state=config.seed)
    return OneVsRestClassifier(tuned, n_jobs=config.n_jobs)


class Model:
    """A fitted granttag model: feature pipeline, per-label classifiers and thresholds."""

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
        self._coef: np.ndarray | None = None
        self._names: list[tuple[str, str]] | None = None
        self._tokenizer: Tokenizer | None = None

    @property
    def label_ids(self) -> list[str]:
        """Domain ids then pillar ids, the classifier's column order."""
        return self.domain_ids + self.pillar_ids

    @property
    def thresholds(self) -> np.ndarray:
        """The tuned decision threshold of each label (probability scale)."""
        return np.array([float(e.best_threshold_) for e in self.classifier.estimators_])

    def transform(self, docs: list[Document]) -> Any:
        """Return the sparse feature matrix of ``docs``."""
        return self.features.transform(documents_matrix(docs))

    def predict_proba(self, docs: list[Document] | None = None, X: Any = None) -> np.ndarray:
        """Return calibrated probabilities, shape (n_docs, n_labels)."""
        if X is None:
            X = self.transform(docs or [])
        cols = [e.predict_proba(X)[:, 1] for e in self.classifier.estimators_]
        return np.column_stack(cols) if cols else np.zeros((X.shape[0], 0))

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
        X = self.transform(docs)
        proba = self.predict_proba(X=X)
        yes = self.decide(proba, threshold)
        ids = self.label_ids
        nd = len(self.domain_ids)
        out = []
        for i, doc in enumerate(docs):
            picked: dict[str, list[LabelScore]] = {"domain": [], "pillar": []}
            for j in np.flatnonzero(yes[i]):
                kind = "domain" if j < nd else "pillar"
                picked[kind].append(LabelScore(ids[j], float(proba[i, j])))
            for kind in picked:
                picked[kind].sort(key=lambda s: -s.score)
                if top_k is not None:
                    picked[kind] = picked[kind][:top_k]
            if explain:
                self._explain(doc, X[i], picked["domain"] + picked["pillar"], top_terms)
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
    def _coefficients(self) -> tuple[np.ndarray, list[tuple[str, str]]]:
        if self._coef is None or self._names is None:
            rows = []
            for est in self.classifier.estimators_:
                lr = est.estimator_.calibrated_classifiers_[0].estimator
                rows.append(np.asarray(lr.coef_).ravel())
            self._coef = np.vstack(rows).astype(np.float32)
            names = []
            for name in self.features.get_feature_names_out():
                block, _, term = str(name).partition("__")
                names.append((block, term))
            self._names = names
        return self._coef, self._names

    def _explain(self, doc: Document, x: Any, labels: list[LabelScore], top_terms: int) -> None:
        if not labels:
            return
        coef, names = self._coefficients()
        index = {label: j for j, label in enumerate(self.label_ids)}
        x = x.tocsr()
        cols, vals = x.indices, x.data
        locator = _SpanLocator(doc, self)
        for score in labels:
            contrib = vals * coef[index[score.id], cols]
            order = np.argsort(-contrib)
            for k in order:
                if contrib[k] <= 0 or len(score.evidence) >= top_terms:
                    break
                block, term = names[cols[k]]
                ev = locator.find(block, term, float(contrib[k]))
                if ev is not None and all(e.term != ev.term for e in score.evidence):
                    score.evidence.append(ev)

    def tokenizer(self) -> Tokenizer:
        """Return this model's tokenizer (created once per process)."""
        if self._tokenizer is None:
            self._tokenizer = Tokenizer()
        return self._tokenizer

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_coef"] = state["_names"] = state["_tokenizer"] = None
        return state


_FIELD_OF_BLOCK = {"title": "title", "abstract": "abstract", "keywords": "keywords", "program": "program", "field": "field"}


class _SpanLocator:
    """Finds where a feature stands in a document's original field text."""

    def __init__(self, doc: Document, model: Model) -> None:
        self.doc = doc
        self.model = model
        self._cache: dict[str, tuple[str, list[int], list[int], dict[str, tuple[int, int]]]] = {}

    def _field(self, name: str) -> tuple[str, list[int], list[int], dict[str, tuple[int, int]]]:
        if name not in self._cache:
            text = getattr(self.doc, name)
            norm, starts, ends = normalize_with_offsets(text)
            spans: dict[str, tuple[int, int]] = {}
            for tok in self.model.tokenizer().analyze(norm, normalized=True):
                spans.setdefault(tok.feature, (tok.start, tok.end))
            self._cache[name] = (norm, starts, ends, spans)
        return self._cache[name]

    def _evidence(self, name: str, a: int, b: int, weight: float) -> Evidence | None:
        text = getattr(self.doc, name)
        norm, starts, ends, _ = self._field(name)
        if a >= b or b > len(norm):
            return None
        s, e = starts[a], ends[b - 1]
        return Evidence(text[s:e], name, s, e, weight)

    def find(self, block: str, term: str, weight: float) -> Evidence | None:
        if block in ("title", "abstract", "keywords"):
            norm, _, _, spans = self._field(block)
            if term.startswith("kw="):
                kw = term[3:]
                pos = norm.lower().find(kw)
                return self._evidence(block, pos, pos + len(kw), weight) if pos >= 0 else None
            if term in spans:
                return self._evidence(block, *spans[term], weight)
            return None
        if block in ("program", "field"):
            text = getattr(self.doc, block)
            return Evidence(text, block, 0, len(text), weight) if text else None
        if block == "prior":
            label = term.partition("=")[2]
            for name in ("title", "abstract", "keywords"):
                norm, _, _, _ = self._field(name)
                low = norm.lower()
                for kw in sorted(self.model.prior_keywords.get(label, []), key=len, reverse=True):
                    kwn = normalize(kw).lower()
                    pos = low.find(kwn) if kwn else -1
                    if pos >= 0:
                        return self._evidence(name, pos, pos + len(kwn), weight)
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

    Raises TrainingDataError when a label has fewer than MIN_POSITIVES examples
    or when every document has it.
    """
    from classifier.features import build_features

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
    prior = {
        label.id: list(label.keywords_ja) + list(label.keywords_en) for label in taxonomy.labels
    }
    matrix = documents_matrix(docs)
    # A field no training document fills cannot be learned from: leave its block out.
    from classifier.features import COLUMNS

    weights = {
        name: w for name, w in config.weights.items() if name not in COLUMNS or any(str(v).strip() for v in matrix[:, COLUMNS[name]])
    }
    features = build_features(weights, crosswalk, prior, min_df=config.min_df)
    X = features.fit_transform(matrix).tocsr()
    # Parallel label fits share X read-only; its indices must already be sorted.
    X.sum_duplicates()
    X.sort_indices()
    clf = _classifier(config)
    clf.fit(X, y)
    return Model(features, clf, taxonomy.domain_ids, taxonomy.pillar_ids, taxonomy.version, config.as_dict(), prior)


def split_keyword_list(value: str) -> list[str]:
    """Return the keywords of a document's keyword string."""
    return split_keywords(value)
