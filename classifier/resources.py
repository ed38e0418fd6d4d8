"""Where the taxonomy, the project's training text and model versions live."""

from __future__ import annotations

import os
from pathlib import Path

#: Repository root when running from a source checkout or an install that ships labels/.
_PACKAGE_ROOT = Path(__file__).resolve().parent.parent


def labels_dir() -> Path:
    """Return the directory holding taxonomy.yaml, the crosswalk and the corpus.

    ``GRANTTAG_LABELS_DIR`` overrides it; otherwise the ``labels`` directory
    installed beside the ``classifier`` package is used.
    """
    env = os.environ.get("GRANTTAG_LABELS_DIR")
    if env:
        return Path(env)
    return _PACKAGE_ROOT / "labels"


def models_dir() -> Path:
    """Return the directory holding model versions (created if missing).

    ``GRANTTAG_MODELS_DIR`` overrides it. In a source checkout it is the
    repository's ``models/``; in an installed package it is
    ``$XDG_DATA_HOME/granttag/models`` (``~/.local/share/granttag/models``).
    """
    env = os.environ.get("GRANTTAG_MODELS_DIR")
    if env:
        path = Path(env)
    elif (_PACKAGE_ROOT / "pyproject.toml").exists() and (_PACKAGE_ROOT / "models").is_dir():
        path = _PACKAGE_ROOT / "models"
    else:
        data_home = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
        path = Path(data_home) / "granttag" / "models"
    path.mkdir(parents=True, exist_ok=True)
    return path
