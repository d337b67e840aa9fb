"""What data a number comes from: "synthetic atlas" or "DHARANI", and which specimens/planes/ages a split holds.

One rule for every stage: an atlas written by ``cytoclip synth`` carries ``SYNTHETIC.md``; a prepared dataset
records ``synthetic`` (true/false) in its ``report.json``; a derived dataset (``source.json`` naming its parent)
is what its parent is.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pandas as pd

from cytoclip.io import read_json

__all__ = ["SYNTHETIC_MARKER", "DATA_LABELS", "atlas_is_synthetic", "brain_scale", "data_label", "split_provenance"]

SYNTHETIC_MARKER = "SYNTHETIC.md"
DATA_LABELS = ("synthetic atlas", "DHARANI")


def atlas_is_synthetic(atlas: str | os.PathLike) -> bool:
    """True when the atlas root (a local path or an fsspec URL) carries the synthetic label."""
    root = str(atlas)
    if "://" in root:
        import fsspec

        fs, path = fsspec.core.url_to_fs(root)
        return bool(fs.exists(f"{path.rstrip('/')}/{SYNTHETIC_MARKER}"))
    return (Path(root) / SYNTHETIC_MARKER).is_file()


def data_label(dataset: str | os.PathLike) -> str:
    """"synthetic atlas" or "DHARANI" for a prepared (or derived) dataset directory, or an atlas root.

    Raises ValueError naming the directory when nothing says where its data came from.
    """
    d = Path(dataset)
    if (d / "data2d").exists() or (d / SYNTHETIC_MARKER).exists():  # an atlas root
        return DATA_LABELS[0] if atlas_is_synthetic(d) else DATA_LABELS[1]
    report = read_json(d / "report.json") if (d / "report.json").is_file() else {}
    if isinstance(report.get("synthetic"), bool):
        return DATA_LABELS[0] if report["synthetic"] else DATA_LABELS[1]
    source = read_json(d / "source.json") if (d / "source.json").is_file() else {}
    parent = source.get("parent")
    if parent and Path(parent).resolve() != d.resolve() and Path(parent).is_dir():
        return data_label(parent)
    raise ValueError(f"{d}: cannot tell whether this dataset comes from the synthetic atlas or DHARANI "
                     "(expected report.json with a 'synthetic' field, or source.json naming its parent)")


def brain_scale(atlas: str | os.PathLike) -> float:
    """The linear size of an atlas's brains relative to real fetal brains: 1.0 for DHARANI, ``size_scale /
    REAL_SIZE_SCALE`` for a synthetic atlas (its ``synth.json``). Sizes the paper gives in pixels of real
    sections (the SquareBBox sides) cover the same share of a brain when multiplied by it."""
    d = Path(str(atlas))
    if "://" in str(atlas) or not atlas_is_synthetic(d):
        return 1.0
    from cytoclip.synth import REAL_SIZE_SCALE

    meta = read_json(d / "synth.json") if (d / "synth.json").is_file() else {}
    size_scale = (meta.get("params") or {}).get("size_scale")
    if not isinstance(size_scale, (int, float)) or size_scale <= 0:
        raise ValueError(f"{d / 'synth.json'}: expected params.size_scale, a positive number; got {size_scale!r}")
    return float(size_scale) / REAL_SIZE_SCALE


def split_provenance(frame: pd.DataFrame) -> dict[str, Any]:
    """Which specimens, planes, ages and sections a set of manifest rows holds (recorded beside every number)."""
    def values(col: str) -> list:
        if col not in frame.columns:
            return []
        return sorted({v.item() if hasattr(v, "item") else v for v in frame[col].dropna()}, key=str)

    n_sections = (int(frame[["specimen", "section"]].drop_duplicates().shape[0])
                  if {"specimen", "section"} <= set(frame.columns) else None)
    return {"n_images": int(len(frame)), "n_labels": int(frame["label"].nunique()) if "label" in frame else None,
            "specimens": values("specimen"), "planes": values("plane"), "ages_gw": values("age_gw"),
            "n_sections": n_sections}
