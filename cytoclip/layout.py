"""The DHARANI on-disk layout: where files live, and writers that produce files in that layout.

```
<root>/ontology/ontology.json
<root>/specimens.csv                                    (specimen, age_gw, plane, source)
<root>/data2d/specimen_<N>/Specimen_<N>_<SEC>.tif       pyramidal, tiled, JPEG-compressed RGB
<root>/data2d/specimen_<N>/Specimen_<N>_<SEC>.json      GeoJSON FeatureCollection (level-0 px, y negated)
```

The writers are used by the synthetic atlas and by tests; the reader is :mod:`cytoclip.atlas`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from cytoclip.io import atomic_path

SPECIMENS_TABLE = "specimens.csv"
SPECIMENS_COLUMNS = ("specimen", "age_gw", "plane", "source")
PLANES = ("sagittal", "coronal")
ONTOLOGY_RELPATH = Path("ontology") / "ontology.json"
DATA2D = "data2d"


def specimen_dir(root: str | os.PathLike, specimen: int) -> Path:
    """Directory holding one specimen's sections: ``<root>/data2d/specimen_<N>``."""
    return Path(root) / DATA2D / f"specimen_{int(specimen)}"


def section_stem(specimen: int, section: int) -> str:
    """File stem of a section, ``Specimen_<N>_<SEC>``."""
    return f"Specimen_{int(specimen)}_{int(section)}"


def section_paths(root: str | os.PathLike, specimen: int, section: int) -> tuple[Path, Path]:
    """Return ``(tif_path, json_path)`` of a section in the DHARANI layout."""
    d = specimen_dir(root, specimen)
    stem = section_stem(specimen, section)
    return d / f"{stem}.tif", d / f"{stem}.json"


def ontology_path(root: str | os.PathLike) -> Path:
    """Path of the atlas's ontology, ``<root>/ontology/ontology.json``."""
    return Path(root) / ONTOLOGY_RELPATH


def specimens_path(root: str | os.PathLike) -> Path:
    """Path of the specimens table, ``<root>/specimens.csv``."""
    return Path(root) / SPECIMENS_TABLE


# --------------------------------------------------------------------------------------------- images

