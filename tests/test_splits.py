"""Split schemes: paper III-F section rule, tile blocks, cross-age and cross-plane."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cytoclip.splits import SCHEMES, assign_split, n_validation_sections


def _regions_manifest(n_sections=10, n_labels=6, seed=0):
    """Labels appear in varying numbers of sections, with several image types per (label, section)."""
    rng = np.random.default_rng(seed)
    rows = []
    for lab in range(n_labels):
        secs = rng.choice(n_sections, size=max(1, lab * 2), replace=False) if lab else [3]
        for s in secs:
            for t in ("exact", "exact_mask", "square224"):
                rows.append({"label": f"L{lab}", "label_id": 100 + lab, "specimen": 1 + int(s) % 2,
                             "section": int(s), "image_type": t, "age_gw": 21.0, "plane": "sagittal"})
    return pd.DataFrame(rows)


def test_sections_no_label_section_pair_in_both_sets():
    m = _regions_manifest()
    split = assign_split(m, "sections", seed=1)
    assert set(split.unique()) <= {"train", "val"}
    pairs = m.assign(split=split).groupby(["label", "specimen", "section"])["split"].nunique()
    assert (pairs == 1).all()


def test_sections_about_twenty_percent_per_label():
    m = _regions_manifest()
    split = assign_split(m, "sections", seed=0)
    df = m.assign(split=split).drop_duplicates(["label", "specimen", "section"])
    for label, g in df.groupby("label"):
        n = len(g)
        n_val = (g["split"] == "val").sum()
        assert n_val == n_validation_sections(n, 0.2)
        if n >= 2:
            assert 1 <= n_val < n
        else:
            assert n_val == 0  # a label seen in one section stays in training
    assert n_validation_sections(10, 0.2) == 2 and n_validation_sections(2, 0.2) == 1


def test_sections_deterministic_by_seed():
    m = _regions_manifest(n_sections=30, n_labels=8)
    a = assign_split(m, "sections", seed=3)
    b = assign_split(m, "sections", seed=3)
    c = assign_split(m, "sections", seed=4)
    pd.testing.assert_series_equal(a, b)
    assert not a.equals(c)
    # row order does not change a row's split
    shuffled = m.sample(frac=1.0, random_state=0)
    pd.testing.assert_series_equal(assign_split(shuffled, "sections", seed=3).sort_index(), a)


def _tiles_manifest(n_sections=6, rows=10, cols=8, tile=224, stride=224):
    out = []
    for s in range(n_sections):
        for r in range(rows):
            for c in range(cols):
                out.append({"label": f"L{(r * cols + c) % 3}", "label_id": (r * cols + c) % 3, "specimen": 1,
                            "section": s, "x0": c * stride, "y0": r * stride, "x1": c * stride + tile,
                            "y1": r * stride + tile, "image_type": "tile"})
    return pd.DataFrame(out)


def test_tiles_hold_out_sections_and_a_band_of_rows():
    m = _tiles_manifest()
    split = assign_split(m, "tiles", seed=0)
    m = m.assign(split=split)
    frac = (m["split"] == "val").mean()
    assert 0.1 < frac < 0.35
    for sec, g in m.groupby("section"):
        band = g[g["split"] == "val"]
        # every section holds out one contiguous band of whole tile rows (val_fraction / 2 of 10 rows = 1)
        full_rows = [y for y, r in g.groupby("y0") if (r["split"] == "val").all()]
        assert len(full_rows) >= 1
        assert not band.empty


def test_tiles_overlapping_neighbours_of_the_band_are_unused():
    m = _tiles_manifest(n_sections=1, rows=20, cols=3, tile=224, stride=112)  # half-overlapping tiles
    split = assign_split(m, "tiles", seed=2)
    val = m[split == "val"]
    train = m[split == "train"]
    assert split.isna().any()
    for _, v in val.iterrows():  # no training tile shares a pixel with a validation tile of the same section
        overlap = ((train["x0"] < v.x1) & (train["x1"] > v.x0) & (train["y0"] < v.y1) & (train["y1"] > v.y0))
        assert not overlap.any()


def _cross_manifest():
    specs = [(1, 14.0, "sagittal"), (2, 17.0, "sagittal"), (3, 21.0, "sagittal"), (4, 22.0, "coronal"),
             (5, 24.0, "sagittal")]
    return pd.DataFrame([{"specimen": s, "age_gw": a, "plane": p, "section": k, "label": "X"}
                         for s, a, p in specs for k in range(3)])


def test_cross_age_selects_24_then_21():
    m = _cross_manifest()
    split = assign_split(m, "cross_age")
    assert set(m.loc[split == "train", "specimen"]) == {5}
    assert set(m.loc[split == "val", "specimen"]) == {3}
    assert split[m["specimen"].isin([1, 2, 4])].isna().all()
    with pytest.raises(ValueError, match="age_gw == 30"):
        assign_split(m, "cross_age", train_age=30)


def test_cross_plane_trains_sagittal_validates_coronal():
    m = _cross_manifest()
    split = assign_split(m, "cross_plane")
    assert set(m.loc[split == "train", "specimen"]) == {1, 2, 3, 5}
    assert set(m.loc[split == "val", "specimen"]) == {4}
    with pytest.raises(ValueError, match="coronal"):
        assign_split(m[m["plane"] == "sagittal"], "cross_plane")


def test_unknown_scheme_and_bad_fraction_raise():
    m = _cross_manifest()
    with pytest.raises(ValueError, match="unknown.*sections"):
        assign_split(m, "random")
    with pytest.raises(ValueError, match="val_fraction"):
        assign_split(m, "sections", val_fraction=1.5)
    with pytest.raises(ValueError, match="lacks column"):
        assign_split(m.drop(columns=["plane"]), "cross_plane")
    assert set(SCHEMES) == {"sections", "tiles", "cross_age", "cross_plane"}
