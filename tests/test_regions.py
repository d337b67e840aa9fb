"""Whole-region preparation: geometry rules on hand-made shapes, then the atlas end to end (synthetic)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import shapely
import shapely.affinity
from shapely.geometry import MultiPolygon, Point, box

from cytoclip import regions as R


def _image(w=400, h=300):
    rng = np.random.default_rng(0)
    return rng.integers(0, 200, size=(h, w, 3), dtype=np.uint8)  # no pure white: background is detectable


# ------------------------------------------------------------------------------------------------- crops

def test_square_region_gives_exact_crops(tmp_path):
    img = _image()
    sq = box(100, 50, 150, 100)  # 50 x 50 px
    found = R.SectionRegions(regions=[R.Region(7, sq)])
    labels = {7: {"label": "Thalamus", "acronym": "TH", "ontology_path": "Brain / Thalamus"}}
    prov = {"specimen": 1, "section": 10, "age_gw": 21.0, "plane": "sagittal"}
    rows = R.section_rows(img, found, labels, prov, tmp_path, square_sides=(224,), mpp=16)
    by_type = {r["image_type"]: r for r in rows}
    assert set(by_type) == {"exact", "exact_mask", "square224"}
    ex = by_type["exact"]
    assert (ex["x0"], ex["y0"], ex["x1"], ex["y1"]) == (100, 50, 150, 100)
    from PIL import Image

    exact = np.asarray(Image.open(tmp_path / ex["path"]))
    np.testing.assert_array_equal(exact, img[50:100, 100:150])
    masked = np.asarray(Image.open(tmp_path / by_type["exact_mask"]["path"]))
    np.testing.assert_array_equal(masked, exact)  # a square fills its own bbox: nothing masked away
    mask = np.asarray(Image.open(tmp_path / by_type["exact_mask"]["mask_path"]))
    assert mask.shape == (50, 50) and (mask == 255).all()
    sq_img = np.asarray(Image.open(tmp_path / by_type["square224"]["path"]))
    assert sq_img.shape == (224, 224, 3)
    assert ex["caption"] == "Thalamus" and ex["multi_labels"] == ["Thalamus"] and ex["acronym"] == "TH"
    assert ex["path"] == "images/exact/S1_10_L7_p1_exact.png"


@pytest.mark.parametrize("bbox,min_side", [((100, 50, 150, 100), 224), ((10, 20, 300, 60), 224),
                                           ((0, 0, 30, 260), 100), ((390, 290, 400, 300), 64)])
def test_square_box_is_square_contains_exact_and_meets_minimum(bbox, min_side):
    s = R.square_box(bbox, min_side, image_size=(400, 300))
    side = s[2] - s[0]
    assert side == s[3] - s[1]
    assert side == max(bbox[2] - bbox[0], bbox[3] - bbox[1], min_side)
    assert s[0] <= bbox[0] and s[1] <= bbox[1] and s[2] >= bbox[2] and s[3] >= bbox[3]
    if side <= 400:
        assert 0 <= s[0] and s[2] <= 400  # shifted inside when it fits
    if side <= 300:
        assert 0 <= s[1] and s[3] <= 300


def test_square_box_larger_than_image_stays_centred_and_crop_pads_white():
    s = R.square_box((10, 10, 30, 30), 336, image_size=(100, 80))
    assert s[2] - s[0] == 336 and (s[0] + s[2]) / 2 == 20
    out = R.crop(_image(100, 80), s)
    assert out.shape == (336, 336, 3)
    assert (out[0, 0] == 255).all()  # outside the image = background white


def test_mask_is_exactly_the_polygon():
    ring = Point(60, 40).buffer(25, quad_segs=16)
    hole = Point(60, 40).buffer(8, quad_segs=16)
    donut = ring.difference(hole)
    bbox = R.exact_box(donut)
    mask = R.polygon_mask(donut, bbox)
    x0, y0, x1, y1 = bbox
    ys, xs = np.mgrid[y0:y1, x0:x1] + 0.5
    expected = np.array([[donut.contains(Point(x, y)) for x, y in zip(rx, ry)] for rx, ry in zip(xs, ys)])
    np.testing.assert_array_equal(mask, expected)
    assert not mask[40 - y0, 60 - x0]  # the hole is out
    assert abs(mask.sum() - donut.area) / donut.area < 0.03
    masked = R.apply_mask(_image(200, 100)[y0:y1, x0:x1], mask)
    assert (masked[~mask] == 255).all() and (masked[mask] < 255).any()


# ----------------------------------------------------------------------------------- multi-region labels

def _neighbour_with_fraction_inside(frac, crop_box=(0, 0, 100, 100)):
    """A 10 x 10 neighbour straddling the crop's right edge with ``frac`` of its area inside."""
    inside = 10 * frac
    x1 = crop_box[2]
    return box(x1 - inside, 40, x1 - inside + 10, 50)


