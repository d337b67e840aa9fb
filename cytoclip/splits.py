"""Train/validation splits of a prepared dataset (paper Section III-F and the cross-data setups of IV-D).

Schemes are data: :data:`SCHEMES` maps a name to a function ``(manifest, seed, val_fraction, **options) ->
Series`` of ``"train"``, ``"val"`` or ``None`` (row not used). :func:`assign_split` picks one by name.

- ``sections`` (whole-region images): for each label, ``val_fraction`` of the sections that contain it (at
  least one when it appears in two sections or more) go to validation with *all* their images of that label,
  so no (label, section) pair has images on both sides.
- ``tiles`` (2 µm/px tiles): validation = tiles of other sections plus a held-out spatial block of the training
  sections. Half of ``val_fraction`` is spent on each: the ``sections`` rule at ``val_fraction / 2``, then in
  every section a contiguous band of tile rows (``val_fraction / 2`` of its rows, seeded start) goes to
  validation. Tiles outside the band that still overlap its pixel rows (overlapping tile grids) are set to
  ``None``, so no pixel is seen on both sides.
- ``cross_age``: train on the specimen(s) at ``train_age`` GW (24, the paper's S5), validate on ``val_age``
  (21, S3); other specimens unused.
- ``cross_plane``: train on every sagittal section, validate on every coronal one.
"""

from __future__ import annotations

import zlib
from typing import Any, Callable

import numpy as np
import pandas as pd

TRAIN, VAL = "train", "val"


def _stable_seed(*parts: Any) -> int:
    """A process-independent integer from parts (Python's ``hash`` of strings is salted per process)."""
    return zlib.crc32("|".join(map(str, parts)).encode())


def _require(manifest: pd.DataFrame, columns: list[str], scheme: str) -> None:
    missing = [c for c in columns if c not in manifest.columns]
    if missing:
        raise ValueError(f"split scheme {scheme!r}: manifest lacks column(s) {missing}; "
                         f"expected a prepared-dataset manifest (docs/architecture.md)")


def _label_key(manifest: pd.DataFrame) -> np.ndarray:
    return (manifest["label_id"] if "label_id" in manifest.columns else manifest["label"]).to_numpy()


def _section_key(manifest: pd.DataFrame) -> np.ndarray:
    return (manifest["specimen"].astype(str) + "_" + manifest["section"].astype(str)).to_numpy()


def n_validation_sections(n_sections: int, val_fraction: float) -> int:
    """How many of a label's ``n_sections`` go to validation: round(fraction * n), >= 1 when n >= 2, < n."""
    if n_sections < 2:
        return 0
    return int(min(max(1, round(val_fraction * n_sections)), n_sections - 1))


def split_by_sections(manifest: pd.DataFrame, seed: int = 0, val_fraction: float = 0.2) -> pd.Series:
    """Paper III-F: per label, a seeded ``val_fraction`` of its sections go to validation (whole pairs)."""
    _require(manifest, ["specimen", "section", "label"], "sections")
    split = np.full(len(manifest), TRAIN, dtype=object)
    keys = pd.DataFrame({"label": _label_key(manifest), "section": _section_key(manifest)})
    # positions of every (label, section) pair: one pass over the rows, not one mask per label (millions of tiles)
    pairs = keys.groupby(["label", "section"], sort=True).indices
    by_label: dict[Any, list[str]] = {}
    for label, section in pairs:
        by_label.setdefault(label, []).append(section)
    for label, secs in by_label.items():
        k = n_validation_sections(len(secs), val_fraction)
        if k == 0:
            continue
        # One generator per label, seeded from (seed, label): a label's choice does not depend on the others.
        rng = np.random.default_rng(_stable_seed(seed, label))
        for sec in rng.choice(sorted(secs), size=k, replace=False):
            split[pairs[(label, sec)]] = VAL
    return pd.Series(split, index=manifest.index, name="split")


