"""Reader for an atlas in the DHARANI layout (the real mirror, an ``s3://`` URL, or the synthetic atlas).

``Atlas(root)`` lists specimens and sections; ``Section`` reads windows of the pyramidal TIFF (decoding
only the JPEG tiles a window touches) and the section's GeoJSON annotation as
``{ontology id: shapely geometry}``. The layout itself (paths, writers) is in :mod:`cytoclip.layout`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import threading
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cytoclip import layout

BACKGROUND = 255  # value of pixels outside the image (the slide background is near-white)
_SECTION_RE = re.compile(r"^Specimen_(\d+)_(\d+)\.(tif|tiff|json)$", re.IGNORECASE)


class AtlasError(Exception):
    """Bad or missing atlas data; the message names the file and what was expected."""


@dataclass(frozen=True)
class Level:
    """One pyramid level: its index, size in pixels and µm per pixel."""

    index: int
    width: int
    height: int
    mpp: float


# ------------------------------------------------------------------------------------------ file access

class _Files:
    """Uniform access to a local directory or an fsspec URL (s3://...)."""

    def __init__(self, root: str | os.PathLike):
        root_s = str(root)
        self.is_remote = "://" in root_s and not root_s.startswith("file://")
        if self.is_remote:
            try:
                import fsspec
            except ImportError:
                raise AtlasError(f"{root_s}: reading a remote atlas needs fsspec and s3fs; install the "
                                 f"'s3' extra (pip install 'cytoclip[s3]')") from None
            try:
                self.fs, path = fsspec.core.url_to_fs(root_s, anon=True) if root_s.startswith("s3://") \
                    else fsspec.core.url_to_fs(root_s)
            except ImportError as exc:
                raise AtlasError(f"{root_s}: the filesystem for this URL is not installed ({exc}); install "
                                 f"the 's3' extra (pip install 'cytoclip[s3]')") from None
            self.protocol = root_s.split("://", 1)[0]
            self.root: Any = path.rstrip("/")
            self._url = root_s.rstrip("/")  # shown as the user wrote it (memory:// paths gain a leading /)
        else:
            self.fs = None
            self.root = Path(root_s[7:] if root_s.startswith("file://") else root_s)

    def join(self, *parts: str) -> Any:
        if self.fs is None:
            return self.root.joinpath(*parts)
        return "/".join([self.root, *parts])

    def display(self, path: Any) -> str:
        if self.fs is None:
            return str(path)
        path = str(path)
        if path == self.root or path.startswith(self.root + "/"):
            return self._url + path[len(self.root):]
        return f"{self.protocol}://{path}"

    def exists(self, path: Any) -> bool:
        return Path(path).exists() if self.fs is None else self.fs.exists(path)

    def isdir(self, path: Any) -> bool:
        return Path(path).is_dir() if self.fs is None else self.fs.isdir(path)

    def listdir(self, path: Any) -> list[tuple[str, Any]]:
        """(name, full path) of the entries of a directory."""
        if self.fs is None:
            return sorted((p.name, p) for p in Path(path).iterdir())
        return sorted((p.rstrip("/").rsplit("/", 1)[-1], p) for p in self.fs.ls(path, detail=False))

    def open(self, path: Any, mode: str = "rb"):
        return open(path, mode) if self.fs is None else self.fs.open(path, mode)

    def identity(self, path: Any) -> str | None:
        """Size and version of a file (local: mtime; remote: ETag or modification time), None if absent.

        Cheap (one stat / HEAD), and changes whenever the file is rewritten: what resume fingerprints use.
        """
        if path is None:
            return None
        try:
            if self.fs is None:
                st = Path(path).stat()
                return f"{st.st_size}:{st.st_mtime_ns}"
            info = self.fs.info(path)
        except (FileNotFoundError, OSError):
            return None
        version = next((info[k] for k in ("ETag", "etag", "LastModified", "mtime", "created") if info.get(k)), "")
        return f"{info.get('size')}:{version}"


# ------------------------------------------------------------------------------------------ tile decode

def decode_tile(page: Any, data: bytes | None, index: int) -> tuple[np.ndarray | None, tuple, tuple]:
    """Decode one TIFF segment (tile or strip) of ``page``; a hook tests wrap to count decodes.

    Returns tifffile's ``(segment, indices, shape)``; JPEG segments use the page's shared JPEGTables.
    """
    return page.decode(data, index, jpegtables=page.jpegtables)


def _mpp_from_tags(page: Any) -> float | None:
    """µm/px from X/YResolution + ResolutionUnit, or None when the tags are absent or unitless."""
    tags = page.tags
    if "XResolution" not in tags or "ResolutionUnit" not in tags:
        return None
    unit = int(tags["ResolutionUnit"].value)
    um_per_unit = {2: 25400.0, 3: 10000.0}.get(unit)  # inch, centimetre; 1 = no unit
    num, den = tags["XResolution"].value
    if um_per_unit is None or not num or not den:
        return None
    return um_per_unit / (num / den)


def _lost_levels(tif: Any, pages: list[Any]) -> str:
    """What is missing from a pyramid whose file declares more levels than tifffile could read, or "".

    Level 0 names its reduced levels in the SubIFDs tag; a damaged SubIFD (or a truncated file) makes
    tifffile drop that level with only a log message, and reads would silently come from another level.
    """
    tag = pages[0].tags.get("SubIFDs") if hasattr(pages[0].tags, "get") else None
    declared = len(tag.value) if tag is not None and isinstance(tag.value, (tuple, list)) else 0
    if not declared or len(pages) - 1 >= declared:
        return ""
    w0 = pages[0].shape[1]
    found = {round(math.log2(w0 / p.shape[1])) for p in pages[1:]}
    missing = [k for k in range(1, declared + 1) if k not in found]
    shown = ", ".join(f"level {k} (1/{2**k} of level 0)" for k in missing)
    return f"{declared} reduced level(s) declared, {len(pages) - 1} readable; lost: {shown}"


# ------------------------------------------------------------------------------------------ Section

class Section:
    """One annotated section: its pyramidal image and its annotation.

    ``image_path``/``annotation_path`` are local paths or fsspec paths (then ``files`` gives access).
    The TIFF is opened lazily and kept open; ``close()`` (or ``with section:``) releases it. Sections
    pickle without their open file, so they can be passed to worker processes.
    """

    def __init__(self, image_path: Any, annotation_path: Any, specimen: int | None = None,
                 section: int | None = None, age_gw: float | None = None, plane: str | None = None,
                 ontology: Any = None, files: _Files | None = None, tile_cache_mb: float = 128):
        self.image_path = image_path
        self.annotation_path = annotation_path
        self.specimen = specimen
        self.section = section
        self.age_gw = age_gw
        self.plane = plane
        self.ontology = ontology
        self._files = files or _Files(Path(image_path).parent if image_path is not None else ".")
        self._tif = None
        self._fh = None
        self._levels: list[Level] | None = None
        self._pages: list[Any] | None = None
        self._lock = threading.RLock()
        self._ann0: dict[int, Any] | None = None
        self._ann_scaled: dict[float, dict[int, Any]] = {}
        self._report: dict | None = None
        self.tiles_decoded = 0  # running count of decoded TIFF segments (for tests and benchmarks)
        # decoded tiles, least recently used first: neighbouring windows (tiles of 224 px inside 2048 px
        # JPEG tiles) would otherwise decode the same tile again and again
        self.tile_cache_bytes = int(tile_cache_mb * 2**20)
        self._tile_cache: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()
        self._tile_cache_size = 0

    def __repr__(self) -> str:
        return f"Section(specimen={self.specimen}, section={self.section}, image={self._name(self.image_path)})"

    def _name(self, path: Any) -> str:
        return self._files.display(path) if path is not None else "<none>"

    # -- pickling / closing
    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state.update(_tif=None, _fh=None, _pages=None, _lock=None, _tile_cache=OrderedDict(), _tile_cache_size=0)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.RLock()

    def close(self) -> None:
        """Close the TIFF file if open."""
        with self._lock:
            if self._tif is not None:
                self._tif.close()
            if self._fh is not None:
                self._fh.close()
            self._tif = self._fh = self._pages = None
            self._tile_cache.clear()
            self._tile_cache_size = 0

    def __enter__(self) -> "Section":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- image
    def _open(self) -> None:
        import tifffile

        if self._tif is not None:
            return
        name = self._name(self.image_path)
        if self.image_path is None or not self._files.exists(self.image_path):
            raise AtlasError(f"{name}: section image not found (expected a pyramidal TIFF "
                             f"Specimen_<N>_<SEC>.tif)")
        fh = self._files.open(self.image_path, "rb")
        try:
            tif = tifffile.TiffFile(fh, name=os.path.basename(str(self.image_path)))
            series = tif.series[0]
            pages = [lvl.keyframe for lvl in series.levels]
        except Exception as exc:  # tifffile raises TiffFileError, ValueError, struct.error, IndexError...
            fh.close()
            raise AtlasError(f"{name}: not a readable TIFF ({type(exc).__name__}: {exc})") from None
        p0 = pages[0]
        if p0.dtype != np.uint8 or len(p0.shape) != 3 or p0.shape[-1] != 3:
            tif.close()
            fh.close()
            raise AtlasError(f"{name}: expected an RGB uint8 image, got shape {p0.shape} dtype {p0.dtype}")
        lost = _lost_levels(tif, pages)
        if lost:
            tif.close()
            fh.close()
            raise AtlasError(f"{name}: damaged pyramid, {lost}; the section would be read from the surviving "
                             f"levels only (expected every level the TIFF declares)")
        self._tif, self._fh, self._pages = tif, fh, pages
        if self._levels is None:
            self._levels = self._compute_levels(pages)

    @staticmethod
    def _compute_levels(pages: list[Any]) -> list[Level]:
        w0, h0 = pages[0].shape[1], pages[0].shape[0]
        # DHARANI's convention when the tags say nothing: level 0 = 1 µm/px, level k = 2^k µm/px
        mpp0 = _mpp_from_tags(pages[0]) or 1.0
        levels = []
        for i, p in enumerate(pages):
            w, h = p.shape[1], p.shape[0]
            mpp = _mpp_from_tags(p) if i else mpp0
            if mpp is None:
                ratio = (w0 / w + h0 / h) / 2
                k = round(math.log2(ratio))
                # odd sizes make ratios like 7.98: snap to the power of two the level was built as
                ratio = 2.0**k if abs(math.log2(ratio) - k) < 0.05 else ratio
                mpp = mpp0 * ratio
            levels.append(Level(i, w, h, float(mpp)))
        return levels

    @property
    def levels(self) -> list[Level]:
        """Pyramid levels, finest first."""
        with self._lock:
            self._open()
            return list(self._levels)

    @property
    def mpp0(self) -> float:
        """µm per pixel of level 0."""
        return self.levels[0].mpp

    def size(self, mpp: float | None = None) -> tuple[int, int]:
        """(width, height) of the whole section in pixels at ``mpp`` µm/px (level 0 when None)."""
        l0 = self.levels[0]
        f = 1.0 if mpp is None else l0.mpp / float(mpp)
        return max(1, round(l0.width * f)), max(1, round(l0.height * f))

    def level_for(self, mpp: float) -> Level:
        """The coarsest level whose µm/px is <= ``mpp`` (level 0 when ``mpp`` is finer than all)."""
        best = self.levels[0]
        for lvl in self.levels:
            if lvl.mpp <= mpp * (1 + 1e-6) and lvl.mpp >= best.mpp:
                best = lvl
        return best

    def _read_level_box(self, level: int, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
        """Pixels [y0:y1, x0:x1] of a level (integer box, may reach outside: background there)."""
        with self._lock:
            self._open()
            page = self._pages[level]
            lv = self._levels[level]
            out = np.full((y1 - y0, x1 - x0, 3), BACKGROUND, np.uint8)
            cx0, cy0, cx1, cy1 = max(x0, 0), max(y0, 0), min(x1, lv.width), min(y1, lv.height)
            if cx0 >= cx1 or cy0 >= cy1:
                return out
            if page.is_tiled:
                th, tw = page.tilelength, page.tilewidth
            else:  # strips: full-width segments of rowsperstrip rows
                th, tw = min(page.rowsperstrip or lv.height, lv.height), lv.width
            ntx = -(-lv.width // tw)
            indices = [r * ntx + c for r in range(cy0 // th, (cy1 - 1) // th + 1)
                       for c in range(cx0 // tw, (cx1 - 1) // tw + 1)]
            tiles = {i: self._tile_cache[(level, i)] for i in indices if (level, i) in self._tile_cache}
            for i in tiles:
                self._tile_cache.move_to_end((level, i))
            todo = [i for i in indices if i not in tiles]
            offsets = [page.dataoffsets[i] for i in todo]
            counts = [page.databytecounts[i] for i in todo]
            for data, index in self._tif.filehandle.read_segments(offsets, counts, todo, sort=True):
                try:
                    seg, _, shape = decode_tile(page, data, index)
                except Exception as exc:  # imagecodecs raises its own error types per codec
                    raise AtlasError(f"{self._name(self.image_path)}: level {level} tile {index} cannot be "
                                     f"decoded, the TIFF is corrupt ({type(exc).__name__}: {exc})") from None
                self.tiles_decoded += 1
                if seg is not None:
                    seg = np.asarray(seg).reshape(shape[-3], shape[-2], shape[-1])[..., :3]
                    self._cache_tile((level, index), seg)
                tiles[index] = seg
            for index, seg in tiles.items():
                if seg is None:  # empty tile (offset 0): leave background
                    continue
                ty, tx = (index // ntx) * th, (index % ntx) * tw
                # intersection of this tile with the requested clipped box
                ya, yb = max(ty, cy0), min(ty + seg.shape[0], cy1)
                xa, xb = max(tx, cx0), min(tx + seg.shape[1], cx1)
                if ya < yb and xa < xb:
                    out[ya - y0:yb - y0, xa - x0:xb - x0] = seg[ya - ty:yb - ty, xa - tx:xb - tx]
            return out

    def _cache_tile(self, key: tuple[int, int], seg: np.ndarray) -> None:
        if seg.nbytes > self.tile_cache_bytes:
            return
        self._tile_cache[key] = seg
        self._tile_cache_size += seg.nbytes
        while self._tile_cache_size > self.tile_cache_bytes:
            _, old = self._tile_cache.popitem(last=False)
            self._tile_cache_size -= old.nbytes

    def read_region(self, x: float, y: float, w: int, h: int, mpp: float | None = None,
                    coords: str = "target") -> np.ndarray:
        """Read a window as an (h', w', 3) uint8 array at ``mpp`` µm/px (level 0's when None).

        ``coords="target"``: x, y, w, h are pixels at ``mpp`` and the output is (h, w, 3).
        ``coords="level0"``: x, y, w, h are level-0 pixels; the output is that box resampled to ``mpp``.
        Reads from the coarsest level no coarser than ``mpp``, decoding only the tiles the window
        touches, and resamples (PIL bicubic, antialiased) when no level matches; outside = white.
        """
        from PIL import Image

        mpp0 = self.mpp0
        mpp = mpp0 if mpp is None else float(mpp)
        if mpp <= 0:
            raise ValueError(f"{self._name(self.image_path)}: mpp must be > 0, got {mpp}")
        if coords == "target":
            f0 = mpp / mpp0  # target px -> level-0 px
            bx0, by0, bx1, by1 = x * f0, y * f0, (x + w) * f0, (y + h) * f0
            ow, oh = int(w), int(h)
        elif coords == "level0":
            bx0, by0, bx1, by1 = x, y, x + w, y + h
            ow, oh = max(1, round(w * mpp0 / mpp)), max(1, round(h * mpp0 / mpp))
        else:
            raise ValueError(f"coords must be 'target' or 'level0', got {coords!r}")
        if ow <= 0 or oh <= 0:
            raise ValueError(f"read_region: w and h must be positive, got w={w} h={h}")
        lvl = self.level_for(mpp)
        g = mpp0 / lvl.mpp  # level-0 px -> level px
        lx0, ly0, lx1, ly1 = bx0 * g, by0 * g, bx1 * g, by1 * g
        ix0, iy0, ix1, iy1 = round(lx0), round(ly0), round(lx1), round(ly1)
        aligned = (abs(lx0 - ix0) < 1e-6 and abs(ly0 - iy0) < 1e-6 and ix1 - ix0 == ow and iy1 - iy0 == oh)
        if aligned:  # the level matches the request exactly: a plain crop
            return self._read_level_box(lvl.index, ix0, iy0, ix1, iy1)
        pad = 2  # bicubic needs a couple of source pixels beyond the box edges
        ix0, iy0 = math.floor(lx0) - pad, math.floor(ly0) - pad
        ix1, iy1 = math.ceil(lx1) + pad, math.ceil(ly1) + pad
        src = self._read_level_box(lvl.index, ix0, iy0, ix1, iy1)
        img = Image.fromarray(src).resize((ow, oh), Image.Resampling.BICUBIC,
                                          box=(lx0 - ix0, ly0 - iy0, lx1 - ix0, ly1 - iy0))
        return np.asarray(img)

    def read_level(self, mpp: float) -> np.ndarray:
        """The whole section at ``mpp`` µm/px, from the coarsest level no coarser than ``mpp``."""
        w, h = self.size(mpp)
        return self.read_region(0, 0, w, h, mpp=mpp)

    def thumbnail(self, max_size: int = 512) -> np.ndarray:
        """The whole section with its longer side ``max_size`` px."""
        l0 = self.levels[0]
        return self.read_level(l0.mpp * max(l0.width, l0.height) / max_size)

    # -- annotations
    def annotations(self, mpp: float | None = None, strict: bool = False) -> dict[int, Any]:
        """``{ontology id: shapely geometry}`` in level-0 px (``mpp=None``) or in pixels at ``mpp`` µm/px.

        Features sharing an id are unioned; invalid polygons are repaired (``shapely.make_valid``,
        polygonal parts kept) and listed in ``annotation_report["repaired"]``. Ids missing from the
        ontology are left out of the result, listed in ``annotation_report["unknown_ids"]`` and warned
        about; ``strict=True`` raises ``AtlasError`` instead. Results are cached per section.
        """
        import shapely

        if self._ann0 is None:
            self._ann0, self._report = self._load_annotations()
        if self._report["unknown_ids"]:
            msg = (f"{self._name(self.annotation_path)}: ids not in the ontology: {self._report['unknown_ids']}")
            if strict:
                raise AtlasError(msg + " (expected every properties.data.id to be an ontology id)")
        if mpp is None:
            return dict(self._ann0)
        mpp = float(mpp)
        if mpp not in self._ann_scaled:
            f = self.mpp0 / mpp
            self._ann_scaled[mpp] = {k: shapely.transform(g, lambda c, f=f: c * f) for k, g in self._ann0.items()}
        return dict(self._ann_scaled[mpp])

    @property
    def annotation_report(self) -> dict:
        """What reading the annotation found: n_features, n_ids, repaired, unknown_ids, empty (id lists)."""
        if self._report is None:
            self._ann0, self._report = self._load_annotations()
        return dict(self._report)

    def _load_annotations(self) -> tuple[dict[int, Any], dict]:
        import shapely
        from shapely.geometry import shape

        name = self._name(self.annotation_path)
        if self.annotation_path is None or not self._files.exists(self.annotation_path):
            raise AtlasError(f"{name}: section annotation not found (expected a GeoJSON FeatureCollection "
                             f"Specimen_<N>_<SEC>.json)")
        try:
            with self._files.open(self.annotation_path, "rb") as fh:
                doc = json.loads(fh.read())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise AtlasError(f"{name}: not valid JSON ({exc})") from None
        if not isinstance(doc, dict) or doc.get("type") != "FeatureCollection" \
                or not isinstance(doc.get("features"), list):
            raise AtlasError(f"{name}: expected a GeoJSON FeatureCollection with a 'features' list")
        parts: dict[int, list[Any]] = {}
        repaired: set[int] = set()
        for i, feat in enumerate(doc["features"]):
            rid = _feature_id(feat)
            if rid is None:
                raise AtlasError(f"{name}: feature {i} has no properties.data.id (expected an integer ontology id)")
            gj = feat.get("geometry")
            if gj is None:
                parts.setdefault(rid, [])
                continue
            gtype = gj.get("type") if isinstance(gj, dict) else None
            if gtype not in ("Polygon", "MultiPolygon"):
                raise AtlasError(f"{name}: feature {i} (id {rid}) has geometry type {gtype!r}; "
                                 f"expected Polygon or MultiPolygon")
            try:
                geom = shape(gj)
            except Exception as exc:
                raise AtlasError(f"{name}: feature {i} (id {rid}) has malformed coordinates ({exc})") from None
            # the real files store y (sometimes x) negated: level-0 px are the absolute values
            geom = shapely.transform(geom, np.abs)
            if not geom.is_valid:
                geom = polygonal(shapely.make_valid(geom))
                repaired.add(rid)
            parts.setdefault(rid, []).append(geom)
        regions: dict[int, Any] = {}
        empty, unknown = [], []
        for rid in sorted(parts):
            geoms = parts[rid]
            g = shapely.union_all(geoms) if geoms else None
            g = polygonal(g) if g is not None else None
            if g is None or g.is_empty or g.area <= 0:
                empty.append(rid)
                continue
            if self.ontology is not None and rid not in self.ontology:
                unknown.append(rid)
                continue
            regions[rid] = g
        if unknown:
            warnings.warn(f"{name}: ids not in the ontology, left out: {unknown}", stacklevel=3)
        report = {"path": name, "n_features": len(doc["features"]), "n_ids": len(regions),
                  "repaired": sorted(repaired), "unknown_ids": unknown, "empty": empty}
        return regions, report


def _feature_id(feat: Any) -> int | None:
    """properties.data.id of a GeoJSON feature as int, or None when absent or not integer-like."""
    try:
        rid = feat["properties"]["data"]["id"]
    except (KeyError, TypeError):
        return None
    if isinstance(rid, bool):
        return None
    try:
        f = float(rid)
    except (TypeError, ValueError):
        return None
    return int(f) if f.is_integer() else None


def polygonal(geom: Any) -> Any:
    """The polygonal part of a geometry: the points and lines a repair (make_valid) or a union may leave
    are dropped; a Polygon or MultiPolygon comes back as it is, an empty result as an empty Polygon.

    The one helper for this in the package (the annotation reader and the region pipeline use it).
    """
    import shapely
    from shapely.geometry import MultiPolygon, Polygon

    if isinstance(geom, (Polygon, MultiPolygon)):
        return geom
    polys = [q for p in shapely.get_parts(geom) if isinstance(p, (Polygon, MultiPolygon)) and not p.is_empty
             for q in shapely.get_parts(p)]
    if not polys:
        return Polygon()
    return polys[0] if len(polys) == 1 else shapely.union_all(polys)


# ------------------------------------------------------------------------------------------ Atlas

class Atlas:
    """An atlas in the DHARANI layout at ``root`` (local dir, or an fsspec URL with the ``s3`` extra).

    ``ontology`` overrides ``<root>/ontology/ontology.json`` (an ``Ontology`` or a path).
    """

    def __init__(self, root: str | os.PathLike, ontology: Any = None):
        self.files = _Files(root)
        self.root = self.files.root
        if not self.files.isdir(self.root):
            raise AtlasError(f"{self.files.display(self.root)}: atlas root not found (expected a directory "
                             f"with ontology/ and data2d/)")
        self._ontology = ontology
        self._specimens = None

    def __repr__(self) -> str:
        return f"Atlas({self.files.display(self.root)!r})"

    @property
    def url(self) -> str:
        """The root as one string (a local path or ``protocol://path``): what :func:`open_atlas` opens again,
        e.g. in a worker process."""
        return self.files.display(self.root)

    @property
    def is_synthetic(self) -> bool:
        """True when the root carries the synthetic atlas's label (``SYNTHETIC.md``)."""
        return bool(self.files.exists(self.files.join("SYNTHETIC.md")))

    def section_identity(self, specimen: int, section: int) -> dict:
        """Identity of one section's files (size and version of its TIFF and GeoJSON): a resume input."""
        tif, js = layout.section_paths(".", specimen, section)
        return {"image": self.files.identity(self.files.join(*tif.parts)),
                "annotation": self.files.identity(self.files.join(*js.parts))}

    @property
    def ontology(self) -> Any:
        """The atlas's ontology (``cytoclip.ontology.Ontology``), loaded once."""
        from cytoclip.ontology import Ontology

        if self._ontology is None or isinstance(self._ontology, (str, os.PathLike)):
            path = self._ontology if self._ontology is not None else self.files.join(*layout.ONTOLOGY_RELPATH.parts)
            if not self.files.exists(path):
                raise AtlasError(f"{self.files.display(path)}: ontology not found (expected the DHARANI "
                                 f"ontology.json; pass Atlas(root, ontology=...) to use another)")
            if self.files.fs is None or self._ontology is not None:
                self._ontology = Ontology.load(path)
            else:
                with self.files.open(path, "rb") as fh:
                    self._ontology = Ontology.from_dict(json.loads(fh.read()))
        return self._ontology

    def specimens(self) -> "Any":
        """DataFrame ``specimen, age_gw, plane[, source]`` from ``<root>/specimens.csv``."""
        import pandas as pd

        if self._specimens is not None:
            return self._specimens.copy()
        path = self.files.join(layout.SPECIMENS_TABLE)
        name = self.files.display(path)
        if not self.files.exists(path):
            raise AtlasError(f"{name}: specimens table not found. Age and plane are not in the DHARANI files; "
                             f"create it once with columns specimen (int), age_gw (float), plane "
                             f"(sagittal|coronal), source (free text), one row per specimen "
                             f"(cytoclip.layout.write_specimens_table)")
        try:
            with self.files.open(path, "rb") as fh:
                df = pd.read_csv(fh)
        except Exception as exc:
            raise AtlasError(f"{name}: not a readable CSV ({exc})") from None
        missing = [c for c in ("specimen", "age_gw", "plane") if c not in df.columns]
        if missing:
            raise AtlasError(f"{name}: missing column(s) {missing}; expected specimen, age_gw, plane (and source)")
        try:
            df["specimen"] = df["specimen"].astype(int)
            df["age_gw"] = df["age_gw"].astype(float)
        except (ValueError, TypeError) as exc:
            raise AtlasError(f"{name}: specimen must be integers and age_gw numbers ({exc})") from None
        bad = sorted(set(df["plane"]) - set(layout.PLANES))
        if bad:
            raise AtlasError(f"{name}: plane values {bad}; expected one of {list(layout.PLANES)}")
        if df["specimen"].duplicated().any():
            raise AtlasError(f"{name}: duplicate specimen rows {sorted(df.loc[df.specimen.duplicated(), 'specimen'])}")
        if "source" not in df.columns:
            df["source"] = ""
        self._specimens = df.sort_values("specimen").reset_index(drop=True)
        return self._specimens.copy()

    def sections(self, specimen: int | None = None) -> "Any":
        """DataFrame ``specimen, section, age_gw, plane, image, annotation`` found by scanning data2d/.

        A section missing its TIFF or JSON is listed with that column None. Without specimens.csv
        age_gw/plane are NaN/None and a warning names the missing table.
        """
        import pandas as pd

        data2d = self.files.join(layout.DATA2D)
        if not self.files.isdir(data2d):
            raise AtlasError(f"{self.files.display(data2d)}: data2d/ not found (expected "
                             f"data2d/specimen_<N>/Specimen_<N>_<SEC>.tif|.json)")
        found: dict[tuple[int, int], dict] = {}
        for dname, dpath in self.files.listdir(data2d):
            m = re.fullmatch(r"specimen_(\d+)", dname, re.IGNORECASE)
            if not m or (specimen is not None and int(m.group(1)) != int(specimen)):
                continue
            for fname, fpath in self.files.listdir(dpath):
                fm = _SECTION_RE.match(fname)
                if not fm:
                    continue
                key = (int(fm.group(1)), int(fm.group(2)))
                row = found.setdefault(key, {"specimen": key[0], "section": key[1], "image": None,
                                             "annotation": None})
                row["annotation" if fm.group(3).lower() == "json" else "image"] = fpath
        cols = ["specimen", "section", "age_gw", "plane", "image", "annotation"]
        df = pd.DataFrame(sorted(found.values(), key=lambda r: (r["specimen"], r["section"])),
                          columns=["specimen", "section", "image", "annotation"])
        try:
            meta = self.specimens()[["specimen", "age_gw", "plane"]]
        except AtlasError as exc:
            if not self.files.exists(self.files.join(layout.SPECIMENS_TABLE)):
                warnings.warn(str(exc), stacklevel=2)
                meta = pd.DataFrame({"specimen": pd.Series(dtype=int), "age_gw": pd.Series(dtype=float),
                                     "plane": pd.Series(dtype=object)})
            else:
                raise
        df = df.merge(meta, on="specimen", how="left")
        return df[cols].astype({"specimen": int, "section": int}).reset_index(drop=True)

    def section(self, specimen: int, section: int) -> Section:
        """Open one section (files are checked when first read)."""
        tif, js = layout.section_paths(".", specimen, section)
        image = self.files.join(*tif.parts)
        ann = self.files.join(*js.parts)
        if not self.files.exists(image) and not self.files.exists(ann):
            raise AtlasError(f"{self.files.display(image)}: section {specimen}/{section} not found "
                             f"(neither its .tif nor its .json exists)")
        age = plane = None
        try:
            sp = self.specimens()
            row = sp[sp["specimen"] == int(specimen)]
            if len(row):
                age, plane = float(row["age_gw"].iloc[0]), str(row["plane"].iloc[0])
        except AtlasError:
            pass  # the table is optional for reading pixels and polygons; sections() warns about it
        try:
            onto = self.ontology
        except AtlasError:
            onto = None  # annotations are then read without the unknown-id check
            warnings.warn(f"{self!r}: no ontology; annotation ids are not checked", stacklevel=2)
        return Section(image, ann, specimen=int(specimen), section=int(section), age_gw=age, plane=plane,
                       ontology=onto, files=self.files)


def open_atlas(atlas: "str | os.PathLike | Atlas | Any") -> "Atlas | Any":
    """The one way to open an atlas root: a local path, an fsspec URL (``s3://``, ``memory://``, ``file://``)
    or an already open atlas (returned as it is). Raises :class:`AtlasError` naming the root when it is
    not an atlas directory. Every verb and function that takes ``atlas`` goes through here."""
    if isinstance(atlas, (str, os.PathLike)):
        return Atlas(atlas)
    if all(hasattr(atlas, name) for name in ("sections", "section", "ontology")):
        return atlas
    raise TypeError(f"atlas: expected a path, an fsspec URL or an Atlas, got {type(atlas).__name__}")


# ------------------------------------------------------------------------------------------ CLI

def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``cytoclip atlas``: list specimens and sections, or describe one section."""
    parser.add_argument("root", help="atlas root (local dir in the DHARANI layout, or s3://... with the s3 extra)")
    parser.add_argument("--specimen", type=int, default=None, help="only this specimen")
    parser.add_argument("--section", type=int, default=None,
                        help="describe this section (needs --specimen): levels and annotation report")
    parser.set_defaults(func=_cli)


def _cli(args: argparse.Namespace) -> int:
    import pandas as pd

    try:
        atlas = open_atlas(args.root)
        if args.section is not None:
            if args.specimen is None:
                raise AtlasError("--section needs --specimen")
            sec = atlas.section(args.specimen, args.section)
            print(sec)
            for lvl in sec.levels:
                print(f"  level {lvl.index}: {lvl.width} x {lvl.height} px, {lvl.mpp:g} µm/px")
            print(json.dumps(sec.annotation_report, indent=2))
            return 0
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            secs = atlas.sections(args.specimen)
        try:
            print(atlas.specimens().to_string(index=False))
        except AtlasError as exc:
            print(f"warning: {exc}", file=sys.stderr)
        with pd.option_context("display.width", 200, "display.max_colwidth", 80):
            counts = secs.groupby("specimen").agg(sections=("section", "size"),
                                                  images=("image", "count"), annotations=("annotation", "count"))
            print(counts.to_string())
            view = secs.assign(image=secs.image.map(lambda p: os.path.basename(str(p)) if p is not None else None),
                               annotation=secs.annotation.map(lambda p: os.path.basename(str(p)) if p is not None else None))
            print(view.to_string(index=False))
    except AtlasError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0
