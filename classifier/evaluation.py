"""Evaluation of a model on a gold set: set-based, ranking and calibration metrics per label kind.

Metric names follow Annif's where they overlap (F1_micro, Precision@1, NDCG...).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from classifier.corpus import LabeledSet, load_labeled
from classifier.taxonomy import load_taxonomy

KIND_KEYS = {"domain": "domains", "pillar": "pillars"}


def load_gold(path: Path) -> LabeledSet:
    """Read a gold file in the format of shared/eval/dev.jsonl (id, title, abstract, keywords, program, field, domains, pillars)."""
    return load_labeled([Path(path)], load_taxonomy())


def _prf(tp: float, fp: float, fn: float) -> tuple[float, float, float]:
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    f = 2 * p * r / (p + r) if p + r else 0.0
    return p, r, f


def precision_at_k(y_true: np.ndarray, scores: np.ndarray, k: int) -> float:
    """Mean over documents with at least one true label of |top-k ∩ true| / k."""
    rows = [i for i in range(len(y_true)) if y_true[i].any()]
    if not rows:
        return 0.0
    vals = []
    for i in rows:
        top = np.argsort(-scores[i], kind="stable")[:k]
        vals.append(y_true[i, top].sum() / k)
    return float(np.mean(vals))


def ndcg(y_true: np.ndarray, scores: np.ndarray, k: int | None = None) -> float:
    """Mean NDCG (binary gains, log2 discount) over documents with at least one true label."""
    vals = []
    for i in range(len(y_true)):
        n_true = int(y_true[i].sum())
        if n_true == 0:
            continue
        order = np.argsort(-scores[i], kind="stable")
        if k is not None:
            order = order[:k]
        dcg = sum(y_true[i, j] / math.log2(rank + 2) for rank, j in enumerate(order))
        ideal = sum(1 / math.log2(rank + 2) for rank in range(min(n_true, len(order))))
        vals.append(dcg / ideal if ideal else 0.0)
    return float(np.mean(vals)) if vals else 0.0


def expected_calibration_error(y_true: np.ndarray, proba: np.ndarray, bins: int = 10) -> float:
    """ECE over every (document, label) probability in equal-width bins, weighted by bin size."""
    t = y_true.ravel().astype(float)
    p = proba.ravel()
    if p.size == 0:
        return 0.0
    idx = np.minimum((p * bins).astype(int), bins - 1)
    ece = 0.0
    for b in range(bins):
        mask = idx == b
        if mask.any():
            ece += mask.sum() / p.size * abs(t[mask].mean() - p[mask].mean())
    return float(ece)


@dataclass
class KindReport:
    """Figures for one label kind (domains or pillars)."""

    figures: dict[str, float]
    per_label: list[dict[str, Any]]


@dataclass
class EvaluationReport:
    """Evaluation of one model on one gold set."""

    documents: int
    model_version: str
    kinds: dict[str, KindReport] = field(default_factory=dict)

    def flat(self) -> dict[str, Any]:
        """Return ``{"domains.micro_f1": ..., ...}`` plus per-label tables, JSON-ready."""
        out: dict[str, Any] = {"documents": self.documents, "model_version": self.model_version}
        for kind, rep in self.kinds.items():
            for name, value in rep.figures.items():
                out[f"{kind}.{name}"] = round(value, 4) if isinstance(value, float) else value
            out[f"{kind}.per_label"] = rep.per_label
        return out


# Annif's metric names for the human-readable report.
ANNIF_NAMES = {
    "micro_precision": "Precision_micro",
    "micro_recall": "Recall_micro",
    "micro_f1": "F1_micro",
    "macro_precision": "Precision_macro",
    "macro_recall": "Recall_macro",
    "macro_f1": "F1_macro",
    "samples_precision": "Precision_doc_avg",
    "samples_recall": "Recall_doc_avg",
    "samples_f1": "F1_doc_avg",
    "precision_at_1": "Precision@1",
    "precision_at_3": "Precision@3",
    "ndcg": "NDCG",
    "ece": "ECE",
    "true_positives": "True_positives",
    "false_positives": "False_positives",
    "false_negatives": "False_negatives",
}


def score_kind(ids: list[str], y_true: np.ndarray, y_pred: np.ndarray, proba: np.ndarray) -> KindReport:
    """Compute every figure for one label kind from truth, decisions and probabilities."""
    tp = (y_true & y_pred).sum(axis=0).astype(float)
    fp = (~y_true & y_pred).sum(axis=0).astype(float)
    fn = (y_true & ~y_pred).sum(axis=0).astype(float)
    mp, mr, mf = _prf(tp.sum(), fp.sum(), fn.sum())
    per_label = []
    ps, rs, fs = [], [], []
    for j, label in enumerate(ids):
        p, r, f = _prf(tp[j], fp[j], fn[j])
        support = int(y_true[:, j].sum())
        per_label.append({"label": label, "support": support, "predicted": int(y_pred[:, j].sum()), "precision": round(p, 4), "recall": round(r, 4), "f1": round(f, 4)})
        if support or y_pred[:, j].any():
            ps.append(p)
            rs.append(r)
            fs.append(f)
    # Per-document averages; a document with no true and no predicted label is a perfect answer.
    dp, dr, df = [], [], []
    for i in range(len(y_true)):
        t, pr = y_true[i], y_pred[i]
        if not t.any() and not pr.any():
            dp.append(1.0)
            dr.append(1.0)
            df.append(1.0)
            continue
        p, r, f = _prf(float((t & pr).sum()), float((~t & pr).sum()), float((t & ~pr).sum()))
        dp.append(p)
        dr.append(r)
        df.append(f)
    figures = {
        "micro_precision": mp,
        "micro_recall": mr,
        "micro_f1": mf,
        "macro_precision": float(np.mean(ps)) if ps else 0.0,
        "macro_recall": float(np.mean(rs)) if rs else 0.0,
        "macro_f1": float(np.mean(fs)) if fs else 0.0,
        "samples_precision": float(np.mean(dp)) if dp else 0.0,
        "samples_recall": float(np.mean(dr)) if dr else 0.0,
        "samples_f1": float(np.mean(df)) if df else 0.0,
        "precision_at_1": precision_at_k(y_true, proba, 1),
        "precision_at_3": precision_at_k(y_true, proba, 3),
        "ndcg": ndcg(y_true, proba),
        "ece": expected_calibration_error(y_true, proba),
        "true_positives": int(tp.sum()),
        "false_positives": int(fp.sum()),
        "false_negatives": int(fn.sum()),
    }
    return KindReport(figures, per_label)


def evaluate_model(model: Any, gold: LabeledSet, threshold: float | None = None) -> EvaluationReport:
    """Predict ``gold`` with ``model`` and score domains and pillars separately."""
    from classifier.model import label_matrix

    proba = model.predict_proba(gold.docs)
    yes = model.decide(proba, threshold)
    nd = len(model.domain_ids)
    report = EvaluationReport(documents=len(gold), model_version=model.version)
    for kind, ids, truth, cols in (
        ("domains", model.domain_ids, gold.domains, slice(0, nd)),
        ("pillars", model.pillar_ids, gold.pillars, slice(nd, None)),
    ):
        y_true = label_matrix(truth, ids).astype(bool)
        report.kinds[kind] = score_kind(ids, y_true, yes[:, cols], proba[:, cols])
    return report


def format_report(report: EvaluationReport) -> str:
    """Return a plain-text report: figures with Annif's names, then per-label tables."""
    lines = [f"Model {report.model_version} on {report.documents} documents"]
    for kind, rep in report.kinds.items():
        lines.append("")
        lines.append(f"== {kind}")
        for key, name in ANNIF_NAMES.items():
            value = rep.figures[key]
            lines.append(f"  {name:<20} {value:.4f}" if isinstance(value, float) else f"  {name:<20} {value}")
        lines.append(f"  {'label':<26}{'support':>8}{'pred':>6}{'P':>8}{'R':>8}{'F1':>8}")
        for row in rep.per_label:
            lines.append(
                f"  {row['label']:<26}{row['support']:>8}{row['predicted']:>6}{row['precision']:>8.3f}{row['recall']:>8.3f}{row['f1']:>8.3f}"
            )
    return "\n".join(lines)