def test_multi_region_rule_strictly_above_80_percent():
    crop_box = (0, 0, 100, 100)
    regions = [R.Region(1, box(20, 20, 60, 60)),
               R.Region(2, _neighbour_with_fraction_inside(0.81)),
               R.Region(3, _neighbour_with_fraction_inside(0.79)),
               R.Region(4, _neighbour_with_fraction_inside(0.80)),
               R.Region(5, box(5, 70, 15, 80))]  # fully inside
    ids = R.multi_region_labels(1, crop_box, regions)
    assert ids[0] == 1
    assert set(ids[1:]) == {2, 5}
    assert ids == [1, 5, 2]  # ordered by fraction inside


# -------------------------------------------------------------------------------------- parts and filters

def test_proximity_grouping_joins_near_and_splits_far():
    a = box(0, 0, 40, 40)
    b = box(50, 0, 90, 40)        # 10 px from a
    c = box(300, 300, 330, 330)   # far from both
    d = box(335, 300, 355, 330)   # 5 px from c
    groups = R.group_parts(MultiPolygon([a, b, c, d]), max_distance=20)
    assert len(groups) == 2
    assert groups[0].area == a.area + b.area  # largest group first = part 1
    assert groups[1].area == c.area + d.area
    assert len(R.group_parts(MultiPolygon([a, b, c, d]), max_distance=1000)) == 1
    assert len(R.group_parts(MultiPolygon([a, b, c, d]), max_distance=1)) == 4


def test_chain_of_near_parts_is_one_group():
    parts = [box(i * 30, 0, i * 30 + 25, 25) for i in range(5)]  # each 5 px from the next, ends 125 px apart
    assert len(R.group_parts(MultiPolygon(parts), max_distance=6)) == 1


def test_far_parts_get_part_captions(tmp_path):
    mapping = {11: 100, 12: 100, 13: None}
    ann = {11: box(0, 0, 40, 40), 12: box(200, 200, 230, 240), 13: box(60, 60, 90, 90)}
    found = R.regions_from_annotations(ann, mapping, min_area=100, min_area_perimeter_ratio=2, part_distance=20)
    assert [(r.label_id, r.part, r.n_parts) for r in found.regions] == [(100, 1, 2), (100, 2, 2)]
    assert found.excluded_ids == [13]
    rows = R.section_rows(_image(), found, {100: {"label": "Pons"}},
                          {"specimen": 2, "section": 5, "age_gw": 17, "plane": "sagittal"}, tmp_path,
                          square_sides=(224,), write_images=False)
    assert sorted({r["caption"] for r in rows}) == ["Pons, part 1", "Pons, part 2"]
    assert {r["label"] for r in rows} == {"Pons"}


def test_merge_unions_pieces_of_one_label_and_counts_unknown():
    ann = {1: box(0, 0, 10, 10), 2: box(10, 0, 20, 10), 3: box(0, 0, 5, 5)}
    merged, excluded, unknown = R.merge_regions(ann, {1: 9, 2: 9})
    assert list(merged) == [9] and merged[9].equals(box(0, 0, 20, 10))
    assert unknown == [3] and excluded == []


