"""Retraining: a candidate version evaluated on a frozen holdout and by cross-validation, a quality gate, rollback and diff (issue 6).

A retrain never silently replaces a good model with a worse one. The candidate
is trained on every active source of the data store (records whose text is in
the holdout are left out, so the holdout is never trained on), evaluated on
the holdout and by k-fold cross-validation, and compared on the holdout with
the active model. By default it is promoted only if its domain and pillar
micro-F1 on the holdout are not lower than the active model's and no label
with at least ``min_support`` holdout examples loses more than ``margin`` F1.
Every figure and the gate's decision go into the version's meta.json; a
rejected candidate stays in the store for the operator to activate by hand.

Activations made here are recorded in ``models/HISTORY.jsonl`` so that
``rollback`` can walk back to the version active before.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from classifier import store
from classifier.corpus import LabeledSet
from classifier.errors import GranttagError, ModelNotFoundError, TrainingDataError
from classifier.model import ModelConfig
from classifier.resources import models_dir
from classifier.validation import text_key, validate_set

HISTORY_FILE = "HISTORY.jsonl"
#: Figures kept from cross-validation, averaged over folds.
CV_FIGURES = ("domains.micro_f1", "domains.macro_f1", "pillars.micro_f1", "pillars.macro_f1", "domains.ece", "pillars.ece")

Progress = Callable[[str, float], None]


@dataclass
class GatePolicy:
    """When a candidate may replace the active model."""

    margin: float = 0.05  # the most F1 a label with enough support may lose
    min_support: int = 5  # holdout examples a label needs for its own F1 to count
    tolerance: float = 0.0  # how much lower than the active model's micro-F1 still passes

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class GateDecision:
    """The quality gate's verdict, with the comparison it was made on."""

    accepted: bool
    baseline: str | None
    reasons: list[str] = field(default_factory=list)
    figures: dict[str, dict[str, float | None]] = field(default_factory=dict)
    per_label: list[dict[str, Any]] = field(default_factory=list)
    policy: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"decision": "accepted" if self.accepted else "rejected", **asdict(self)}


@dataclass
class RetrainResult:
    """What a retrain made: the candidate version, whether it is now active, and its report."""

    version: str
    activated: bool
    gate: GateDecision
    meta: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return {"version": self.version, "activated": self.activated, "gate": self.gate.as_dict(), "meta": self.meta}


