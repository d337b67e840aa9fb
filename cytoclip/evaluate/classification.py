"""Classification numbers with their 95 % bootstrap intervals: the one place where Tables I-III are scored.

Single-label rows score predicted labels against true labels; the multi-region row (Table I "Multi") scores the
regions of each predicted multi-region label with the paper's rule (:func:`cytoclip.metrics.multi_region_hits`).
Images are resampled with replacement for the intervals (seeded).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from cytoclip import metrics as M

__all__ = ["METRICS", "classification_summary", "multi_region_summary"]

#: the numbers every summary carries (weighted = the paper's; macro = CytoNet's)
METRICS = ("accuracy", "precision_weighted", "recall_weighted", "f1_weighted", "precision_macro", "recall_macro",
           "f1_macro")


def classification_summary(y_true: Sequence, y_pred: Sequence, n_boot: int = 1000, seed: int = 0,
                           labels: Sequence | None = None) -> dict[str, Any]:
    """:data:`METRICS` with percentile bootstrap intervals under ``ci`` and the ``per_class`` table.

    ``labels`` fixes the scored classes (default: the union of true and predicted labels). The resampled P/R/F1
    are counted from integer codes (:func:`cytoclip.metrics.prf_resampled`), not recomputed by scikit-learn per
    resample; they equal scikit-learn's per resample.
    """
    rep = M.classification_report(y_true, y_pred, labels=labels)
    yt = np.asarray(list(y_true)).astype(str)
    yp = np.asarray(list(y_pred)).astype(str)
    classes, codes = np.unique(np.concatenate([yt, yp]), return_inverse=True)
    ct, cp = codes[:len(yt)], codes[len(yt):]
    cis: dict[str, dict] = {}
    for avg in ("weighted", "macro") if n_boot else ():  # n_boot=0: point estimates only
        for i, m in enumerate(("precision", "recall", "f1")):
            def stat(idx: np.ndarray, avg: str = avg, i: int = i) -> np.ndarray:
                return M.prf_resampled(ct, cp, idx, len(classes), average=avg)[:, i]
            cis[f"{m}_{avg}"] = M.bootstrap_ci(stat, n=n_boot, seed=seed, n_items=len(yt), vectorized=True)
    if n_boot:
        cis["accuracy"] = M.bootstrap_ci((yt == yp).astype(float), n=n_boot, seed=seed)
    out = {k: v for k, v in rep.items() if k != "per_class"}
    out["label_type"] = "single"
    out["ci"] = cis
    out["per_class"] = rep["per_class"]
    return out


def multi_region_summary(primary: Sequence, predicted_sets: Sequence[Sequence], n_boot: int = 1000,
                         seed: int = 0) -> dict[str, Any]:
    """The paper's multi-region row: :data:`METRICS` of the primary labels after the multi-region rule, with
    intervals, plus ``hit_rate`` (the fraction of images whose primary label is among the predicted regions)."""
    primary = np.asarray(list(primary)).astype(str)
    sets = [list(map(str, s)) for s in predicted_sets]
    hits = M.multi_region_hits(primary, sets)
    # scored as the rule says: a hit counts as the primary label, a miss as the predicted label's primary region
    effective = np.array([t if h else (s[0] if s else "") for t, s, h in zip(primary, sets, hits)])
    out = classification_summary(primary, effective, n_boot=n_boot, seed=seed)
    out["label_type"] = "multi"
    out["hit_rate"] = float(hits.mean())
    if n_boot:
        out["ci"]["hit_rate"] = M.bootstrap_ci(hits.astype(float), n=n_boot, seed=seed)
    return out
