"""Name an image or a drawn area of a section with its top-k region names and scores (paper Fig. 2).

Every prediction is the one zero-shot classifier of :mod:`cytoclip.evaluate.zero_shot` over the candidate names
(:mod:`cytoclip.annotate.labels`); an area of a section is read through
:func:`cytoclip.evaluate.sections.predict_area` at the scale the model was trained on. The result is one table,
one row per (query, rank): ``query, kind, rank, label, label_id, score`` plus, for areas, ``specimen, section``
and the area's box ``x0, y0, x1, y1`` in level-0 pixels.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
from shapely import affinity
from shapely.geometry import box as shapely_box

from cytoclip.annotate.labels import Candidates
from cytoclip.annotate.sources import read_image
from cytoclip.evaluate.embed import embed_arrays
from cytoclip.evaluate.sections import predict_area
from cytoclip.evaluate.zero_shot import text_classifier, zero_shot

__all__ = ["COLUMNS", "predict_images", "predict_areas", "box_geometry", "write_predictions", "format_table"]

COLUMNS = ["query", "kind", "rank", "label", "label_id", "score"]
AREA_COLUMNS = ["specimen", "section", "x0", "y0", "x1", "y1"]


def _rows(query: str, kind: str, probs: np.ndarray, cands: Candidates, top_k: int, **extra: Any) -> list[dict]:
    order = np.argsort(-probs, kind="stable")[:top_k]
    return [{"query": query, "kind": kind, "rank": r + 1, "label": cands.names[i], "label_id": cands.ids[i],
             "score": float(probs[i]), **extra} for r, i in enumerate(order)]


def predict_images(trained: Any, cands: Candidates, images: Sequence[str | os.PathLike | np.ndarray],
                   top_k: int = 5, batch_size: int = 64, names: Sequence[str] | None = None,
                   progress: bool = True) -> pd.DataFrame:
    """Top-k names of whole images (files or RGB arrays), embedded ``batch_size`` at a time."""
    from cytoclip.progress import tqdm

    text_emb = text_classifier(trained.model, list(cands.names), trained.prompt)
    names = list(names) if names is not None else [str(p) if not isinstance(p, np.ndarray) else f"image {i}"
                                                   for i, p in enumerate(images)]
    rows: list[dict] = []
    for start in tqdm(range(0, len(images), batch_size), desc="predict", unit="batch", leave=False,
                      enabled=progress and len(images) > batch_size):
        chunk = images[start:start + batch_size]
        arrays = [a if isinstance(a, np.ndarray) else read_image(a) for a in chunk]
        _, probs = zero_shot(trained.model, embed_arrays(trained.model, arrays), list(cands.names),
                             text_emb=text_emb)
        for k, p in enumerate(probs):
            rows += _rows(names[start + k], "image", p, cands, top_k)
    return pd.DataFrame(rows, columns=COLUMNS)


def box_geometry(x: float, y: float, w: float, h: float, box_mpp: float, section: Any) -> Any:
    """A box ``x, y, w, h`` in pixels at ``box_mpp`` µm/px as a polygon in the section's level-0 pixels."""
    f = float(box_mpp) / section.mpp0
    return shapely_box(x * f, y * f, (x + w) * f, (y + h) * f)


def predict_areas(trained: Any, cands: Candidates, section: Any, areas: Sequence[tuple[str, Any]],
                  top_k: int = 5, mpp: float | None = None, kind: str = "polygon", square: bool = True
                  ) -> pd.DataFrame:
    """Top-k names of drawn areas of ``section``: ``areas`` = ``(name, shapely geometry in level-0 px)``.

    Each area's bounding box (a square around its centre when ``square``, like the SquareBBox training images)
    is read at ``mpp`` µm/px (default: the model's training scale) and classified.
    """
    mpp = float(mpp) if mpp else trained.read_mpp
    text_emb = text_classifier(trained.model, list(cands.names), trained.prompt)
    w0, h0 = section.size()
    to_mpp = section.mpp0 / mpp
    rows: list[dict] = []
    for name, geom in areas:
        x0, y0, x1, y1 = geom.bounds
        if x1 <= 0 or y1 <= 0 or x0 >= w0 or y0 >= h0:
            raise ValueError(f"{name}: area ({x0:g}, {y0:g}, {x1:g}, {y1:g}) in level-0 px lies outside the "
                             f"section ({w0} x {h0} px at {section.mpp0:g} µm/px)")
        _, _, top = predict_area(trained.model, section, affinity.scale(geom, to_mpp, to_mpp, origin=(0, 0)),
                                 list(cands.names), mpp=mpp, top_k=len(cands), text_emb=text_emb, square=square)
        probs = np.zeros(len(cands))
        for label, p in top:
            probs[cands.names.index(label)] = p
        rows += _rows(name, kind, probs, cands, top_k, specimen=section.specimen, section=section.section,
                      x0=round(x0, 2), y0=round(y0, 2), x1=round(x1, 2), y1=round(y1, 2))
    return pd.DataFrame(rows, columns=COLUMNS + AREA_COLUMNS)


def _queries(frame: pd.DataFrame) -> pd.Series:
    """The query number of each row: rows come in blocks of ranks 1..k, one block per query (the same image
    named twice is two queries)."""
    return (frame["rank"] == 1).cumsum()


def write_predictions(frame: pd.DataFrame, path: str | os.PathLike, meta: dict | None = None) -> Path:
    """Write the predictions atomically: ``.csv`` (one row per query and rank) or ``.json`` (one record per
    query with its ``top`` list, under ``predictions``, beside ``meta``: model, candidates, scale)."""
    from cytoclip.io import atomic_path, write_json

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".csv":
        with atomic_path(path) as tmp:
            frame.to_csv(tmp, index=False)
        return path
    if suffix != ".json":
        raise ValueError(f"--output {path}: expected a .csv or .json file name")
    records = []
    keys = [c for c in frame.columns if c not in ("rank", "label", "label_id", "score")]
    for _, group in frame.groupby(_queries(frame), sort=False):
        first = group.iloc[0]
        rec = {k: (None if pd.isna(first[k]) else first[k].item() if hasattr(first[k], "item") else first[k])
               for k in keys}
        rec["top"] = [{"rank": int(r.rank), "label": r.label, "label_id": int(r.label_id), "score": float(r.score)}
                      for r in group.itertuples()]
        records.append(rec)
    return write_json(path, {**(meta or {}), "predictions": records})


def format_table(frame: pd.DataFrame) -> str:
    """The predictions as a terminal reads them: per query, its ranked names and scores."""
    lines = []
    for _, group in frame.groupby(_queries(frame), sort=False):
        query, kind = group["query"].iloc[0], group["kind"].iloc[0]
        head = f"{query} ({kind})"
        if kind != "image" and "x0" in group:
            g = group.iloc[0]
            head += f"  specimen {g.specimen} section {g.section}, box {g.x0:g},{g.y0:g} - {g.x1:g},{g.y1:g} level-0 px"
        lines.append(head)
        width = max(len(str(x)) for x in group["label"])
        for r in group.itertuples():
            lines.append(f"  {r.rank:>2}. {r.label:<{width}}  {r.score:.4f}  (id {r.label_id})")
    return "\n".join(lines)