def split_by_tiles(manifest: pd.DataFrame, seed: int = 0, val_fraction: float = 0.2) -> pd.Series:
    """Paper III-F for tiles: held-out sections per label plus a held-out band of tile rows per section."""
    _require(manifest, ["specimen", "section", "label", "y0", "y1"], "tiles")
    split = split_by_sections(manifest, seed=seed, val_fraction=val_fraction / 2).to_numpy()
    all_y0, all_y1 = manifest["y0"].to_numpy(), manifest["y1"].to_numpy()
    groups = pd.Series(_section_key(manifest)).groupby(_section_key(manifest), sort=True).indices
    for sec, pos in groups.items():
        y0, y1 = all_y0[pos], all_y1[pos]
        rows = np.unique(y0)
        n_band = int(round(val_fraction / 2 * len(rows)))
        if len(rows) < 2 or n_band == 0:
            continue
        n_band = min(n_band, len(rows) - 1)
        rng = np.random.default_rng(_stable_seed(seed, "band", sec))
        start = int(rng.integers(0, len(rows) - n_band + 1))
        in_band = np.isin(y0, rows[start:start + n_band])
        top, bottom = y0[in_band].min(), y1[in_band].max()
        touches = (y0 < bottom) & (y1 > top) & ~in_band  # shares pixel rows with the band
        split[pos[in_band]] = VAL
        split[pos[touches & (split[pos] != VAL)]] = None
    return pd.Series(split, index=manifest.index, name="split")


def split_cross_age(manifest: pd.DataFrame, seed: int = 0, val_fraction: float = 0.2,
                    train_age: float = 24.0, val_age: float = 21.0) -> pd.Series:
    """Train on the specimens at ``train_age`` GW, validate on those at ``val_age`` GW; others unused."""
    _require(manifest, ["age_gw"], "cross_age")
    ages = manifest["age_gw"].astype(float)
    available = sorted(set(ages))
    for name, age in (("train_age", train_age), ("val_age", val_age)):
        if not np.isclose(ages, age).any():
            raise ValueError(f"split scheme 'cross_age': no rows with age_gw == {age} ({name}); "
                             f"the manifest has ages {available}")
    out = pd.Series(None, index=manifest.index, dtype=object, name="split")
    out[np.isclose(ages, train_age)] = TRAIN
    out[np.isclose(ages, val_age)] = VAL
    return out


def split_cross_plane(manifest: pd.DataFrame, seed: int = 0, val_fraction: float = 0.2,
                      train_plane: str = "sagittal", val_plane: str = "coronal") -> pd.Series:
    """Train on every ``train_plane`` section, validate on every ``val_plane`` one; others unused."""
    _require(manifest, ["plane"], "cross_plane")
    planes = manifest["plane"].astype(str).str.lower()
    for name, plane in (("train_plane", train_plane), ("val_plane", val_plane)):
        if not (planes == plane).any():
            raise ValueError(f"split scheme 'cross_plane': no rows with plane == {plane!r} ({name}); "
                             f"the manifest has planes {sorted(planes.unique())}")
    out = pd.Series(None, index=manifest.index, dtype=object, name="split")
    out[planes == train_plane] = TRAIN
    out[planes == val_plane] = VAL
    return out


SCHEMES: dict[str, Callable[..., pd.Series]] = {
    "sections": split_by_sections,
    "tiles": split_by_tiles,
    "cross_age": split_cross_age,
    "cross_plane": split_cross_plane,
}


def assign_split(manifest: pd.DataFrame, scheme: str, seed: int = 0, val_fraction: float = 0.2,
                 **options: Any) -> pd.Series:
    """The split (``"train"``, ``"val"`` or ``None``) of every manifest row under a named scheme.

    ``options`` go to the scheme (e.g. ``train_age=24, val_age=21`` for ``cross_age``).
    """
    if scheme not in SCHEMES:
        raise ValueError(f"split scheme {scheme!r}: unknown; expected one of {sorted(SCHEMES)}")
    if not 0.0 <= float(val_fraction) < 1.0:
        raise ValueError(f"val_fraction: expected a fraction in [0, 1), got {val_fraction}")
    out = SCHEMES[scheme](manifest, seed=seed, val_fraction=float(val_fraction), **options)
    return out.rename("split")
