"""Tests of the DHARANI layout writers (cytoclip.layout) and the reader (cytoclip.atlas)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import shapely
from shapely.geometry import MultiPolygon, Polygon, box

from cytoclip import atlas as atlas_mod
from cytoclip import layout
from cytoclip.atlas import Atlas, AtlasError, Section

H, W, TILE, MPP0 = 1100, 1500, 256, 2.0
UNKNOWN_ID = 987654321


def _image() -> np.ndarray:
    """A smooth, JPEG-friendly test image: background white, a 'tissue' block with gradients."""
    yy, xx = np.mgrid[0:H, 0:W]
    img = np.full((H, W, 3), 250, np.uint8)
    tissue = (xx > 200) & (xx < 1300) & (yy > 150) & (yy < 950)
    img[..., 0][tissue] = (60 + 100 * xx[tissue] / W).astype(np.uint8)
    img[..., 1][tissue] = (40 + 120 * yy[tissue] / H).astype(np.uint8)
    img[..., 2][tissue] = 170
    return img


def _regions(onto) -> tuple[dict, list[int], Polygon]:
    ids = list(onto)[:4]
    bowtie = Polygon([(900, 200), (1100, 400), (1100, 200), (900, 400)])  # self-intersecting
    regions = {
        ids[0]: MultiPolygon([box(250, 200, 500, 500), box(600, 200, 800, 300)]),  # two features, one id
        ids[1]: box(250, 600, 700, 900).difference(box(400, 700, 500, 800)),  # with a hole
        ids[2]: box(800, 600, 1200, 900),
        UNKNOWN_ID: box(10, 10, 50, 50),
    }
    return regions, ids, bowtie


@pytest.fixture(scope="module")
def onto():
    from cytoclip.ontology import Ontology

    return Ontology.load()


@pytest.fixture(scope="module")
def root(tmp_path_factory, onto):
    """A one-section atlas in the DHARANI layout, written with the layout writers."""
    root = tmp_path_factory.mktemp("atlas")
    img = _image()
    tif, js = layout.section_paths(root, 1, 1009)
    layout.write_pyramid_tiff(tif, img, mpp0=MPP0, tile=TILE)
    regions, ids, bowtie = _regions(onto)
    layout.write_annotation(js, regions, ontology=onto)
    # append the bow-tie as a raw feature (shapely would not let the writer build it differently) and a
    # second feature for ids[2], as the real files repeat ids
    doc = json.loads(js.read_text())
    doc["features"].append({"type": "Feature", "properties": {"data": {"id": ids[3]}},
                            "geometry": {"type": "Polygon",
                                         "coordinates": [[[x, -y] for x, y in bowtie.exterior.coords]]}})
    doc["features"].append({"type": "Feature", "properties": {"data": {"id": ids[2]}},
                            "geometry": {"type": "Polygon",
                                         "coordinates": [[[1200, -600], [1300, -600], [1300, -700],
                                                          [1200, -700], [1200, -600]]]}})
    js.write_text(json.dumps(doc))
    onto.save(layout.ontology_path(root))
    layout.write_specimens_table(root, [{"specimen": 1, "age_gw": 24, "plane": "sagittal", "source": "synthetic"}])
    return root


# ------------------------------------------------------------------------------------------ layout

def test_section_paths_follow_layout(tmp_path):
    tif, js = layout.section_paths(tmp_path, 3, 42)
    assert tif == tmp_path / "data2d" / "specimen_3" / "Specimen_3_42.tif"
    assert js == tmp_path / "data2d" / "specimen_3" / "Specimen_3_42.json"
    assert layout.ontology_path(tmp_path) == tmp_path / "ontology" / "ontology.json"
    assert layout.SPECIMENS_TABLE == "specimens.csv"


def test_downsample2x_is_mean_and_covers_odd_edges():
    a = np.arange(5 * 3 * 3, dtype=np.uint8).reshape(5, 3, 3)
    d = layout.downsample2x(a)
    assert d.shape == (3, 2, 3)
    assert d[0, 0, 0] == round(np.mean(a[0:2, 0:2, 0].astype(float)) + 1e-9)
    assert d[2, 1, 0] == a[4, 2, 0]  # the replicated corner


def test_annotation_writer_is_deterministic_and_dharani_style(tmp_path, onto):
    regions, ids, _ = _regions(onto)
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    layout.write_annotation(a, regions, ontology=onto)
    layout.write_annotation(b, dict(reversed(list(regions.items()))), ontology=onto)
    assert a.read_bytes() == b.read_bytes()
    doc = json.loads(a.read_text())
    assert doc["type"] == "FeatureCollection"
    feats = [f for f in doc["features"] if f["properties"]["data"]["id"] == ids[0]]
    assert len(feats) == 2  # one feature per polygon part, sharing the id
    assert feats[0]["properties"]["name"] == onto.name(ids[0])
    ys = [c[1] for f in doc["features"] for ring in f["geometry"]["coordinates"] for c in ring]
    assert max(ys) <= 0 and min(ys) < 0  # y negated like the real files
    hole = [f for f in doc["features"] if f["properties"]["data"]["id"] == ids[1]][0]
    assert len(hole["geometry"]["coordinates"]) == 2


def test_pyramid_writer_deterministic_pixels(tmp_path):
    img = _image()[:300, :400]
    p1, p2 = tmp_path / "a.tif", tmp_path / "b.tif"
    layout.write_pyramid_tiff(p1, img, mpp0=1.0, tile=128, min_size=64)
    layout.write_pyramid_tiff(p2, img, mpp0=1.0, tile=128, min_size=64)
    import tifffile

    with tifffile.TiffFile(p1) as t1, tifffile.TiffFile(p2) as t2:
        assert len(t1.series[0].levels) == 3  # 400x300, 200x150, 100x75; 50x38 would be < 64
        for l1, l2 in zip(t1.series[0].levels, t2.series[0].levels):
            np.testing.assert_array_equal(l1.asarray(), l2.asarray())
    assert not list(tmp_path.glob(".*"))  # no temporary files left behind


def test_pyramid_writer_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match="uint8"):
        layout.write_pyramid_tiff(tmp_path / "x.tif", np.zeros((10, 10), np.uint8), 1.0)
    with pytest.raises(ValueError, match="mpp0"):
        layout.write_pyramid_tiff(tmp_path / "x.tif", np.zeros((10, 10, 3), np.uint8), 0)


def test_specimens_table_validation(tmp_path):
    with pytest.raises(ValueError, match="plane"):
        layout.write_specimens_table(tmp_path, [{"specimen": 1, "age_gw": 21, "plane": "axial"}])
    with pytest.raises(ValueError, match="age_gw"):
        layout.write_specimens_table(tmp_path, [{"specimen": 1, "plane": "coronal"}])


# ------------------------------------------------------------------------------------------ atlas

def test_atlas_lists_specimens_and_sections(root):
    a = Atlas(root)
    sp = a.specimens()
    assert list(sp.columns[:3]) == ["specimen", "age_gw", "plane"]
    assert sp.iloc[0].to_dict()["age_gw"] == 24.0
    secs = a.sections()
    assert list(secs.columns) == ["specimen", "section", "age_gw", "plane", "image", "annotation"]
    assert secs[["specimen", "section"]].values.tolist() == [[1, 1009]]
    assert secs.plane.iloc[0] == "sagittal"
    assert a.sections(specimen=2).empty
    s = a.section(1, 1009)
    assert (s.specimen, s.section, s.age_gw, s.plane) == (1, 1009, 24.0, "sagittal")


def test_levels_and_mpp_from_resolution_tags(root):
    s = Atlas(root).section(1, 1009)
    assert [(lv.width, lv.height) for lv in s.levels] == [(1500, 1100), (750, 550), (375, 275)]
    assert [lv.mpp for lv in s.levels] == pytest.approx([2.0, 4.0, 8.0])
    assert s.mpp0 == pytest.approx(2.0)
    assert s.size(16) == (188, 138)
    assert s.level_for(5.0).index == 1 and s.level_for(1.0).index == 0 and s.level_for(100).index == 2


def test_mpp_falls_back_to_dharani_convention(tmp_path):
    import tifffile

    p = tmp_path / "plain.tif"
    img = _image()[:512, :512]
    with tifffile.TiffWriter(p) as tw:  # no resolution tags: level k = 2^k µm/px
        tw.write(img, tile=(256, 256), subifds=1, photometric="rgb", compression="jpeg")
        tw.write(layout.downsample2x(img), tile=(256, 256), subfiletype=1, photometric="rgb", compression="jpeg")
    s = Section(p, None)
    assert [lv.mpp for lv in s.levels] == [1.0, 2.0]


def test_window_pixels_and_tiles_decoded(root, monkeypatch):
    s = Atlas(root).section(1, 1009)
    src = _image()
    calls = []
    real = atlas_mod.decode_tile
    monkeypatch.setattr(atlas_mod, "decode_tile", lambda page, data, index: (calls.append(index), real(page, data, index))[1])
    # x 300..500, y 260..400 lies inside tile column 1 (256..511), row 1 (256..511) only
    win = s.read_region(300, 260, 200, 140)
    assert win.shape == (140, 200, 3) and win.dtype == np.uint8
    assert calls == [1 * 6 + 1]  # 6 tile columns at level 0
    assert np.abs(win.astype(int) - src[260:400, 300:500]).mean() < 4  # JPEG tolerance
    calls.clear()
    s.read_region(250, 250, 20, 20)  # straddles a corner of four tiles; tile 7 is cached already
    assert sorted(calls) == [0, 1, 6]
    calls.clear()
    s.read_region(260, 270, 20, 20)  # all cached
    assert calls == [] and s.tiles_decoded == 4
    nocache = Section(s.image_path, None, tile_cache_mb=0)
    nocache.read_region(250, 250, 20, 20)
    nocache.read_region(250, 250, 20, 20)
    assert nocache.tiles_decoded == 8


def test_out_of_bounds_is_white(root):
    s = Atlas(root).section(1, 1009)
    win = s.read_region(1450, 1050, 100, 100)
    assert (win[60:, :] == 255).all() and (win[:, 60:] == 255).all()
    assert (Atlas(root).section(1, 1009).read_region(-500, -500, 50, 50) == 255).all()


def test_downsampled_reads(root):
    s = Atlas(root).section(1, 1009)
    src = _image()
    lvl1 = s.read_region(100, 100, 200, 150, mpp=4.0)  # exactly level 1
    ref = layout.downsample2x(src)[100:250, 100:300]
    assert np.abs(lvl1.astype(int) - ref).mean() < 4
    # 6 µm/px matches no level: read from level 1 (4 µm/px) and resample
    r6 = s.read_region(50, 40, 100, 80, mpp=6.0)
    assert r6.shape == (80, 100, 3)
    ref6 = src[120:360:3, 150:450:3]
    assert np.abs(r6[5:-5, 5:-5].astype(int) - ref6[5:-5, 5:-5]).mean() < 6
    # level-0 box resampled to 16 µm/px
    b = s.read_region(400, 320, 800, 480, mpp=16.0, coords="level0")
    assert b.shape == (60, 100, 3)
    full = s.read_level(16.0)
    assert full.shape == (138, 188, 3)
    assert np.abs(full[40:100, 50:150].astype(int) - b.astype(int)).mean() < 3
    th = s.thumbnail(300)
    assert max(th.shape[:2]) == 300 and th.shape[2] == 3


def test_annotations_union_repair_unknown(root, onto):
    s = Atlas(root).section(1, 1009)
    _, ids, _ = _regions(onto)
    with pytest.warns(UserWarning, match=str(UNKNOWN_ID)):
        ann = s.annotations()
    assert set(ann) == set(ids)
    assert ann[ids[0]].geom_type == "MultiPolygon" and ann[ids[0]].area == pytest.approx(250 * 300 + 200 * 100)
    assert ann[ids[1]].area == pytest.approx(450 * 300 - 100 * 100)
    assert ann[ids[2]].area == pytest.approx(400 * 300 + 100 * 100)  # two features unioned
    assert ann[ids[3]].is_valid and ann[ids[3]].area == pytest.approx(2 * 100 * 100)  # bow-tie: two triangles
    assert min(shapely.bounds(ann[ids[0]])) >= 0  # absolute coordinates
    rep = s.annotation_report
    assert rep["repaired"] == [ids[3]] and rep["unknown_ids"] == [UNKNOWN_ID] and rep["empty"] == []
    assert rep["n_features"] == 7
    a16 = s.annotations(mpp=16.0)
    assert a16[ids[2]].area == pytest.approx(ann[ids[2]].area / 64)
    assert s.annotations() is not ann and s.annotations()[ids[0]] is ann[ids[0]]  # cached per section
    with pytest.raises(AtlasError, match=f"Specimen_1_1009.json.*{UNKNOWN_ID}"):
        s.annotations(strict=True)


# ------------------------------------------------------------------------------------------ errors

def _bad_section(tmp_path, doc=None, tif_bytes=None) -> Section:
    tif, js = tmp_path / "Specimen_9_1.tif", tmp_path / "Specimen_9_1.json"
    if doc is not None:
        js.write_text(json.dumps(doc))
    if tif_bytes is not None:
        tif.write_bytes(tif_bytes)
    return Section(tif, js, specimen=9, section=1)


def _feat(geometry, props={"data": {"id": 5}}):
    return {"type": "Feature", "properties": props, "geometry": geometry}


SQUARE = {"type": "Polygon", "coordinates": [[[0, 0], [10, 0], [10, -10], [0, -10], [0, 0]]]}


@pytest.mark.parametrize("doc, match", [
    (None, "annotation not found"),
    ({"type": "Feature"}, "expected a GeoJSON FeatureCollection"),
    ({"type": "FeatureCollection", "features": [_feat(SQUARE, {"name": "x"})]}, "feature 0 has no properties.data.id"),
    ({"type": "FeatureCollection", "features": [_feat({"type": "LineString", "coordinates": [[0, 0], [1, 1]]})]},
     "geometry type 'LineString'"),
])
def test_annotation_errors_name_the_file(tmp_path, doc, match):
    s = _bad_section(tmp_path, doc=doc)
    with pytest.raises(AtlasError, match=match) as exc:
        s.annotations()
    assert "Specimen_9_1.json" in str(exc.value)


def test_invalid_json_names_file(tmp_path):
    (tmp_path / "Specimen_9_1.json").write_text("{not json")
    with pytest.raises(AtlasError, match="Specimen_9_1.json: not valid JSON"):
        Section(tmp_path / "Specimen_9_1.tif", tmp_path / "Specimen_9_1.json").annotations()


def test_image_errors_name_the_file(tmp_path):
    with pytest.raises(AtlasError, match="Specimen_9_1.tif: section image not found"):
        _bad_section(tmp_path).levels
    with pytest.raises(AtlasError, match="Specimen_9_1.tif: not a readable TIFF"):
        _bad_section(tmp_path, tif_bytes=b"II*\x00garbage" * 10).read_region(0, 0, 4, 4)


def test_corrupt_tile_names_the_file(tmp_path, root):
    import tifffile

    src, _ = layout.section_paths(root, 1, 1009)
    bad = tmp_path / "Specimen_9_1.tif"
    data = bytearray(src.read_bytes())
    with tifffile.TiffFile(src) as t:
        off = t.series[0].levels[0].keyframe.dataoffsets[0]
    data[off:off + 64] = b"\x00" * 64  # wipe the JPEG header of tile 0
    bad.write_bytes(bytes(data))
    s = Section(bad, None)
    assert s.read_region(300, 300, 10, 10).shape == (10, 10, 3)  # other tiles still read
    with pytest.raises(AtlasError, match="Specimen_9_1.tif: level 0 tile 0 cannot be decoded"):
        s.read_region(0, 0, 10, 10)


def test_atlas_errors(tmp_path):
    with pytest.raises(AtlasError, match="atlas root not found"):
        Atlas(tmp_path / "nowhere")
    (tmp_path / "data2d").mkdir()
    a = Atlas(tmp_path)
    with pytest.raises(AtlasError, match="specimens.csv.*specimen.*age_gw.*plane"):
        a.specimens()
    with pytest.warns(UserWarning, match="specimens.csv"):
        assert a.sections().empty
    with pytest.raises(AtlasError, match="Specimen_1_2.tif.*not found"):
        a.section(1, 2)
    with pytest.raises(AtlasError, match="ontology.json"):
        a.ontology
    (tmp_path / "specimens.csv").write_text("specimen,age_gw,plane\n1,21,axial\n")
    with pytest.raises(AtlasError, match="specimens.csv: plane values \\['axial'\\]"):
        a.specimens()


def test_section_pickles_without_open_file(root):
    import pickle

    s = Atlas(root).section(1, 1009)
    before = s.read_region(600, 600, 32, 32)
    s2 = pickle.loads(pickle.dumps(s))
    np.testing.assert_array_equal(s2.read_region(600, 600, 32, 32), before)
    s.close()


@pytest.mark.filterwarnings("ignore:.*ids not in the ontology")
def test_cli_lists_sections(root, capsys):
    from cytoclip.cli import main

    assert main(["atlas", str(root)]) == 0
    out = capsys.readouterr().out
    assert "Specimen_1_1009.tif" in out and "sagittal" in out
    assert main(["atlas", str(root), "--specimen", "1", "--section", "1009"]) == 0
    out = capsys.readouterr().out
    assert "level 2: 375 x 275 px, 8 µm/px" in out
    assert main(["atlas", str(root / "missing")]) == 1
    assert "atlas root not found" in capsys.readouterr().err


@pytest.mark.filterwarnings("ignore:.*ids not in the ontology")
def test_fsspec_url_reads_like_local(root):
    """The fsspec code path (used for s3://) on fsspec's in-memory filesystem."""
    fsspec = pytest.importorskip("fsspec")
    fs = fsspec.filesystem("memory")
    for p in root.rglob("*"):
        if p.is_file():
            fs.pipe(f"/atlas-{id(root)}/{p.relative_to(root).as_posix()}", p.read_bytes())
    remote = Atlas(f"memory:///atlas-{id(root)}")
    assert remote.sections()[["specimen", "section"]].values.tolist() == [[1, 1009]]
    s = remote.section(1, 1009)
    local = Atlas(root).section(1, 1009)
    np.testing.assert_array_equal(s.read_region(300, 260, 64, 64, mpp=4.0), local.read_region(300, 260, 64, 64, mpp=4.0))
    assert set(s.annotations()) == set(local.annotations())
    assert "memory://" in s.annotation_report["path"]


def test_damaged_pyramid_with_lost_levels_is_refused_naming_file_and_levels(tmp_path):
    """A broken SubIFD offset makes tifffile drop that level with only a log line; the reader refuses the file
    instead of reading from the surviving levels."""
    import tifffile

    img = np.random.default_rng(0).integers(0, 255, (512, 640, 3), dtype=np.uint8)
    tif = layout.write_pyramid_tiff(tmp_path / "Specimen_1_1.tif", img, mpp0=2.0, tile=256, min_size=64)
    assert len(Section(tif, None).levels) == 4
    with tifffile.TiffFile(tif) as t:
        offset = t.pages[0].tags["SubIFDs"].valueoffset
    data = bytearray(tif.read_bytes())
    data[offset + 4:offset + 8] = b"\xff\xff\xff\x7f"  # the second reduced level (4x)
    tif.write_bytes(bytes(data))
    with pytest.raises(AtlasError, match=r"Specimen_1_1\.tif: damaged pyramid, 3 reduced level\(s\) declared, "
                                         r"\d readable; lost: level 2 \(1/4 of level 0\)"):
        Section(tif, None).levels


def test_open_atlas_takes_paths_urls_and_atlases(root):
    from cytoclip.atlas import open_atlas

    a = open_atlas(str(root))
    assert isinstance(a, Atlas) and open_atlas(a) is a and open_atlas(root).url == str(root)
    with pytest.raises(AtlasError, match="memory://none/here: atlas root not found"):
        open_atlas("memory://none/here")
    with pytest.raises(TypeError, match="atlas: expected a path"):
        open_atlas(3)
