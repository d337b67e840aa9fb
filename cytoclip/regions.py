"""Low-resolution (16 µm/px) whole-region images, as in the CytoCLIP paper, Section III-B.

The pipeline for one section is a chain of plain functions of shapely geometries and numpy arrays, so each
step can be tested on hand-made geometry and called from a notebook:

1. :func:`merge_regions` maps every annotated ontology id to its merged label (``merge_map``) and unions the
   pieces of one label; excluded ids (ventricles, white matter, ...) are dropped and counted.
2. :func:`group_parts` splits a merged label into polygons and joins the ones lying within ``part_distance``
   of each other (a proximity search over the pairwise shortest distances); far groups become separate images
   captioned ``"<label>, part N"``.
3. :func:`shape_rejection` discards small regions (area) and narrow ones (area / perimeter).
4. Crops: :func:`exact_box` (tight bounding box), :func:`polygon_mask` (the region's pixels), :func:`square_box`
   (a square grown around the bounding-box centre into the neighbours) and :func:`multi_region_labels`
   (neighbours of which more than 80 % lies inside a square crop).

:func:`prepare_regions` runs this over every section of an atlas in parallel, writes one parquet shard per
section (a rerun skips finished sections) and combines them into ``manifest.parquet``, ``labels.json``,
``report.json`` and open_clip CSV views.

Default thresholds (the paper gives no numbers; all values are in 16 µm/px pixels):

- ``min_area = 400`` px² (0.1 mm², e.g. 20 x 20 px): below this a region occupies under ~1 % of the smallest
  224 px model input and shows too few cells to carry a cytoarchitectural pattern.
- ``min_area_perimeter_ratio = 3.0`` px: for a long strip of width ``w`` the ratio tends to ``w / 2``, so this
  drops strips thinner than ~6 px (~100 µm), the laminae and neuroepithelial slivers the paper calls narrow;
  a disc passes from a radius of 6 px.
- ``part_distance = 32`` px (~0.5 mm): parts of one merged region closer than this sit in the same
  neighbourhood and fit in one crop; farther parts are anatomically separate pieces.
"""

from __future__ import annotations

import math
import os
from collections import Counter, defaultdict
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import shapely
from PIL import Image
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from shapely.geometry import Polygon, box as shapely_box
from cytoclip.progress import tqdm

from cytoclip.io import atomic_path, fingerprint, read_json, write_json

DEFAULT_MIN_AREA = 400.0
DEFAULT_MIN_AREA_PERIMETER_RATIO = 3.0
DEFAULT_PART_DISTANCE = 32.0
MULTI_REGION_THRESHOLD = 0.8
BACKGROUND = 255  # the slides' background is white; crops beyond the image and masked pixels take it


# Manifest columns (docs/architecture.md): the trainer, evaluation and notebooks read these names.
MANIFEST_COLUMNS = [
    "path", "image_type", "label", "label_id", "caption", "acronym", "ontology_path",
    "multi_labels", "multi_label_ids", "mask_path", "specimen", "section", "age_gw", "plane",
    "x0", "y0", "x1", "y1", "mpp", "part", "n_parts", "area_px", "overlap", "split",
]


# ----------------------------------------------------------------------------------------------- geometry

@dataclass
class Region:
    """One image-worthy region: a merged label's group of nearby parts (``part`` counts from 1)."""

    label_id: int
    geometry: Any  # shapely Polygon or MultiPolygon in pixels at the working µm/px
    part: int = 1
    n_parts: int = 1

    @property
    def area(self) -> float:
        return float(self.geometry.area)


@dataclass
class SectionRegions:
    """What :func:`regions_from_annotations` keeps and what it removes (counts per rule and label)."""

    regions: list[Region]
    excluded_ids: list[int] = field(default_factory=list)
    unknown_ids: list[int] = field(default_factory=list)
    removed: dict[str, Counter] = field(default_factory=lambda: {"small_area": Counter(), "narrow": Counter()})


