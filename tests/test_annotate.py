"""cytoclip.annotate and the verbs ``cytoclip predict`` / ``cytoclip segment`` on the smoke atlas (synthetic), with
a tiny model trained for one epoch on the atlas's tiles: predictions on images, boxes and polygons; candidates from
a file and an ontology subtree; segmentation outputs, resume, the GeoJSON round trip through the atlas reader;
one-line errors for bad input."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from shapely.geometry import box

from cytoclip import cli
from cytoclip.atlas import Atlas, Section
from cytoclip.evaluate.sections import annotation_classes, annotation_grid, raster_regions
from cytoclip.ontology import Ontology

torch.set_num_threads(1)

SECTIONS = ["5/1009", "3/1001"]


@pytest.fixture(scope="module")
def trained_run(smoke_atlas, tmp_path_factory):
    """A real training run (tiny model, 1 epoch, 64 px) on the smoke atlas's tiles of two sections."""
    from cytoclip.tiles import prepare_tiles
    from cytoclip.train import TrainConfig, train

    root = tmp_path_factory.mktemp("annotate")
    ds = prepare_tiles(smoke_atlas, root / "tiles", workers=1, sections=[(5, 1009), (3, 1001), (2, 1001)])
    run = train(TrainConfig(dataset=str(ds), run_dir=str(root / "run"), model="tiny", image_size=64,
                            image_type="tile", epochs=1, batch_size=32, lr=5e-4, num_workers=0, seed=0,
                            device="cpu"))
    return Path(run)


def _run(argv, capsys):
    os.environ["TQDM_DISABLE"] = "1"
    rc = cli.main(argv)
    out = capsys.readouterr()
    return rc, out.out, out.err


# --------------------------------------------------------------------------------------------- unit pieces
def test_raster_regions_exact_areas_and_holes():
    labels = np.array([[0, 0, 0], [0, 1, 0], [0, 0, 0], [-1, 1, 1]])
    regions = raster_regions(labels, cell=10.0)
    assert sorted(regions) == [0, 1]
    assert regions[0].area == pytest.approx(8 * 100) and len(regions[0].interiors) == 1  # a ring round class 1
    assert regions[1].area == pytest.approx(3 * 100) and regions[1].geom_type == "MultiPolygon"
    # the inverse of annotation_grid: cell centres fall back into the same classes
    assert (annotation_grid(regions, labels.shape, cell=10.0) == labels).all()
    assert len(regions[0].exterior.coords) == 5  # straight edges carry no per-cell vertices


def test_annotation_classes_nearest_ancestor_or_self():
    onto = Ontology.load()
    cortex = onto.resolve("Frontal cortex")
    layer = onto.resolve("CP-FCTx")  # Cortical plate, frontal cortex: a child of Frontal cortex
    other = onto.resolve("Thalamus")
    ann = {layer: box(0, 0, 10, 10), cortex: box(10, 0, 20, 10), other: box(30, 0, 40, 10)}
    got = annotation_classes(ann, [cortex, 999999], onto)  # a merged class takes its subtree; Thalamus: none
    assert list(got) == [0] and got[0].area == pytest.approx(200)
    leaf = annotation_classes(ann, [layer, other], onto)  # leaf classes: the parent drawn as itself counts for none
    assert {k: round(g.area) for k, g in leaf.items()} == {0: 100, 1: 100}


def test_qupath_classification_in_the_shared_writer():
    from cytoclip.layout import annotation_geojson

    onto = Ontology.load()
    tid = onto.resolve("Thalamus")
    plain = annotation_geojson({tid: box(0, 0, 4, 4)}, ontology=onto)
    assert "classification" not in plain["features"][0]["properties"]  # the atlas writer's bytes are unchanged
    doc = annotation_geojson({tid: box(0, 0, 4, 4)}, negative_y=False, ontology=onto, classification=True)
    props = doc["features"][0]["properties"]
    hexc = onto.color(tid).lstrip("#")
    assert props["data"] == {"id": tid} and props["objectType"] == "annotation"
    assert props["classification"] == {"name": "Thalamus", "color": [int(hexc[i:i + 2], 16) for i in (0, 2, 4)]}
    with pytest.raises(ValueError, match="needs the ontology"):
        annotation_geojson({tid: box(0, 0, 4, 4)}, classification=True)