def downsample2x(image: np.ndarray) -> np.ndarray:
    """Halve an (H, W, C) uint8 image by 2x2 mean (odd edges replicated, rounded half up).

    The output is ``ceil(H/2) x ceil(W/2)`` so the last level still covers the whole section.
    """
    if image.ndim != 3:
        raise ValueError(f"downsample2x: expected an (H, W, C) array, got shape {image.shape}")
    h, w = image.shape[:2]
    pad = ((0, h % 2), (0, w % 2), (0, 0))
    if h % 2 or w % 2:
        image = np.pad(image, pad, mode="edge")
    acc = image.astype(np.uint16)
    s = acc[0::2, 0::2] + acc[1::2, 0::2] + acc[0::2, 1::2] + acc[1::2, 1::2]
    return ((s + 2) // 4).astype(np.uint8)


def pyramid_levels(image_level0: np.ndarray, min_size: int = 256) -> list[np.ndarray]:
    """Level 0 and successive 2x2-mean halvings while the next level's smaller side stays >= ``min_size``."""
    levels = [image_level0]
    while min(-(-levels[-1].shape[0] // 2), -(-levels[-1].shape[1] // 2)) >= min_size:
        levels.append(downsample2x(levels[-1]))
    return levels


def write_pyramid_tiff(path: str | os.PathLike, image_level0: np.ndarray, mpp0: float, tile: int = 2048,
                       quality: int = 90, min_size: int = 256) -> Path:
    """Write an RGB pyramidal TIFF like DHARANI's sections, atomically.

    One series: level 0 in the main IFD and the halved levels as SubIFDs (tifffile reads them back as
    ``series[0].levels``). Tiles are ``tile`` x ``tile`` JPEG at ``quality``; every level records its
    µm/px in X/YResolution (unit centimetre, ``1e4 / mpp`` px per cm), level k at ``mpp0 * 2**k``.
    """
    import tifffile

    image = np.asarray(image_level0)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"{path}: image_level0 must be an (H, W, 3) uint8 array, got "
                         f"{image.shape} {image.dtype}")
    if not (mpp0 > 0):
        raise ValueError(f"{path}: mpp0 must be > 0 µm/px, got {mpp0}")
    if tile % 16:
        raise ValueError(f"{path}: tile must be a multiple of 16 (TIFF requirement), got {tile}")
    levels = pyramid_levels(image, min_size=min_size)
    path = Path(path)
    common = dict(tile=(tile, tile), photometric="rgb", compression="jpeg",
                  compressionargs={"level": int(quality)}, resolutionunit="CENTIMETER",
                  metadata=None)
    with atomic_path(path) as tmp:
        with tifffile.TiffWriter(tmp, bigtiff=image.nbytes > 2**31) as tw:
            for k, level in enumerate(levels):
                px_per_cm = 1e4 / (mpp0 * 2**k)
                kw: dict[str, Any] = dict(common, resolution=(px_per_cm, px_per_cm))
                if k == 0:
                    kw["subifds"] = len(levels) - 1
                else:
                    kw["subfiletype"] = 1  # reduced-resolution image
                tw.write(level, **kw)
    return path


# ---------------------------------------------------------------------------------------- annotations

def _round_coords(coords: Iterable[Iterable[float]], negative_y: bool) -> list[list[float]]:
    out = []
    for x, y in ((c[0], c[1]) for c in coords):
        x = round(float(x), 2) + 0.0  # + 0.0 turns -0.0 into 0.0 so output is stable
        y = round(float(y), 2) + 0.0
        out.append([x, -y if negative_y else y])
    return out


def _polygon_parts(geom: Any) -> list[Any]:
    """Polygonal parts of a shapely geometry (Polygon, MultiPolygon or a collection holding them)."""
    from shapely.geometry import GeometryCollection, MultiPolygon, Polygon

    if geom is None or geom.is_empty:
        return []
    if isinstance(geom, Polygon):
        return [geom]
    if isinstance(geom, (MultiPolygon, GeometryCollection)):
        return [p for g in geom.geoms for p in _polygon_parts(g)]
    return []


def qupath_classification(name: str, color: str) -> dict:
    """The ``properties.classification`` QuPath reads and shows: ``{"name", "color": [r, g, b]}`` from "#rrggbb"."""
    text = str(color).lstrip("#")
    if len(text) != 6:
        raise ValueError(f"classification colour {color!r}: expected '#rrggbb'")
    return {"name": str(name), "color": [int(text[i:i + 2], 16) for i in (0, 2, 4)]}


def annotation_geojson(regions: Mapping[int, Any], negative_y: bool = True, ontology: Any = None,
                       classification: bool = False) -> dict:
    """Build the GeoJSON FeatureCollection dict for ``{ontology id: shapely geometry}`` in level-0 px.

    One feature per polygon part (parts of one id share ``properties.data.id``); ids in ascending order,
    parts in the geometry's own order; coordinates rounded to 0.01 px and y negated when ``negative_y``.
    ``classification`` (needs ``ontology``) adds what QuPath shows: ``objectType: "annotation"`` and
    ``classification: {name, color}`` in the ontology's name and colour of the id.
    """
    if classification and ontology is None:
        raise ValueError("annotation_geojson: classification=True needs the ontology (names and colours)")
    features = []
    for rid in sorted(regions):
        geom = regions[rid]
        if geom is not None and not hasattr(geom, "geom_type"):
            raise TypeError(f"region {rid}: expected a shapely geometry, got {type(geom).__name__}")
        parts = _polygon_parts(geom)
        if geom is not None and not geom.is_empty and not parts:
            raise ValueError(f"region {rid}: expected a polygonal geometry, got {geom.geom_type}")
        for poly in parts:
            rings = [_round_coords(poly.exterior.coords, negative_y)]
            rings += [_round_coords(r.coords, negative_y) for r in poly.interiors]
            props: dict[str, Any] = {"data": {"id": int(rid)}}
            if ontology is not None and int(rid) in ontology:
                props["name"] = ontology.name(int(rid))
                if classification:
                    props["objectType"] = "annotation"
                    props["classification"] = qupath_classification(ontology.name(int(rid)),
                                                                    ontology.color(int(rid)))
            features.append({"type": "Feature", "geometry": {"type": "Polygon", "coordinates": rings},
                             "properties": props})
    return {"type": "FeatureCollection", "features": features}


def write_annotation(path: str | os.PathLike, regions: Mapping[int, Any], negative_y: bool = True,
                     ontology: Any = None, classification: bool = False) -> Path:
    """Write a section annotation (GeoJSON, DHARANI style) atomically; same input -> identical bytes.
    ``classification`` as in :func:`annotation_geojson` (QuPath's class name and colour per feature)."""
    doc = annotation_geojson(regions, negative_y=negative_y, ontology=ontology, classification=classification)
    path = Path(path)
    with atomic_path(path) as tmp:
        # compact separators keep files of ~100 structures small; sort_keys makes bytes deterministic
        tmp.write_text(json.dumps(doc, separators=(",", ":"), sort_keys=True) + "\n")
    return path


# ---------------------------------------------------------------------------------------- specimens

def write_specimens_table(root: str | os.PathLike, rows: Iterable[Mapping[str, Any]]) -> Path:
    """Write ``<root>/specimens.csv`` (specimen, age_gw, plane, source) atomically.

    Each row needs ``specimen`` (int), ``age_gw`` (float) and ``plane`` (sagittal|coronal); ``source`` is
    free text (e.g. "synthetic").
    """
    import pandas as pd

    rows = list(rows)
    path = specimens_path(root)
    for i, row in enumerate(rows):
        missing = [c for c in ("specimen", "age_gw", "plane") if c not in row]
        if missing:
            raise ValueError(f"{path}: row {i} lacks column(s) {missing}; expected {list(SPECIMENS_COLUMNS)}")
        if row["plane"] not in PLANES:
            raise ValueError(f"{path}: row {i} plane={row['plane']!r}; expected one of {PLANES}")
    df = pd.DataFrame([{"specimen": int(r["specimen"]), "age_gw": float(r["age_gw"]),
                        "plane": str(r["plane"]), "source": str(r.get("source", ""))} for r in rows],
                      columns=list(SPECIMENS_COLUMNS))
    if df["specimen"].duplicated().any():
        raise ValueError(f"{path}: duplicate specimen ids {sorted(df.loc[df.specimen.duplicated(), 'specimen'])}")
    df = df.sort_values("specimen").reset_index(drop=True)
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)
    return path