def merge_regions(annotations: Mapping[int, Any], mapping: Mapping[int, int | None]
                  ) -> tuple[dict[int, Any], list[int], list[int]]:
    """Union the annotated geometries by merged label.

    ``annotations`` maps ontology id -> geometry; ``mapping`` is ``merge_map(onto, spec)``. Returns
    ``(label_id -> geometry, excluded ids, unknown ids)``; excluded ids map to ``None``, unknown ids are absent
    from ``mapping`` (the reader reports those too; here they are only counted, never guessed).
    """
    pieces: dict[int, list] = defaultdict(list)
    excluded, unknown = [], []
    for oid, geom in annotations.items():
        oid = int(oid)
        if oid not in mapping:
            unknown.append(oid)
            continue
        label = mapping[oid]
        if label is None:
            excluded.append(oid)
            continue
        if geom is None or geom.is_empty:
            continue
        pieces[int(label)].append(geom)
    merged = {}
    for label, geoms in pieces.items():
        # Only areal parts make images: lines/points left by a repair have no pixels to crop.
        g = _polygonal(shapely.union_all(geoms))
        if not g.is_empty:
            merged[label] = g
    return merged, sorted(excluded), sorted(unknown)


def _polygonal(geom):
    """The polygonal part of a geometry (drops the points and lines a union or repair may leave)."""
    parts = [p for p in shapely.get_parts(geom) if p.geom_type in ("Polygon", "MultiPolygon") and not p.is_empty]
    polys = [q for p in parts for q in shapely.get_parts(p)]
    if not polys:
        return Polygon()
    return polys[0] if len(polys) == 1 else shapely.multipolygons(polys)


def group_parts(geometry, max_distance: float) -> list:
    """Group the polygons of ``geometry`` whose shortest distance is at most ``max_distance``.

    Pairs within the distance come from an STRtree ``dwithin`` query; the groups are the connected
    components of that proximity graph (what the paper's depth-first search from each polygon finds).
    Groups are returned as geometries, largest area first, ties by top-left corner (deterministic numbering).
    """
    if max_distance < 0:
        raise ValueError(f"part_distance: expected a distance >= 0 pixels, got {max_distance}")
    polys = [p for p in shapely.get_parts(_polygonal(geometry)) if p.area > 0]
    if not polys:
        return []
    if len(polys) == 1:
        return [polys[0]]
    tree = shapely.STRtree(polys)
    i, j = tree.query(polys, predicate="dwithin", distance=max_distance)
    graph = coo_matrix((np.ones(len(i), dtype=np.int8), (i, j)), shape=(len(polys), len(polys)))
    n, comp = connected_components(graph, directed=False)
    groups = []
    for c in range(n):
        members = [polys[k] for k in np.flatnonzero(comp == c)]
        groups.append(members[0] if len(members) == 1 else shapely.multipolygons(members))
    groups.sort(key=lambda g: (-round(g.area, 6), g.bounds[1], g.bounds[0]))
    return groups


def shape_rejection(geometry, min_area: float, min_area_perimeter_ratio: float) -> str | None:
    """Why a region is discarded (``"small_area"`` or ``"narrow"``), or ``None`` to keep it.

    Area and perimeter are in pixels of the working resolution; the rules are checked in that order, so a
    region is counted under the first rule it fails.
    """
    area = float(geometry.area)
    if area < min_area:
        return "small_area"
    perimeter = float(geometry.length)
    if perimeter > 0 and area / perimeter < min_area_perimeter_ratio:
        return "narrow"
    return None


def regions_from_annotations(annotations: Mapping[int, Any], mapping: Mapping[int, int | None],
                             min_area: float = DEFAULT_MIN_AREA,
                             min_area_perimeter_ratio: float = DEFAULT_MIN_AREA_PERIMETER_RATIO,
                             part_distance: float = DEFAULT_PART_DISTANCE) -> SectionRegions:
    """Merge, group into parts and filter one section's annotations (steps 1-3 of the module docstring).

    Part numbers and ``n_parts`` count the groups that survive the filters, so a label whose only far
    companion is too small yields one image without a part suffix.
    """
    merged, excluded, unknown = merge_regions(annotations, mapping)
    out = SectionRegions(regions=[], excluded_ids=excluded, unknown_ids=unknown)
    for label in sorted(merged):
        kept = []
        for g in group_parts(merged[label], part_distance):
            reason = shape_rejection(g, min_area, min_area_perimeter_ratio)
            if reason:
                out.removed[reason][label] += 1
            else:
                kept.append(g)
        for k, g in enumerate(kept, start=1):
            out.regions.append(Region(label_id=label, geometry=g, part=k, n_parts=len(kept)))
    return out