# --------------------------------------------------------------------------------------------- predict
def test_run_record_and_training_candidates(trained_run):
    from cytoclip.annotate import candidates, open_model

    tm = open_model(trained_run, device="cpu")
    manifest = pd.read_parquet(json.loads((trained_run / "config.json").read_text())["dataset"] + "/manifest.parquet")
    assert tm.class_names == sorted(manifest["label"].unique()) and tm.image_type == "tile"
    assert tm.mpp == 2.0 and tm.tile == 224
    c = candidates(tm, Ontology.load())
    assert list(c.names) == tm.class_names
    assert list(c.ids) == [int(manifest.loc[manifest.label == n, "label_id"].iloc[0]) for n in c.names]
    # the saved model inside the run brings the same record
    assert open_model(trained_run / "model").class_names == tm.class_names


def test_predict_images_and_folder(trained_run, smoke_atlas, tmp_path, capsys):
    sec = Atlas(smoke_atlas).section(5, 1009)
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, (x, y) in enumerate([(800, 600), (1200, 900)]):
        Image.fromarray(sec.read_region(x, y, 224, 224, mpp=2.0)).save(folder / f"crop{i}.png")
    (folder / "notes.txt").write_text("not an image\n")
    out = tmp_path / "pred.json"
    rc, text, err = _run(["predict", str(folder), str(folder / "crop0.png"), "--model", str(trained_run),
                          "--top-k", "3", "--output", str(out)], capsys)
    assert rc == 0, err
    doc = json.loads(out.read_text())
    assert [p["query"] for p in doc["predictions"]] == [str(folder / "crop0.png"), str(folder / "crop1.png"),
                                                        str(folder / "crop0.png")]
    first = doc["predictions"][0]
    assert [t["rank"] for t in first["top"]] == [1, 2, 3]
    scores = [t["score"] for t in first["top"]]
    assert scores == sorted(scores, reverse=True) and 0 < sum(scores) <= 1 + 1e-6
    assert first["top"] == doc["predictions"][2]["top"]  # the same image twice: the same answer
    assert {t["label"] for t in first["top"]} <= set(doc["labels"])
    assert "crop1.png (image)" in text and " 1. " in text


def test_predict_box_at_a_stated_scale_and_polygon(trained_run, smoke_atlas, tmp_path, capsys):
    out = tmp_path / "box.csv"
    # the same area given at 2 µm/px (level 0) and at 8 µm/px: the same box in level-0 px, the same answer
    rc, text, err = _run(["predict", "--model", str(trained_run), "--atlas", str(smoke_atlas), "--section", "5/1009",
                          "--box", "400,300,200,150", "--box", "200,150,100,75", "--box-mpp", "8",
                          "--output", str(out)], capsys)
    assert rc == 0, err
    frame = pd.read_csv(out)
    a, b = (g for _, g in frame.groupby("query", sort=False))
    assert a[["x0", "y0", "x1", "y1"]].iloc[0].tolist() == [1600, 1200, 2400, 1800]
    assert b[["x0", "y0", "x1", "y1"]].iloc[0].tolist() == [800, 600, 1200, 900]
    rc, _, err = _run(["predict", "--model", str(trained_run), "--atlas", str(smoke_atlas), "--section", "5/1009",
                       "--box", "800,600,400,300", "--output", str(tmp_path / "box2.csv")], capsys)
    same = pd.read_csv(tmp_path / "box2.csv")
    assert same[["label", "score"]].values.tolist() == b[["label", "score"]].values.tolist()
    assert (frame["kind"] == "box").all() and (frame["specimen"] == 5).all()
    # a GeoJSON polygon on the section TIFF given by path (DHARANI's negated y is read as level-0 px)
    gj = tmp_path / "area.geojson"
    gj.write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {"name": "my area"},
         "geometry": {"type": "Polygon", "coordinates": [[[800, -600], [1200, -600], [1200, -900], [800, -900],
                                                          [800, -600]]]}}]}))
    tif = smoke_atlas / "data2d" / "specimen_5" / "Specimen_5_1009.tif"
    rc, text, err = _run(["predict", "--model", str(trained_run), "--section", str(tif), "--geojson", str(gj)],
                         capsys)
    assert rc == 0, err
    assert "my area (polygon)" in text and "box 800,600 - 1200,900" in text