def test_thresholds_remove_small_and_narrow_and_count_them():
    mapping = {1: 1, 2: 2, 3: 3, 4: 4}
    ann = {1: box(0, 0, 50, 50),         # area 2500, A/P 12.5: kept
           2: box(100, 0, 110, 10),      # area 100: small
           3: box(0, 100, 300, 104),     # area 1200, A/P 1200/608 ~ 1.97: narrow
           4: MultiPolygon([box(200, 200, 260, 260), box(500, 500, 505, 505)])}  # far tiny part dropped
    found = R.regions_from_annotations(ann, mapping, min_area=400, min_area_perimeter_ratio=3, part_distance=32)
    assert sorted(r.label_id for r in found.regions) == [1, 4]
    assert dict(found.removed["small_area"]) == {2: 1, 4: 1}
    assert dict(found.removed["narrow"]) == {3: 1}
    four = next(r for r in found.regions if r.label_id == 4)
    assert (four.part, four.n_parts) == (1, 1)  # the survivor needs no part suffix


def test_bad_parameters_raise_clear_errors():
    with pytest.raises(ValueError, match="part_distance"):
        R.group_parts(box(0, 0, 1, 1), -1)
    with pytest.raises(ValueError, match="square side"):
        R.square_box((0, 0, 1, 1), 0)
    with pytest.raises(ValueError, match="mask shape"):
        R.apply_mask(np.zeros((3, 3, 3), np.uint8), np.ones((2, 2), bool))


# ------------------------------------------------------------------------------- end to end on a mini atlas

HYPOTHALAMUS_RGB = (30, 140, 90)


def _write_mini_atlas(root):
    """A hand-made atlas in the DHARANI layout: 5 sections (2 specimens), known regions at 16 µm/px.

    Level 0 is 2 µm/px (as the synthetic atlas), so 16 µm/px pixels are level-0 pixels / 8.
    """
    import shutil

    from cytoclip import layout
    from cytoclip.ontology import Ontology

    onto = Ontology.load()
    layout.ontology_path(root).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(Path(R.__file__).parent / "resources" / "dharani_ontology.json", layout.ontology_path(root))
    layout.write_specimens_table(root, [{"specimen": 1, "age_gw": 21, "plane": "sagittal", "source": "test"},
                                        {"specimen": 2, "age_gw": 24, "plane": "sagittal", "source": "test"}])
    rng = np.random.default_rng(0)
    for k, (sp, sec) in enumerate([(1, 10), (1, 20), (1, 30), (2, 5), (2, 15)]):
        d = k * 2  # shift the drawing a little per section
        at16 = {
            160: box(20 + d, 20, 70 + d, 70),        # Thalamus, drawn in two adjacent pieces
            254: box(70 + d, 20, 100 + d, 70),       # (Dorsal complex of the thalamus -> Thalamus)
            177: box(110, 20 + d, 170, 80 + d),      # Hypothalamus
            211: box(20, 100, 60, 140),              # Medulla part 1
            378: box(150, 105, 190, 145),            # Medulla part 2 (reticular formation), 90 px away
            74: box(120, 88, 135, 103),              # Hippocampus: 225 px², small
            135: box(65, 152, 185, 157),             # Amygdala: 120 x 5 px strip, narrow
            226: box(80, 80, 100, 95),               # Lateral ventricle: excluded by the merge spec
        }
        img = rng.integers(60, 200, size=(1280, 1600, 3), dtype=np.uint8)
        x0, y0, x1, y1 = (int(v) * 8 for v in at16[177].bounds)
        img[y0:y1, x0:x1] = HYPOTHALAMUS_RGB  # a flat colour proves pixels and polygons line up
        tif, js = layout.section_paths(root, sp, sec)
        tif.parent.mkdir(parents=True, exist_ok=True)
        layout.write_pyramid_tiff(tif, img, mpp0=2.0, tile=256, min_size=64)
        layout.write_annotation(js, {i: shapely.affinity.scale(g, 8, 8, origin=(0, 0)) for i, g in at16.items()},
                                ontology=onto)
    return root