# -------------------------------------------------------------------------------------------------- crops

Box = tuple[int, int, int, int]  # x0, y0, x1, y1 in pixels; x1/y1 exclusive


def exact_box(geometry) -> Box:
    """The tight integer bounding box (x0, y0, x1, y1) of a geometry: every pixel it touches."""
    minx, miny, maxx, maxy = geometry.bounds
    x0, y0 = math.floor(minx), math.floor(miny)
    x1, y1 = max(math.ceil(maxx), x0 + 1), max(math.ceil(maxy), y0 + 1)
    return x0, y0, x1, y1


def square_box(bbox: Box, min_side: int, image_size: tuple[int, int] | None = None) -> Box:
    """A square around the centre of ``bbox`` with side ``max(long side of bbox, min_side)``.

    ``image_size`` = (width, height): the square is shifted to lie inside the image when it fits; a square
    larger than the image stays centred on the region (the crop fills the outside with background).
    """
    x0, y0, x1, y1 = bbox
    if min_side <= 0:
        raise ValueError(f"square side: expected a positive number of pixels, got {min_side}")
    side = max(x1 - x0, y1 - y0, int(min_side))
    sx = x0 - (side - (x1 - x0)) // 2
    sy = y0 - (side - (y1 - y0)) // 2
    if image_size is not None:
        width, height = image_size
        if side <= width:
            sx = min(max(sx, 0), width - side)
        if side <= height:
            sy = min(max(sy, 0), height - side)
    return sx, sy, sx + side, sy + side


def crop(image: np.ndarray, bbox: Box, fill: int = BACKGROUND) -> np.ndarray:
    """Cut ``bbox`` out of an (H, W, C) image; pixels outside the image take ``fill`` (white background)."""
    x0, y0, x1, y1 = bbox
    if x1 <= x0 or y1 <= y0:
        raise ValueError(f"crop box {bbox}: expected x1 > x0 and y1 > y0")
    h, w = image.shape[:2]
    out = np.full((y1 - y0, x1 - x0) + image.shape[2:], fill, dtype=image.dtype)
    ix0, iy0, ix1, iy1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    if ix1 > ix0 and iy1 > iy0:
        out[iy0 - y0:iy1 - y0, ix0 - x0:ix1 - x0] = image[iy0:iy1, ix0:ix1]
    return out


def polygon_mask(geometry, bbox: Box) -> np.ndarray:
    """Boolean (H, W) mask over ``bbox``: True where the pixel centre lies inside ``geometry``.

    Pixel (r, c) of the box covers [x0 + c, x0 + c + 1) x [y0 + r, y0 + r + 1); testing its centre against the
    polygon (holes included) makes the mask the exact rasterisation of the region.
    """
    x0, y0, x1, y1 = bbox
    ys, xs = np.mgrid[y0:y1, x0:x1].astype(np.float64) + 0.5
    shapely.prepare(geometry)
    return shapely.contains_xy(geometry, xs.ravel(), ys.ravel()).reshape(y1 - y0, x1 - x0)


def apply_mask(image: np.ndarray, mask: np.ndarray, fill: int = BACKGROUND) -> np.ndarray:
    """A copy of ``image`` with every pixel outside ``mask`` set to ``fill`` (white background)."""
    if image.shape[:2] != mask.shape:
        raise ValueError(f"mask shape {mask.shape} does not match image shape {image.shape[:2]}")
    out = image.copy()
    out[~mask] = fill
    return out


