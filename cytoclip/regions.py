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

:func:`prepare_regions` runs this over every section of an atlas on the preparation engine
(:mod:`cytoclip.prepare.engine`: parallel, resumable per section, atomic), which combines the sections into
``manifest.parquet``, ``labels.json``, ``report.json`` and open_clip CSV views.

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import shapely
from PIL import Image
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from shapely.geometry import box as shapely_box

from cytoclip.atlas import polygonal as _polygonal
from cytoclip.io import atomic_path
from cytoclip.prepare import engine
from cytoclip.prepare.engine import MANIFEST_COLUMNS, Kind, label_table, section_key, write_openclip_csvs

DEFAULT_MIN_AREA = 400.0
DEFAULT_MIN_AREA_PERIMETER_RATIO = 3.0
DEFAULT_PART_DISTANCE = 32.0
MULTI_REGION_THRESHOLD = 0.8
BACKGROUND = 255  # the slides' background is white; crops beyond the image and masked pixels take it

__all__ = ["MANIFEST_COLUMNS", "KIND", "prepare_regions", "regions_from_annotations", "merge_regions",
           "group_parts", "shape_rejection", "exact_box", "square_box", "crop", "polygon_mask", "apply_mask",
           "multi_region_labels", "section_rows", "image_name", "section_key", "label_table",
           "write_openclip_csvs"]


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
    """Deterministic file name of one crop (relative to the dataset dir); it starts with the section key."""
    return f"images/{image_type}/{section_key(specimen, section)}_L{label_id}_p{part}_{image_type}.png"


def _save_png(array: np.ndarray, path: Path) -> None:
    with atomic_path(path) as tmp:
        Image.fromarray(array).save(tmp, format="PNG")


def section_rows(image: np.ndarray, found: SectionRegions, labels: Mapping[int, Mapping[str, str]],
                 provenance: Mapping[str, Any], output_dir: str | os.PathLike,
                 square_sides: Sequence[int] = (224, 336), mpp: float = 16,
                 write_images: bool = True, square_scale: float = 1.0) -> list[dict]:
    """Crop every kept region of one section, save the PNGs and return one manifest row per image.

    The square crops are named by the paper's sides (``square224``: SquareBBox with a minimum side of 224 px at
    16 µm/px on a real brain); the side used is ``side * square_scale`` (see :func:`prepare_regions`).

    ``image`` is the whole section at ``mpp`` (RGB uint8); ``labels`` maps label id -> ``{"label", "acronym",
    "ontology_path"}``; ``provenance`` holds ``specimen, section, age_gw, plane``.
    """
    out_dir = Path(output_dir)
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
            sbox = square_box(ebox, max(1, round(int(side) * square_scale)), (width, height))
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


def _rows_frame(rows: list[dict]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=MANIFEST_COLUMNS)
    frame["section"] = frame["section"].astype(np.int64)
    return frame


def _process_section(section, key: str, params: dict, context: dict, output_dir: Path) -> tuple[pd.DataFrame, dict]:
    """The engine's work unit: one section's crops (written under ``output_dir``) and manifest rows."""
    mpp = params["mpp"]
    annotations = section.annotations(mpp=mpp)
    width, height = section.size(mpp)
    image = section.read_region(0, 0, width, height, mpp=mpp)
    found = regions_from_annotations(annotations, context["mapping"], params["min_area"],
                                     params["min_area_perimeter_ratio"], params["part_distance"])
    provenance = {"specimen": section.specimen, "section": int(section.section),
                  "age_gw": section.age_gw, "plane": section.plane}
    rows = section_rows(image, found, context["labels"], provenance, output_dir, params["square_sides"], mpp,
                        square_scale=params.get("square_scale", 1.0))
    stats = {
        "n_regions": len(found.regions), "excluded_ids": found.excluded_ids, "unknown_ids": found.unknown_ids,
        # by label name, so the report needs no label table (a merge of parts has none)
        "removed": {rule: _by_name(c, context["labels"]) for rule, c in found.removed.items()},
    }
    return _rows_frame(rows), stats


def _by_name(counts: Mapping[int, int], labels: Mapping[int, Mapping[str, str]]) -> dict[str, int]:
    out: Counter = Counter()
    for label_id, n in counts.items():
        out[labels[label_id]["label"]] += int(n)
    return dict(out)


def _debris(output_dir: Path, specimen: int, section: int) -> list[tuple[Path, str]]:
    """Where one section's crops live (``images/<type>/S<sp>_<sec>_...``): swept of a killed run's temporaries."""
    images = Path(output_dir) / "images"
    prefix = f"{section_key(specimen, section)}_"
    return [(d, prefix) for d in sorted(images.iterdir()) if d.is_dir()] if images.is_dir() else []


def _summary(manifest: pd.DataFrame, records: list[dict], params: dict, context: dict) -> dict:
    """The regions report's own entries: what each rule removed, excluded ids, images per label and split."""
    removed: dict[str, Counter] = {"small_area": Counter(), "narrow": Counter()}
    excluded: Counter = Counter()
    for r in records:
        s = r["stats"]
        for rule, per_label in s["removed"].items():
            for lab, n in per_label.items():
                removed.setdefault(rule, Counter())[lab] += n
        excluded.update(s["excluded_ids"])
    per_label_split = (manifest[manifest["image_type"] == "exact"].assign(split=manifest["split"].fillna("none"))
                       .groupby(["label", "split"]).size() if len(manifest) else pd.Series(dtype=int))
    return {
        "n_regions": int(sum(r["stats"]["n_regions"] for r in records)),
        "removed": {rule: {"total": int(sum(c.values())), "per_label": dict(sorted(c.items()))}
                    for rule, c in removed.items()},
        "excluded_ids": {"total": int(sum(excluded.values())),
                         "per_id": {str(k): int(v) for k, v in sorted(excluded.items())}},
        "exact_images_per_label_split": {f"{lab}/{s}": int(n) for (lab, s), n in per_label_split.items()},
    }


