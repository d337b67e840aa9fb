"""Whole-section uses of a trained model (paper Figs 2-3): name an arbitrary area, segment a section coarsely
by its tiles, and score a label raster against the annotation."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from cytoclip.evaluate.embed import embed_arrays
from cytoclip.evaluate.zero_shot import text_classifier, zero_shot
from cytoclip.progress import tqdm

__all__ = ["predict_area", "class_colors", "segment_section", "annotation_grid", "annotation_classes",
           "raster_regions", "segmentation_scores"]


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
    _, probs = zero_shot(model, embed_arrays(model, [crop]), class_names, prompt, text_emb=text_emb)
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
                    tissue_mpp: float = 32.0, progress: bool = True) -> dict:
    """Coarse segmentation of a whole section by classifying every tissue tile (paper Fig. 3).

    The section is cut into ``tile`` x ``tile`` px tiles at ``mpp`` µm/px; a tile is classified when at least
    ``min_tissue`` of it is tissue on a ``tissue_mpp`` µm/px read — the rule the tiles dataset is prepared with
    (:func:`cytoclip.tiles.tile_grid`, :func:`~cytoclip.tiles.tissue_mask`, :func:`~cytoclip.tiles.tissue_fraction`),
    so the tiles named are the kind the tiles model was trained on. Tiles are
    embedded ``batch_size`` at a time on the model's device. Returns ``{"labels": (ny, nx) int (-1 =
    background), "scores": (ny, nx) probability of the predicted class, "probs": (ny, nx, C) probability of
    every class (0 on background), "tissue": (ny, nx) tissue fraction, "color": (ny, nx, 3) uint8 in ``colors``
    (white background), "cell_px": tile, "mpp": mpp, "cell_mpp": tile * mpp}`` — one raster cell per tile.
    """
    from cytoclip.tiles import tile_grid, tissue_fraction, tissue_mask

    w, h = section.size(mpp)
    nx, ny = max(1, w // tile), max(1, h // tile)
    tw, th = section.size(tissue_mpp)
    mask = tissue_mask(section.read_region(0, 0, tw, th, mpp=tissue_mpp))
    boxes = tile_grid(nx * tile, ny * tile, tile)  # row-major, one box per raster cell
    tissue = tissue_fraction(mask, boxes, (mask.shape[1] / w, mask.shape[0] / h)).reshape(ny, nx)
    cells = np.argwhere(tissue >= min_tissue)
    if text_emb is None:
        text_emb = text_classifier(model, class_names, prompt)
    labels = -np.ones((ny, nx), dtype=np.int64)
    scores = np.zeros((ny, nx), dtype=np.float32)
    all_probs = np.zeros((ny, nx, len(class_names)), dtype=np.float32)
    for start in tqdm(range(0, len(cells), batch_size), desc="segment section", unit="batch", leave=False,
                      enabled=progress):
        chunk = cells[start:start + batch_size]
        crops = [section.read_region(int(c) * tile, int(r) * tile, tile, tile, mpp=mpp) for r, c in chunk]
        pred, probs = zero_shot(model, embed_arrays(model, crops), class_names, text_emb=text_emb)
        labels[chunk[:, 0], chunk[:, 1]] = pred
        scores[chunk[:, 0], chunk[:, 1]] = probs[np.arange(len(pred)), pred]
        all_probs[chunk[:, 0], chunk[:, 1]] = probs
    colors = list(colors) if colors is not None else class_colors(class_names)
    rgb = np.array([[int(c[i:i + 2], 16) for i in (1, 3, 5)] for c in colors], dtype=np.uint8)
    color = np.full((ny, nx, 3), 255, dtype=np.uint8)
    color[labels >= 0] = rgb[labels[labels >= 0]]
    return {"labels": labels, "scores": scores, "probs": all_probs, "tissue": tissue.astype(np.float32),
            "color": color, "cell_px": tile, "mpp": float(mpp), "cell_mpp": float(tile * mpp)}


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


def annotation_classes(annotations: Mapping[int, Any], class_ids: Sequence[int | None], ontology: Any) -> dict:
    """The annotation in the classes of a model: ``{class index: geometry}`` from ``{ontology id: geometry}``.

    Each annotated structure counts for the class of its nearest ancestor-or-self among ``class_ids`` (the
    ontology id of each class): a leaf class takes its own structure, a merged class (a parent that absorbed its
    subtree) every structure under it — what both packaged merge specs do. Structures with no class above them
    (excluded, or drawn coarser than the classes) are left out; pieces of one class are unioned.
    """
    from cytoclip.tiles import leaf_regions

    index = {int(c): i for i, c in enumerate(class_ids) if c is not None}
    label_map = {}
    for rid in annotations:
        chain = (int(rid), *reversed(ontology.ancestors(int(rid)))) if int(rid) in ontology else (int(rid),)
        label_map[int(rid)] = next((a for a in chain if a in index), None)
    return {index[lid]: geom for lid, geom in leaf_regions(annotations, label_map).items()}


def raster_regions(labels: np.ndarray, cell: float, ignore_index: int = -1) -> dict[int, Any]:
    """Polygons of a label raster: ``{class index: (Multi)Polygon}`` of the cells of each class merged.

    Cell ``(r, c)`` covers ``[c * cell, (c + 1) * cell) x [r * cell, (r + 1) * cell)`` (the inverse of
    :func:`annotation_grid`); each class's area is exactly its cell count times ``cell ** 2``. Runs of cells
    along a row are merged first, so a section of 10^5 tiles unions a few thousand rectangles.
    """
    import shapely

    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"labels: expected a 2-D raster of class indices, got shape {labels.shape}")
    out: dict[int, Any] = {}
    for cls in (int(v) for v in np.unique(labels) if v != ignore_index):
        rects = []
        for r, row in enumerate(labels == cls):
            edges = np.flatnonzero(np.diff(np.concatenate([[0], row.astype(np.int8), [0]])))
            for c0, c1 in zip(edges[::2], edges[1::2]):
                rects.append(shapely.box(c0 * cell, r * cell, c1 * cell, (r + 1) * cell))
        # union, then drop the vertices along straight cell edges (tolerance 0 keeps the area exact)
        out[cls] = shapely.simplify(shapely.union_all(rects), 0)
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


