"""High-resolution 224 px tiles at 2 µm/px, labelled by the leaf structure they overlap most (paper III-C).

The steps, each callable on its own from a notebook:

1. :func:`tile_grid` cuts a section (its size at 2 µm/px) into a grid of non-overlapping tile boxes.
2. :func:`tissue_mask` + :func:`tissue_fraction` find tissue on a low-resolution thumbnail (32 µm/px by
   default) and give each box the fraction of its area that is tissue; background boxes are dropped.
3. :func:`label_tiles` gives each box the leaf structure covering the largest share of it, if that share
   exceeds ``min_overlap`` (40 % in the paper), else ``-1``. :func:`label_tiles_naive` is the per-tile
   reference loop it is tested and benchmarked against.
4. :func:`prepare_tiles` runs the above per section on the preparation engine (:mod:`cytoclip.prepare.engine`:
   parallel over sections, resumable, atomic), reads the kept tiles band by band (tile rows) from the pyramid,
   encodes them in memory and writes them as JPEG files or straight into WebDataset shards, and a manifest
   (columns in ``docs/architecture.md``).

Exactness of :func:`label_tiles`: it computes the exact polygon/box intersection areas (GEOS rectangle
clipping or overlay, double precision) for every (tile, region) pair that meets, found with an STR-tree;
pairs where the region contains the whole tile are recognised with a prepared-geometry predicate and get
share 1 without clipping. So it agrees with the naive loop up to floating-point rounding of the areas (~1e-12 of a tile),
and a share of 41 % or 39 % is decided exactly.
"""

from __future__ import annotations

import io
import math
import os
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import pandas as pd
import shapely
from PIL import Image

from cytoclip.io import atomic_dir
from cytoclip.ontology import load_merge_spec, merge_map
from cytoclip.prepare import engine
from cytoclip.prepare.engine import Kind, label_table
from cytoclip.prepare.shards import ShardWriter, plan_shards

__all__ = [
    "MANIFEST_COLUMNS",
    "tile_grid",
    "tissue_mask",
    "tissue_fraction",
    "label_tiles",
    "label_tiles_naive",
    "leaf_regions",
    "leaf_label_map",
    "prepare_tiles",
    "KIND",
]

#: Manifest columns of docs/architecture.md, then the tile-only extras (grid row/col, tissue fraction).
MANIFEST_COLUMNS = [*engine.MANIFEST_COLUMNS, "row", "col", "tissue"]

_IMAGE_FORMATS = {"jpg": "JPEG", "jpeg": "JPEG", "png": "PNG"}


# --------------------------------------------------------------------------------------------- grid


def tile_grid(width: int, height: int, tile: int = 224) -> np.ndarray:
    """Boxes ``(x0, y0, x1, y1)`` (int64, shape ``(N, 4)``) of the full ``tile`` x ``tile`` tiles of an image.

    Row-major order (row ``i = y0 // tile``, column ``j = x0 // tile``); the partial strip at the right and
    bottom edge is left out, as the model expects whole 224 px tiles.
    """
    if int(tile) <= 0:
        raise ValueError(f"tile: expected a positive tile size in pixels, got {tile!r}")
    if int(width) < 0 or int(height) < 0:
        raise ValueError(f"width/height: expected non-negative image size, got {width!r} x {height!r}")
    tile = int(tile)
    n_cols, n_rows = int(width) // tile, int(height) // tile
    rows, cols = np.meshgrid(np.arange(n_rows, dtype=np.int64), np.arange(n_cols, dtype=np.int64), indexing="ij")
    x0, y0 = cols.ravel() * tile, rows.ravel() * tile
    return np.stack([x0, y0, x0 + tile, y0 + tile], axis=1)


def tissue_mask(rgb: np.ndarray, saturation: float = 0.08, value: float = 0.85) -> np.ndarray:
    """Boolean mask of stained tissue in an RGB uint8 image.

    A pixel is tissue when it is coloured (HSV saturation above ``saturation``) or dark (HSV value below
    ``value``); the slide background is near-white (RGB ~245-250) and fails both tests.
    """
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] < 3:
        raise ValueError(f"rgb: expected an (H, W, 3) image, got shape {rgb.shape}")
    rgb = rgb[..., :3].astype(np.float32) / 255.0
    vmax = rgb.max(axis=2)
    vmin = rgb.min(axis=2)
    sat = (vmax - vmin) / np.maximum(vmax, 1e-6)
    return (sat > saturation) | (vmax < value)