#: The whole-region dataset as a kind of the preparation engine.
KIND = Kind(name="regions", columns=MANIFEST_COLUMNS, process=_process_section, debris=_debris, summary=_summary)

#: Parameters that change a section's crops (the rest only change the combined manifest's split column).
SECTION_PARAMS = ("spec", "min_area", "min_area_perimeter_ratio", "part_distance", "square_sides",
                  "square_scale", "mpp", "image_format", "format", "shard_size")


# ----------------------------------------------------------------------------------------------- dataset

def prepare_regions(atlas: Any, output_dir: str | os.PathLike, spec: str = "lowres",
                    min_area: float = DEFAULT_MIN_AREA,
                    min_area_perimeter_ratio: float = DEFAULT_MIN_AREA_PERIMETER_RATIO,
                    part_distance: float = DEFAULT_PART_DISTANCE,
                    square_sides: Sequence[int] = (224, 336), square_scale: float = 1.0, mpp: float = 16,
                    workers: int | None = None,
                    seed: int = 0, image_format: str = "png", split: str = "sections",
                    val_fraction: float = 0.2, sections: Any = None, part: str | None = None,
                    format: str = "files", shard_size: int = engine.DEFAULT_SHARD_SIZE) -> Path:
    """Build the whole-region dataset of an atlas into ``output_dir`` and return ``output_dir``.

    ``atlas``: a local path, an fsspec URL (``s3://...``) or an open ``Atlas``. Runs on the preparation engine
    (:mod:`cytoclip.prepare.engine`): sections in parallel (``workers`` processes; ``None`` = CPU count,
    ``<= 1`` = in this process), each finished section kept as ``shards/<key>.parquet`` + its record and
    reused by a rerun with the same parameters and input files. Sections that cannot be read (corrupt or
    damaged TIFF, missing or invalid annotation, specimen missing from ``specimens.csv``) are listed with
    the reason in ``report.json`` and skipped. ``sections`` picks some (specimen, section) pairs; ``part="i/N"``
    prepares a share for :func:`cytoclip.prepare.engine.merge`. The ``split`` column follows ``split``
    (paper III-F by default). ``format="shards"`` writes WebDataset tars (``shard_size`` samples at most)
    instead of PNG files (see :mod:`cytoclip.prepare.engine`).

    ``square_scale`` multiplies the SquareBBox sides, keeping their names: the paper's sides are pixels of
    real-size sections, so on smaller brains (a synthetic atlas: :func:`cytoclip.provenance.brain_scale`) the
    same box covers a larger share of the brain unless it is scaled with it. 1.0 (DHARANI) crops as the paper.
    """
    from cytoclip.atlas import open_atlas
    from cytoclip.ontology import load_merge_spec, merge_map

    if str(image_format).lower() != "png":
        # PNG keeps the crops lossless; the sources are JPEG-compressed already (paper III-A).
        raise ValueError(f"image_format: only 'png' is supported, got {image_format!r}")
    if not (min_area >= 0 and min_area_perimeter_ratio >= 0):
        raise ValueError("min_area and min_area_perimeter_ratio: expected values >= 0")
    if not part_distance >= 0:
        raise ValueError(f"part_distance: expected a distance >= 0 pixels, got {part_distance}")
    if not (float(mpp) > 0 and math.isfinite(float(mpp))):
        raise ValueError(f"mpp: expected a positive resolution in µm/px, got {mpp!r}")
    square_sides = tuple(int(s) for s in square_sides)
    if not (float(square_scale) > 0 and math.isfinite(float(square_scale))):
        raise ValueError(f"square_scale: expected a positive factor, got {square_scale!r}")
    if any(s <= 0 for s in square_sides):
        raise ValueError(f"square_sides: expected positive pixel sizes, got {square_sides}")
    if not 0.0 < float(val_fraction) < 1.0:
        raise ValueError(f"val_fraction: expected a fraction in (0, 1), got {val_fraction!r}")

    atlas = open_atlas(atlas)
    merge_spec = load_merge_spec(spec)
    mapping = {int(k): (None if v is None else int(v)) for k, v in merge_map(atlas.ontology, merge_spec).items()}
    labels = label_table(atlas.ontology, (v for v in mapping.values() if v is not None))
    params = {"spec": str(spec), "min_area": float(min_area),
              "min_area_perimeter_ratio": float(min_area_perimeter_ratio), "part_distance": float(part_distance),
              "square_sides": list(square_sides), "mpp": float(mpp), "image_format": "png",
              **({"square_scale": float(square_scale)} if float(square_scale) != 1.0 else {}),
              **engine.output_params(format, shard_size)}
    return engine.run(KIND, atlas, output_dir, params, {"mapping": mapping, "labels": labels},
                      section_params=SECTION_PARAMS, workers=workers, sections=sections,
                      split=split, seed=seed, val_fraction=val_fraction, part=part)
