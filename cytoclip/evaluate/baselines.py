"""Baselines on frozen image embeddings (image-only models such as UNI): linear probe and k-NN."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["linear_probe", "knn"]


def linear_probe(train_emb: np.ndarray, train_y: Sequence, val_emb: np.ndarray, C: float = 1.0,
                 max_iter: int = 1000, seed: int = 0) -> np.ndarray:
    """Logistic-regression probe on frozen embeddings (scikit-learn); the baseline for image-only models.

    Returns the predicted labels of ``val_emb``; score them with
    :func:`cytoclip.evaluate.classification.classification_summary` like any other prediction.
    """
    from sklearn.linear_model import LogisticRegression

    if len(set(np.asarray(train_y, dtype=object).tolist())) < 2:
        raise ValueError("train_y: a linear probe needs at least two classes in the training set")
    clf = LogisticRegression(C=C, max_iter=max_iter, random_state=seed)
    clf.fit(np.asarray(train_emb), np.asarray(train_y, dtype=object))
    return clf.predict(np.asarray(val_emb))


def knn(train_emb: np.ndarray, train_y: Sequence, val_emb: np.ndarray, k: int = 20) -> np.ndarray:
    """k-nearest-neighbour classification by cosine similarity (distance-weighted vote, scikit-learn)."""
    from sklearn.neighbors import KNeighborsClassifier

    k = max(1, min(k, len(train_emb)))
    clf = KNeighborsClassifier(n_neighbors=k, metric="cosine", weights="distance")
    clf.fit(np.asarray(train_emb), np.asarray(train_y, dtype=object))
    return clf.predict(np.asarray(val_emb))


