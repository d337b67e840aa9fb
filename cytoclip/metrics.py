"""Evaluation metrics: classification scores, the paper's multi-region rule, Recall@K, bootstrap intervals,
and error analysis (tree distance, adjacency, most confused pairs).

Everything takes plain arrays/sequences and returns plain dicts or DataFrames, so a notebook can call each
step on its own. scikit-learn is the reference implementation for precision/recall/F1.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats
from sklearn import metrics as skm

__all__ = [
    "classification_report",
    "multi_region_hits",
    "recall_at_k",
    "recall_at_k_per_query",
    "bootstrap_ci",
    "prf_resampled",
    "mean_std",
    "error_distances",
    "errors_by_tree_distance",
    "errors_by_adjacency",
    "confused_pairs",
]


def _as_1d(name: str, values: Any) -> np.ndarray:
    """Labels as a 1-D array of their own dtype (ints stay ints, strings stay strings): scikit-learn refuses
    an object array of ints ("unknown is not supported"), so nothing is cast to object here."""
    arr = np.asarray(values.to_numpy() if isinstance(values, pd.Series) else
                     values if isinstance(values, np.ndarray) else list(values))
    if arr.dtype == object:  # mixed or non-scalar labels: keep them as they are, but sklearn needs one kind
        kinds = {type(x) for x in arr.tolist()}
        if len(kinds) > 1 and not kinds <= {int, np.int64, np.int32}:
            arr = arr.astype(str)
    if arr.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D sequence of labels, got shape {arr.shape}")
    return arr


def _check_same_length(**arrays: Collection) -> None:
    lengths = {k: len(v) for k, v in arrays.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"inputs must have the same length, got {lengths}")


# --------------------------------------------------------------------------------------------------------------
# classification
# --------------------------------------------------------------------------------------------------------------
def classification_report(y_true: Sequence, y_pred: Sequence, labels: Sequence | None = None) -> dict:
    """Accuracy plus weighted and macro precision/recall/F1 and a per-class table (scikit-learn, zero_division=0).

    The *weighted* averages (each class weighted by its support in ``y_true``) are the numbers the CytoCLIP paper
    reports (Tables I-III); the *macro* averages (each class counts the same) are CytoNet's. ``labels`` restricts
    and orders the classes scored; by default it is the sorted union of ``y_true`` and ``y_pred`` (scikit-learn's
    default), so a class that is only ever predicted enters the macro average with P=R=F1=0 and the weighted
    average with weight 0.

    Returns a dict with ``n``, ``n_classes``, ``accuracy``, ``precision_weighted``, ``recall_weighted``,
    ``f1_weighted``, ``precision_macro``, ``recall_macro``, ``f1_macro`` (floats) and ``per_class`` (DataFrame with
    columns ``label, precision, recall, f1, support``).
    """
    yt, yp = _as_1d("y_true", y_true), _as_1d("y_pred", y_pred)
    _check_same_length(y_true=yt, y_pred=yp)
    if len(yt) == 0:
        raise ValueError("y_true: empty; nothing to score")
    if labels is None:
        labels = sorted(set(yt.tolist()) | set(yp.tolist()), key=str)
    labels = list(labels)
    out: dict[str, Any] = {"n": int(len(yt)), "n_classes": len(labels),
                           "accuracy": float(skm.accuracy_score(yt, yp))}
    for avg in ("weighted", "macro"):
        p, r, f, _ = skm.precision_recall_fscore_support(yt, yp, labels=labels, average=avg, zero_division=0)
        out[f"precision_{avg}"], out[f"recall_{avg}"], out[f"f1_{avg}"] = float(p), float(r), float(f)
    p, r, f, s = skm.precision_recall_fscore_support(yt, yp, labels=labels, average=None, zero_division=0)
    out["per_class"] = pd.DataFrame({"label": labels, "precision": p, "recall": r, "f1": f, "support": s})
    return out


def _is_label_set(x: Any) -> bool:
    return isinstance(x, (list, tuple, set, frozenset, np.ndarray))


def multi_region_hits(primary_true: Sequence, predicted_sets: Sequence) -> np.ndarray:
    """Per-image hit (bool array) under the paper's multi-region rule (Section IV-B, Table I "Multi" row).

    A multi-region model names each SquareBBox image with a multi-region label: its primary region plus every
    neighbouring region of which more than 80 % lies inside the crop. "We then checked whether the primary label
    appeared among the predicted labels": hit = ``primary_true[i] in predicted_sets[i]``, where
    ``predicted_sets[i]`` are the regions of the label predicted for image ``i``.
    """
    primary = list(primary_true)
    sets = list(predicted_sets)
    _check_same_length(primary_true=primary, predicted_sets=sets)
    for i, p in enumerate(sets):
        if not _is_label_set(p):
            raise ValueError(f"predicted_sets[{i}]: expected the list of regions of the predicted label, "
                             f"got {type(p).__name__}")
    return np.array([t in set(np.asarray(p, dtype=object).tolist()) for t, p in zip(primary, sets)], dtype=bool)


# --------------------------------------------------------------------------------------------------------------
# retrieval
# --------------------------------------------------------------------------------------------------------------
def recall_at_k_per_query(similarity: np.ndarray, query_labels: Sequence, gallery_labels: Sequence,
                          ks: Iterable[int] = (1, 5, 10), exclude_self: bool = False,
                          definition: str = "paper") -> dict[int, np.ndarray]:
    """Per-query Recall@K (see :func:`recall_at_k`); queries with no relevant gallery item get NaN."""
    sim = np.asarray(similarity, dtype=np.float64)
    if sim.ndim != 2:
        raise ValueError(f"similarity: expected a 2-D (queries x gallery) matrix, got shape {sim.shape}")
    ql, gl = _as_1d("query_labels", query_labels), _as_1d("gallery_labels", gallery_labels)
    if len(ql) != sim.shape[0] or len(gl) != sim.shape[1]:
        raise ValueError(f"similarity shape {sim.shape} does not match {len(ql)} query labels x "
                         f"{len(gl)} gallery labels")
    if definition not in ("paper", "hit"):
        raise ValueError(f"definition: expected 'paper' or 'hit', got {definition!r}")
    ks = [int(k) for k in ks]
    if any(k < 1 for k in ks):
        raise ValueError(f"ks: every K must be >= 1, got {ks}")
    if not np.all(np.isfinite(sim)):
        raise ValueError("similarity: contains NaN or infinite values")
    n_q, n_g = sim.shape
    # relevance via integer codes: fast and exact for any hashable labels
    codes = {lab: i for i, lab in enumerate(pd.unique(np.concatenate([ql, gl])))}
    qc = np.fromiter((codes[x] for x in ql), dtype=np.int64, count=n_q)
    gc = np.fromiter((codes[x] for x in gl), dtype=np.int64, count=n_g)
    relevant = qc[:, None] == gc[None, :]
    # stable sort on -similarity: equal scores keep gallery index order (lower index ranks first)
    order = np.argsort(-sim, axis=1, kind="stable")
    if exclude_self:
        if n_q != n_g:
            raise ValueError(f"exclude_self: needs a square similarity (query i = gallery i), got {sim.shape}")
        relevant[np.arange(n_q), np.arange(n_q)] = False
        keep = order != np.arange(n_q)[:, None]
        order = order[keep].reshape(n_q, n_g - 1)
    ranked_rel = np.take_along_axis(relevant, order, axis=1)
    n_rel = relevant.sum(axis=1)
    cum = np.cumsum(ranked_rel, axis=1)
    out: dict[int, np.ndarray] = {}
    for k in ks:
        found = cum[:, min(k, cum.shape[1]) - 1] if cum.shape[1] else np.zeros(n_q)
        with np.errstate(invalid="ignore", divide="ignore"):
            val = found / n_rel if definition == "paper" else (found > 0).astype(np.float64)
        out[k] = np.where(n_rel > 0, val, np.nan)
    return out


def recall_at_k(similarity: np.ndarray, query_labels: Sequence, gallery_labels: Sequence,
                ks: Iterable[int] = (1, 5, 10), exclude_self: bool = False, definition: str = "paper",
                return_per_query: bool = False) -> dict:
    """Recall@K for a retrieval task given a (queries x gallery) similarity matrix.

    Relevant gallery items of a query are those with the query's label. Definitions:

    * ``"paper"`` (CytoCLIP/CONCH wording): the fraction of *all* relevant gallery items that appear in the top K,
      averaged over queries. It cannot exceed ``K / n_relevant`` for a query, so with many images per region the
      numbers are small even for a perfect ranking;
    * ``"hit"``: 1 if at least one relevant item is in the top K, else 0, averaged (the usual CLIP benchmark number).

    ``exclude_self=True`` (image-to-image on one set): query i is gallery item i; it is removed from its own
    ranking and does not count as relevant. Ties in similarity are broken stably by gallery index (lower index
    ranks first), so results are deterministic. Queries with no relevant gallery item are excluded from the mean
    and counted in ``n_no_relevant``.

    Returns ``{"recall_at_<K>": float, ..., "n_queries": used, "n_no_relevant": excluded, "definition": ...}``;
    a value is NaN when no query has a relevant item. ``return_per_query=True`` adds ``per_query``
    (``{K: array}``, NaN for excluded queries) for bootstrap intervals over queries.
    """
    per_q = recall_at_k_per_query(similarity, query_labels, gallery_labels, ks, exclude_self, definition)
    first = next(iter(per_q.values()))
    valid = ~np.isnan(first)
    out: dict[str, Any] = {f"recall_at_{k}": (float(v[valid].mean()) if valid.any() else float("nan"))
                           for k, v in per_q.items()}
    out.update(n_queries=int(valid.sum()), n_no_relevant=int((~valid).sum()), definition=definition)
    if return_per_query:
        out["per_query"] = per_q
    return out


# --------------------------------------------------------------------------------------------------------------
# uncertainty
# --------------------------------------------------------------------------------------------------------------
def prf_resampled(y_true: np.ndarray, y_pred: np.ndarray, idx: np.ndarray, n_classes: int,
                  average: str = "weighted") -> np.ndarray:
    """Precision, recall and F1 of many resamples at once: ``(B, 3)`` for index rows ``idx`` of shape ``(B, n)``.

    ``y_true``/``y_pred`` are integer class codes in ``[0, n_classes)``. Each row gives what
    ``sklearn.metrics.precision_recall_fscore_support(y_true[row], y_pred[row], average=average,
    zero_division=0)`` gives (``weighted``: support-weighted; ``macro``: mean over the classes present in the
    row's true or predicted labels), from per-row confusion counts (``np.bincount``) instead of one sklearn call
    per resample: bootstrap intervals of P/R/F1 are then a few array operations rather than thousands of calls.
    """
    if average not in ("weighted", "macro"):
        raise ValueError(f"average: expected 'weighted' or 'macro', got {average!r}")
    idx = np.atleast_2d(np.asarray(idx, dtype=np.int64))
    b, k = idx.shape[0], int(n_classes)
    t, p = np.asarray(y_true)[idx], np.asarray(y_pred)[idx]
    offset = np.arange(b)[:, None] * k

    def counts(codes: np.ndarray) -> np.ndarray:
        return np.bincount((codes + offset).ravel(), minlength=b * k).reshape(b, k).astype(np.float64)

    true_sum, pred_sum = counts(t), counts(p)
    tp = np.bincount((t + offset)[t == p], minlength=b * k).reshape(b, k).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(pred_sum > 0, tp / pred_sum, 0.0)
        recall = np.where(true_sum > 0, tp / true_sum, 0.0)
        f1 = np.where(true_sum + pred_sum > 0, 2 * tp / (true_sum + pred_sum), 0.0)
    per_class = np.stack([precision, recall, f1], axis=-1)  # (B, K, 3)
    if average == "weighted":
        w = true_sum / true_sum.sum(axis=1, keepdims=True)
    else:
        present = (true_sum + pred_sum) > 0
        w = present / present.sum(axis=1, keepdims=True)
    return np.einsum("bk,bkm->bm", w, per_class)


def bootstrap_ci(values_or_fn: Sequence[float] | np.ndarray | Callable[[np.ndarray], float], n: int = 1000,
                 seed: int = 0, alpha: float = 0.05, n_items: int | None = None, vectorized: bool = False) -> dict:
    """Percentile bootstrap confidence interval for a headline number (scipy.stats.bootstrap).

    * ``values_or_fn`` an array of per-item values (e.g. per-query Recall@K, per-image correctness): the statistic
      is their mean (NaNs are dropped first) and items are resampled with replacement;
    * ``values_or_fn`` a callable ``fn(indices) -> float`` with ``n_items``: the statistic is recomputed on each
      resample of item indices (e.g. ``lambda i: f1_score(y[i], p[i], average="weighted")``), so images/queries
      are resampled while keeping each image's true and predicted label together. With ``vectorized=True`` the
      callable takes a ``(B, n_items)`` array of index rows and returns ``B`` values (e.g. from
      :func:`prf_resampled`), and the resamples are scored in batches.

    Returns ``{"estimate", "low", "high", "n_boot", "alpha", "n_items"}``; the estimate is the statistic on the
    full data. A single item (or a constant statistic) gives a zero-width interval at the estimate.
    """
    if not 0 < alpha < 1:
        raise ValueError(f"alpha: expected a value in (0, 1), got {alpha}")
    if n < 1:
        raise ValueError(f"n: expected a positive number of bootstrap resamples, got {n}")
    if callable(values_or_fn):
        if n_items is None or n_items < 1:
            raise ValueError("n_items: required (>= 1) when bootstrapping a function of item indices")
        fn = values_or_fn
        idx = np.arange(n_items)
        if vectorized:
            estimate = float(np.asarray(fn(idx[None, :])).ravel()[0])

            def statistic(i: np.ndarray, axis: int = -1) -> np.ndarray:
                i = np.asarray(i, dtype=np.int64)
                return np.asarray(fn(i.reshape(-1, i.shape[-1]))).reshape(i.shape[:-1])
        else:
            estimate = float(fn(idx))

            def statistic(i: np.ndarray) -> float:
                return float(fn(np.asarray(i, dtype=np.int64)))

        data = (idx,)
    else:
        vals = np.asarray(values_or_fn, dtype=np.float64).ravel()
        vals = vals[~np.isnan(vals)]
        if len(vals) == 0:
            raise ValueError("values: no finite values to bootstrap")
        n_items, estimate = len(vals), float(vals.mean())

        def statistic(v: np.ndarray, axis: int = -1) -> np.ndarray:
            return np.mean(v, axis=axis)

        data, vectorized = (vals,), True
    if n_items < 2:
        return {"estimate": estimate, "low": estimate, "high": estimate, "n_boot": 0, "alpha": alpha,
                "n_items": int(n_items)}
    batch = max(1, 10_000_000 // int(n_items)) if vectorized else None  # bounds memory of a vectorised batch
    res = stats.bootstrap(data, statistic, n_resamples=n, vectorized=vectorized, confidence_level=1 - alpha,
                          method="percentile", random_state=np.random.default_rng(seed), batch=batch)
    low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
    if np.isnan(low) or np.isnan(high):  # degenerate (constant) statistic: scipy reports NaN
        low = high = estimate
    # the percentile interval can miss a skewed estimate by a hair; widen so it always contains it
    return {"estimate": estimate, "low": min(low, estimate), "high": max(high, estimate), "n_boot": int(n),
            "alpha": alpha, "n_items": int(n_items)}


def mean_std(values: Sequence[float] | Sequence[Mapping[str, float]]) -> dict:
    """Mean and sample standard deviation (ddof=1) over seeds.

    ``values`` is a list of numbers -> ``{"mean", "std", "n"}``; or a list of dicts of numbers (one per seed) ->
    ``{key: {"mean", "std", "n"}}`` for every numeric key (keys missing in a seed are skipped for that seed).
    With one seed the std is 0.
    """
    values = list(values)
    if not values:
        raise ValueError("values: empty; expected one number (or dict of numbers) per seed")

    def agg(xs: list[float]) -> dict:
        a = np.asarray(xs, dtype=np.float64)
        return {"mean": float(a.mean()), "std": float(a.std(ddof=1)) if len(a) > 1 else 0.0, "n": int(len(a))}

    if isinstance(values[0], Mapping):
        keys: list[str] = []
        for v in values:
            keys += [k for k, x in v.items() if k not in keys and isinstance(x, (int, float, np.number))
                     and not isinstance(x, bool)]
        return {k: agg([v[k] for v in values if k in v]) for k in keys}
    return agg([float(v) for v in values])


# --------------------------------------------------------------------------------------------------------------
# error analysis
# --------------------------------------------------------------------------------------------------------------
def error_distances(y_true: Sequence, y_pred: Sequence, distance_fn: Callable[[Any, Any], float]) -> np.ndarray:
    """Tree distance between true and predicted class for every misclassified item (CytoNet's error distance).

    ``distance_fn(true, pred)`` is e.g. ``Ontology.distance`` on label ids (hops via the lowest common ancestor).
    """
    yt, yp = _as_1d("y_true", y_true), _as_1d("y_pred", y_pred)
    _check_same_length(y_true=yt, y_pred=yp)
    cache: dict[tuple, float] = {}
    out = []
    for t, p in zip(yt, yp):
        if t == p:
            continue
        if (t, p) not in cache:
            cache[(t, p)] = float(distance_fn(t, p))
        out.append(cache[(t, p)])
    return np.asarray(out, dtype=np.float64)


def errors_by_tree_distance(y_true: Sequence, y_pred: Sequence, distance_fn: Callable[[Any, Any], float]
                            ) -> pd.DataFrame:
    """Histogram of misclassifications by tree distance between the true and the predicted region.

    Returns a DataFrame with columns ``distance, n_errors, fraction_of_errors, fraction_of_all`` sorted by
    distance (distance 2 = siblings, the nearest possible confusion). ``df.attrs`` holds ``n``, ``n_errors`` and
    ``mean_distance`` (NaN without errors).
    """
    d = error_distances(y_true, y_pred, distance_fn)
    n = len(y_true)
    counts = Counter(d.tolist())
    dist = sorted(counts)
    df = pd.DataFrame({"distance": dist, "n_errors": [counts[x] for x in dist]})
    df["fraction_of_errors"] = df["n_errors"] / max(len(d), 1)
    df["fraction_of_all"] = df["n_errors"] / max(n, 1)
    df.attrs.update(n=int(n), n_errors=int(len(d)), mean_distance=float(d.mean()) if len(d) else float("nan"))
    return df


def errors_by_adjacency(y_true: Sequence, y_pred: Sequence,
                        adjacent: Callable[[Any, Any], bool] | Collection[frozenset]) -> dict:
    """Split misclassifications by whether the true and the predicted region touch in the section.

    ``adjacent`` is a predicate ``adjacent(a, b)`` or a collection of ``frozenset({a, b})`` pairs (as returned by
    ``cytoclip.evaluate.region_adjacency``). Returns ``{"n_errors", "n_adjacent", "n_not_adjacent",
    "fraction_adjacent"}`` (the paper: most errors are between neighbouring regions).
    """
    if callable(adjacent):
        is_adj = adjacent
    else:
        pairs = {frozenset(p) for p in adjacent}

        def is_adj(a: Any, b: Any) -> bool:
            return frozenset((a, b)) in pairs

    yt, yp = _as_1d("y_true", y_true), _as_1d("y_pred", y_pred)
    _check_same_length(y_true=yt, y_pred=yp)
    flags = [bool(is_adj(t, p)) for t, p in zip(yt, yp) if t != p]
    n_adj = int(sum(flags))
    return {"n_errors": len(flags), "n_adjacent": n_adj, "n_not_adjacent": len(flags) - n_adj,
            "fraction_adjacent": n_adj / len(flags) if flags else float("nan")}


def confused_pairs(y_true: Sequence, y_pred: Sequence, top: int = 10) -> pd.DataFrame:
    """The ``top`` most frequent (true -> predicted) confusions.

    Columns ``true, pred, count, fraction_of_true`` (count divided by the true class's support); ties in count are
    ordered by true then predicted label, so the table is deterministic.
    """
    yt, yp = _as_1d("y_true", y_true), _as_1d("y_pred", y_pred)
    _check_same_length(y_true=yt, y_pred=yp)
    support = Counter(yt.tolist())
    pairs = Counter((t, p) for t, p in zip(yt.tolist(), yp.tolist()) if t != p)
    rows = sorted(pairs.items(), key=lambda kv: (-kv[1], str(kv[0][0]), str(kv[0][1])))[:top]
    return pd.DataFrame({"true": [k[0] for k, _ in rows], "pred": [k[1] for k, _ in rows],
                         "count": [c for _, c in rows],
                         "fraction_of_true": [c / support[k[0]] for k, c in rows]},
                        columns=["true", "pred", "count", "fraction_of_true"])