def multi_region_labels(primary_label_id: int, bbox: Box, regions: Sequence[Region],
                        threshold: float = MULTI_REGION_THRESHOLD) -> list[int]:
    """Primary label, then every other label with a region of which more than ``threshold`` lies in ``bbox``.

    ``regions`` are the section's kept regions (each part on its own); a neighbour is listed once, ordered by
    the fraction inside (largest first), then by label id. The comparison is strict: exactly 80 % is out.
    """
    window = shapely_box(*bbox)
    best: dict[int, float] = {}
    for r in regions:
        if r.label_id == primary_label_id or r.area <= 0 or not r.geometry.intersects(window):
            continue
        frac = float(r.geometry.intersection(window).area) / r.area
        if frac > threshold:
            best[r.label_id] = max(best.get(r.label_id, 0.0), frac)
    return [int(primary_label_id)] + [k for k, _ in sorted(best.items(), key=lambda kv: (-kv[1], kv[0]))]


# --------------------------------------------------------------------------------------------- one section

def image_name(specimen: int, section: int | str, label_id: int, part: int, image_type: str) -> str:
    """Deterministic file name of one crop (relative to the dataset dir)."""
    return f"images/{image_type}/S{specimen}_{section}_L{label_id}_p{part}_{image_type}.png"


def _save_png(array: np.ndarray, path: Path) -> None:
    with atomic_path(path) as tmp:
        Image.fromarray(array).save(tmp, format="PNG")


def section_rows(image: np.ndarray, found: SectionRegions, labels: Mapping[int, Mapping[str, str]],
                 provenance: Mapping[str, Any], out_dir: str | os.PathLike,
                 square_sides: Sequence[int] = (224, 336), mpp: float = 16,
                 write_images: bool = True) -> list[dict]:
    """Crop every kept region of one section, save the PNGs and return one manifest row per image.

    ``image`` is the whole section at ``mpp`` (RGB uint8); ``labels`` maps label id -> ``{"label", "acronym",
    "ontology_path"}``; ``provenance`` holds ``specimen, section, age_gw, plane``.
    """
    out_dir = Path(out_dir)
    height, width = image.shape[:2]
    rows = []
    for r in found.regions:
        meta = labels[r.label_id]
        caption = meta["label"] if r.n_parts == 1 else f"{meta['label']}, part {r.part}"
        base = {
            "label": meta["label"], "label_id": int(r.label_id), "caption": caption,
            "acronym": meta.get("acronym", ""), "ontology_path": meta.get("ontology_path", ""),
            "specimen": int(provenance["specimen"]), "section": int(provenance["section"]),
            # without specimens.csv the reader knows no age or plane: keep the row, mark them unknown
            "age_gw": float("nan") if provenance.get("age_gw") is None else float(provenance["age_gw"]),
            "plane": "" if provenance.get("plane") is None else str(provenance["plane"]), "mpp": float(mpp),
            "part": int(r.part), "n_parts": int(r.n_parts), "area_px": float(r.area), "overlap": float("nan"),
            "split": None,
        }
        spec, sec = base["specimen"], base["section"]
        ebox = exact_box(r.geometry)
        exact = crop(image, ebox)
        mask = polygon_mask(r.geometry, ebox)
        crops = [("exact", ebox, exact, ""), ("exact_mask", ebox, apply_mask(exact, mask), "mask")]
        for side in square_sides:
            sbox = square_box(ebox, int(side), (width, height))
            crops.append((f"square{int(side)}", sbox, crop(image, sbox), None))
        for image_type, bbox, pixels, extra in crops:
            rel = image_name(spec, sec, r.label_id, r.part, image_type)
            mask_rel = ""
            if extra == "mask":
                mask_rel = rel[: -len(".png")] + "_mask.png"
                if write_images:
                    _save_png(mask.astype(np.uint8) * 255, out_dir / mask_rel)
            if write_images:
                _save_png(pixels, out_dir / rel)
            if extra is None:  # square crops see neighbours: multi-region labels
                ids = multi_region_labels(r.label_id, bbox, found.regions)
            else:
                ids = [int(r.label_id)]
            rows.append({
                **base, "path": rel, "image_type": image_type, "mask_path": mask_rel,
                "multi_labels": [labels[i]["label"] for i in ids], "multi_label_ids": ids,
                "x0": int(bbox[0]), "y0": int(bbox[1]), "x1": int(bbox[2]), "y1": int(bbox[3]),
            })
    return rows