@pytest.fixture(scope="module")
def mini_atlas(tmp_path_factory):
    import shapely.affinity  # noqa: F401  (used by the writer above)

    return _write_mini_atlas(tmp_path_factory.mktemp("atlas"))


@pytest.fixture(scope="module")
def prepared(mini_atlas, tmp_path_factory):
    out = tmp_path_factory.mktemp("regions")
    return R.prepare_regions(mini_atlas, out, workers=1)


def test_prepare_regions_manifest_contract(prepared):
    import pandas as pd

    m = pd.read_parquet(prepared / "manifest.parquet")
    assert list(m.columns) == R.MANIFEST_COLUMNS
    assert set(m["label"]) == {"Thalamus", "Hypothalamus", "Medulla"}
    assert set(m["image_type"]) == {"exact", "exact_mask", "square224", "square336"}
    assert len(m) == 5 * 4 * 4  # 5 sections x (Thalamus, Hypothalamus, Medulla x 2 parts) x 4 types
    med = m[m["label"] == "Medulla"]
    assert set(med["caption"]) == {"Medulla, part 1", "Medulla, part 2"} and (med["n_parts"] == 2).all()
    th = m[(m["label"] == "Thalamus") & (m["section"] == 10) & (m["image_type"] == "exact")].iloc[0]
    assert (th.x0, th.y0, th.x1, th.y1) == (20, 20, 100, 70) and th.area_px == 4000  # pieces unioned
    assert th.acronym and th.ontology_path.endswith("Thalamus") and th.mpp == 16
    sq = m[(m["label"] == "Thalamus") & (m["image_type"] == "square224")].iloc[0]
    assert sq.x1 - sq.x0 == 224 and "Hypothalamus" in list(sq.multi_labels)
    assert list(sq.multi_labels)[0] == "Thalamus" and list(sq.multi_label_ids)[0] == 160
    for row in m.itertuples():
        assert (prepared / row.path).exists()
    from PIL import Image

    hy = m[(m["label"] == "Hypothalamus") & (m["image_type"] == "exact")].iloc[0]
    pixels = np.asarray(Image.open(prepared / hy.path)).astype(int)
    assert pixels.shape == (hy.y1 - hy.y0, hy.x1 - hy.x0, 3) == (60, 60, 3)
    assert np.abs(pixels[2:-2, 2:-2] - np.array(HYPOTHALAMUS_RGB)).max() < 12  # JPEG source: small error
    masks = m[m["image_type"] == "exact_mask"]
    assert all((prepared / p).exists() for p in masks["mask_path"])
    assert (m.loc[m["image_type"] != "exact_mask", "mask_path"] == "").all()


def test_prepare_regions_report_counts_and_no_leakage(prepared):
    import pandas as pd

    from cytoclip.io import read_json

    rep = read_json(prepared / "report.json")
    assert rep["removed"]["small_area"]["per_label"] == {"Hippocampus": 5}
    assert rep["removed"]["narrow"]["per_label"] == {"Amygdala": 5}
    assert rep["excluded_ids"]["per_id"] == {"226": 5}
    assert rep["skipped"] == {} and rep["n_sections_used"] == 5
    labels = read_json(prepared / "labels.json")
    assert labels["class_names"] == ["Hypothalamus", "Medulla", "Thalamus"]
    m = pd.read_parquet(prepared / "manifest.parquet")
    pairs = m.groupby(["label", "specimen", "section"])["split"].nunique()
    assert (pairs == 1).all()  # no (label, section) pair on both sides
    per_label_val = m.drop_duplicates(["label", "specimen", "section"]).groupby("label")["split"].apply(
        lambda s: (s == "val").sum())
    assert (per_label_val == 1).all()  # 20 % of 5 sections


