"""Tests of cytoclip.tiles: grid, tissue detection, overlap labels (vectorised vs naive) and prepare_tiles."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import shapely
from shapely.geometry import Polygon, box

from cytoclip import tiles
from cytoclip.io import read_json
from cytoclip.tiles import (label_tiles, label_tiles_naive, leaf_regions, tile_grid, tissue_fraction,
                            tissue_mask)

T = 224
# every labelling implementation must give the same answers
METHODS = {"clip": label_tiles, "overlay": lambda b, r, m=0.4: label_tiles(b, r, m, method="overlay"),
           "naive": label_tiles_naive}


def test_tile_grid_full_tiles_row_major():
    boxes = tile_grid(3 * T + 10, 2 * T + 223, T)
    assert boxes.shape == (6, 4)  # partial edge strips are left out
    assert boxes[0].tolist() == [0, 0, T, T]
    assert boxes[1].tolist() == [T, 0, 2 * T, T]  # row-major: the second tile is to the right
    assert boxes[-1].tolist() == [2 * T, T, 3 * T, 2 * T]
    assert tile_grid(100, 100, T).shape == (0, 4)
    with pytest.raises(ValueError, match="tile"):
        tile_grid(10, 10, 0)


def test_tile_labelled_at_41_percent_not_at_39():
    # tile 0 at x in [0, 224): region covers 41 % of its width; tile 1 at [224, 448): 39 %
    boxes = tile_grid(2 * T, T, T)
    regions = {
        10: box(0, 0, 0.41 * T, T),
        20: box(T, 0, T + 0.39 * T, T),
    }
    for name, fn in METHODS.items():
        labels, overlap = fn(boxes, regions, 0.4)
        assert labels.tolist() == [10, -1], name
        np.testing.assert_allclose(overlap, [0.41, 0.39], rtol=0, atol=1e-12)


def test_exactly_40_percent_is_not_enough():
    # the paper asks for MORE than 40 %
    labels, overlap = label_tiles(np.array([[0, 0, 100, 100]]), {5: box(0, 0, 40, 100)}, 0.4)
    assert labels.tolist() == [-1] and overlap[0] == pytest.approx(0.4)


def test_largest_overlap_wins_among_three_overlapping_regions():
    b = np.array([[0, 0, 100, 100]])
    regions = {
        1: box(0, 0, 45, 100),            # 45 %
        2: box(0, 0, 100, 62),            # 62 %  (overlaps 1 and 3)
        3: Polygon([(100, 0), (100, 100), (50, 100)]),  # triangle, 25 %
    }
    for name, fn in METHODS.items():
        labels, overlap = fn(b, regions)
        assert labels.tolist() == [2], name
        assert overlap[0] == pytest.approx(0.62)
    # with the 62 % region gone, the 45 % one wins even though region 3 also touches the tile
    labels, _ = label_tiles(b, {1: regions[1], 3: regions[3]})
    assert labels.tolist() == [1]


def test_tile_inside_region_with_hole():
    # a region with a hole: tiles inside the hole are unlabelled, tiles in the ring are fully covered
    ring = Polygon([(0, 0), (3 * T, 0), (3 * T, 3 * T), (0, 3 * T)],
                   holes=[[(T, T), (2 * T, T), (2 * T, 2 * T), (T, 2 * T)]])
    boxes = tile_grid(3 * T, 3 * T, T)
    labels, overlap = label_tiles(boxes, {7: ring})
    assert labels.reshape(3, 3)[1, 1] == -1 and overlap.reshape(3, 3)[1, 1] == 0
    assert (labels.reshape(3, 3).ravel()[[0, 1, 2, 3, 5, 6, 7, 8]] == 7).all()
    np.testing.assert_array_equal(overlap[labels == 7], 1.0)


def _random_regions(rng, n, extent):
    regions = {}
    for rid in range(100, 100 + n):
        cx, cy = rng.uniform(0, extent, 2)
        radius = rng.uniform(0.05, 0.35) * extent
        angles = np.sort(rng.uniform(0, 2 * np.pi, rng.integers(5, 40)))
        r = radius * rng.uniform(0.4, 1.0, len(angles))
        poly = Polygon(np.c_[cx + r * np.cos(angles), cy + r * np.sin(angles)])
        regions[rid] = shapely.make_valid(poly)
    return regions


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_vectorised_equals_naive_on_random_polygons(seed):
    rng = np.random.default_rng(seed)
    extent = 20 * T
    regions = _random_regions(rng, 12, extent)  # overlapping, some with many vertices
    boxes = tile_grid(extent, extent, T)  # 400 tiles
    # holes and multi-part regions too: rectangle clipping must keep their areas exact
    regions[100] = regions[100].difference(shapely.Point(regions[100].centroid).buffer(1.5 * T))
    regions[101] = regions[101].union(box(0, 0, 3.3 * T, 2.7 * T))
    lab_n, ov_n = label_tiles_naive(boxes, regions, 0.4)
    assert len(boxes) == 400
    assert (lab_n >= 0).sum() > 50 and (lab_n == -1).sum() > 10  # the case is not trivial
    for method in ("clip", "overlay"):
        lab_v, ov_v = label_tiles(boxes, regions, 0.4, method=method)
        np.testing.assert_allclose(ov_v, ov_n, rtol=0, atol=1e-9)
        np.testing.assert_array_equal(lab_v, lab_n)


def test_label_tiles_bad_input():
    with pytest.raises(ValueError, match="boxes"):
        label_tiles(np.zeros((3, 3)), {1: box(0, 0, 1, 1)})
    with pytest.raises(ValueError, match="min_overlap"):
        label_tiles(tile_grid(T, T), {1: box(0, 0, 1, 1)}, min_overlap=1.5)
    with pytest.raises(TypeError, match=r"regions\[1\]"):
        label_tiles(tile_grid(T, T), {1: "not a polygon"})
    labels, overlap = label_tiles(tile_grid(T, T), {})
    assert labels.tolist() == [-1] and overlap.tolist() == [0.0]


def test_invalid_polygon_is_repaired_not_dropped():
    bowtie = Polygon([(0, 0), (100, 100), (100, 0), (0, 100)])  # self-intersecting, area 5000 when repaired
    labels, overlap = label_tiles(np.array([[0, 0, 100, 100]]), {3: bowtie}, 0.4)
    assert labels.tolist() == [3] and overlap[0] == pytest.approx(0.5)


def test_leaf_regions_maps_and_unions():
    ann = {1: box(0, 0, 10, 10), 2: box(10, 0, 20, 10), 3: box(0, 0, 5, 5), 99: box(0, 0, 1, 1)}
    out = leaf_regions(ann, {1: 1, 2: 1, 3: None})  # 99 unknown, 3 not a leaf
    assert set(out) == {1} and out[1].area == pytest.approx(200)


def test_tissue_mask_and_fraction_drop_background():
    thumb = np.full((28, 42, 3), 247, np.uint8)  # near-white slide background
    thumb[:, :14] = (120, 90, 170)  # cresyl-violet tissue in the first tile column
    thumb[:7, 14:28] = (120, 90, 170)  # the top half of the top-middle tile
    mask = tissue_mask(thumb)
    assert mask[:, :14].all() and not mask[:, 28:].any()
    boxes = tile_grid(42 * 16, 28 * 16, T)  # 2 µm/px tiles on a 32 µm/px thumbnail: 14 px per tile
    frac = tissue_fraction(mask, boxes, 2 / 32)
    np.testing.assert_allclose(frac.reshape(2, 3), [[1.0, 0.5, 0.0], [1.0, 0.0, 0.0]])
    keep = frac >= 0.5
    assert keep.tolist() == [True, True, False, True, False, False]
    with pytest.raises(ValueError, match="rgb"):
        tissue_mask(np.zeros((4, 4)))


def test_leaf_label_map_keeps_only_ontology_leaves():
    from cytoclip.ontology import Ontology

    onto = Ontology.load()
    mapping = tiles.leaf_label_map(onto, "identity")
    kept = {t for t in mapping.values() if t is not None}
    assert kept and all(onto.is_leaf(t) for t in kept)
    assert len(kept) == sum(onto.is_leaf(i) for i in onto)
    assert all(mapping[i] is None for i in onto if not onto.is_leaf(i))


# ----------------------------------------------------------------------------- end-to-end, fake atlas


class _Node:
    def __init__(self, acronym):
        self.acronym = acronym


class _FakeOntology:
    names = {1: "Cortical plate", 2: "Subplate", 3: "Ventricular zone", 9: "Telencephalon"}

    def name(self, i):
        return self.names[i]

    def __getitem__(self, i):
        return _Node(self.names[i][:3].upper())

    def path_name(self, i):
        return f"Brain / Telencephalon / {self.names[i]}"


class _FakeSection:
    """A 6 x 4-tile section: left half tissue (violet), right half background; three leaf regions."""

    def __init__(self, specimen, section, corrupt=False):
        self.specimen, self.section, self.age_gw, self.plane = specimen, section, 21.0, "sagittal"
        self.corrupt = corrupt
        w, h = 6 * T, 4 * T
        self.image = np.full((h, w, 3), 247, np.uint8)
        self.image[:, : 3 * T] = (120, 90, 170)
        rng = np.random.default_rng(int(section))
        self.image[:, : 3 * T] = rng.integers(60, 180, (h, 3 * T, 3), dtype=np.uint8)  # tile content differs
        self.image[:, : 3 * T, 2] = 200
        self.reads = 0

    def size(self, mpp):
        return (6 * T, 4 * T)

    def read_level(self, mpp):
        return self.image[::16, ::16]

    def annotations(self, mpp=None):
        return {1: box(0, 0, 2 * T, 2 * T), 2: box(0, 2 * T, 1.3 * T, 4 * T), 3: box(2 * T, 0, 6 * T, 4 * T),
                9: box(0, 0, 6 * T, 4 * T)}  # 9 is a parent: not a leaf, never a tile label

    def read_region(self, x, y, w, h, mpp=None):
        if self.corrupt:
            raise OSError(f"Specimen_{self.specimen}_{self.section}.tif: JPEG tile 3 is truncated")
        self.reads += 1
        return self.image[y:y + h, x:x + w]


class _FakeAtlas:
    is_synthetic = True
    url = "fake://atlas"

    def __init__(self, corrupt=()):
        self.ontology = _FakeOntology()
        self.corrupt = set(corrupt)

    def sections(self):
        return pd.DataFrame({"specimen": [1, 1, 2], "section": [10, 20, 30], "age_gw": 21.0,
                             "plane": "sagittal"})

    def section(self, sp, sec):
        return _FakeSection(sp, sec, corrupt=(sp, sec) in self.corrupt)


@pytest.fixture
def fake_atlas(monkeypatch, tmp_path):
    """A test double passed as ``atlas`` (open_atlas returns an open atlas as it is)."""
    state = {"atlas": _FakeAtlas()}
    monkeypatch.setattr(tiles, "_label_map", lambda onto, spec: {1: 1, 2: 2, 3: 3, 9: None})
    return state


def test_prepare_tiles_fake_atlas_manifest_files_resume(fake_atlas, tmp_path):
    from PIL import Image

    out = tiles.prepare_tiles(fake_atlas["atlas"], tmp_path / "ds", workers=1)
    m = pd.read_parquet(out / "manifest.parquet")
    assert list(m.columns) == tiles.MANIFEST_COLUMNS
    # per section: 12 tissue tiles (left 3 columns); region 3 covers column 2 fully; column 0 rows 2-3 are
    # region 2 (100 %); column 1 rows 2-3 are 30 % region 2 -> unlabelled. So 10 labelled tiles.
    assert len(m) == 30 and set(m["image_type"]) == {"tile"}
    sec10 = m[m["section"] == 10].set_index(["row", "col"])
    assert sec10.loc[(0, 0), "label"] == "Cortical plate" and sec10.loc[(3, 0), "label"] == "Subplate"
    assert sec10.loc[(1, 2), "label_id"] == 3 and (1, 1) in sec10.index and (2, 1) not in sec10.index
    assert (m["caption"] == m["label"]).all() and (m["label_id"] != 9).all()
    assert m["multi_labels"].map(list).tolist() == [[x] for x in m["label"]]
    assert ((m["x1"] - m["x0"]) == T).all() and (m["mpp"] == 2).all() and (m["overlap"] > 0.4).all()
    first = m.iloc[0]
    img = Image.open(out / first["path"])
    assert img.size == (T, T) and img.format == "JPEG"
    assert first["path"] == "tiles/specimen_1/10/0_0.jpg"
    report = read_json(out / "report.json")
    assert report["synthetic"] is True and report["totals"]["background"] == 36 and report["n_images"] == 30
    assert report["totals"]["labelled"] == 30 and report["totals"]["unlabelled"] == 6
    assert report["labels"]["Ventricular zone"] == 12 and report["skipped"] == {}
    labels = read_json(out / "labels.json")
    assert [x["label"] for x in labels["labels"]] == ["Cortical plate", "Subplate", "Ventricular zone"]
    assert labels["class_names"] == ["Cortical plate", "Subplate", "Ventricular zone"]
    assert (out / "shards" / "S2_30.parquet").exists() and (out / "shards" / "S2_30.json").exists()

    # resume: a rerun reads the shards and writes no tile again
    mtime = (out / first["path"]).stat().st_mtime_ns
    tiles.prepare_tiles(fake_atlas["atlas"], tmp_path / "ds", workers=1)
    assert (out / first["path"]).stat().st_mtime_ns == mtime
    assert read_json(out / "report.json")["resumed_sections"] == 3
    pd.testing.assert_frame_equal(pd.read_parquet(out / "manifest.parquet"), m)

    # other parameters: the one resume rule redoes every section (no error, no stale rows)
    tiles.prepare_tiles(fake_atlas["atlas"], tmp_path / "ds", workers=1, max_tiles_per_section=4)
    assert read_json(out / "report.json")["resumed_sections"] == 0
    m2 = pd.read_parquet(out / "manifest.parquet")
    assert len(m2) == 12 and all((out / p).exists() for p in m2["path"])
    assert len(list((out / "tiles" / "specimen_1" / "10").iterdir())) == 4  # the section's folder was replaced
    # the worker count is never part of the fingerprint
    tiles.prepare_tiles(fake_atlas["atlas"], tmp_path / "ds", workers=3, max_tiles_per_section=4, block=2)
    assert read_json(out / "report.json")["resumed_sections"] == 3


def test_prepare_tiles_corrupt_section_skipped_and_subsampled(fake_atlas, tmp_path):
    fake_atlas["atlas"] = _FakeAtlas(corrupt={(1, 20)})
    out = tiles.prepare_tiles(fake_atlas["atlas"], tmp_path / "ds", workers=1, max_tiles_per_section=11,
                              keep_unlabelled=True, image_format="png", sections=[(1, 10), (1, 20)])
    m = pd.read_parquet(out / "manifest.parquet")
    assert len(m) == 11 and set(m["section"]) == {10} and (m["label_id"] < 0).sum() >= 1
    assert m.loc[m["label_id"] < 0, "split"].isna().all() and (m["label"] == "").sum() == (m["label_id"] < 0).sum()
    report = read_json(out / "report.json")
    assert list(report["skipped"]) == ["S1_20"] and "truncated" in report["skipped"]["S1_20"]
    assert report["sections"]["S1_20"]["status"] == "skipped"
    assert not (out / "shards" / "S1_20.json").exists()  # retried on the next run
    assert not (out / "tiles" / "specimen_1" / "20").exists()  # nothing half-written
    # the corrupt section is fixed: a rerun prepares only it
    fake_atlas["atlas"] = _FakeAtlas()
    tiles.prepare_tiles(fake_atlas["atlas"], tmp_path / "ds", workers=1, max_tiles_per_section=11,
                        keep_unlabelled=True, image_format="png", sections=[(1, 10), (1, 20)])
    report = read_json(out / "report.json")
    assert report["resumed_sections"] == 1 and report["skipped"] == {} and report["n_sections"] == 2


def test_prepare_tiles_section_without_tissue(fake_atlas, tmp_path):
    atlas = _FakeAtlas()
    blank = _FakeSection(1, 10)
    blank.image[:] = 247
    atlas.section = lambda sp, sec: blank
    fake_atlas["atlas"] = atlas
    out = tiles.prepare_tiles(fake_atlas["atlas"], tmp_path / "ds", workers=1, sections=[(1, 10)])
    assert len(pd.read_parquet(out / "manifest.parquet")) == 0
    report = read_json(out / "report.json")
    assert report["totals"]["background"] == 24 and report["n_images"] == 0 and report["skipped"] == {}


def test_prepare_tiles_bad_params(tmp_path):
    with pytest.raises(ValueError, match="image_format"):
        tiles.prepare_tiles(tmp_path, tmp_path / "o", image_format="bmp")
    with pytest.raises(ValueError, match="min_tissue"):
        tiles.prepare_tiles(tmp_path, tmp_path / "o", min_tissue=2)


# ----------------------------------------------------------------------------- end-to-end, DHARANI layout


@pytest.fixture(scope="module")
def layout_atlas(tmp_path_factory):
    """Three sections written with cytoclip.layout (the real reader's format); the third TIFF is corrupt."""
    from cytoclip import layout
    from cytoclip.ontology import Ontology

    onto = Ontology.load()
    leaves = [i for i in onto if onto.is_leaf(i)][:3]
    parent = onto.parent(leaves[0])
    root = tmp_path_factory.mktemp("layout_atlas")
    rng = np.random.default_rng(0)
    h, w = 6 * T, 8 * T  # level 0 at 2 µm/px: 8 x 6 tiles
    for sp, sec in [(1, 101), (1, 102), (2, 201)]:
        img = np.full((h, w, 3), 247, np.uint8)
        img[:, : 5 * T] = rng.integers(70, 160, (h, 5 * T, 3), dtype=np.uint8)  # violet-ish tissue
        img[:, : 5 * T, 2] = 190
        tif, js = layout.section_paths(root, sp, sec)
        layout.write_pyramid_tiff(tif, img, mpp0=2.0, tile=256, min_size=32)
        regions = {leaves[0]: box(0, 0, 3 * T, 3 * T), leaves[1]: box(0, 3 * T, 5 * T, 6 * T),
                   leaves[2]: box(3 * T, 0, 8 * T, 3 * T), parent: box(0, 0, 8 * T, 6 * T)}
        layout.write_annotation(js, regions, ontology=onto)
    layout.section_paths(root, 2, 201)[0].write_bytes(b"II*\x00 this is not a TIFF")
    onto.save(layout.ontology_path(root))
    layout.write_specimens_table(root, [{"specimen": 1, "age_gw": 24, "plane": "sagittal", "source": "test"},
                                        {"specimen": 2, "age_gw": 21, "plane": "sagittal", "source": "test"}])
    return root, onto, leaves


def test_prepare_tiles_with_the_atlas_reader_in_worker_processes(layout_atlas, tmp_path):
    from PIL import Image

    root, onto, leaves = layout_atlas
    out = tiles.prepare_tiles(root, tmp_path / "ds", workers=2, seed=0)
    m = pd.read_parquet(out / "manifest.parquet")
    # per good section: 5 x 6 = 30 tissue tiles, all inside one leaf -> 30 labelled; 2 sections
    assert len(m) == 60 and set(m["label_id"]) == set(leaves)
    assert set(m["label"]) == {onto.name(i) for i in leaves} and (m["age_gw"] == 24).all()
    assert m["ontology_path"].iloc[0] == onto.path_name(int(m["label_id"].iloc[0]))
    assert set(m["split"].dropna()) <= {"train", "val"} and m["split"].notna().any()
    report = read_json(out / "report.json")
    assert list(report["skipped"]) == ["S2_201"]
    assert "201" in report["skipped"]["S2_201"] and report["totals"]["background"] == 2 * 18
    # the tile image is the pyramid's pixels at 2 µm/px (JPEG round trips: compare loosely)
    row = m[(m["section"] == 101) & (m["row"] == 1) & (m["col"] == 2)].iloc[0]
    from cytoclip.atlas import Atlas

    ref = Atlas(root).section(1, 101).read_region(2 * T, T, T, T, mpp=2).astype(float)
    got = np.asarray(Image.open(out / row["path"])).astype(float)
    assert np.abs(got - ref).mean() < 12
    # open_clip CSV views: absolute paths that exist, captions = labels
    for split in set(m["split"].dropna()):
        view = pd.read_csv(out / f"openclip_tile_{split}.csv")
        assert list(view.columns) == ["filepath", "title"] and len(view) == (m["split"] == split).sum()
        assert all(Path(p).is_absolute() and Path(p).exists() for p in view["filepath"])
        assert set(view["title"]) <= set(m["label"])


# ----------------------------------------------------------------------------- end-to-end, synthetic atlas


def test_prepare_tiles_on_smoke_synthetic_atlas(smoke_atlas, tmp_path):
    from cytoclip.atlas import Atlas

    secs = Atlas(smoke_atlas).sections().iloc[:2][["specimen", "section"]]
    out = tiles.prepare_tiles(smoke_atlas, tmp_path / "tiles", workers=1, sections=secs, max_tiles_per_section=20)
    m = pd.read_parquet(out / "manifest.parquet")
    assert list(m.columns) == tiles.MANIFEST_COLUMNS
    assert 0 < len(m) <= 40 and (m["overlap"] > 0.4).all() and (m["label_id"] >= 0).all()
    assert all((out / p).exists() for p in m["path"])
    report = read_json(out / "report.json")
    assert report["synthetic"] is True and report["n_sections"] == 2 and report["totals"]["background"] > 0
    tiles.prepare_tiles(smoke_atlas, tmp_path / "tiles", workers=1, sections=secs, max_tiles_per_section=20)
    assert read_json(out / "report.json")["resumed_sections"] == 2


# ----------------------------------------------------------------------------- reading and encoding the tiles


def test_reading_along_tile_rows_decodes_each_tiff_tile_once(layout_atlas):
    """Square windows marched band by band re-decoded the TIFF tiles a band shares with the next one once the
    cache had dropped them; a band read whole leaves that shared TIFF tile row the most recent in the cache."""
    from cytoclip.atlas import Atlas

    root, _, _ = layout_atlas
    section = Atlas(root).section(1, 101)  # 8 x 6 tiles of 224 px; TIFF tiles of 256 px: 7 x 6 of them
    section.tile_cache_bytes = 8 * 256 * 256 * 3  # one TIFF tile row (7 tiles) and a little more
    boxes = tile_grid(*section.size(2), T)
    got = {k: w[y0 - by0:y0 - by0 + T, x0 - bx0:x0 - bx0 + T].copy()
           for members, (bx0, by0), w in tiles._read_windows(section, boxes, T, 2, block=2)
           for k in members for x0, y0 in [boxes[k, :2].tolist()]}
    assert sorted(got) == list(range(len(boxes)))
    needed = {(y // 256, x // 256) for x0, y0, x1, y1 in boxes.tolist()
              for y in range(y0, y1, 32) for x in range(x0, x1, 32)} | \
             {((y1 - 1) // 256, (x1 - 1) // 256) for x0, y0, x1, y1 in boxes.tolist()}
    assert section.tiles_decoded == len(needed)
    ref = Atlas(root).section(1, 101)
    for k in (0, 13, len(boxes) - 1):
        x0, y0 = boxes[k, :2].tolist()
        np.testing.assert_array_equal(got[k], ref.read_region(x0, y0, T, T, mpp=2))


def test_encoded_tiles_are_the_bytes_pil_writes_for_each_tile(layout_atlas):
    """In-memory encoding from one PIL image per window gives the bytes of ``Image.save(path, quality=90)``
    on the tile's own pixels (what the per-file layout always wrote)."""
    import io

    from PIL import Image

    from cytoclip.atlas import Atlas

    root, _, _ = layout_atlas
    section = Atlas(root).section(1, 101)
    boxes = tile_grid(*section.size(2), T)[[0, 5, 9, 30, 47]]
    encoded = dict(tiles._encoded_tiles(section, boxes, T, 2, 8, "jpg"))
    png = dict(tiles._encoded_tiles(section, boxes[:2], T, 2, 8, "png"))
    for k, (x0, y0, _, _) in enumerate(boxes.tolist()):
        ref = io.BytesIO()
        Image.fromarray(section.read_region(x0, y0, T, T, mpp=2)).save(ref, format="JPEG", quality=90)
        assert encoded[k] == ref.getvalue()
    assert png[1][:8] == b"\x89PNG\r\n\x1a\n"
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(png[1]))), section.read_region(*boxes[1, :2], T, T, mpp=2))