def section_key(specimen: int, section: Any) -> str:
    """The shard / report key of a section, e.g. ``S1_1009``."""
    return f"S{int(specimen)}_{section}"


def _rows_frame(rows: list[dict]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=MANIFEST_COLUMNS)
    frame["section"] = frame["section"].astype(np.int64)
    return frame


def _process_section(task: dict) -> dict:
    """Worker: read one section, make its crops, write its shard. Never raises: failures are returned."""
    from cytoclip.atlas import Atlas  # imported in the worker: keeps module import light

    key = task["key"]
    try:
        section = Atlas(task["atlas_root"]).section(task["specimen"], task["section"])
        mpp = task["params"]["mpp"]
        annotations = section.annotations(mpp=mpp)
        report = dict(getattr(section, "annotation_report", {}) or {})
        width, height = section.size(mpp)
        image = section.read_region(0, 0, width, height, mpp=mpp)
        found = regions_from_annotations(annotations, task["mapping"], task["params"]["min_area"],
                                         task["params"]["min_area_perimeter_ratio"],
                                         task["params"]["part_distance"])
        provenance = {"specimen": section.specimen, "section": int(section.section),
                      "age_gw": section.age_gw, "plane": section.plane}
        rows = section_rows(image, found, task["labels"], provenance, task["out_dir"],
                            task["params"]["square_sides"], mpp)
    except Exception as exc:  # a corrupt TIFF or bad annotation skips this section only
        return {"key": key, "ok": False, "reason": f"{type(exc).__name__}: {exc}"}
    stats = {
        "key": key, "fingerprint": task["fingerprint"], "n_regions": len(found.regions),
        "excluded_ids": found.excluded_ids, "unknown_ids": found.unknown_ids,
        "removed": {rule: {str(k): v for k, v in c.items()} for rule, c in found.removed.items()},
        "repaired": [int(i) for i in report.get("repaired", [])],
        "annotation_unknown_ids": [int(i) for i in report.get("unknown_ids", [])],
        "empty": [int(i) for i in report.get("empty", [])],
    }
    shard_dir = Path(task["out_dir"]) / "shards"
    write_json(shard_dir / f"{key}.json", stats)
    # The parquet shard is written last: its presence marks the section as finished for a rerun.
    with atomic_path(shard_dir / f"{key}.parquet") as tmp:
        _rows_frame(rows).to_parquet(tmp, index=False)
    return {"key": key, "ok": True}


def _shard_done(out_dir: Path, key: str, fp: str) -> bool:
    pq, js = out_dir / "shards" / f"{key}.parquet", out_dir / "shards" / f"{key}.json"
    if not (pq.exists() and js.exists()):
        return False
    try:
        return read_json(js).get("fingerprint") == fp
    except ValueError:
        return False


# ----------------------------------------------------------------------------------------------- dataset

def label_table(onto, label_ids: Iterable[int]) -> dict[int, dict[str, str]]:
    """label id -> ``{"label": name, "acronym", "ontology_path"}`` from the ontology."""
    out = {}
    for i in sorted(set(int(x) for x in label_ids)):
        node = onto[i]
        out[i] = {"label": onto.name(i), "acronym": getattr(node, "acronym", "") or "",
                  "ontology_path": onto.path_name(i)}
    return out


def write_openclip_csvs(manifest: pd.DataFrame, out_dir: str | os.PathLike) -> list[Path]:
    """Write ``openclip_<image_type>_<split>.csv`` views (``filepath`` absolute, ``title`` = caption).

    open_clip's training script reads them with ``--csv-img-key filepath --csv-caption-key title
    --csv-separator ,``.
    """
    out_dir = Path(out_dir).resolve()
    written = []
    for (image_type, split), group in manifest.dropna(subset=["split"]).groupby(["image_type", "split"]):
        view = pd.DataFrame({"filepath": [str(out_dir / p) for p in group["path"]],
                             "title": group["caption"].to_numpy()})
        path = out_dir / f"openclip_{image_type}_{split}.csv"
        with atomic_path(path) as tmp:
            view.to_csv(tmp, index=False)
        written.append(path)
    return written


