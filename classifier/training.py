"""Training a model version from labeled data and recording how it was made."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from classifier.corpus import LabeledSet, load_corpus, load_crosswalk, load_labeled
from classifier.model import Model, ModelConfig, train_model
from classifier.store import save_model
from classifier.taxonomy import load_taxonomy


def fit_labeled(data: LabeledSet, config: ModelConfig | None = None) -> Model:
    """Train a model on ``data`` with the installed taxonomy and crosswalk."""
    taxonomy = load_taxonomy()
    return train_model(data.docs, data.domains, data.pillars, taxonomy, config, load_crosswalk())


def train_and_save(
    data: LabeledSet,
    config: ModelConfig | None = None,
    root: Path | None = None,
    sources: list[str] | None = None,
    gold: Path | None = None,
    extra_meta: dict[str, Any] | None = None,
) -> str:
    """Train on ``data``, evaluate on ``gold`` if given, save; return the new version name."""
    config = config or ModelConfig()
    start = time.monotonic()
    model = fit_labeled(data, config)
    seconds = time.monotonic() - start
    meta: dict[str, Any] = {
        "training_data_sha256": data.fingerprint(),
        "training_records": len(data),
        "training_sources": sources or sorted(set(data.sources)),
        "training_seconds": round(seconds, 1),
        "config": config.as_dict(),
        "thresholds": {k: round(float(v), 4) for k, v in zip(model.label_ids, model.thresholds)},
        **(extra_meta or {}),
    }
    if gold is not None:
        from classifier.evaluation import evaluate_model, load_gold

        meta["evaluation"] = {"gold": str(gold), **evaluate_model(model, load_gold(gold)).flat()}
    return save_model(model, meta, root)


def train_default(root: Path | None = None) -> str:
    """Train the default model from labels/corpus and save it; return the version."""
    from classifier.store import corpus_stamp

    stamp = corpus_stamp()
    taxonomy = load_taxonomy()
    data = load_corpus(taxonomy)
    return train_and_save(
        data, ModelConfig(n_jobs=2), root, sources=["labels/corpus"], extra_meta={"default": True, "default_stamp": stamp}
    )


def train_files(paths: list[Path], with_corpus: bool = False, config: ModelConfig | None = None, root: Path | None = None) -> str:
    """Train from labeled files (plus the project corpus if asked); return the version."""
    taxonomy = load_taxonomy()
    data = load_labeled(paths, taxonomy)
    if with_corpus:
        data.extend(load_corpus(taxonomy))
    return train_and_save(data, config, root, sources=[str(p) for p in paths] + (["labels/corpus"] if with_corpus else []))
