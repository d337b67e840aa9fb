"""Evaluate a model on a prepared dataset: embeddings (cached), zero-shot classification by region names,
cross-modal retrieval (Recall@K), linear-probe / k-NN baselines for image-only models, error analysis, and the
whole-section uses of the paper's Figs 2-3 (naming an arbitrary area, coarse tile segmentation).

Each step takes plain inputs (a model, a dataset, arrays) and returns plain outputs, so a notebook can call them
one by one; :func:`evaluate_model` chains them, writes ``results.json``, ``predictions.parquet`` and figures, and
backs the ``cytoclip evaluate`` verb.
"""

from __future__ import annotations

import argparse
import hashlib
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from cytoclip.progress import tqdm

from cytoclip import metrics as M
from cytoclip.io import atomic_path, fingerprint, read_json, write_json

__all__ = [
    "model_fingerprint", "dataset_fingerprint", "embed_images", "embed_texts", "class_texts", "text_classifier",
    "zero_shot", "sample_retrieval_set", "retrieval", "linear_probe", "knn", "region_adjacency",
    "label_adjacency", "predict_area", "segment_section", "class_colors", "annotation_grid",
    "segmentation_scores", "data_source", "results_table", "evaluate_model", "configure_parser",
]

KS = (1, 5, 10)


# ---------------------------------------------------------------------------------------------- embeddings
def model_fingerprint(model: Any) -> str:
    """A short hash of the model's spec and weights (so a retrained run dir never reuses stale embeddings)."""
    h = hashlib.blake2b(digest_size=16)
    for name, tensor in sorted(model.module.state_dict().items()):
        h.update(name.encode())
        # raw bytes (reshape(-1) so 0-d tensors such as logit_scale can be viewed as bytes too)
        h.update(tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return fingerprint(getattr(model, "spec", None), repr(getattr(model, "transform", None)), h.hexdigest())


def dataset_fingerprint(dataset: Any) -> str | None:
    """A hash of a dataset's items (manifest file, selected paths, transform); None when it cannot be told.

    Works for :class:`cytoclip.data.ImageTextDataset` and any dataset with ``dataset_dir`` and a ``frame``
    holding a ``path`` column; other datasets need an explicit ``cache_key``.
    """
    frame, root = getattr(dataset, "frame", None), getattr(dataset, "dataset_dir", None)
    if frame is None or root is None or "path" not in getattr(frame, "columns", []):
        return None
    manifest = Path(root) / "manifest.parquet"
    return fingerprint(str(Path(root).resolve()), manifest if manifest.exists() else "no-manifest",
                       frame["path"].astype(str).tolist(), repr(getattr(dataset, "transform", None)))


def _first(item: Any) -> torch.Tensor:
    return item[0] if isinstance(item, (tuple, list)) else item


def _collate_images(batch: list) -> torch.Tensor:
    return torch.stack([_first(b) for b in batch])


@torch.inference_mode()
def embed_images(model: Any, dataset: Any, batch_size: int = 64, device: str | torch.device | None = None,
                 cache_dir: str | os.PathLike | None = None, cache_key: str | None = None, num_workers: int = 0,
                 desc: str = "embed images") -> np.ndarray:
    """L2-normalised image embeddings ``(len(dataset), d)`` as float32, in dataset order.

    ``dataset`` items are transformed image tensors or tuples whose first element is one (as
    :class:`cytoclip.data.ImageTextDataset` yields). With ``cache_dir`` the result is stored as
    ``img-<key>.npy`` where the key combines :func:`model_fingerprint` and :func:`dataset_fingerprint` (or
    ``cache_key``), and a later call with the same model and items loads it instead of recomputing.
    ``device`` defaults to the model's; mixed precision is used on CUDA through ``model.autocast()``.
    """
    if device is not None:
        model.to(device)
    cache_path = None
    if cache_dir is not None:
        key = cache_key or dataset_fingerprint(dataset)
        if key is None:
            raise ValueError(f"cache_dir given but {type(dataset).__name__} has no dataset_dir/frame to fingerprint; "
                             "pass cache_key")
        cache_path = Path(cache_dir) / f"img-{fingerprint(model_fingerprint(model), key)}.npy"
        if cache_path.exists():
            emb = np.load(cache_path)
            if len(emb) == len(dataset):
                return emb
    model.eval()
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                                         collate_fn=_collate_images)
    autocast = getattr(model, "autocast", None)
    out = []
    for images in tqdm(loader, desc=desc, unit="batch", leave=False):
        with autocast() if autocast else torch.autocast("cpu", enabled=False):
            feats = model.encode_image(images, normalize=True)
        out.append(feats.float().cpu().numpy())
    emb = np.concatenate(out) if out else np.zeros((0, 0), np.float32)
    if cache_path is not None:
        with atomic_path(cache_path) as tmp:
            np.save(tmp, emb)
    return emb