def _per_label(flat: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {row["label"]: row for kind in ("domains", "pillars") for row in flat.get(f"{kind}.per_label", [])}


def apply_gate(
    candidate: dict[str, Any], baseline: dict[str, Any] | None, baseline_version: str | None, policy: GatePolicy | None = None
) -> GateDecision:
    """Decide whether the candidate may become active, from both models' holdout figures (EvaluationReport.flat()).

    With no baseline (no active model, or one that cannot be loaded) the
    candidate passes.
    """
    policy = policy or GatePolicy()
    decision = GateDecision(True, baseline_version, policy=policy.as_dict())
    for key in ("domains.micro_f1", "pillars.micro_f1", "domains.macro_f1", "pillars.macro_f1"):
        decision.figures[key] = {"candidate": candidate.get(key), "baseline": None if baseline is None else baseline.get(key)}
    if baseline is None:
        decision.reasons.append("no active model to compare with: the candidate passes")
        return decision
    for key in ("domains.micro_f1", "pillars.micro_f1"):
        cand, base = float(candidate[key]), float(baseline[key])
        if cand < base - policy.tolerance - 1e-9:
            decision.accepted = False
            decision.reasons.append(f"{key} {cand:.4f} is lower than the active model's {base:.4f}")
    cand_rows, base_rows = _per_label(candidate), _per_label(baseline)
    for label, row in cand_rows.items():
        base_row = base_rows.get(label)
        if base_row is None:
            continue
        delta = float(row["f1"]) - float(base_row["f1"])
        checked = int(row["support"]) >= policy.min_support
        failed = checked and delta < -policy.margin - 1e-9
        decision.per_label.append(
            {
                "label": label,
                "support": int(row["support"]),
                "candidate_f1": row["f1"],
                "baseline_f1": base_row["f1"],
                "delta": round(delta, 4),
                "checked": checked,
                "failed": failed,
            }
        )
        if failed:
            decision.accepted = False
            decision.reasons.append(
                f"{label} F1 drops by {-delta:.4f} ({base_row['f1']:.4f} -> {row['f1']:.4f}, support {row['support']}), "
                f"more than the margin {policy.margin}"
            )
    if decision.accepted:
        decision.reasons.append(f"not worse than the active model {baseline_version} on the holdout")
    return decision


def exclude_holdout(data: LabeledSet, holdout: LabeledSet) -> tuple[LabeledSet, int]:
    """Return ``data`` without the records whose text or id is in ``holdout``, and how many were left out."""
    keys = {text_key(d.title, d.abstract) for d in holdout.docs}
    ids = {d.id for d in holdout.docs}
    keep = [i for i, d in enumerate(data.docs) if text_key(d.title, d.abstract) not in keys and d.id not in ids]
    return data.subset(keep), len(data) - len(keep)


def deduplicate(data: LabeledSet) -> tuple[LabeledSet, int]:
    """Keep the last record of each text (a later source corrects an earlier one); return it and how many were dropped."""
    last: dict[str, int] = {}
    for i, d in enumerate(data.docs):
        last[text_key(d.title, d.abstract)] = i
    keep = sorted(last.values())
    return data.subset(keep), len(data) - len(keep)


def cross_validate(data: LabeledSet, config: ModelConfig, folds: int = 3, progress: Progress | None = None) -> dict[str, Any]:
    """Train and evaluate on ``folds`` folds of ``data``; return the mean and spread of the main figures.

    A fold whose training part lacks examples of some label is skipped and named.
    """
    import numpy as np
    from sklearn.model_selection import KFold

    from classifier.evaluation import evaluate_model
    from classifier.training import fit_labeled

    out: dict[str, Any] = {"folds": folds, "seed": config.seed, "completed": 0}
    if folds < 2:
        return {**out, "skipped": "cross-validation turned off"}
    values: dict[str, list[float]] = {k: [] for k in CV_FIGURES}
    skipped = []
    splitter = KFold(n_splits=folds, shuffle=True, random_state=config.seed)
    for k, (train, test) in enumerate(splitter.split(np.arange(len(data)))):
        if progress:
            progress(f"cross-validation fold {k + 1}/{folds}", k / folds)
        try:
            model = fit_labeled(data.subset(list(train)), config)
        except TrainingDataError as exc:
            skipped.append(f"fold {k + 1}: {exc}")
            continue
        flat = evaluate_model(model, data.subset(list(test))).flat()
        for key in CV_FIGURES:
            values[key].append(float(flat[key]))
    out["completed"] = folds - len(skipped)
    for key, vals in values.items():
        if vals:
            out[key] = {"mean": round(float(np.mean(vals)), 4), "std": round(float(np.std(vals)), 4), "folds": [round(v, 4) for v in vals]}
    if skipped:
        out["skipped"] = skipped
    return out


def retrain(
    data: LabeledSet,
    holdout_path: Path,
    *,
    sources: list[dict[str, Any]] | None = None,
    config: ModelConfig | None = None,
    policy: GatePolicy | None = None,
    cv_folds: int = 3,
    activate: bool = True,
    root: Path | None = None,
    progress: Progress | None = None,
    on_activate: Callable[[str], None] | None = None,
) -> RetrainResult:
    """Train a candidate on ``data``, evaluate it, apply the gate, save it, and activate it if it passes.

    ``holdout_path`` is a gold file (the format of shared/eval/dev.jsonl) that
    is never trained on. ``on_activate`` is called with the version when it
    becomes active (to tell the workers). Raises TrainingDataError when the
    data cannot be trained (a label with too few examples), InvalidInputError
    for an unreadable holdout.
    """
    from classifier.evaluation import evaluate_model, load_gold
    from classifier.taxonomy import load_taxonomy
    from classifier.training import fit_labeled

    say = progress or (lambda stage, fraction: None)
    root = root or models_dir()
    root.mkdir(parents=True, exist_ok=True)
    config = config or ModelConfig()
    policy = policy or GatePolicy()
    taxonomy = load_taxonomy()
    say("validating", 0.0)
    holdout = load_gold(Path(holdout_path))
    if not len(holdout):
        raise TrainingDataError(f"{holdout_path}: the holdout has no records")
    data, overlap = exclude_holdout(data, holdout)
    data, dropped = deduplicate(data)
    report = validate_set(data, taxonomy)
    blocking = report.blocking()
    if blocking:
        raise TrainingDataError("the training data cannot be trained; nothing was trained:\n  " + "\n  ".join(str(p) for p in blocking))
    cv = cross_validate(data, config, cv_folds, lambda stage, f: say(stage, 0.05 + 0.6 * f))
    say("training the candidate", 0.65)
    start = time.monotonic()
    model = fit_labeled(data, config)
    seconds = time.monotonic() - start
    say("evaluating on the holdout", 0.9)
    candidate = evaluate_model(model, holdout).flat()
    baseline_version = store.active_version(root)
    baseline: dict[str, Any] | None = None
    if baseline_version is not None:
        try:
            baseline = evaluate_model(store.load_model(baseline_version, root), holdout).flat()
        except GranttagError:
            baseline = None  # an active model that no longer loads is no baseline: the candidate is compared with nothing
    decision = apply_gate(candidate, baseline, baseline_version if baseline is not None else None, policy)
    meta: dict[str, Any] = {
        "training_data_sha256": data.fingerprint(),
        "training_records": len(data),
        "training_sources": [s.get("id", "") for s in sources or []] or sorted(set(data.sources))[:20],
        "data_sources": sources or [],
        "training_seconds": round(seconds, 1),
        "config": config.as_dict(),
        "thresholds": {k: round(float(v), 4) for k, v in zip(model.label_ids, model.thresholds, strict=False)},
        "evaluation": {"gold": str(holdout_path), "gold_sha256": holdout.fingerprint(), **candidate},
        "baseline_evaluation": None
        if baseline is None
        else {"version": baseline_version, **{k: v for k, v in baseline.items() if not k.endswith("per_label")}},
        "cross_validation": cv,
        "validation": {"holdout_records_left_out": overlap, "duplicates_dropped": dropped, "warnings": report.counts()},
        "gate": decision.as_dict(),
        "made_by": "retrain",
    }
    version = store.save_model(model, meta, root)
    activated = False
    if decision.accepted and activate:
        activate_version(version, root, reason="retrain", on_activate=on_activate)
        activated = True
    say("done", 1.0)
    return RetrainResult(version, activated, decision, store.read_meta(version, root))


def retrain_from_store(
    store: Any,
    *,
    holdout: str | Path,
    cv_folds: int = 3,
    margin: float = 0.05,
    min_support: int = 5,
    activate: bool = True,
    seed: int = 0,
    calibration_cv: int = 5,
    min_df: int = 1,
    root: Path | None = None,
    progress: Progress | None = None,
    on_activate: Callable[[str], None] | None = None,
) -> RetrainResult:
    """Retrain on a consistent snapshot of every active source of ``store`` (a classifier.datastore.DataStore).

    The snapshot is read under the store's shared lock, so a `data add`
    running at the same time is either wholly in it or wholly out of it.
    """
    data, sources = store.snapshot()
    info = [{**s.as_dict(), "records": s.records} for s in sources]
    for entry in info:
        entry.pop("skipped", None)
    return retrain(
        data,
        Path(holdout),
        sources=info,
        config=ModelConfig(seed=seed, cv=calibration_cv, min_df=min_df, n_jobs=2),
        policy=GatePolicy(margin=margin, min_support=min_support),
        cv_folds=cv_folds,
        activate=activate,
        root=root,
        progress=progress,
        on_activate=on_activate,
    )


# --- activation history and rollback ---------------------------------------------
def history(root: Path | None = None) -> list[dict[str, Any]]:
    """Return the recorded activations, oldest first."""
    path = (root or models_dir()) / HISTORY_FILE
    if not path.exists():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a torn last line from a crash is ignored, the rest stands
    return out


def _append_history(root: Path, entry: dict[str, Any]) -> None:
    import fcntl

    with (root / HISTORY_FILE).open("a", encoding="utf-8") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        fh.write(json.dumps(entry, ensure_ascii=False) + "\n")
        fh.flush()


def activate_version(
    version: str, root: Path | None = None, reason: str = "activate", on_activate: Callable[[str], None] | None = None
) -> str | None:
    """Check that ``version`` loads, make it active, record it, tell the workers; return the version active before."""
    root = root or models_dir()
    store.load_model(version, root)  # refuse a version that would not load
    before = store.active_version(root)
    store.activate(version, root)
    _append_history(root, {"version": version, "previous": before, "reason": reason, "at": datetime.now(UTC).isoformat(timespec="seconds")})
    if on_activate is not None:
        on_activate(version)
    return before


def _stack(root: Path) -> list[str]:
    """Replay the history into the stack of versions a rollback walks back through."""
    stack: list[str] = []
    for entry in history(root):
        if entry.get("reason") == "rollback":
            if stack:
                stack.pop()
            if not stack or stack[-1] != entry["version"]:
                stack.append(entry["version"])
        else:
            before = entry.get("previous")
            if before and (not stack or stack[-1] != before):
                stack.append(before)  # activated outside this module (`granttag models activate`, the default build)
            if not stack or stack[-1] != entry["version"]:
                stack.append(entry["version"])
    return stack


def rollback(root: Path | None = None, on_activate: Callable[[str], None] | None = None) -> tuple[str, str]:
    """Make the version active before the current one active again; return ``(previous, restored)``.

    Raises ModelNotFoundError when no earlier active version is recorded.
    """
    root = root or models_dir()
    current = store.active_version(root)
    if current is None:
        raise ModelNotFoundError(f"no active model in {root}: nothing to roll back")
    stack = _stack(root)
    if not stack or stack[-1] != current:
        stack.append(current)  # activated outside this module (e.g. the first default build)
    existing = {p.name for p in root.iterdir() if p.is_dir()}
    candidates = [v for v in reversed(stack[:-1]) if v != current and v in existing]
    if not candidates:
        raise ModelNotFoundError(
            f"no earlier active version recorded in {root / HISTORY_FILE}; choose one with `granttag models activate VERSION`"
        )
    target = candidates[0]
    store.load_model(target, root)
    store.activate(target, root)
    _append_history(
        root, {"version": target, "previous": current, "reason": "rollback", "at": datetime.now(UTC).isoformat(timespec="seconds")}
    )
    if on_activate is not None:
        on_activate(target)
    return current, target


# --- diff ---------------------------------------------------------------------------
def diff_versions(
    a: str, b: str, *, gold: Path | None = None, records: list[Any] | None = None, root: Path | None = None
) -> dict[str, Any]:
    """Compare two versions: per-label figures side by side, and which tags change on ``records``.

    Figures come from evaluating both on ``gold`` when it is given, else from
    each version's stored holdout evaluation. ``records`` are RawRecords
    (classifier.records.read_records); each whose tags differ is listed with
    the tags added and removed going from A to B.
    """
    from classifier.batch import to_documents

    root = root or models_dir()
    meta_a, meta_b = store.read_meta(a, root), store.read_meta(b, root)
    out: dict[str, Any] = {"a": a, "b": b}
    model_a = model_b = None
    if gold is not None or records is not None:
        model_a, model_b = store.load_model(a, root), store.load_model(b, root)
    if gold is not None:
        from classifier.evaluation import evaluate_model, load_gold

        data = load_gold(Path(gold))
        fig_a, fig_b = evaluate_model(model_a, data).flat(), evaluate_model(model_b, data).flat()
        out["figures_from"] = str(gold)
    else:
        fig_a, fig_b = meta_a.get("evaluation") or {}, meta_b.get("evaluation") or {}
        out["figures_from"] = "stored evaluations: " + ", ".join(
            f"{v} on {m.get('evaluation', {}).get('gold', 'nothing')}" for v, m in ((a, meta_a), (b, meta_b))
        )
        if fig_a.get("gold_sha256") and fig_b.get("gold_sha256") and fig_a["gold_sha256"] != fig_b["gold_sha256"]:
            out["warning"] = "the two versions were evaluated on different holdouts; give --gold to compare them on one"
    out["figures"] = {
        key: {"a": fig_a.get(key), "b": fig_b.get(key)}
        for key in ("domains.micro_f1", "domains.macro_f1", "pillars.micro_f1", "pillars.macro_f1")
    }
    rows_a, rows_b = _per_label(fig_a), _per_label(fig_b)
    thr_a, thr_b = meta_a.get("thresholds") or {}, meta_b.get("thresholds") or {}
    labels = list(dict.fromkeys(list(thr_a) + list(thr_b) + list(rows_a) + list(rows_b)))
    table = []
    for label in labels:
        ra, rb = rows_a.get(label, {}), rows_b.get(label, {})
        fa, fb = ra.get("f1"), rb.get("f1")
        table.append(
            {
                "label": label,
                "support": ra.get("support", rb.get("support")),
                "a_f1": fa,
                "b_f1": fb,
                "delta_f1": None if fa is None or fb is None else round(float(fb) - float(fa), 4),
                "a_precision": ra.get("precision"),
                "b_precision": rb.get("precision"),
                "a_recall": ra.get("recall"),
                "b_recall": rb.get("recall"),
                "a_threshold": thr_a.get(label),
                "b_threshold": thr_b.get(label),
            }
        )
    out["per_label"] = table
    if records is not None:
        assert model_a is not None and model_b is not None
        items = list(to_documents(records))
        docs = [d for _, d, _ in items if d is not None]
        wheres = [rec.where for rec, d, _ in items if d is not None]
        pa = model_a.predict(docs, explain=False)
        pb = model_b.predict(docs, explain=False)
        changes = []
        moved: dict[str, dict[str, int]] = {}
        for where, x, y in zip(wheres, pa, pb, strict=False):
            ta = {s.id for s in x.domains + x.pillars}
            tb = {s.id for s in y.domains + y.pillars}
            if ta != tb:
                added, removed = sorted(tb - ta), sorted(ta - tb)
                changes.append({"id": x.id, "where": where, "added": added, "removed": removed})
                for label in added:
                    moved.setdefault(label, {"added": 0, "removed": 0})["added"] += 1
                for label in removed:
                    moved.setdefault(label, {"added": 0, "removed": 0})["removed"] += 1
        out["records"] = {"total": len(items), "classified": len(docs), "changed": len(changes), "by_label": moved, "changes": changes}
    return out
