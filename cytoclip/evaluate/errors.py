"""Error analysis: which regions are confused, how far apart they are in the nomenclature tree, and whether
they touch in the sections."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from cytoclip.progress import tqdm

__all__ = ["region_adjacency", "label_adjacency", "error_analysis"]


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




def error_analysis(y_true: Sequence, y_pred: Sequence, distance: Any = None,
                   adjacent: set[frozenset] | None = None, top: int = 10) -> dict[str, Any]:
    """The most-confused pairs, errors by tree distance (``distance(a, b)``: ontology hops between two class
    names) and errors between touching regions (``adjacent``: pairs from :func:`label_adjacency`).

    Returns ``{"confused_pairs": DataFrame, "by_tree_distance": DataFrame | None, "mean_tree_distance": float |
    None, "by_adjacency": dict | None}``.
    """
    from cytoclip import metrics as M

    out: dict[str, Any] = {"confused_pairs": M.confused_pairs(y_true, y_pred, top=top), "by_tree_distance": None,
                           "mean_tree_distance": None, "by_adjacency": None}
    if distance is not None:
        df = M.errors_by_tree_distance(y_true, y_pred, distance)
        out["by_tree_distance"], out["mean_tree_distance"] = df, df.attrs.get("mean_distance")
    if adjacent is not None:
        out["by_adjacency"] = M.errors_by_adjacency(y_true, y_pred, adjacent)
    return out