@torch.inference_mode()
def embed_texts(model: Any, texts: Sequence[str], batch_size: int = 256,
                device: str | torch.device | None = None) -> np.ndarray:
    """L2-normalised text embeddings ``(len(texts), d)`` (float32) through the model's own tokenizer."""
    if not getattr(model, "has_text", False):
        raise ValueError(f"{getattr(model, 'name', model)}: image-only model (has_text=False) cannot embed texts")
    if device is not None:
        model.to(device)
    texts = list(texts)
    autocast = getattr(model, "autocast", None)
    out = []
    for i in range(0, len(texts), batch_size):
        with autocast() if autocast else torch.autocast("cpu", enabled=False):
            feats = model.encode_text(model.tokenize(texts[i:i + batch_size]), normalize=True)
        out.append(feats.float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


# ----------------------------------------------------------------------------------------------- zero-shot
def _ontology_prompt(name: str, path: str | None) -> str:
    """"Subiculum, part of the hippocampal formation": the class name and its parent from the ontology path."""
    parts = [p.strip() for p in str(path or "").split("/") if p.strip()]
    if len(parts) < 2:
        return name
    return f"{name}, part of the {parts[-2].lower()}"


def class_texts(class_names: Sequence[str], prompt: str | Sequence[str] = "{}",
                ontology_paths: Mapping[str, str] | None = None) -> list[list[str]]:
    """The text(s) that stand for each class: one list of prompts per class.

    ``prompt``: a template with ``{}`` (the paper: the bare region name, ``"{}"``); a list of templates (their
    embeddings are averaged); or ``"ontology_path"``: "<name>, part of the <parent>" from ``ontology_paths``
    (class name -> "Brain / ... / parent / name", the manifest's ``ontology_path`` column).
    """
    names = list(class_names)
    if isinstance(prompt, str) and prompt == "ontology_path":
        if ontology_paths is None:
            raise ValueError("prompt='ontology_path' needs ontology_paths (class name -> ontology path)")
        return [[_ontology_prompt(n, ontology_paths.get(n))] for n in names]
    templates = [prompt] if isinstance(prompt, str) else list(prompt)
    if not templates or any("{}" not in t for t in templates):
        raise ValueError(f"prompt: expected template(s) containing '{{}}' or 'ontology_path', got {prompt!r}")
    return [[t.format(n) for t in templates] for n in names]


def text_classifier(model: Any, class_names: Sequence[str], prompt: str | Sequence[str] = "{}",
                    ontology_paths: Mapping[str, str] | None = None) -> np.ndarray:
    """One L2-normalised text embedding per class ``(C, d)``; several templates are averaged then renormalised."""
    groups = class_texts(class_names, prompt, ontology_paths)
    flat = [t for g in groups for t in g]
    emb = embed_texts(model, flat)
    per = len(groups[0])
    emb = emb.reshape(len(groups), per, -1).mean(axis=1)
    return emb / np.linalg.norm(emb, axis=1, keepdims=True).clip(1e-12)


def _temperature(model: Any) -> float:
    scale = getattr(model, "logit_scale", None)
    # CytoModel.logit_scale is the learnable log-temperature (CLIP convention): use exp, capped as CLIP does
    if scale is None:
        return 100.0
    with torch.no_grad():
        return float(min(torch.as_tensor(scale).detach().float().exp().item(), 100.0))


def zero_shot(model: Any, image_emb: np.ndarray, class_names: Sequence[str], prompt: str | Sequence[str] = "{}",
              ontology_paths: Mapping[str, str] | None = None, text_emb: np.ndarray | None = None
              ) -> tuple[np.ndarray, np.ndarray]:
    """Name each image by the most similar class text (the paper's classification by region names).

    Returns ``(pred, probs)``: predicted class indices ``(N,)`` and class probabilities ``(N, C)``, the softmax of
    the model's temperature times cosine similarity. ``text_emb`` skips embedding the class texts again.
    """
    if text_emb is None:
        text_emb = text_classifier(model, class_names, prompt, ontology_paths)
    if text_emb.shape[0] != len(class_names):
        raise ValueError(f"text_emb: {text_emb.shape[0]} rows for {len(class_names)} class names")
    logits = _temperature(model) * (np.asarray(image_emb, np.float32) @ text_emb.T)
    logits -= logits.max(axis=1, keepdims=True)
    probs = np.exp(logits)
    probs /= probs.sum(axis=1, keepdims=True)
    return probs.argmax(axis=1), probs


# ----------------------------------------------------------------------------------------------- retrieval
def sample_retrieval_set(labels: Sequence, size: int | None, seed: int = 0) -> np.ndarray:
    """Seeded stratified sample of ``size`` item indices, each label represented in proportion to its count.

    Allocation by largest remainder, so rare labels may get no image (as in the paper: 925 images of 75 of the
    86 regions). ``size=None`` or ``size >= len(labels)`` returns every index. Indices are sorted.
    """
    labels = np.asarray(labels, dtype=object)
    n = len(labels)
    if size is None or size >= n:
        return np.arange(n)
    if size < 1:
        raise ValueError(f"retrieval_size: expected a positive number of images, got {size}")
    rng = np.random.default_rng(seed)
    cats, inv, counts = np.unique(labels.astype(str), return_inverse=True, return_counts=True)
    quota = counts * size / n
    take = np.floor(quota).astype(int)
    rest = size - take.sum()
    # largest remainder, ties broken by a seeded permutation so no label is favoured by its name
    order = np.lexsort((rng.permutation(len(cats)), -(quota - take)))
    take[order[:rest]] += 1
    chosen = [rng.choice(np.flatnonzero(inv == c), size=k, replace=False) for c, k in enumerate(take) if k]
    return np.sort(np.concatenate(chosen))


def retrieval(image_emb: np.ndarray, labels: Sequence, text_emb: np.ndarray | None = None,
              class_names: Sequence[str] | None = None, ks: Sequence[int] = KS, definition: str = "paper",
              text_gallery: str = "per_image", n_boot: int = 0, seed: int = 0) -> dict:
    """Image-to-image, text-to-image and image-to-text Recall@K on one retrieval set.

    ``labels`` are the images' class names; ``text_emb`` ``(C, d)`` are the class texts in ``class_names`` order
    (None for image-only models: text tasks are then None). Image-to-image excludes each query from its own
    gallery. ``text_gallery="per_image"`` pairs every image with its own class text (CONCH-style paired
    retrieval: the text side has one, possibly repeated, caption per image, so all captions of a region are
    relevant); ``"per_class"`` uses one text per class. ``definition`` as in :func:`cytoclip.metrics.recall_at_k`.
    With ``n_boot`` each number gets a bootstrap interval over queries under ``ci``.
    """
    img = np.asarray(image_emb, np.float32)
    labels = np.asarray(labels, dtype=object)
    if len(img) != len(labels):
        raise ValueError(f"image_emb: {len(img)} rows for {len(labels)} labels")

    def task(sim: np.ndarray, ql: np.ndarray, gl: np.ndarray, exclude_self: bool = False) -> dict:
        res = M.recall_at_k(sim, ql, gl, ks, exclude_self=exclude_self, definition=definition,
                            return_per_query=True)
        per_q = res.pop("per_query")
        if n_boot:
            res["ci"] = {f"recall_at_{k}": M.bootstrap_ci(v, n=n_boot, seed=seed) for k, v in per_q.items()}
        return res

    out: dict[str, Any] = {"n_images": int(len(img)), "n_regions": int(len(set(labels.tolist()))),
                           "definition": definition, "text_gallery": text_gallery,
                           "image_to_image": task(img @ img.T, labels, labels, exclude_self=True),
                           "text_to_image": None, "image_to_text": None}
    if text_emb is not None:
        if class_names is None or len(class_names) != len(text_emb):
            raise ValueError("class_names: required, one per row of text_emb")
        idx = {c: i for i, c in enumerate(class_names)}
        missing = sorted(set(labels.tolist()) - set(idx))
        if missing:
            raise ValueError(f"labels {missing[:5]} are not in class_names")
        if text_gallery == "per_image":
            txt, tl = text_emb[[idx[c] for c in labels]], labels
        elif text_gallery == "per_class":
            present = sorted(set(labels.tolist()), key=idx.get)
            txt, tl = text_emb[[idx[c] for c in present]], np.asarray(present, dtype=object)
        else:
            raise ValueError(f"text_gallery: expected 'per_image' or 'per_class', got {text_gallery!r}")
        out["text_to_image"] = task(txt @ img.T, tl, labels)
        out["image_to_text"] = task(img @ txt.T, labels, tl)
    return out


# ------------------------------------------------------------------------------------------------ baselines
def _probe_result(pred: np.ndarray, val_y: Sequence, n_boot: int, seed: int) -> dict:
    rep = M.classification_report(val_y, pred)
    out = {k: v for k, v in rep.items() if k != "per_class"}
    out["pred"] = pred
    out["per_class"] = rep["per_class"]
    if n_boot:
        out["ci"] = _classification_cis(np.asarray(val_y, dtype=object), np.asarray(pred, dtype=object), n_boot, seed)
    return out


def linear_probe(train_emb: np.ndarray, train_y: Sequence, val_emb: np.ndarray, val_y: Sequence, C: float = 1.0,
                 max_iter: int = 1000, n_boot: int = 0, seed: int = 0) -> dict:
    """Logistic-regression probe on frozen embeddings (scikit-learn); the baseline for image-only models.

    Returns the :func:`~cytoclip.metrics.classification_report` numbers on the validation set plus ``pred``
    (predicted labels) and ``per_class``; ``ci`` with ``n_boot`` resamples.
    """
    from sklearn.linear_model import LogisticRegression

    if len(set(np.asarray(train_y, dtype=object).tolist())) < 2:
        raise ValueError("train_y: a linear probe needs at least two classes in the training set")
    clf = LogisticRegression(C=C, max_iter=max_iter, random_state=seed)
    clf.fit(np.asarray(train_emb), np.asarray(train_y, dtype=object))
    return _probe_result(clf.predict(np.asarray(val_emb)), val_y, n_boot, seed)


def knn(train_emb: np.ndarray, train_y: Sequence, val_emb: np.ndarray, val_y: Sequence, k: int = 20,
        n_boot: int = 0, seed: int = 0) -> dict:
    """k-nearest-neighbour classification by cosine similarity (distance-weighted vote, scikit-learn)."""
    from sklearn.neighbors import KNeighborsClassifier

    k = max(1, min(k, len(train_emb)))
    clf = KNeighborsClassifier(n_neighbors=k, metric="cosine", weights="distance")
    clf.fit(np.asarray(train_emb), np.asarray(train_y, dtype=object))
    return _probe_result(clf.predict(np.asarray(val_emb)), val_y, n_boot, seed)


def _classification_cis(y: np.ndarray, p: np.ndarray, n_boot: int, seed: int) -> dict:
    from sklearn.metrics import f1_score

    return {
        "accuracy": M.bootstrap_ci((y == p).astype(float), n=n_boot, seed=seed),
        "f1_weighted": M.bootstrap_ci(lambda i: f1_score(y[i], p[i], average="weighted", zero_division=0),
                                      n=n_boot, seed=seed, n_items=len(y)),
        "f1_macro": M.bootstrap_ci(lambda i: f1_score(y[i], p[i], average="macro", zero_division=0),
                                   n=n_boot, seed=seed, n_items=len(y)),
    }


# ------------------------------------------------------------------------------------------ error analysis
def region_adjacency(geoms: Mapping[Any, Any], tolerance: float = 1.0) -> set[frozenset]:
    """Pairs of regions whose geometries touch (lie within ``tolerance``, in the geometries' units).

    ``geoms`` maps a region (id or name) to a shapely geometry, e.g. ``Section.annotations(mpp=16)``; several
    pieces of one region should already be unioned. Uses an STRtree, so it scales to hundreds of regions.
    """
    from shapely.strtree import STRtree

    keys = [k for k, g in geoms.items() if g is not None and not g.is_empty]
    if tolerance < 0:
        raise ValueError(f"tolerance: expected >= 0, got {tolerance}")
    tree = STRtree([geoms[k] for k in keys])
    left, right = tree.query([geoms[k] for k in keys], predicate="dwithin", distance=float(tolerance))
    return {frozenset((keys[a], keys[b])) for a, b in zip(left.tolist(), right.tolist()) if a != b}


def label_adjacency(atlas: Any, sections: Sequence[tuple[int, int]], label_ids: Mapping[int, str],
                    ontology: Any, mpp: float = 16.0, tolerance: float = 2.0) -> set[frozenset]:
    """Which class labels touch each other in any of ``sections`` (pairs of label names).

    Each annotated structure is assigned to the nearest of its ancestors-or-self that is a class
    (``label_ids``: ontology id -> class name), which reproduces a merge without needing the merge spec;
    structures under no class (excluded, e.g. ventricles) are ignored. ``atlas.section(specimen, section)``
    must give an object with ``annotations(mpp)`` (:class:`cytoclip.atlas.Atlas`).
    """
    from shapely import union_all

    pairs: set[frozenset] = set()
    for specimen, section in tqdm(list(sections), desc="region adjacency", unit="section", leave=False):
        per_label: dict[str, list] = {}
        for sid, geom in atlas.section(int(specimen), int(section)).annotations(mpp=mpp).items():
            chain = [sid] + list(reversed(ontology.ancestors(sid))) if sid in ontology else [sid]
            owner = next((label_ids[i] for i in chain if i in label_ids), None)
            if owner is not None:
                per_label.setdefault(owner, []).append(geom)
        pairs |= region_adjacency({k: union_all(v) for k, v in per_label.items()}, tolerance)
    return pairs


# -------------------------------------------------------------------------------------- whole-section use
def _to_pil(arr: np.ndarray):
    from PIL import Image

    return Image.fromarray(np.ascontiguousarray(arr[..., :3]).astype(np.uint8))


@torch.inference_mode()
def _embed_arrays(model: Any, arrays: Sequence[np.ndarray]) -> np.ndarray:
    batch = torch.stack([model.transform(_to_pil(a)) for a in arrays])
    autocast = getattr(model, "autocast", None)
    with autocast() if autocast else torch.autocast("cpu", enabled=False):
        return model.encode_image(batch, normalize=True).float().cpu().numpy()


def predict_area(model: Any, section: Any, geometry_or_box: Any, class_names: Sequence[str], mpp: float = 16.0,
                 prompt: str | Sequence[str] = "{}", top_k: int = 5, text_emb: np.ndarray | None = None,
                 square: bool = True) -> tuple[str, float, list[tuple[str, float]]]:
    """Name an arbitrary area of a section with a prediction score (paper Fig. 2).

    ``geometry_or_box`` is a shapely geometry or ``(x0, y0, x1, y1)``, in pixels at ``mpp`` µm/px; its bounding
    box is cropped (expanded to a square around its centre when ``square``, like the SquareBBox images) through
    ``section.read_region``. Returns ``(label, probability, top_k [(label, probability), ...])``.
    """
    if hasattr(geometry_or_box, "bounds"):
        x0, y0, x1, y1 = geometry_or_box.bounds
    else:
        try:
            x0, y0, x1, y1 = (float(v) for v in geometry_or_box)
        except (TypeError, ValueError):
            raise ValueError(f"geometry_or_box: expected a shapely geometry or (x0, y0, x1, y1), "
                             f"got {geometry_or_box!r}") from None
    if x1 <= x0 or y1 <= y0:
        raise ValueError(f"geometry_or_box: empty box ({x0}, {y0}, {x1}, {y1})")
    if square:
        side = max(x1 - x0, y1 - y0)
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        x0, y0, x1, y1 = cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2
    crop = section.read_region(int(round(x0)), int(round(y0)), max(1, int(round(x1 - x0))),
                               max(1, int(round(y1 - y0))), mpp=mpp)
    _, probs = zero_shot(model, _embed_arrays(model, [crop]), class_names, prompt, text_emb=text_emb)
    order = np.argsort(-probs[0], kind="stable")[:top_k]
    top = [(class_names[i], float(probs[0, i])) for i in order]
    return top[0][0], top[0][1], top


def class_colors(class_names: Sequence[str], label_ids: Mapping[str, int] | None = None,
                 ontology: Any = None) -> list[str]:
    """"#rrggbb" per class: the ontology's colour of the class id when known, else a fixed husl palette."""
    import seaborn as sns

    fallback = sns.color_palette("husl", max(len(class_names), 1)).as_hex()
    out = []
    for i, name in enumerate(class_names):
        nid = (label_ids or {}).get(name)
        out.append(ontology.color(nid) if ontology is not None and nid is not None and nid in ontology
                   else fallback[i])
    return out


def segment_section(model: Any, section: Any, class_names: Sequence[str], tile: int = 224, mpp: float = 2.0,
                    prompt: str | Sequence[str] = "{}", text_emb: np.ndarray | None = None,
                    colors: Sequence[str] | None = None, min_tissue: float = 0.5, batch_size: int = 64,
                    background_level: int = 230) -> dict:
    """Coarse segmentation of a whole section by classifying every tissue tile (paper Fig. 3).

    The section is cut into ``tile`` x ``tile`` px tiles at ``mpp`` µm/px; a tile is classified when at least
    ``min_tissue`` of it is tissue (a low-resolution read, pixels darker than ``background_level``). Returns
    ``{"labels": (ny, nx) int (-1 = background), "scores": (ny, nx) probability of the predicted class,
    "color": (ny, nx, 3) uint8 in ``colors`` (white background), "cell_px": tile, "mpp": mpp,
    "cell_mpp": tile * mpp}`` — one raster cell per tile.
    """
    w, h = section.size(mpp)
    nx, ny = max(1, w // tile), max(1, h // tile)
    sub = 8  # 8 x 8 low-res pixels per tile are enough to tell tissue from glass
    thumb = section.read_region(0, 0, nx * sub, ny * sub, mpp=mpp * tile / sub)
    tissue = (thumb[..., :3].mean(axis=2) < background_level).reshape(ny, sub, nx, sub).mean(axis=(1, 3))
    cells = np.argwhere(tissue >= min_tissue)
    if text_emb is None:
        text_emb = text_classifier(model, class_names, prompt)
    labels = -np.ones((ny, nx), dtype=np.int64)
    scores = np.zeros((ny, nx), dtype=np.float32)
    for start in tqdm(range(0, len(cells), batch_size), desc="segment section", unit="batch", leave=False):
        chunk = cells[start:start + batch_size]
        crops = [section.read_region(int(c) * tile, int(r) * tile, tile, tile, mpp=mpp) for r, c in chunk]
        pred, probs = zero_shot(model, _embed_arrays(model, crops), class_names, text_emb=text_emb)
        labels[chunk[:, 0], chunk[:, 1]] = pred
        scores[chunk[:, 0], chunk[:, 1]] = probs[np.arange(len(pred)), pred]
    colors = list(colors) if colors is not None else class_colors(class_names)
    rgb = np.array([[int(c[i:i + 2], 16) for i in (1, 3, 5)] for c in colors], dtype=np.uint8)
    color = np.full((ny, nx, 3), 255, dtype=np.uint8)
    color[labels >= 0] = rgb[labels[labels >= 0]]
    return {"labels": labels, "scores": scores, "color": color, "cell_px": tile, "mpp": float(mpp),
            "cell_mpp": float(tile * mpp)}


def annotation_grid(geoms: Mapping[int, Any], shape: tuple[int, int], cell: float) -> np.ndarray:
    """Ground-truth raster on a tile grid: the class index whose geometry holds each cell's centre.

    ``geoms`` maps class index -> shapely geometry in pixels at the segmentation's ``mpp``; ``cell`` is the tile
    size in those pixels; ``shape`` = ``(ny, nx)``. Where geometries nest (a parent and its child), the smaller one
    wins. Cells outside every geometry are -1.
    """
    import shapely

    ny, nx = shape
    ys, xs = np.meshgrid((np.arange(ny) + 0.5) * cell, (np.arange(nx) + 0.5) * cell, indexing="ij")
    out = -np.ones((ny, nx), dtype=np.int64)
    for idx, geom in sorted(geoms.items(), key=lambda kv: -kv[1].area):  # large first, small overwrite
        inside = shapely.contains_xy(geom, xs.ravel(), ys.ravel()).reshape(ny, nx)
        out[inside] = int(idx)
    return out


def segmentation_scores(pred: np.ndarray, truth: np.ndarray, ignore_index: int = -1,
                        class_names: Sequence[str] | None = None) -> dict:
    """Pixel accuracy and per-region IoU of a label raster against the annotation raster (same shape).

    Only pixels with a true label (``truth != ignore_index``) are scored; a background prediction there counts
    as wrong. IoU is reported for every class present in the truth or prediction on those pixels; ``mean_iou``
    averages the classes present in the truth.
    """
    pred, truth = np.asarray(pred), np.asarray(truth)
    if pred.shape != truth.shape:
        raise ValueError(f"pred shape {pred.shape} differs from truth shape {truth.shape}")
    valid = truth != ignore_index
    if not valid.any():
        raise ValueError("truth: no annotated pixel to score")
    p, t = pred[valid], truth[valid]
    ious = {}
    for c in sorted(set(np.unique(t).tolist()) | set(np.unique(p).tolist()) - {ignore_index}):
        inter = np.sum((p == c) & (t == c))
        union = np.sum((p == c) | (t == c))
        name = class_names[c] if class_names is not None else int(c)
        ious[name] = float(inter / union) if union else float("nan")
    present = [class_names[c] if class_names is not None else int(c) for c in np.unique(t).tolist()]
    return {"pixel_accuracy": float(np.mean(p == t)), "n_pixels": int(valid.sum()),
            "mean_iou": float(np.mean([ious[c] for c in present])), "iou": ious}


# ------------------------------------------------------------------------------------------- orchestration
def data_source(dataset_dir: str | os.PathLike) -> str:
    """"synthetic" when the dataset comes from the synthetic atlas, "DHARANI" when from a real mirror, else
    "unknown" (no report naming an existing atlas). Evidence: ``report.json`` (``synthetic`` flag or the
    ``atlas_root`` holding ``SYNTHETIC.md``) or a ``SYNTHETIC.md`` beside the dataset; a derived dataset
    (``source.json`` naming its parent) takes its parent's answer."""
    d = Path(dataset_dir)
    if (d / "SYNTHETIC.md").exists():
        return "synthetic"
    report = read_json(d / "report.json") if (d / "report.json").exists() else {}
    if report.get("synthetic") is True:
        return "synthetic"
    root = report.get("atlas_root")
    if root and Path(root).exists():
        return "synthetic" if (Path(root) / "SYNTHETIC.md").exists() else "DHARANI"
    if report.get("synthetic") is False:
        return "DHARANI"
    parent = read_json(d / "source.json").get("parent") if (d / "source.json").exists() else None
    if parent and Path(parent).resolve() != d.resolve() and Path(parent).is_dir():
        return data_source(parent)  # a derived dataset (split, subset, multi-region) is what its parent is
    return "unknown"


def results_table(results: Mapping[str, Any], model: str | None = None) -> pd.DataFrame:
    """Long-form rows of a ``results.json`` in the paper's table vocabulary, for
    :func:`cytoclip.plots.paper_comparison_table`.

    Table I: weighted (and macro) P/R/F1 of the headline classification (zero-shot naming, or the linear probe
    for image-only models; label_type "single", plus "multi" under the multi-region rule); Table IV: Recall@K
    per retrieval task. Columns ``table, image_type, model, label_type, task, metric, value, data``.
    """
    image_type = "High-res tiles" if results.get("image_type") == "tile" else "Complete region"
    model = model or str(results.get("model"))
    rows = []
    head = results.get("zero_shot") or results.get("linear_probe")
    for label_type, rep in (("single", head), ("multi", results.get("multi_region"))):
        for metric in ("precision_weighted", "recall_weighted", "f1_weighted", "precision_macro", "recall_macro",
                       "f1_macro", "accuracy"):
            if rep and metric in rep:
                rows.append(("I", image_type, model, label_type, "", metric, rep[metric]))
    for task in ("image_to_image", "text_to_image", "image_to_text"):
        res = (results.get("retrieval") or {}).get(task)
        for key, val in (res or {}).items():
            if key.startswith("recall_at_"):
                rows.append(("IV", image_type, model, "", task.replace("_", "-"), key, val))
    df = pd.DataFrame(rows, columns=["table", "image_type", "model", "label_type", "task", "metric", "value"])
    df["data"] = results.get("data", "unknown")
    return df


def _default_image_type(types: Sequence[str]) -> str:
    for t in ("square224", "tile"):  # the paper's best region type (Table II), then tiles
        if t in types:
            return t
    return sorted(types)[0]


def _records(df: pd.DataFrame) -> list[dict]:
    return df.replace({np.nan: None}).to_dict(orient="records")


def _jsonable_report(rep: dict) -> dict:
    out = {k: v for k, v in rep.items() if k not in ("per_class", "pred", "hits")}
    if "per_class" in rep:
        out["per_class"] = _records(rep["per_class"])
    return out


def evaluate_model(model_spec_or_run_dir: Any, dataset_dir: str | os.PathLike, image_type: str | None = None,
                   split_scheme: str | None = None, *, out_dir: str | os.PathLike, seed: int = 0,
                   batch_size: int = 64, device: str | None = None, prompt: str | Sequence[str] = "{}",
                   retrieval_size: int | None = 925, n_boot: int = 1000, probes: bool = True, knn_k: int = 20,
                   cache_dir: str | os.PathLike | None = None, figures: bool = True,
                   embedding_method: str = "umap", atlas: Any = None, num_workers: int = 0,
                   model_kwargs: Mapping[str, Any] | None = None) -> dict:
    """Evaluate one model (spec string, run dir, or a ready ``CytoModel``) on a prepared dataset.

    Steps: embed the train/val images of ``image_type`` (default square224, else tile) under the manifest's
    split or ``split_scheme``; zero-shot naming by region texts (models with text) with weighted/macro P/R/F1,
    the multi-region rule for square crops and bootstrap intervals; retrieval Recall@K on a seeded stratified
    sample of ``retrieval_size`` validation images (paper: 925); linear-probe and k-NN baselines on frozen
    embeddings (``probes``); error analysis (tree distance, most confused pairs, adjacency when the atlas is
    reachable); figures. Writes ``results.json``, ``predictions.parquet`` and ``figures/*.png`` in ``out_dir``
    and returns the results dict. ``results["data"]`` says "synthetic", "DHARANI" or "unknown".
    """
    from cytoclip.data import ImageTextDataset, load_manifest

    dataset_dir, out_dir = Path(dataset_dir), Path(out_dir)
    manifest = load_manifest(dataset_dir)
    for col in ("path", "label", "image_type"):
        if col not in manifest.columns:
            raise ValueError(f"{dataset_dir / 'manifest.parquet'}: missing column {col!r}")
    types = sorted(manifest["image_type"].astype(str).unique())
    image_type = image_type or _default_image_type(types)
    if image_type not in types:
        raise ValueError(f"{dataset_dir}: image_type {image_type!r} not in the manifest; expected one of {types}")
    if split_scheme is not None:
        from cytoclip.splits import assign_split

        manifest = manifest.assign(split=assign_split(manifest, split_scheme, seed=seed))
    elif "split" not in manifest.columns:
        raise ValueError(f"{dataset_dir / 'manifest.parquet'}: no 'split' column; pass split_scheme")
    class_names = sorted(manifest["label"].astype(str).unique())
    data = data_source(dataset_dir)
    synthetic = data == "synthetic"

    if isinstance(model_spec_or_run_dir, (str, os.PathLike, dict)):
        from cytoclip.models import create_model

        model = create_model(model_spec_or_run_dir, device=device or "cpu", **dict(model_kwargs or {}))
        spec_label = str(model_spec_or_run_dir) if not isinstance(model_spec_or_run_dir, dict) else model.name
    else:
        model = model_spec_or_run_dir
        if device is not None:
            model.to(device)
        spec_label = getattr(model, "name", type(model).__name__)
    model.eval()

    def dataset(split: str) -> ImageTextDataset:
        return ImageTextDataset(dataset_dir, manifest=manifest, image_type=image_type, split=split,
                                transform=model.transform, class_names=class_names)

    val_ds = dataset("val")
    if len(val_ds) == 0:
        raise ValueError(f"{dataset_dir}: no validation images of type {image_type!r} under split "
                         f"{split_scheme or 'manifest'}")
    val_frame = val_ds.frame
    val_y = val_frame["label"].astype(str).to_numpy(dtype=object)
    val_emb = embed_images(model, val_ds, batch_size, cache_dir=cache_dir, num_workers=num_workers,
                           desc="embed val")
    train_ds = dataset("train") if probes else None
    train_emb = (embed_images(model, train_ds, batch_size, cache_dir=cache_dir, num_workers=num_workers,
                              desc="embed train") if train_ds is not None and len(train_ds) else None)

    results: dict[str, Any] = {
        "data": data, "model": spec_label, "model_spec": getattr(model, "spec", None),
        "has_text": bool(getattr(model, "has_text", False)), "dataset": str(dataset_dir), "image_type": image_type,
        "split_scheme": split_scheme or "manifest", "seed": seed, "prompt": prompt, "n_boot": n_boot,
        "n_train": int(len(train_ds)) if train_ds is not None else None, "n_val": int(len(val_ds)),
        "n_classes": len(class_names), "n_val_classes": int(len(set(val_y.tolist()))),
        "class_names": class_names,
        "zero_shot": None, "multi_region": None, "retrieval": None, "linear_probe": None, "knn": None,
        "errors": None, "figures": {},
    }
    preds = val_frame[[c for c in ("path", "label", "specimen", "section", "age_gw", "plane")
                       if c in val_frame.columns]].copy()

    # zero-shot naming by region texts (the paper's classification)
    headline_pred, headline_rep = None, None
    text_emb = None
    if results["has_text"]:
        paths = (dict(zip(manifest["label"].astype(str), manifest["ontology_path"].astype(str)))
                 if "ontology_path" in manifest.columns else None)
        text_emb = text_classifier(model, class_names, prompt, paths)
        pred_idx, probs = zero_shot(model, val_emb, class_names, text_emb=text_emb)
        zs_pred = np.asarray(class_names, dtype=object)[pred_idx]
        rep = M.classification_report(val_y, zs_pred)
        rep_json = _jsonable_report(rep)
        if n_boot:
            rep_json["ci"] = _classification_cis(val_y, zs_pred, n_boot, seed)
        results["zero_shot"] = rep_json
        preds["zero_shot"] = zs_pred
        preds["zero_shot_score"] = probs[np.arange(len(pred_idx)), pred_idx]
        headline_pred, headline_rep = zs_pred, rep
        if image_type.startswith("square") and "multi_labels" in val_frame.columns:
            multi = [list(np.asarray(m, dtype=object)) for m in val_frame["multi_labels"]]
            mrep = M.multi_region_report(val_y, zs_pred, multi)
            mjson = _jsonable_report(mrep)
            if n_boot:
                mjson["ci"] = {"accuracy": M.bootstrap_ci(mrep["hits"].astype(float), n=n_boot, seed=seed)}
            results["multi_region"] = mjson
            preds["multi_region_hit"] = mrep["hits"]

    # retrieval on a stratified sample of the validation set
    ridx = sample_retrieval_set(val_y, retrieval_size, seed)
    results["retrieval"] = retrieval(val_emb[ridx], val_y[ridx], text_emb, class_names if text_emb is not None
                                     else None, n_boot=n_boot, seed=seed)
    results["retrieval"]["requested_size"] = retrieval_size

    # baselines on frozen image embeddings
    if train_emb is not None and len(set(train_ds.frame["label"])) >= 2:
        train_y = train_ds.frame["label"].astype(str).to_numpy(dtype=object)
        lp = linear_probe(train_emb, train_y, val_emb, val_y, n_boot=n_boot, seed=seed)
        kn = knn(train_emb, train_y, val_emb, val_y, k=knn_k, n_boot=n_boot, seed=seed)
        results["linear_probe"], results["knn"] = _jsonable_report(lp), _jsonable_report(kn)
        results["knn"]["k"] = knn_k
        preds["linear_probe"], preds["knn"] = lp["pred"], kn["pred"]
        if headline_pred is None:  # image-only models are scored by their linear probe
            headline_pred, headline_rep = lp["pred"], lp

    # error analysis of the headline predictions
    if headline_pred is not None:
        results["errors"] = _error_analysis(val_y, headline_pred, manifest, dataset_dir, val_frame, atlas)

    with atomic_path(out_dir / "predictions.parquet") as tmp:
        preds.to_parquet(tmp, index=False)
    if figures:
        results["figures"] = _write_figures(out_dir, synthetic, val_y, headline_pred, headline_rep, val_emb,
                                            val_frame, val_ds, ridx, seed, embedding_method)
    write_json(out_dir / "results.json", results)
    return results


def _error_analysis(val_y: np.ndarray, pred: np.ndarray, manifest: pd.DataFrame, dataset_dir: Path,
                    val_frame: pd.DataFrame, atlas: Any) -> dict:
    from cytoclip.ontology import Ontology

    out: dict[str, Any] = {"confused_pairs": _records(M.confused_pairs(val_y, pred, top=10)),
                           "by_tree_distance": None, "mean_tree_distance": None, "adjacency": None}
    report = read_json(dataset_dir / "report.json") if (dataset_dir / "report.json").exists() else {}
    root = report.get("atlas_root")
    if "label_id" in manifest.columns:
        ids = dict(zip(manifest["label"].astype(str), manifest["label_id"].astype(int)))
        onto_src = root if root and (Path(root) / "ontology" / "ontology.json").exists() else None
        onto = Ontology.load(onto_src)
        if all(i in onto for i in ids.values()):
            df = M.errors_by_tree_distance(val_y, pred, lambda a, b: onto.distance(ids[a], ids[b]))
            out["by_tree_distance"] = _records(df)
            out["mean_tree_distance"] = df.attrs["mean_distance"]
            out["ontology"] = onto_src or "packaged"
        if atlas is None and root and Path(root).exists():
            from cytoclip.atlas import Atlas

            atlas = Atlas(root)
        if atlas is not None and {"specimen", "section"} <= set(val_frame.columns):
            sections = sorted({(int(a), int(b)) for a, b in zip(val_frame["specimen"], val_frame["section"])})
            mpp = float(val_frame["mpp"].iloc[0]) if "mpp" in val_frame.columns else 16.0
            from cytoclip.atlas import AtlasError

            try:
                pairs = label_adjacency(atlas, sections, {v: k for k, v in ids.items()}, onto, mpp=mpp)
            except (AtlasError, OSError, ValueError, KeyError) as exc:  # record why, keep the other results
                out["adjacency_skipped"] = f"{type(exc).__name__}: {exc}"
            else:
                out["adjacency"] = M.errors_by_adjacency(val_y, pred, pairs)
    return out


def _write_figures(out_dir: Path, synthetic: bool, val_y: np.ndarray, pred: np.ndarray | None, rep: dict | None,
                   val_emb: np.ndarray, val_frame: pd.DataFrame, val_ds: Any, ridx: np.ndarray, seed: int,
                   embedding_method: str) -> dict:
    # plots build bare Figure objects (no pyplot), so no backend switch is needed and a notebook's stays intact
    from cytoclip import plots as P

    fig_dir = out_dir / "figures"
    written: dict[str, str] = {}

    def save(name: str, fig: Any) -> None:
        P.save_figure(fig, fig_dir / f"{name}.png")
        written[name] = f"figures/{name}.png"

    if pred is not None:
        save("confusion_matrix", P.confusion_matrix_figure(val_y, pred, synthetic=synthetic))
        save("per_region_f1", P.per_region_f1_figure(rep["per_class"], synthetic=synthetic, top=60))
    color_by = {"region": val_y.tolist()}
    for col in ("age_gw", "plane"):
        if col in val_frame.columns and val_frame[col].nunique() > 0:
            color_by[col] = val_frame[col].astype(str).tolist()
    save("embeddings", P.embedding_figure(val_emb, color_by, synthetic=synthetic, seed=seed,
                                          method=embedding_method))
    if len(ridx) >= 2:
        sub = val_emb[ridx]
        paths = [val_ds.dataset_dir / p for p in val_frame["path"].iloc[ridx]]
        save("retrieval_examples", P.retrieval_examples_figure(paths, val_y[ridx].tolist(), paths,
                                                               val_y[ridx].tolist(), sub @ sub.T,
                                                               exclude_self=True, synthetic=synthetic, seed=seed))
    return written


# ------------------------------------------------------------------------------------------------------- CLI
def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``cytoclip evaluate``."""
    parser.add_argument("--model", required=True, help="model spec (tiny, hf:..., open_clip:..., uni:..., "
                        "conch:...) or a run / saved-model directory")
    parser.add_argument("--dataset", required=True, help="prepared dataset directory (manifest.parquet)")
    parser.add_argument("--image-type", default=None, help="exact | exact_mask | square224 | square336 | tile "
                        "(default: square224 when present, else tile)")
    parser.add_argument("--split", default=None, help="split scheme: sections | tiles | cross_age | cross_plane "
                        "(default: the manifest's split column)")
    parser.add_argument("--out", required=True, help="output directory for results.json and figures")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default=None, help="cpu | cuda | cuda:N (default: cpu)")
    parser.add_argument("--retrieval-size", type=int, default=925,
                        help="images sampled from the validation split for retrieval (paper: 925)")
    parser.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples per headline number (0: none)")
    parser.add_argument("--prompt", default="{}", help="text template with {} or 'ontology_path'")
    parser.add_argument("--no-probes", action="store_true", help="skip linear-probe / k-NN baselines")
    parser.add_argument("--no-figures", action="store_true")
    parser.add_argument("--cache-dir", default=None, help="directory for cached embeddings (.npy)")
    parser.set_defaults(func=_cli)


def _cli(args: argparse.Namespace) -> int:
    res = evaluate_model(args.model, args.dataset, image_type=args.image_type, split_scheme=args.split,
                         out_dir=args.out, seed=args.seed, batch_size=args.batch_size, device=args.device,
                         retrieval_size=args.retrieval_size, n_boot=args.n_boot, prompt=args.prompt,
                         probes=not args.no_probes, figures=not args.no_figures, cache_dir=args.cache_dir)
    zs = res["zero_shot"] or res["linear_probe"] or {}
    head = "zero-shot" if res["zero_shot"] else "linear probe"
    print(f"[{res['data']}] {res['model']} on {res['dataset']} ({res['image_type']}, n_val={res['n_val']}): "
          f"{head} accuracy {zs.get('accuracy', float('nan')):.3f}, weighted F1 {zs.get('f1_weighted', float('nan')):.3f}"
          f"; image-to-image R@10 {res['retrieval']['image_to_image']['recall_at_10']:.3f}")
    print(f"wrote {Path(args.out) / 'results.json'}")
    return 0