def test_candidates_from_file_and_subtree(trained_run, smoke_atlas, tmp_path, capsys):
    from cytoclip.annotate import candidates, open_model

    onto = Ontology.load()
    labels = tmp_path / "labels.txt"
    labels.write_text("# my candidates\nThalamus\n\nCP-FCTx   # an acronym\nPons\n")
    tm = open_model("tiny", image_size=64)
    c = candidates(tm, onto, labels=labels)
    assert c.names == ("Thalamus", "Cortical plate, frontal cortex", "Pons")
    assert c.ids == tuple(onto.resolve(n) for n in c.names) and c.colors[0] == onto.color(c.ids[0])
    sub = candidates(tm, onto, subtree="Frontal cortex")
    assert set(sub.ids) == set(onto.leaves(onto.resolve("Frontal cortex"))) and len(sub) > 1
    with pytest.raises(ValueError, match="records no training labels"):
        candidates(tm, onto)
    out = tmp_path / "p.csv"
    rc, _, err = _run(["predict", "--model", str(trained_run), "--atlas", str(smoke_atlas), "--section", "5/1009",
                       "--box", "800,600,400,300", "--labels", str(labels), "--top-k", "10", "--output", str(out)],
                      capsys)
    assert rc == 0, err
    frame = pd.read_csv(out)
    assert sorted(frame["label"]) == sorted(c.names) and frame["score"].sum() == pytest.approx(1.0, abs=1e-4)


# --------------------------------------------------------------------------------------------- segment
@pytest.fixture(scope="module")
def segmented(trained_run, smoke_atlas, tmp_path_factory):
    out = tmp_path_factory.mktemp("seg")
    os.environ["TQDM_DISABLE"] = "1"
    argv = ["segment", "--model", str(trained_run), "--atlas", str(smoke_atlas), "--output-dir", str(out)]
    for s in SECTIONS:
        argv += ["--section", s]
    assert cli.main(argv) == 0
    return out, argv


def test_segment_two_sections_outputs(segmented, smoke_atlas):
    out, _ = segmented
    summary = pd.read_csv(out / "summary.csv")
    assert summary["section"].tolist() == ["Specimen_3_1001", "Specimen_5_1009"]
    assert (summary["status"] == "done").all() and (summary["n_tissue_tiles"] > 10).all()
    for stem in summary["section"]:
        rec = json.loads((out / f"{stem}.json").read_text())
        tiles = pd.read_parquet(out / f"{stem}.tiles.parquet")
        assert len(tiles) == rec["n_tiles"] and tiles["label"].notna().sum() == rec["n_tissue_tiles"]
        probs = tiles[[c for c in tiles.columns if c.startswith("p:")]].to_numpy()
        on = tiles["label"].notna().to_numpy()
        assert np.allclose(probs[on].sum(axis=1), 1, atol=1e-4) and (probs[~on] == 0).all()
        assert (tiles.loc[on, "score"].to_numpy() == pytest.approx(probs[on].max(axis=1)))
        s = rec["scores"]  # the smoke sections are annotated: accuracy and IoU against their annotation
        assert 0 <= s["pixel_accuracy"] <= 1 and 0 <= s["mean_iou"] <= 1 and s["n_pixels"] > 0
        assert set(s["iou"]) >= set(rec["regions"]) - {None}
        png = Image.open(out / f"{stem}.png")
        assert png.size[0] > 300 and len(np.unique(np.asarray(png.convert("RGB")).reshape(-1, 3), axis=0)) > 50


def test_segment_names_the_tissue_tiles_the_tiles_dataset_holds(segmented, trained_run):
    """One tissue rule: every tile prepared for training is a tissue tile of the segmentation, with the same
    tissue fraction (an earlier rule of its own, mean RGB < 230, missed a quarter of them on 2/1009)."""
    out, _ = segmented
    dataset = json.loads((trained_run / "config.json").read_text())["dataset"]
    manifest = pd.read_parquet(Path(dataset) / "manifest.parquet")
    for (sp, sec), rows in manifest.groupby(["specimen", "section"]):
        path = out / f"Specimen_{sp}_{sec}.tiles.parquet"
        if not path.is_file():
            continue
        tiles = pd.read_parquet(path).set_index(["row", "col"])
        got = tiles.loc[list(zip(rows["row"], rows["col"]))]
        assert got["label"].notna().all()
        assert got["tissue"].to_numpy() == pytest.approx(rows["tissue"].to_numpy(), abs=1e-6)


