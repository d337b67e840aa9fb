"""Cross-modal retrieval as the paper's Table IV measures it (after CONCH).

The retrieval set is a seeded random sample of the validation images (the paper: 925 whole-region images, 1237
tiles). Every image carries its own caption, so the text side has one text per image (captions of the same
region repeat): text-to-image queries each image's caption against the images, image-to-text queries each image
against all captions, image-to-image queries each image against the others (the query itself excluded). Relevant
= same label. Two numbers per task and K, clearly named:

* ``recall_at_K``: the paper's Recall@K, the fraction of *all* relevant items found in the top K;
* ``hit_at_K``: the usual CLIP-benchmark hit rate, 1 when at least one relevant item is in the top K.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from cytoclip import metrics as M

__all__ = ["KS", "TASKS", "sample_retrieval_set", "retrieval"]

KS = (1, 5, 10)
TASKS = ("image_to_image", "text_to_image", "image_to_text")


def sample_retrieval_set(n: int, size: int | None, seed: int = 0) -> np.ndarray:
    """Sorted indices of a seeded uniform random sample of ``size`` of ``n`` items, without replacement
    (the paper: "randomly sampling a subset of the validation dataset"). ``size=None`` or ``size >= n``: all."""
    n = int(n)
    if size is None or size >= n:
        return np.arange(n)
    if size < 1:
        raise ValueError(f"retrieval_size: expected a positive number of images, got {size}")
    return np.sort(np.random.default_rng(seed).choice(n, size=int(size), replace=False))


def retrieval(image_emb: np.ndarray, labels: Sequence, text_emb: np.ndarray | None = None,
              ks: Sequence[int] = KS, n_boot: int = 0, seed: int = 0) -> dict[str, Any]:
    """Recall@K (paper) and hit@K of the three tasks on one retrieval set.

    ``image_emb`` ``(N, d)`` and ``labels`` ``(N,)`` are the retrieval set's images; ``text_emb`` ``(N, d)`` is
    the embedding of each image's own caption (row i = caption of image i), or None for image-only models (their
    text tasks are None). With ``n_boot``, each number gets a bootstrap interval over queries under ``ci``.
    """
    img = np.asarray(image_emb, np.float32)
    labels = np.asarray(list(labels))
    if len(img) != len(labels):
        raise ValueError(f"image_emb: {len(img)} rows for {len(labels)} labels")
    if text_emb is not None and len(text_emb) != len(img):
        raise ValueError(f"text_emb: expected one caption embedding per image ({len(img)}), got {len(text_emb)}")

    def task(sim: np.ndarray, exclude_self: bool) -> dict[str, Any]:
        res: dict[str, Any] = {"ci": {}}
        for definition, prefix in (("paper", "recall_at_"), ("hit", "hit_at_")):
            per_q = M.recall_at_k_per_query(sim, labels, labels, ks, exclude_self=exclude_self,
                                            definition=definition)
            for k, v in per_q.items():
                valid = ~np.isnan(v)
                res[f"{prefix}{k}"] = float(v[valid].mean()) if valid.any() else float("nan")
                if n_boot and valid.any():  # no query with a relevant item: no number, no interval
                    res["ci"][f"{prefix}{k}"] = M.bootstrap_ci(v, n=n_boot, seed=seed)
            res["n_queries"] = int(valid.sum())
        return res

    out: dict[str, Any] = {"n_images": int(len(img)), "n_regions": int(len(set(labels.tolist()))),
                           "ks": [int(k) for k in ks], "image_to_image": task(img @ img.T, exclude_self=True),
                           "text_to_image": None, "image_to_text": None}
    if text_emb is not None:
        txt = np.asarray(text_emb, np.float32)
        out["text_to_image"] = task(txt @ img.T, exclude_self=False)
        out["image_to_text"] = task(img @ txt.T, exclude_self=False)
    return out