def test_openclip_csv_views_load_in_open_clip(prepared):
    import pandas as pd
    from open_clip_train.data import CsvDataset

    csv = prepared / "openclip_square224_train.csv"
    df = pd.read_csv(csv)
    assert list(df.columns) == ["filepath", "title"]
    assert all(Path(p).is_absolute() for p in df["filepath"])
    ds = CsvDataset(str(csv), transforms=lambda im: np.asarray(im).shape, img_key="filepath",
                    caption_key="title", sep=",", tokenizer=lambda texts: texts)
    shape, text = ds[0]
    assert shape == (224, 224, 3) and text in {"Thalamus", "Hypothalamus", "Medulla, part 1", "Medulla, part 2"}
    n_train = sum(len(pd.read_csv(prepared / f"openclip_{t}_train.csv")) for t in ("exact",))
    n_val = len(pd.read_csv(prepared / "openclip_exact_val.csv"))
    assert n_train + n_val == 20


def test_rerun_resumes_from_shards(prepared, mini_atlas):
    import pandas as pd

    shard = prepared / "shards" / "S1_10.parquet"
    before = shard.stat().st_mtime_ns
    m0 = pd.read_parquet(prepared / "manifest.parquet")
    R.prepare_regions(mini_atlas, prepared, workers=1)
    assert shard.stat().st_mtime_ns == before  # finished section not redone
    pd.testing.assert_frame_equal(pd.read_parquet(prepared / "manifest.parquet"), m0)


def test_corrupt_tiff_and_missing_annotation_are_skipped(mini_atlas, tmp_path):
    import shutil

    import pandas as pd

    from cytoclip import layout
    from cytoclip.io import read_json

    root = tmp_path / "atlas"
    shutil.copytree(mini_atlas, root)
    tif, _ = layout.section_paths(root, 1, 20)
    tif.write_bytes(b"II*\x00 this is not a tiff" * 10)
    _, js = layout.section_paths(root, 2, 5)
    js.unlink()
    out = R.prepare_regions(root, tmp_path / "out", workers=2)  # also exercises the process pool
    rep = read_json(out / "report.json")
    assert set(rep["skipped"]) == {"S1_20", "S2_5"}
    assert "TIFF" in rep["skipped"]["S1_20"] and "Specimen_1_20.tif" in rep["skipped"]["S1_20"]
    assert "annotation" in rep["skipped"]["S2_5"]
    m = pd.read_parquet(out / "manifest.parquet")
    assert sorted(set(zip(m["specimen"], m["section"]))) == [(1, 10), (1, 30), (2, 15)]
    assert not (out / "shards" / "S1_20.parquet").exists()


def test_prepare_regions_bad_parameters(mini_atlas, tmp_path):
    with pytest.raises(ValueError, match="image_format"):
        R.prepare_regions(mini_atlas, tmp_path, image_format="jpg")
    with pytest.raises(ValueError, match="square_sides"):
        R.prepare_regions(mini_atlas, tmp_path, square_sides=(0,))
    with pytest.raises(ValueError, match="square_scale"):
        R.prepare_regions(mini_atlas, tmp_path, square_scale=0)


def test_square_sides_scale_with_the_brain_and_keep_the_papers_names(tmp_path):
    """On brains a fraction of real size the SquareBBox side is the paper's times that fraction (the same share
    of the brain); the image type keeps the paper's name."""
    img = _image()
    found = R.SectionRegions(regions=[R.Region(7, box(100, 50, 150, 100))])
    labels = {7: {"label": "Thalamus", "acronym": "TH", "ontology_path": "Brain / Thalamus"}}
    prov = {"specimen": 1, "section": 10, "age_gw": 21.0, "plane": "sagittal"}
    rows = R.section_rows(img, found, labels, prov, tmp_path, square_sides=(224, 336), mpp=16, square_scale=0.25)
    by_type = {r["image_type"]: r for r in rows}
    assert by_type["square224"]["x1"] - by_type["square224"]["x0"] == 56
    assert by_type["square336"]["x1"] - by_type["square336"]["x0"] == 84