def tissue_fraction(mask: np.ndarray, boxes: np.ndarray, scale: float | tuple[float, float]) -> np.ndarray:
    """Fraction of each box covered by ``mask`` (vectorised with a summed-area table).

    ``boxes`` are in the tiles' pixels; ``scale`` maps them to mask pixels (mask px per tile px, e.g.
    2/32 for a 32 µm/px thumbnail of 2 µm/px tiles; a pair gives x and y scales). Box edges are rounded
    to the nearest mask pixel, which is exact when tiles align with thumbnail pixels (224 px at 2 µm/px
    = 14 px at 32 µm/px). Parts of a box outside the mask count as background.
    """
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2:
        raise ValueError(f"mask: expected a 2-D boolean mask, got shape {mask.shape}")
    boxes = _check_boxes(boxes)
    sx, sy = (scale, scale) if np.isscalar(scale) else scale
    h, w = mask.shape
    sat = np.zeros((h + 1, w + 1), dtype=np.int64)
    sat[1:, 1:] = mask.cumsum(0).cumsum(1)
    x0 = np.rint(boxes[:, 0] * sx).astype(np.int64)
    y0 = np.rint(boxes[:, 1] * sy).astype(np.int64)
    # at least one mask pixel per box, so tiny scales still sample the tissue under the box
    x1 = np.maximum(np.rint(boxes[:, 2] * sx).astype(np.int64), x0 + 1)
    y1 = np.maximum(np.rint(boxes[:, 3] * sy).astype(np.int64), y0 + 1)
    area = (x1 - x0) * (y1 - y0)
    cx0, cx1 = np.clip(x0, 0, w), np.clip(x1, 0, w)
    cy0, cy1 = np.clip(y0, 0, h), np.clip(y1, 0, h)
    inside = sat[cy1, cx1] - sat[cy0, cx1] - sat[cy1, cx0] + sat[cy0, cx0]
    return inside / area


# ------------------------------------------------------------------------------------------- labels


def _check_boxes(boxes: Any) -> np.ndarray:
    boxes = np.asarray(boxes, dtype=np.float64)
    if boxes.size == 0:
        return boxes.reshape(0, 4)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes: expected an (N, 4) array of (x0, y0, x1, y1), got shape {boxes.shape}")
    if np.any(boxes[:, 2] <= boxes[:, 0]) or np.any(boxes[:, 3] <= boxes[:, 1]):
        raise ValueError("boxes: expected x1 > x0 and y1 > y0 for every box")
    return boxes