def prepare_regions(atlas_root: str | os.PathLike, out_dir: str | os.PathLike, spec: str = "lowres",
                    min_area: float = DEFAULT_MIN_AREA,
                    min_area_perimeter_ratio: float = DEFAULT_MIN_AREA_PERIMETER_RATIO,
                    part_distance: float = DEFAULT_PART_DISTANCE,
                    square_sides: Sequence[int] = (224, 336), mpp: float = 16, workers: int | None = None,
                    seed: int = 0, image_format: str = "png", split_scheme: str = "sections",
                    val_fraction: float = 0.2) -> Path:
    """Build the whole-region dataset of an atlas into ``out_dir`` and return ``out_dir``.

    Sections run in parallel (``workers`` processes; ``None`` = CPU count, ``<= 1`` = in this process).
    Each finished section leaves ``shards/<key>.parquet``; a rerun with the same parameters skips those.
    Sections that fail to read (corrupt TIFF, missing or invalid annotation) are listed with the reason in
    ``report.json`` and skipped. The ``split`` column follows ``split_scheme`` (paper III-F by default).
    """
    from cytoclip.atlas import Atlas
    from cytoclip.ontology import load_merge_spec, merge_map
    from cytoclip.splits import assign_split

    if image_format.lower() != "png":
        # PNG keeps the crops lossless; the sources are JPEG-compressed already (paper III-A).
        raise ValueError(f"image_format: only 'png' is supported, got {image_format!r}")
    if min_area < 0 or min_area_perimeter_ratio < 0:
        raise ValueError("min_area and min_area_perimeter_ratio: expected values >= 0")
    square_sides = tuple(int(s) for s in square_sides)
    if any(s <= 0 for s in square_sides):
        raise ValueError(f"square_sides: expected positive pixel sizes, got {square_sides}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    atlas = Atlas(atlas_root)
    onto = atlas.ontology
    merge_spec = load_merge_spec(spec)
    mapping = {int(k): (None if v is None else int(v)) for k, v in merge_map(onto, merge_spec).items()}
    labels = label_table(onto, (v for v in mapping.values() if v is not None))
    params = {"spec": str(spec), "min_area": float(min_area),
              "min_area_perimeter_ratio": float(min_area_perimeter_ratio), "part_distance": float(part_distance),
              "square_sides": list(square_sides), "mpp": float(mpp), "image_format": "png"}
    fp = fingerprint(params, mapping)

    sections = atlas.sections()
    skipped: dict[str, str] = {}
    tasks = []
    for rec in sections.itertuples(index=False):
        key = section_key(rec.specimen, rec.section)
        ann = getattr(rec, "annotation", None)
        if ann is None or (isinstance(ann, float) and math.isnan(ann)) or ann == "":
            skipped[key] = (f"annotation: no annotation file for this section (expected "
                            f"Specimen_{int(rec.specimen)}_{rec.section}.json beside its TIFF)")
            continue
        if _shard_done(out_dir, key, fp):
            continue
        tasks.append({"key": key, "atlas_root": str(atlas_root), "specimen": int(rec.specimen),
                      "section": rec.section, "params": params, "mapping": mapping, "labels": labels,
                      "out_dir": str(out_dir), "fingerprint": fp})

    n_workers = (os.cpu_count() or 1) if workers is None else int(workers)
    results = []
    progress = tqdm(total=len(tasks), desc="prepare regions", unit="section")
    if n_workers <= 1 or len(tasks) <= 1:
        for t in tasks:
            results.append(_process_section(t))
            progress.update()
    else:
        with ProcessPoolExecutor(max_workers=min(n_workers, len(tasks))) as pool:
            futures = {pool.submit(_process_section, t): t["key"] for t in tasks}
            for fut in as_completed(futures):
                try:
                    results.append(fut.result())
                except Exception as exc:  # a worker that died (e.g. out of memory) costs only its section
                    results.append({"key": futures[fut], "ok": False,
                                    "reason": f"worker failed: {type(exc).__name__}: {exc}"})
                progress.update()
    progress.close()
    for res in results:
        if not res["ok"]:
            skipped[res["key"]] = res["reason"]

    return _combine(out_dir, sections, fp, params, labels, skipped, split_scheme, seed, val_fraction,
                    assign_split, atlas_root)


def _combine(out_dir: Path, sections: pd.DataFrame, fp: str, params: dict, labels: dict, skipped: dict,
             split_scheme: str, seed: int, val_fraction: float, assign_split, atlas_root) -> Path:
    """Join the shards of the current parameters into the manifest, labels, report and CSV views."""
    frames, stats = [], []
    for rec in sections.itertuples(index=False):
        key = section_key(rec.specimen, rec.section)
        if key in skipped or not _shard_done(out_dir, key, fp):
            continue
        frames.append(pd.read_parquet(out_dir / "shards" / f"{key}.parquet"))
        stats.append(read_json(out_dir / "shards" / f"{key}.json"))
    frames = [f for f in frames if len(f)]
    manifest = pd.concat(frames, ignore_index=True) if frames else _rows_frame([])
    manifest["multi_label_ids"] = manifest["multi_label_ids"].map(lambda v: [int(x) for x in v])
    manifest["multi_labels"] = manifest["multi_labels"].map(lambda v: [str(x) for x in v])
    if len(manifest):
        manifest["split"] = assign_split(manifest, split_scheme, seed=seed, val_fraction=val_fraction)
    with atomic_path(out_dir / "manifest.parquet") as tmp:
        manifest.to_parquet(tmp, index=False)

    present = sorted(set(manifest["label_id"].astype(int))) if len(manifest) else []
    class_names = sorted({labels[i]["label"] for i in present})
    write_json(out_dir / "labels.json", {
        "class_names": class_names,
        "labels": [{"label_id": i, **labels[i],
                    "n_images": int((manifest["label_id"] == i).sum())} for i in present],
    })

    removed: dict[str, dict[str, int]] = {"small_area": Counter(), "narrow": Counter()}
    excluded, unknown = Counter(), Counter()
    repaired = {}
    for s in stats:
        for rule, per_label in s["removed"].items():
            for lab, n in per_label.items():
                removed[rule][labels[int(lab)]["label"]] += n
        excluded.update(s["excluded_ids"])
        unknown.update(s["unknown_ids"] + s.get("annotation_unknown_ids", []))
        if s.get("repaired"):
            repaired[s["key"]] = s["repaired"]
    by_split = (manifest.assign(split=manifest["split"].fillna("none"))
                .groupby(["image_type", "split"]).size() if len(manifest) else pd.Series(dtype=int))
    per_label_split = (manifest[manifest["image_type"] == "exact"].assign(split=manifest["split"].fillna("none"))
                       .groupby(["label", "split"]).size() if len(manifest) else pd.Series(dtype=int))
    report = {
        "dataset": "regions", "atlas_root": str(atlas_root), "params": params, "fingerprint": fp,
        "split_scheme": split_scheme, "seed": seed, "val_fraction": val_fraction,
        "n_sections": int(len(sections)), "n_sections_used": len(stats), "n_images": int(len(manifest)),
        "n_regions": int(sum(s["n_regions"] for s in stats)), "n_labels": len(class_names),
        "removed": {rule: {"total": int(sum(c.values())), "per_label": dict(sorted(c.items()))}
                    for rule, c in removed.items()},
        "excluded_ids": {"total": int(sum(excluded.values())),
                         "per_id": {str(k): int(v) for k, v in sorted(excluded.items())}},
        "unknown_ids": {str(k): int(v) for k, v in sorted(unknown.items())},
        "repaired": repaired,
        "skipped": dict(sorted(skipped.items())),
        "images_per_type_split": {f"{t}/{s}": int(n) for (t, s), n in by_split.items()},
        "exact_images_per_label_split": {f"{lab}/{s}": int(n) for (lab, s), n in per_label_split.items()},
    }
    write_json(out_dir / "report.json", report)
    write_openclip_csvs(manifest, out_dir)
    return out_dir