def test_brain_scale_of_synthetic_and_real_atlases(smoke_atlas, tmp_path):
    from cytoclip.provenance import brain_scale
    from cytoclip.synth import REAL_SIZE_SCALE, load_profile

    assert load_profile("full")["size_scale"] == REAL_SIZE_SCALE  # the full profile is the real-size one
    assert brain_scale(smoke_atlas) == pytest.approx(load_profile("smoke")["size_scale"] / REAL_SIZE_SCALE)
    (tmp_path / "data2d").mkdir()
    assert brain_scale(tmp_path) == 1.0  # a DHARANI mirror: the paper's crops


def test_cli_prepare_regions(mini_atlas, tmp_path, capsys):
    from cytoclip.cli import main

    rc = main(["prepare", "regions", "--atlas", str(mini_atlas), "--output-dir", str(tmp_path / "cli"),
               "--workers", "1", "--square-sides", "224", "--min-area", "100"])
    assert rc == 0
    import pandas as pd

    m = pd.read_parquet(tmp_path / "cli" / "manifest.parquet")
    assert set(m["image_type"]) == {"exact", "exact_mask", "square224"}
    assert "Hippocampus" in set(m["label"])  # 225 px² passes a 100 px² threshold
    assert "images" in capsys.readouterr().out


# ---------------------------------------------------------------------------- end to end on the smoke atlas

@pytest.fixture(scope="module")
def smoke_prepared(smoke_atlas, tmp_path_factory):
    return smoke_atlas, R.prepare_regions(smoke_atlas, tmp_path_factory.mktemp("smoke_regions"), workers=1)


@pytest.mark.slow  # generating the smoke atlas takes ~35 s on 2 shared cores
def test_smoke_atlas_end_to_end_no_leakage(smoke_prepared):
    """Synthetic smoke atlas -> regions dataset: rows, files and the section split hold together."""
    import pandas as pd

    from cytoclip.data import ImageTextDataset
    from cytoclip.io import read_json

    _, out = smoke_prepared
    m = pd.read_parquet(out / "manifest.parquet")
    rep = read_json(out / "report.json")
    assert len(m) > 0 and rep["skipped"] == {} and rep["n_images"] == len(m)
    assert set(m["split"]) == {"train", "val"}
    assert (m.groupby(["label", "specimen", "section"])["split"].nunique() == 1).all()
    assert all((out / p).exists() for p in m["path"])
    ds = ImageTextDataset(out, image_type="square224", split="val")
    image, text, label = ds[0]
    assert image.shape[0] == 3 and ds.class_names[label] == ds.frame["label"].iloc[0]


def test_cli_prepare_tiles_delegates_to_tiles_module(monkeypatch, tmp_path):
    """`cytoclip prepare tiles` turns its options into prepare_tiles keywords (fake prepare_tiles)."""
    import inspect

    import cytoclip.tiles
    from cytoclip.cli import main
    from cytoclip.io import write_json

    real = cytoclip.tiles.prepare_tiles
    seen = {}

    def fake(atlas, output_dir, **params):
        seen.update(params, atlas=atlas)
        write_json(Path(output_dir) / "report.json", {"n_images": 3, "skipped": {}})
        return Path(output_dir)

    fake.__signature__ = inspect.signature(real)  # the CLI reads the options from the real signature
    monkeypatch.setattr(cytoclip.tiles, "prepare_tiles", fake)
    rc = main(["prepare", "tiles", "--atlas", str(tmp_path), "--output-dir", str(tmp_path / "t"), "--workers", "1",
               "--min-overlap", "0.5", "--mpp", "2.5"])
    assert rc == 0
    assert seen["workers"] == 1 and seen["min_overlap"] == 0.5 and seen["mpp"] == 2.5
    assert seen["atlas"] == str(tmp_path)  # a string: an s3:// URL must reach the engine intact