def test_segment_geojson_round_trip_through_the_atlas_reader(segmented, smoke_atlas):
    out, _ = segmented
    atlas = Atlas(smoke_atlas)
    sec = atlas.section(5, 1009)
    rec = json.loads((out / "Specimen_5_1009.json").read_text())
    tiles = pd.read_parquet(out / "Specimen_5_1009.tiles.parquet")
    read = Section(sec.image_path, out / "Specimen_5_1009.geojson", ontology=atlas.ontology).annotations()
    cell0 = rec["cell_level0_px"]
    counts = tiles[tiles["label_id"] >= 0].groupby("label_id").size()
    assert sorted(read) == sorted(int(i) for i in counts.index)
    for rid, geom in read.items():
        assert geom.area == pytest.approx(counts[rid] * cell0 ** 2)
    doc = json.loads((out / "Specimen_5_1009.geojson").read_text())
    props = doc["features"][0]["properties"]
    assert props["classification"]["name"] == atlas.ontology.name(props["data"]["id"])
    assert min(c[1] for f in doc["features"] for c in f["geometry"]["coordinates"][0]) >= 0  # QuPath: y positive


def test_segment_rerun_skips_finished_sections(segmented, capsys):
    out, argv = segmented
    stamps = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    rc, text, err = _run(argv, capsys)
    assert rc == 0, err
    assert text.count("skipped (finished)") == 2
    assert all(p.stat().st_mtime_ns == stamps[p.name] for p in out.iterdir() if p.name != "summary.csv")
    # a missing output makes its section work again; the other stays skipped
    (out / "Specimen_3_1001.png").unlink()
    rc, text, err = _run(argv, capsys)
    assert rc == 0 and text.count("skipped (finished)") == 1 and (out / "Specimen_3_1001.png").is_file()
    # other parameters are other work
    rc, text, err = _run(argv + ["--min-tissue", "0.9"], capsys)
    assert rc == 0 and "skipped" not in text


def test_segment_any_pyramidal_tiff_without_annotation(trained_run, smoke_atlas, tmp_path, capsys):
    """A TIFF outside the DHARANI layout, at another scale (4 µm/px in its resolution tags), no annotation."""
    from cytoclip.layout import write_pyramid_tiff

    img = Atlas(smoke_atlas).section(5, 1009).read_level(4.0)
    tif = write_pyramid_tiff(tmp_path / "my slide.tif", img, mpp0=4.0, tile=256)
    rc, text, err = _run(["segment", str(tif), "--model", str(trained_run), "--output-dir", str(tmp_path / "o")],
                         capsys)
    assert rc == 0, err
    rec = json.loads((tmp_path / "o" / "my slide.json").read_text())
    assert rec["scores"] is None and rec["mpp0"] == 4.0 and rec["cell_level0_px"] == 112.0
    assert rec["n_tissue_tiles"] > 10


# --------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("argv, expected", [
    (["predict", "missing.png"], "missing.png: image not found"),
    (["predict", "--section", "5/1009", "--box", "1,2,3"], "--box '1,2,3': expected x,y,w,h"),
    (["predict", "--section", "5/1009", "--box", "1,2,0,3"], "width and height must be > 0"),
    (["predict", "--section", "5/1009", "--box", "1,2,3,4", "--labels", "LABELS"], "labels.txt:2: unknown label 'Nowhere nucleus'"),
    (["predict", "--section", "no.tif", "--box", "1,2,3,4"], "no.tif: section image not found"),
    (["segment", "missing.tif", "--output-dir", "OUT"], "missing.tif: section image not found"),
    (["segment", "--output-dir", "OUT", "--section", "9/9"], "no section image for 9/9"),
])
def test_bad_input_one_line_errors(argv, expected, trained_run, smoke_atlas, tmp_path, capsys):
    labels = tmp_path / "labels.txt"
    labels.write_text("Thalamus\nNowhere nucleus\n")
    argv = [str(labels) if a == "LABELS" else str(tmp_path / "out") if a == "OUT" else a for a in argv]
    argv = [a if a in ("predict", "segment") or not a.endswith((".png", ".tif")) else str(tmp_path / a) for a in argv]
    argv += ["--model", str(trained_run), "--atlas", str(smoke_atlas)] if "5/1009" in argv or "9/9" in argv \
        else ["--model", str(trained_run)]
    rc, out, err = _run(argv, capsys)
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"cytoclip {argv[0]}: error: ") and expected in lines[0], err
