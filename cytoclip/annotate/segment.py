"""Coarse segmentation of whole sections into files a neuroanatomist opens (paper Fig. 3).

Per section, in ``output_dir``, named by the section's image stem (``Specimen_5_1009``):

* ``<stem>.geojson``: the predicted regions, tile cells merged into one polygon set per region, as a DHARANI
  annotation (``properties.data.id`` = ontology id; :func:`cytoclip.layout.write_annotation`, the writer of the
  synthetic atlas) with the ``classification`` {name, color} QuPath shows; level-0 px (y positive unless
  ``negative_y``, as DHARANI's own files store it). :class:`cytoclip.atlas.Section` reads it back as an annotation.
* ``<stem>.png``: the section with the predicted regions in ontology colours and a legend;
* ``<stem>.tiles.parquet``: one row per tile (grid cell): its box in level-0 px, tissue fraction, predicted
  label, id, score, and the probability of every candidate (columns ``p:<name>``);
* ``<stem>.json``: the record, written last: parameters, fingerprint, region areas and, when the section is
  annotated, pixel accuracy and per-region IoU against the annotation (:func:`segmentation_scores`).

A section whose record holds the fingerprint of the same model, candidates, parameters and input files, with all
its outputs present, is skipped on a rerun (:func:`cytoclip.io.is_reusable`); every file is written atomically.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from cytoclip.annotate.labels import Candidates
from cytoclip.evaluate.sections import (annotation_classes, annotation_grid, raster_regions, segment_section,
                                        segmentation_scores)

__all__ = ["OUTPUTS", "section_stem", "section_outputs", "segment_to_files", "segment_sections",
           "DEFAULT_TILE", "DEFAULT_MPP"]

#: output kind -> file suffix after the section's stem
OUTPUTS = {"geojson": ".geojson", "overlay": ".png", "tiles": ".tiles.parquet", "record": ".json"}
DEFAULT_TILE, DEFAULT_MPP = 224, 2.0  # the paper's tiles (III-C) when the model records no tile scale
THUMB_MAX = 1200  # longer side in px of the overlay's section image


def section_stem(section: Any) -> str:
    """The file stem of a section's outputs: its image's stem (``Specimen_<N>_<SEC>`` in the DHARANI layout)."""
    return Path(str(section.image_path)).stem


def section_outputs(output_dir: str | os.PathLike, section: Any) -> dict[str, Path]:
    """Paths of the outputs of ``section`` in ``output_dir`` (kind -> path)."""
    stem = section_stem(section)
    return {kind: Path(output_dir) / f"{stem}{suffix}" for kind, suffix in OUTPUTS.items()}


def _scale(trained: Any, tile: int | None, mpp: float | None) -> tuple[int, float]:
    """Tile side (px) and µm/px: as given, else the model's training tiles, else the paper's 224 px at 2 µm/px."""
    is_tiles = trained.image_type == "tile"
    tile = int(tile or (trained.tile if is_tiles and trained.tile else DEFAULT_TILE))
    mpp = float(mpp or (trained.mpp if is_tiles and trained.mpp else DEFAULT_MPP))
    if tile <= 0 or mpp <= 0:
        raise ValueError(f"tile ({tile}) and mpp ({mpp}) must be > 0")
    return tile, mpp


def _fingerprint(trained: Any, cands: Candidates, section: Any, params: dict) -> str:
    from cytoclip.evaluate.embed import model_fingerprint
    from cytoclip.io import work_fingerprint

    files = section._files
    inputs = {"image": files.identity(section.image_path), "annotation": files.identity(section.annotation_path)}
    return work_fingerprint(params, model_fingerprint(trained.model), list(cands.names), list(cands.ids),
                            trained.prompt, inputs)


def _tiles_frame(seg: dict, cands: Candidates, cell0: float) -> pd.DataFrame:
    labels, ny, nx = seg["labels"], *seg["labels"].shape
    rows, cols = np.meshgrid(np.arange(ny), np.arange(nx), indexing="ij")
    lab = labels.ravel()
    names = np.array(list(cands.names) + [None], dtype=object)  # index -1 -> None (background)
    ids = np.array(list(cands.ids) + [-1], dtype=np.int64)
    frame = pd.DataFrame({"row": rows.ravel(), "col": cols.ravel(),
                          "x0": cols.ravel() * cell0, "y0": rows.ravel() * cell0,
                          "x1": (cols.ravel() + 1) * cell0, "y1": (rows.ravel() + 1) * cell0,
                          "tissue": seg["tissue"].ravel(), "label": names[lab], "label_id": ids[lab],
                          "score": seg["scores"].ravel()})
    probs = seg["probs"].reshape(ny * nx, -1)
    return pd.concat([frame, pd.DataFrame(probs, columns=[f"p:{n}" for n in cands.names])], axis=1)


def segment_to_files(trained: Any, cands: Candidates, section: Any, output_dir: str | os.PathLike, *,
                     ontology: Any, tile: int | None = None, mpp: float | None = None, batch_size: int = 64,
                     min_tissue: float = 0.5, negative_y: bool = False, synthetic: bool | None = None,
                     progress: bool = True, resume: bool = True) -> dict:
    """Segment one section into its four outputs (see the module doc); returns the record (``skipped`` True
    when a finished identical result was already there)."""
    from cytoclip import plots
    from cytoclip.annotate.sources import is_synthetic_section
    from cytoclip.io import atomic_path, is_reusable, read_json, write_json
    from cytoclip.layout import write_annotation

    tile, mpp = _scale(trained, tile, mpp)
    out = section_outputs(output_dir, section)
    params = {"tile": tile, "mpp": mpp, "min_tissue": float(min_tissue), "negative_y": bool(negative_y)}
    fp = _fingerprint(trained, cands, section, params)
    if resume and is_reusable(out["record"], fp, [out[k] for k in OUTPUTS if k != "record"]):
        return {**read_json(out["record"]), "skipped": True}
    synthetic = is_synthetic_section(section) if synthetic is None else bool(synthetic)

    names = list(cands.names)
    seg = segment_section(trained.model, section, names, tile=tile, mpp=mpp, prompt=trained.prompt,
                          colors=list(cands.colors), min_tissue=min_tissue, batch_size=batch_size,
                          progress=progress)
    cell0 = tile * mpp / section.mpp0  # a tile's side in level-0 px
    by_class = raster_regions(seg["labels"], cell0)
    regions = {cands.ids[c]: g for c, g in by_class.items()}
    write_annotation(out["geojson"], regions, negative_y=negative_y, ontology=ontology, classification=True)

    tiles = _tiles_frame(seg, cands, cell0)
    with atomic_path(out["tiles"]) as tmp:
        tiles.to_parquet(tmp, index=False)

    # the overlay shows the area the tile grid covers (whole tiles only), so the raster lies exactly on the image
    ny, nx = seg["labels"].shape
    thumb_mpp = max(section.mpp0 * max(nx, ny) * cell0 / THUMB_MAX, section.mpp0)
    f = section.mpp0 / thumb_mpp
    thumb = section.read_region(0, 0, max(1, round(nx * cell0 * f)), max(1, round(ny * cell0 * f)), mpp=thumb_mpp)
    stem = section_stem(section)
    fig = plots.segmentation_overlay_figure(thumb, seg["labels"], names, list(cands.colors),
                                            synthetic=synthetic, title=f"Predicted regions, {stem}")
    plots.save_figure(fig, out["overlay"])

    scores = None
    if section.annotation_path is not None and section._files.exists(section.annotation_path):
        truth = annotation_grid(annotation_classes(section.annotations(mpp=mpp), cands.ids, ontology),
                                seg["labels"].shape, cell=tile)
        if (truth >= 0).any():
            scores = segmentation_scores(seg["labels"], truth, class_names=names)
    n_cells = seg["labels"].size
    record = {
        "fingerprint": fp, "section": stem, "specimen": section.specimen, "section_id": section.section,
        "image": str(section.image_path), "annotation": None if section.annotation_path is None
        else str(section.annotation_path), "data": "synthetic atlas" if synthetic else "DHARANI or user data",
        "model": trained.spec, "candidates": cands.source, "n_candidates": len(cands), "prompt": trained.prompt,
        **params, "mpp0": section.mpp0, "cell_level0_px": cell0, "grid": list(seg["labels"].shape),
        "n_tiles": int(n_cells), "n_tissue_tiles": int((seg["labels"] >= 0).sum()),
        "regions": {cands.names[c]: {"id": cands.ids[c], "cells": int((seg["labels"] == c).sum()),
                                     "area_level0_px": float(g.area)} for c, g in sorted(by_class.items())},
        "scores": scores, "outputs": {k: p.name for k, p in out.items()},
    }
    write_json(out["record"], record)
    return {**record, "skipped": False}


def segment_sections(trained: Any, cands: Candidates, sections: Sequence[Any], output_dir: str | os.PathLike, *,
                     ontology: Any, progress: bool = True, **kwargs: Any) -> pd.DataFrame:
    """Segment many sections (resumable: finished ones are skipped); returns one summary row per section
    (``section, status, n_tissue_tiles, n_regions, pixel_accuracy, mean_iou``) and writes it to
    ``output_dir/summary.csv``. ``kwargs`` go to :func:`segment_to_files`."""
    from cytoclip.io import atomic_path, sweep_temps
    from cytoclip.progress import tqdm

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    sweep_temps(output_dir)  # leftovers of a killed run; finished files are never touched
    rows = []
    for section in tqdm(list(sections), desc="segment", unit="section", enabled=progress):
        rec = segment_to_files(trained, cands, section, output_dir, ontology=ontology, progress=progress, **kwargs)
        s = rec.get("scores") or {}
        rows.append({"section": rec["section"], "status": "skipped (finished)" if rec["skipped"] else "done",
                     "n_tissue_tiles": rec["n_tissue_tiles"], "n_regions": len(rec["regions"]),
                     "pixel_accuracy": s.get("pixel_accuracy"), "mean_iou": s.get("mean_iou")})
    summary = pd.DataFrame(rows, columns=["section", "status", "n_tissue_tiles", "n_regions", "pixel_accuracy",
                                          "mean_iou"])
    with atomic_path(output_dir / "summary.csv") as tmp:
        summary.to_csv(tmp, index=False)
    return summary
