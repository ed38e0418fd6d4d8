"""The multi-label model: training with scikit-learn; prediction through its :class:`classifier.scorer.Scorer`."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from classifier.analysis import analyse_documents
from classifier.documents import Document
from classifier.errors import TrainingDataError
from classifier.scorer import Evidence, LabelScore, Prediction, Scorer  # noqa: F401  (re-exported)
from classifier.taxonomy import Taxonomy
from classifier.text import Tokenizer

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
        self._tokenizer: Tokenizer | None = None
        self._scorer: Scorer | None = None

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

    def scorer(self) -> Scorer:
        """Return the prediction path of this model (built once, then cached)."""
        if self._scorer is None or self._scorer.version != self.version:
            self._scorer = Scorer.from_model(self)
        return self._scorer

    def transform(self, docs: list[Document]) -> Any:
        """Return the scikit-learn pipeline's sparse feature matrix of ``docs`` (the reference the scorer reproduces)."""
        matrix, _ = analyse_documents(docs, self.tokenizer())
        return self.features.transform(matrix)

    def predict_proba(self, docs: list[Document]) -> np.ndarray:
        """Return calibrated probabilities, shape (n_docs, n_labels)."""
        return self.scorer().predict_proba(docs)

    def decide(self, proba: np.ndarray, threshold: float | None = None) -> np.ndarray:
        """Return the 0/1 decisions for ``proba``; every row gets at least one pillar."""
        return self.scorer().decide(proba, threshold)

    def predict(self, docs: list[Document], **options: Any) -> list[Prediction]:
        """Classify ``docs`` (see :meth:`classifier.scorer.Scorer.predict` for the options)."""
        return self.scorer().predict(docs, **options)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_tokenizer"] = state["_scorer"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update({"_tokenizer": None, "_scorer": None, **state})


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
