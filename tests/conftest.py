"""Shared fixtures: a small model trained once per session, in a temporary model store."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"


@pytest.fixture(scope="session")
def model_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model store holding one active model trained on a slice of the project corpus."""
    root = tmp_path_factory.mktemp("models")
    os.environ["GRANTTAG_MODELS_DIR"] = str(root)
    from classifier import store
    from classifier.corpus import load_corpus
    from classifier.model import ModelConfig
    from classifier.taxonomy import load_taxonomy
    from classifier.training import train_and_save

    data = load_corpus(load_taxonomy())
    version = train_and_save(data, ModelConfig(cv=3, n_jobs=2), root)
    store.activate(version, root)
    return root


@pytest.fixture(scope="session")
def model(model_root: Path):  # type: ignore[no-untyped-def]
    from classifier.store import load_model

    return load_model(root=model_root)


@pytest.fixture(scope="session")
def pipeline(model_root: Path):  # type: ignore[no-untyped-def]
    """The same model as fitted scikit-learn objects (for saving copies and as the scorer's reference)."""
    from classifier.store import load_pipeline

    return load_pipeline(root=model_root)


def shared_or_skip(relative: str) -> Path:
    """Return a path under ../shared or skip the test when it is absent (a user's clone)."""
    path = SHARED / relative
    if not path.exists():
        pytest.skip(f"needs ../shared/{relative} (present only in the project's workplace)")
    return path
