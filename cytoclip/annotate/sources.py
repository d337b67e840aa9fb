"""Where a tool's inputs come from: sections (a TIFF in the DHARANI layout, any pyramidal TIFF with resolution
tags, or sections of an atlas root), image files and folders, drawn boxes and GeoJSON polygons."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["IMAGE_SUFFIXES", "image_files", "read_image", "parse_box", "parse_section_ref", "open_section",
           "atlas_sections", "read_geojson_areas", "load_ontology", "is_synthetic_section"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp")
_STEM_RE = re.compile(r"^Specimen_(\d+)_(\d+)$", re.IGNORECASE)


def image_files(paths: list[str | os.PathLike]) -> list[Path]:
    """Image files named by ``paths``: files as given, folders expanded to their images (sorted, not recursive)."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(q for q in p.iterdir() if q.is_file() and q.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise FileNotFoundError(f"{p}: folder holds no image file (expected {', '.join(IMAGE_SUFFIXES)})")
            out.extend(found)
        elif p.is_file():
            out.append(p)
        else:
            raise FileNotFoundError(f"{p}: image not found (expected an image file or a folder of images)")
    return out


def read_image(path: str | os.PathLike) -> np.ndarray:
    """An image file as an (H, W, 3) uint8 RGB array (alpha dropped, grey expanded)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"))
    except (UnidentifiedImageError, OSError) as exc:
        raise ValueError(f"{path}: not a readable image ({exc})") from None


def parse_box(text: str) -> tuple[float, float, float, float]:
    """``"x,y,w,h"`` -> floats, w and h > 0."""
    parts = [p.strip() for p in str(text).split(",")]
    try:
        x, y, w, h = (float(p) for p in parts)
    except ValueError:
        raise ValueError(f"--box {text!r}: expected x,y,w,h (four numbers: left, top, width, height in pixels "
                         f"at --box-mpp)") from None
    if not (w > 0 and h > 0):
        raise ValueError(f"--box {text!r}: width and height must be > 0")
    return x, y, w, h


def parse_section_ref(text: str) -> tuple[int, int]:
    """``"<specimen>/<section>"`` -> (specimen, section)."""
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
    if not m:
        raise ValueError(f"section {text!r}: expected <specimen>/<section> (e.g. 5/1009) with --atlas, "
                         f"or the path of a section TIFF")
    return int(m.group(1)), int(m.group(2))


def _layout_root(tif: Path) -> Path | None:
    """The atlas root of a TIFF at ``<root>/data2d/specimen_<N>/Specimen_<N>_<SEC>.tif``, else None."""
    parents = tif.resolve().parents
    if len(parents) >= 3 and parents[1].name.lower() == "data2d" and parents[0].name.lower().startswith("specimen_"):
        return parents[2]
    return None


def open_section(ref: str | os.PathLike, atlas: Any = None, ontology: Any = None) -> Any:
    """A :class:`cytoclip.atlas.Section` from a TIFF path (its annotation: the ``.json`` beside it, when there)
    or, with ``atlas``, from ``"<specimen>/<section>"``."""
    from cytoclip.atlas import Section, open_atlas

    if atlas is not None:
        return open_atlas(atlas).section(*parse_section_ref(str(ref)))
    tif = Path(ref)
    if not tif.is_file():
        raise FileNotFoundError(f"{tif}: section image not found (expected a pyramidal TIFF, or "
                                f"<specimen>/<section> with --atlas)")
    ann = tif.with_suffix(".json")
    m = _STEM_RE.match(tif.stem)
    specimen, section = (int(m.group(1)), int(m.group(2))) if m else (None, None)
    return Section(tif, ann if ann.is_file() else None, specimen=specimen, section=section, ontology=ontology)


def atlas_sections(atlas: Any, specimens: list[int] | None = None, sections: list[str] | None = None) -> list[Any]:
    """Sections of an atlas root that have an image, filtered by specimen ids and ``"N/SEC"`` references."""
    from cytoclip.atlas import open_atlas

    atlas = open_atlas(atlas)
    table = atlas.sections()
    table = table[table["image"].notna()]
    if specimens:
        table = table[table["specimen"].isin([int(s) for s in specimens])]
    if sections:
        wanted = {parse_section_ref(s) for s in sections}
        have = set(zip(table["specimen"].astype(int), table["section"].astype(int)))
        missing = sorted(wanted - have)
        if missing:
            raise ValueError(f"{atlas.url}: no section image for {', '.join(f'{a}/{b}' for a, b in missing)}")
        table = table[[(int(a), int(b)) in wanted for a, b in zip(table["specimen"], table["section"])]]
    if table.empty:
        raise ValueError(f"{atlas.url}: no section matches the filter (specimens {specimens}, sections {sections})")
    return [atlas.section(int(a), int(b)) for a, b in zip(table["specimen"], table["section"])]


def read_geojson_areas(path: str | os.PathLike) -> list[tuple[str, Any]]:
    """``(name, polygon)`` for each polygonal feature of a GeoJSON file (level-0 px; negated coordinates, as
    DHARANI stores them, are read as their absolute values like the atlas reader does). The name is the
    feature's ``name``, its QuPath class name, or ``polygon <i>``."""
    import shapely
    from shapely.geometry import shape

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: GeoJSON not found")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None
    if isinstance(doc, dict) and doc.get("type") == "FeatureCollection":
        features = doc.get("features") or []
    elif isinstance(doc, dict) and doc.get("type") == "Feature":
        features = [doc]
    elif isinstance(doc, dict) and doc.get("type") in ("Polygon", "MultiPolygon"):
        features = [{"type": "Feature", "geometry": doc, "properties": {}}]
    else:
        raise ValueError(f"{path}: expected a GeoJSON FeatureCollection, Feature or Polygon")
    out = []
    for i, feat in enumerate(features):
        gj = feat.get("geometry") if isinstance(feat, dict) else None
        if not isinstance(gj, dict) or gj.get("type") not in ("Polygon", "MultiPolygon"):
            continue
        try:
            geom = shapely.transform(shape(gj), np.abs)
        except Exception as exc:
            raise ValueError(f"{path}: feature {i} has malformed coordinates ({exc})") from None
        props = feat.get("properties") or {}
        cls = props.get("classification") if isinstance(props.get("classification"), dict) else {}
        out.append((str(props.get("name") or cls.get("name") or f"polygon {i}"), geom))
    if not out:
        raise ValueError(f"{path}: no Polygon or MultiPolygon feature")
    return out


def load_ontology(path: str | os.PathLike | None = None, atlas: Any = None, section_path: Any = None) -> Any:
    """The ontology names and colours come from: ``path`` if given, else the atlas's, else the one at the root of
    a DHARANI-layout TIFF, else the packaged DHARANI ontology."""
    from cytoclip.atlas import open_atlas
    from cytoclip.layout import ontology_path
    from cytoclip.ontology import Ontology

    if path is not None:
        return Ontology.load(path)
    if atlas is not None:
        return open_atlas(atlas).ontology
    if section_path is not None:
        root = _layout_root(Path(section_path))
        if root is not None and ontology_path(root).is_file():
            return Ontology.load(ontology_path(root))
    return Ontology.load(None)


def is_synthetic_section(section: Any) -> bool:
    """Whether a section belongs to the synthetic atlas (its root carries ``SYNTHETIC.md``): figures say so."""
    files = getattr(section, "_files", None)
    if files is not None and getattr(files, "fs", None) is not None:
        root = str(section.image_path).rsplit("/", 3)[0]
        return bool(files.exists(f"{root}/SYNTHETIC.md"))
    root = _layout_root(Path(section.image_path)) if section.image_path is not None else None
    return root is not None and (root / "SYNTHETIC.md").is_file()
