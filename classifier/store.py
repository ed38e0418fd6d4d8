"""Model versions on disk behind a SHA-256 manifest, one version marked active.

A version is a directory ``models/<version>/`` holding ``meta.json``, whose
``files`` entry is the manifest (the SHA-256 of every other file), and:

- ``scorer.npz`` and ``scorer.json``: what prediction needs, as NumPy arrays
  (read with ``allow_pickle=False``) and JSON. :func:`load_model` reads only
  these, so classifying unpickles nothing and imports no scikit-learn.
- ``model.joblib``: the fitted scikit-learn pipeline, for inspection and as
  the reference the scorer is tested against; :func:`load_pipeline` unpickles
  it, only after its checksum matches (issue 2). skops was measured first:
  its JSON schema for the TF-IDF vocabularies made a 60 MB file that took
  seconds to load.

A version is written under a temporary name and renamed into place; the
active version's name is in ``models/ACTIVE``.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import platform
import shutil
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from classifier.errors import ModelIntegrityError, ModelNotFoundError
from classifier.resources import models_dir

MODEL_FILE = "model.joblib"
META_FILE = "meta.json"
ACTIVE_FILE = "ACTIVE"
#: Bumped whenever the files change shape; older versions are refused with a message.
FORMAT = 4


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _versions() -> dict[str, str]:
    import numpy
    import scipy
    import sklearn

    return {
        "scikit-learn": sklearn.__version__,
        "numpy": numpy.__version__,
        "scipy": scipy.__version__,
        "python": platform.python_version(),
    }


def _atomic_write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix="." + path.name)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(tmp, path)


def save_model(model: Any, meta: dict[str, Any], root: Path | None = None, version: str | None = None) -> str:
    """Write ``model`` as a new version; return its name. Does not activate it."""
    import joblib

    root = root or models_dir()
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    version = version or f"{stamp}-{meta.get('training_data_sha256', '')[:8] or 'model'}"
    final = root / version
    if final.exists():
        raise ModelIntegrityError(f"model version {version} already exists in {root}")
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=".tmp-"))
    try:
        model.version = version
        joblib.dump(model, tmp / MODEL_FILE, compress=0)
        names = [MODEL_FILE, *model.scorer().save(tmp)]
        full = {
            "format": FORMAT,
            "version": version,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "libraries": _versions(),
            **meta,
            "taxonomy_version": model.taxonomy_version,
            "files": {name: _sha256(tmp / name) for name in names},
        }
        (tmp / META_FILE).write_text(json.dumps(full, ensure_ascii=False, indent=2), encoding="utf-8")
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return version


def list_versions(root: Path | None = None) -> list[dict[str, Any]]:
    """Return the meta of every version, oldest first, with ``active`` set on one."""
    root = root or models_dir()
    active = active_version(root)
    out = []
    for path in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        try:
            meta = read_meta(path.name, root)
        except (ModelNotFoundError, ModelIntegrityError):
            continue
        meta["active"] = path.name == active
        out.append(meta)
    return out


def read_meta(version: str, root: Path | None = None) -> dict[str, Any]:
    """Return a version's meta.json; raises ModelNotFoundError if there is none."""
    root = root or models_dir()
    path = root / version / META_FILE
    if "/" in version or version.startswith(".") or not path.exists():
        raise ModelNotFoundError(f"no model version {version!r} in {root} (see `granttag models list`)")
    try:
        meta: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ModelIntegrityError(f"{path}: unreadable meta.json ({exc})") from exc
    return meta


def active_version(root: Path | None = None) -> str | None:
    """Return the active version's name, or None."""
    root = root or models_dir()
    path = root / ACTIVE_FILE
    if not path.exists():
        return None
    name = path.read_text(encoding="utf-8").strip()
    return name or None


def activate(version: str, root: Path | None = None) -> None:
    """Mark ``version`` active (atomically); raises ModelNotFoundError."""
    root = root or models_dir()
    read_meta(version, root)
    _atomic_write(root / ACTIVE_FILE, version + "\n")