def _check_regions(regions: Mapping[int, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Sorted ids and their geometries; invalid polygons are repaired (make_valid), empty ones dropped."""
    ids, geoms = [], []
    for rid in sorted(regions):
        geom = regions[rid]
        if not isinstance(geom, shapely.Geometry):
            raise TypeError(f"regions[{rid!r}]: expected a shapely geometry, got {type(geom).__name__}")
        if geom.is_empty:
            continue
        if not geom.is_valid:
            geom = shapely.make_valid(geom)
        ids.append(int(rid))
        geoms.append(geom)
    return np.asarray(ids, dtype=np.int64), np.asarray(geoms, dtype=object)


def _pick_best(n: int, tile_idx: np.ndarray, region_ids: np.ndarray, share: np.ndarray,
               min_overlap: float) -> tuple[np.ndarray, np.ndarray]:
    """Per tile, the region with the largest share (ties: the smaller id), kept if share > min_overlap."""
    labels = np.full(n, -1, dtype=np.int64)
    overlap = np.zeros(n, dtype=np.float64)
    if len(tile_idx) == 0:
        return labels, overlap
    order = np.lexsort((region_ids, -share, tile_idx))
    t, first = np.unique(tile_idx[order], return_index=True)
    best = order[first]
    overlap[t] = share[best]
    keep = share[best] > min_overlap
    labels[t[keep]] = region_ids[best[keep]]
    return labels, overlap


def _clip_shares(boxes: np.ndarray, tile_area: np.ndarray, t_idx: np.ndarray, geoms: np.ndarray,
                 g_idx: np.ndarray) -> np.ndarray:
    """Share of tile ``t_idx[k]`` covered by ``geoms[g_idx[k]]``, by rectangle clipping grouped per tile.

    GEOS rectangle clipping is a linear pass over the polygon's edges (no noding), several times faster than
    a general overlay. Its output may be topologically untidy (touching rings), which leaves the area exact.
    ``clip_by_rect`` takes one rectangle per call, so the pairs are grouped by tile and each call clips all
    regions meeting that tile.
    """
    share = np.empty(len(t_idx), dtype=np.float64)
    if len(t_idx) == 0:
        return share
    order = np.argsort(t_idx, kind="stable")
    t_sorted = t_idx[order]
    starts = np.flatnonzero(np.r_[True, t_sorted[1:] != t_sorted[:-1]])
    ends = np.r_[starts[1:], len(order)]
    for s0, e0 in zip(starts.tolist(), ends.tolist()):
        k = int(t_sorted[s0])
        x0, y0, x1, y1 = boxes[k]
        sel = order[s0:e0]
        share[sel] = shapely.area(shapely.clip_by_rect(geoms[g_idx[sel]], x0, y0, x1, y1)) / tile_area[k]
    return share


def label_tiles(boxes: np.ndarray, regions: Mapping[int, Any], min_overlap: float = 0.4,
                method: str = "clip") -> tuple[np.ndarray, np.ndarray]:
    """Label each box with the region covering the largest share of it, if that share exceeds ``min_overlap``.

    ``boxes``: ``(N, 4)`` ``(x0, y0, x1, y1)`` in the same pixels as ``regions`` (``{ontology id: shapely
    geometry}``, one geometry per id, e.g. leaf structures from :func:`leaf_regions`). Returns
    ``(label_ids, overlap)``: int64 ids (``-1`` = no label) and float64 the largest share found for each box
    (reported even when it is below the threshold). Ties go to the smaller id.

    Vectorised and exact: an STR-tree over the tiles finds the (tile, region) pairs that meet; tiles lying
    wholly inside a region are found with ``contains_properly`` on prepared regions (share 1, no overlay);
    for the remaining boundary pairs only, the covered area is computed exactly, with ``method="clip"``
    (GEOS rectangle clipping, one call per boundary tile, default) or ``method="overlay"`` (one vectorised
    ``shapely.intersection`` over all boundary pairs; slower, kept as a cross-check).
    """
    if not 0.0 <= float(min_overlap) < 1.0:
        raise ValueError(f"min_overlap: expected a fraction in [0, 1), got {min_overlap!r}")
    if method not in ("clip", "overlay"):
        raise ValueError(f"method: expected 'clip' or 'overlay', got {method!r}")
    boxes = _check_boxes(boxes)
    n = len(boxes)
    ids, geoms = _check_regions(regions)
    if n == 0 or len(ids) == 0:
        return np.full(n, -1, dtype=np.int64), np.zeros(n, dtype=np.float64)
    tiles = shapely.box(boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3])
    tile_area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    shapely.prepare(geoms)  # prepared regions make the tree predicates cheap for big polygons
    tree = shapely.STRtree(tiles)
    g_all, t_all = tree.query(geoms, predicate="intersects")
    g_in, t_in = tree.query(geoms, predicate="contains_properly")
    # pairs that touch the region boundary = intersecting pairs minus fully-contained pairs
    key_all = t_all * len(ids) + g_all
    key_in = t_in * len(ids) + g_in
    edge = ~np.isin(key_all, key_in)
    g_e, t_e = g_all[edge], t_all[edge]
    if method == "overlay":
        share_e = shapely.area(shapely.intersection(tiles[t_e], geoms[g_e])) / tile_area[t_e]
    else:
        share_e = _clip_shares(boxes, tile_area, t_e, geoms, g_e)
    tile_idx = np.concatenate([t_in, t_e])
    region_ids = ids[np.concatenate([g_in, g_e])]
    share = np.concatenate([np.ones(len(t_in)), share_e])
    return _pick_best(n, tile_idx, region_ids, share, float(min_overlap))


def label_tiles_naive(boxes: np.ndarray, regions: Mapping[int, Any], min_overlap: float = 0.4
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Reference for :func:`label_tiles`: a Python loop over tiles and regions, one overlay per pair.

    Same inputs, outputs and tie rule. Only a bounding-box test skips regions far from the tile, so the
    benchmark compares against a sensible loop rather than an all-pairs strawman.
    """
    if not 0.0 <= float(min_overlap) < 1.0:
        raise ValueError(f"min_overlap: expected a fraction in [0, 1), got {min_overlap!r}")
    boxes = _check_boxes(boxes)
    ids, geoms = _check_regions(regions)
    bounds = [g.bounds for g in geoms]
    labels = np.full(len(boxes), -1, dtype=np.int64)
    overlap = np.zeros(len(boxes), dtype=np.float64)
    for k, (x0, y0, x1, y1) in enumerate(boxes):
        tile = shapely.box(x0, y0, x1, y1)
        best_id, best = -1, 0.0
        for rid, geom, (gx0, gy0, gx1, gy1) in zip(ids, geoms, bounds):
            if gx0 > x1 or gx1 < x0 or gy0 > y1 or gy1 < y0:
                continue
            share = tile.intersection(geom).area / tile.area
            if share > best:  # ids ascend, so a tie keeps the smaller id
                best_id, best = int(rid), share
        overlap[k] = best
        if best > min_overlap:
            labels[k] = best_id
    return labels, overlap


def leaf_regions(annotations: Mapping[int, Any], label_map: Mapping[int, int | None]) -> dict[int, Any]:
    """Map annotated ids to label ids (``label_map``, e.g. ``merge_map(onto, identity spec)``) and union pieces.

    Ids that map to ``None`` (not leaves under the identity spec) or are missing from ``label_map`` (unknown
    ids, which the atlas reader reports) are left out; several ids mapping to one label are unioned.
    """
    grouped: dict[int, list] = {}
    for rid, geom in annotations.items():
        target = label_map.get(int(rid))
        if target is None or geom is None or geom.is_empty:
            continue
        grouped.setdefault(int(target), []).append(geom)
    return {lid: (parts[0] if len(parts) == 1 else shapely.union_all(parts)) for lid, parts in grouped.items()}


# ------------------------------------------------------------------------------------------ prepare


def leaf_label_map(onto, merge_spec: str = "identity") -> dict[int, int | None]:
    """Every ontology id -> the leaf label its annotation counts for, or ``None`` (not a leaf label).

    ``merge_map(onto, merge_spec)`` gives each id its label; only labels that are leaves of the merged tree
    are kept (no structure below them maps to another label). Under the packaged ``identity`` spec these
    are exactly the ontology's leaves (paper III-C: tiles are compared against leaf-level structures);
    a parent drawn as itself therefore labels no tile.
    """
    mapping = merge_map(onto, load_merge_spec(merge_spec))
    leaves = {t for t in set(mapping.values()) - {None}
              if all(mapping[d] in (None, t) for d in onto.descendants(t))}
    return {i: (t if t in leaves else None) for i, t in mapping.items()}


def _label_map(onto, merge_spec: str) -> dict[int, int | None]:
    return leaf_label_map(onto, merge_spec)


def _subsample(n: int, max_n: int | None, seed: int, specimen: Any, section: Any) -> np.ndarray:
    """Indices of at most ``max_n`` of ``n`` items, drawn reproducibly per (seed, section), in order."""
    if max_n is None or n <= max_n:
        return np.arange(n)
    # a stable per-section seed (Python's hash() of str is salted per process)
    salt = int.from_bytes(f"{specimen}/{section}".encode(), "little") % (2**32)
    rng = np.random.default_rng([int(seed), salt])
    return np.sort(rng.choice(n, size=int(max_n), replace=False))


def _read_windows(section, boxes: np.ndarray, tile: int, mpp: float, block: int):
    """Yield ``(indices of boxes, (x0, y0) of the window, window)`` for every window holding any of ``boxes``.

    A window is a band of ``block`` tile rows across the boxes it holds (their bounding box), bands top to
    bottom, so the tiles come in manifest order. One read per band decodes each TIFF tile it touches once,
    in the TIFF's row-major order; the next band shares only the bottom TIFF tile row, decoded last, so the
    section's tile cache (128 MB by default) needs to hold one TIFF tile row (1024 px TIFF tiles: sections up
    to ~43,000 px wide) for every TIFF tile to be decoded once. Square windows cut the bands into chunks whose
    TIFF tiles the cache could not keep from one band to the next (~40 % of a real-size section re-decoded).
    """
    rows = boxes[:, 1] // tile
    group = rows // block
    order = np.argsort(group, kind="stable")  # boxes arrive row-major: members stay in index order
    starts = np.flatnonzero(np.r_[True, group[order][1:] != group[order][:-1]]).tolist() if len(order) else []
    for s0, e0 in zip(starts, [*starts[1:], len(order)]):
        members = order[s0:e0].tolist()
        sel = boxes[members]
        bx0, by0 = int(sel[:, 0].min()), int(sel[:, 1].min())
        bx1, by1 = int(sel[:, 2].max()), int(sel[:, 3].max())
        window = section.read_region(bx0, by0, bx1 - bx0, by1 - by0, mpp=mpp)
        if window.shape[:2] != (by1 - by0, bx1 - bx0):
            raise ValueError(f"read_region returned shape {window.shape}, expected ({by1 - by0}, {bx1 - bx0}, 3)")
        yield members, (bx0, by0), window


def _encoded_tiles(section, boxes: np.ndarray, tile: int, mpp: float, block: int, ext: str):
    """Yield ``(index, encoded bytes)`` for ``boxes``: each tile as its ``ext`` file would hold it (PIL,
    JPEG quality 90 or PNG), encoded in memory.

    A window becomes one PIL image and its tiles are cropped from it (a C copy), instead of one
    array copy plus one PIL conversion per tile; the pixels, hence the bytes, are the same.
    """
    fmt = _IMAGE_FORMATS[ext]
    save_kw = {"quality": 90} if fmt == "JPEG" else {}
    corners = boxes.tolist()
    for members, (bx0, by0), window in _read_windows(section, boxes, tile, mpp, block):
        image = Image.fromarray(np.ascontiguousarray(window[..., :3]))
        for k in members:
            x0, y0, x1, y1 = corners[k]
            buf = io.BytesIO()
            image.crop((x0 - bx0, y0 - by0, x1 - bx0, y1 - by0)).save(buf, format=fmt, **save_kw)
            yield k, buf.getvalue()


def _tile_dir(specimen: int, section: int) -> Path:
    """The folder of one section's tiles, relative to the dataset dir."""
    return Path("tiles") / f"specimen_{int(specimen)}" / str(int(section))


def _process_section(section, key: str, params: dict, context: dict, output_dir: Path) -> tuple[pd.DataFrame, dict]:
    """The engine's work unit: tile, label and write one section; returns its manifest rows and counts."""
    p = params
    sp, sec = int(section.specimen), int(section.section)
    tile, mpp = int(p["tile"]), float(p["mpp"])
    width, height = (int(v) for v in section.size(mpp))
    boxes = tile_grid(width, height, tile)

    thumb = np.asarray(section.read_level(p["tissue_mpp"]))
    mask = tissue_mask(thumb)
    frac = tissue_fraction(mask, boxes, (mask.shape[1] / width, mask.shape[0] / height))
    is_tissue = frac >= p["min_tissue"]

    regions = leaf_regions(section.annotations(mpp=mpp), context["label_map"])
    tissue_idx = np.flatnonzero(is_tissue)
    labels, overlap = label_tiles(boxes[tissue_idx], regions, p["min_overlap"])
    labelled = labels >= 0
    keep = np.arange(len(tissue_idx)) if p["keep_unlabelled"] else np.flatnonzero(labelled)
    keep = keep[_subsample(len(keep), p["max_tiles_per_section"], p["seed"], sp, sec)]
    kept_boxes = boxes[tissue_idx[keep]]
    kept_labels, kept_overlap, kept_frac = labels[keep], overlap[keep], frac[tissue_idx[keep]]

    rel_dir = _tile_dir(sp, sec)
    ext = p["image_format"]
    names = [f"{y // tile}_{x // tile}.{ext}" for x, y in kept_boxes[:, :2].tolist()]
    meta = context["labels"]
    label_names = [meta[int(l)]["label"] if l >= 0 else "" for l in kept_labels]
    area = {lid: float(regions[lid].area) for lid in set(kept_labels.tolist()) if lid >= 0}
    df = pd.DataFrame({
        "path": [f"{rel_dir.as_posix()}/{nm}" for nm in names],
        "image_type": "tile",
        "label": label_names,
        "label_id": kept_labels.astype(np.int64),
        "caption": label_names,
        "acronym": [meta[int(l)]["acronym"] if l >= 0 else "" for l in kept_labels],
        "ontology_path": [meta[int(l)]["ontology_path"] if l >= 0 else "" for l in kept_labels],
        "multi_labels": [[nm] if nm else [] for nm in label_names],
        "multi_label_ids": [[int(l)] if l >= 0 else [] for l in kept_labels],
        "mask_path": "",
        "specimen": np.int64(sp),
        "section": np.int64(sec),
        "age_gw": float(section.age_gw),
        "plane": str(section.plane),
        "x0": kept_boxes[:, 0].astype(np.int64), "y0": kept_boxes[:, 1].astype(np.int64),
        "x1": kept_boxes[:, 2].astype(np.int64), "y1": kept_boxes[:, 3].astype(np.int64),
        "mpp": mpp,
        "part": 1,  # 1-based like the regions manifest; a tile is one part
        "n_parts": 1,
        "area_px": [area.get(int(l), 0.0) for l in kept_labels],
        "overlap": kept_overlap,
        "split": None,
        "row": (kept_boxes[:, 1] // tile).astype(np.int64),
        "col": (kept_boxes[:, 0] // tile).astype(np.int64),
        "tissue": kept_frac,
    }, columns=MANIFEST_COLUMNS)

    tiles = _encoded_tiles(section, kept_boxes, tile, mpp, p["block"], ext)
    if p.get("format", "files") == "shards":  # straight into the section's tars, in manifest order
        df = plan_shards(df, key, int(p["shard_size"]))
        with ShardWriter(df, output_dir) as writer:
            for k, data in tiles:
                writer.add(k, data)
    else:  # a temporary folder renamed into place at the end: the section's tiles appear all at once
        with atomic_dir(output_dir / rel_dir) as tmp_dir:
            for k, data in tiles:
                with open(tmp_dir / names[k], "wb") as fh:
                    fh.write(data)

    counts = pd.Series(label_names, dtype=object)[kept_labels >= 0].value_counts()
    stats = {
        "width": width, "height": height,
        "grid_tiles": int(len(boxes)),
        "background": int((~is_tissue).sum()),
        "tissue": int(is_tissue.sum()),
        "labelled": int(labelled.sum()),
        "unlabelled": int((~labelled).sum()),
        "written": int(len(df)),
        "labels": {str(k): int(v) for k, v in counts.items()},
    }
    return df, stats


def _debris(output_dir: Path, specimen: int, section: int) -> list[tuple[Path, str]]:
    """Where one section's tile folder is renamed into place (a killed run leaves ``.<SEC>.tmp-*`` there)."""
    rel = _tile_dir(specimen, section)
    return [(Path(output_dir) / rel.parent, rel.name)]


def _summary(manifest: pd.DataFrame, records: list[dict], params: dict, context: dict) -> dict:
    """The tiles report's own entries: tile counts per rule over all sections, tiles per label."""
    totals = {k: int(sum(r["stats"][k] for r in records)) for k in
              ("grid_tiles", "background", "tissue", "labelled", "unlabelled", "written")}
    labelled = manifest[manifest["label_id"].astype(np.int64) >= 0] if len(manifest) else manifest
    counts = labelled["label"].value_counts() if len(labelled) else pd.Series(dtype=int)
    return {"image_type": "tile", "totals": totals, "labels": {str(k): int(v) for k, v in counts.items()}}


#: The tiles dataset as a kind of the preparation engine.
KIND = Kind(name="tiles", columns=MANIFEST_COLUMNS, process=_process_section, debris=_debris, summary=_summary,
            writes_shards=True)

#: Parameters that change a section's tiles (``block`` only changes how fast they are read).
SECTION_PARAMS = ("tile", "mpp", "min_overlap", "min_tissue", "keep_unlabelled", "seed", "max_tiles_per_section",
                  "image_format", "tissue_mpp", "merge_spec", "format", "shard_size")


def prepare_tiles(atlas: Any, output_dir: str | os.PathLike, tile: int = 224, mpp: float = 2,
                  min_overlap: float = 0.4, min_tissue: float = 0.5, keep_unlabelled: bool = False,
                  workers: int | None = None, seed: int = 0, sections: Iterable | pd.DataFrame | None = None,
                  max_tiles_per_section: int | None = None, image_format: str = "jpg",
                  tissue_mpp: float = 32, merge_spec: str = "identity", block: int = 1,
                  split: str = "tiles", val_fraction: float = 0.2, part: str | None = None,
                  format: str = "files", shard_size: int = engine.DEFAULT_SHARD_SIZE) -> Path:
    """Prepare the high-resolution tile dataset of an atlas (paper III-C) into ``output_dir``; returns it.

    ``atlas``: a local path, an fsspec URL (``s3://...``, ``memory://...``) or an open ``Atlas``.
    Per section (on the preparation engine, :mod:`cytoclip.prepare.engine`: ``workers`` processes, ``1`` runs
    in this process): grid of ``tile`` px tiles at ``mpp`` µm/px, tissue tiles (tissue fraction >=
    ``min_tissue`` on a ``tissue_mpp`` thumbnail), labelled by the leaf structure (``merge_spec="identity"``)
    covering more than ``min_overlap`` of the tile; unlabelled tissue tiles are kept only with
    ``keep_unlabelled`` (label ``""``, id -1). ``max_tiles_per_section`` draws a reproducible random subset
    (``seed``). Tiles are read from the pyramid ``block`` tile rows at a time (a band across the section:
    ``block`` x 224 x width x 3 bytes) and encoded in memory (JPEG quality 90, or PNG), saved as
    ``tiles/specimen_<N>/<SEC>/<row>_<col>.<ext>`` or streamed straight into the shards.

    Output: ``manifest.parquet`` (columns ``MANIFEST_COLUMNS``; boxes in ``mpp`` px; ``split`` from
    ``cytoclip.splits.assign_split(manifest, split, seed, val_fraction)``, None for unlabelled tiles),
    ``labels.json``, ``report.json`` (the engine's report: per-section counts, skips, repairs, unknown ids and
    empty geometries; tile totals and label counts) and open_clip CSV views ``openclip_tile_<split>.csv``.
    A finished section is reused by a rerun with the same parameters and input files and redone otherwise.

    Scale: one file per tile (``format="files"``, the default) suits the synthetic and demo atlases. For the
    real atlas (~4.3 M tiles) ``format="shards"`` writes WebDataset tars of at most ``shard_size`` tiles,
    grouped by section (``<sample>.jpg``, ``<sample>.txt`` caption, ``<sample>.json`` manifest row), indexed
    in ``shards.json``; open_clip reads them with ``--dataset-type webdataset``. ``part="i/N"`` prepares a
    share of the sections on one machine of N; ``cytoclip prepare merge`` combines the shares.
    """
    from cytoclip.atlas import open_atlas

    ext = str(image_format).lower()
    if ext not in _IMAGE_FORMATS:
        raise ValueError(f"image_format: expected one of {sorted(_IMAGE_FORMATS)}, got {image_format!r}")
    if not 0.0 <= float(min_tissue) <= 1.0:
        raise ValueError(f"min_tissue: expected a fraction in [0, 1], got {min_tissue!r}")
    if not 0.0 <= float(min_overlap) < 1.0:
        raise ValueError(f"min_overlap: expected a fraction in [0, 1), got {min_overlap!r}")
    if max_tiles_per_section is not None and int(max_tiles_per_section) < 1:
        raise ValueError(f"max_tiles_per_section: expected a positive count or None, got {max_tiles_per_section!r}")
    if int(block) < 1:
        raise ValueError(f"block: expected a positive number of tile rows per read window, got {block!r}")
    if int(tile) < 1:
        raise ValueError(f"tile: expected a positive tile size in pixels, got {tile!r}")
    for name, value in (("mpp", mpp), ("tissue_mpp", tissue_mpp)):
        if not (float(value) > 0 and math.isfinite(float(value))):
            raise ValueError(f"{name}: expected a positive resolution in µm/px, got {value!r}")
    if not 0.0 < float(val_fraction) < 1.0:
        raise ValueError(f"val_fraction: expected a fraction in (0, 1), got {val_fraction!r}")
    params = {
        "tile": int(tile), "mpp": float(mpp), "min_overlap": float(min_overlap), "min_tissue": float(min_tissue),
        "keep_unlabelled": bool(keep_unlabelled), "seed": int(seed),
        "max_tiles_per_section": None if max_tiles_per_section is None else int(max_tiles_per_section),
        "image_format": ext, "tissue_mpp": float(tissue_mpp), "merge_spec": str(merge_spec), "block": int(block),
        **engine.output_params(format, shard_size),
    }
    atlas = open_atlas(atlas)
    onto = atlas.ontology
    label_map = {int(k): (None if v is None else int(v)) for k, v in _label_map(onto, merge_spec).items()}
    labels = label_table(onto, {v for v in label_map.values() if v is not None})
    return engine.run(KIND, atlas, output_dir, params, {"label_map": label_map, "labels": labels},
                      section_params=SECTION_PARAMS, workers=workers, sections=sections,
                      split=split, seed=seed, val_fraction=val_fraction, part=part)