def _checked(version: str | None, root: Path | None, files: tuple[str, ...]) -> tuple[str, Path, dict[str, Any]]:
    """Resolve ``version`` and check its format, taxonomy and the hashes of ``files``; return (version, directory, meta)."""
    from classifier.taxonomy import load_taxonomy

    root = root or models_dir()
    version = version or active_version(root)
    if version is None:
        raise ModelNotFoundError(f"no active model in {root}; train one (`granttag train`) or run `granttag classify` to build the default")
    meta = read_meta(version, root)
    if meta.get("format") != FORMAT:
        raise ModelIntegrityError(
            f"model {version} has format {meta.get('format')!r}, this granttag reads format {FORMAT}; retrain it (`granttag train`)"
        )
    for name in files:
        path = root / version / name
        expected = (meta.get("files") or {}).get(name)
        if not path.exists():
            raise ModelIntegrityError(f"{path}: the model file is missing")
        if not expected or _sha256(path) != expected:
            raise ModelIntegrityError(f"{path}: checksum does not match meta.json; the file was changed or damaged. Retrain or restore it")
    taxonomy = load_taxonomy()
    if meta.get("taxonomy_version") != taxonomy.version:
        raise ModelIntegrityError(
            f"model {version} was built for taxonomy {meta.get('taxonomy_version')!r}, the installed taxonomy is {taxonomy.version!r}; retrain it"
        )
    return version, root / version, meta


def load_model(version: str | None = None, root: Path | None = None) -> Any:
    """Load a version (default: the active one) for prediction, after checking it.

    Returns a :class:`classifier.scorer.Scorer` (``predict``,
    ``predict_proba``, ``label_ids``, ``thresholds``, ``version``). Reads
    only JSON and NumPy arrays, never a pickle. Raises ModelNotFoundError if
    the version does not exist, ModelIntegrityError if a checksum does not
    match, it was built for another taxonomy version or an older format.
    """
    from classifier.scorer import ARRAYS_FILE, TABLES_FILE, Scorer

    version, directory, _ = _checked(version, root, (ARRAYS_FILE, TABLES_FILE))
    scorer = Scorer.load(directory)
    scorer.version = version
    return scorer


def load_pipeline(version: str | None = None, root: Path | None = None) -> Any:
    """Load a version's fitted scikit-learn model (:class:`classifier.model.Model`), after checking it.

    Raises as :func:`load_model` does, and ModelIntegrityError for a model
    built with another scikit-learn minor version or an unreadable pickle.
    """
    import joblib
    import sklearn

    version, directory, meta = _checked(version, root, (MODEL_FILE,))
    built = str((meta.get("libraries") or {}).get("scikit-learn", ""))
    if built.split(".")[:2] != sklearn.__version__.split(".")[:2]:
        raise ModelIntegrityError(
            f"model {version} was built with scikit-learn {built}, this is {sklearn.__version__}; retrain it with this version"
        )
    path = directory / MODEL_FILE
    try:
        model = joblib.load(path)
    except (AttributeError, ImportError, EOFError, ValueError, TypeError, pickle.UnpicklingError) as exc:
        raise ModelIntegrityError(f"{path}: cannot be read by this granttag ({exc}); retrain it") from exc
    model.version = version
    return model


def corpus_stamp() -> str:
    """Return a SHA-256 over the taxonomy, crosswalk and corpus files the default model is built from."""
    from classifier.resources import labels_dir

    h = hashlib.sha256()
    base = labels_dir()
    for path in sorted([base / "taxonomy.yaml", base / "crosswalk_kaken.yaml", *(base / "corpus").glob("*.jsonl")]):
        if path.exists():
            h.update(path.name.encode() + b"\0" + _sha256(path).encode() + b"\n")
    return h.hexdigest()


def _default_is_current(version: str, root: Path) -> bool:
    """True unless ``version`` is a default build that is out of date or of an older model format."""
    try:
        meta = read_meta(version, root)
    except (ModelNotFoundError, ModelIntegrityError):
        return True  # not a default build we can vouch for: loading it reports the problem
    if not (meta.get("default") or meta.get("training_sources") == ["labels/corpus"]):
        return True  # an operator's model is never replaced behind their back
    return meta.get("format") == FORMAT and meta.get("default_stamp") == corpus_stamp()


def ensure_default_model(echo: Any = None, root: Path | None = None) -> str:
    """Return the active version, building the default model from labels/ if there is none.

    The default model is rebuilt, with a message, when the active version is a
    default build whose training text, taxonomy or model format has changed
    since. ``echo`` is called with a message when a build starts and ends.
    """
    import fcntl

    root = root or models_dir()
    active = active_version(root)
    if active is not None and _default_is_current(active, root):
        return active
    from classifier.training import train_default

    say = echo or (lambda msg: None)
    # Two commands started at once on a fresh install must not both build it.
    with (root / ".build.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        active = active_version(root)
        if active is not None and _default_is_current(active, root):
            return active
        why = "No model yet" if active is None else f"The default model {active} is out of date"
        say(f"{why}: building the default model from the project's training text into {root} (once, under a minute)...")
        start = time.monotonic()
        version = train_default(root=root)
        activate(version, root)
        say(f"Built and activated model {version} in {time.monotonic() - start:.0f} s.")
    return version
