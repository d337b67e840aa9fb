"""The synthetic atlas: written in the DHARANI layout, readable, valid, image and annotation agree, deterministic."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import shapely

from cytoclip.atlas import Atlas
from cytoclip.ontology import Ontology, load_merge_spec, merge_map
from cytoclip.synth import SPECIMENS, generate, load_profile, section_plan


def test_layout_and_specimens(smoke_atlas: Path):
    atlas = Atlas(smoke_atlas)
    spec = atlas.specimens().set_index("specimen")
    assert spec.loc[5, "age_gw"] == 24 and spec.loc[5, "plane"] == "sagittal"  # the paper's S5
    assert spec.loc[3, "age_gw"] == 21 and spec.loc[3, "plane"] == "sagittal"  # the paper's S3
    assert sorted(spec["plane"]) == ["coronal"] + ["sagittal"] * 4
    sections = atlas.sections()
    assert len(sections) == len(SPECIMENS) * load_profile("smoke")["sections_per_specimen"]
    assert "NOT DHARANI" in (smoke_atlas / "SYNTHETIC.md").read_text()
    assert len(Ontology.load(smoke_atlas)) == 496


def test_every_section_reads_with_valid_known_polygons(smoke_atlas: Path):
    atlas = Atlas(smoke_atlas)
    onto = atlas.ontology
    for rec in atlas.sections().itertuples():
        sec = atlas.section(rec.specimen, rec.section)
        assert sec.mpp0 == pytest.approx(2.0)  # level 0 at 2 µm/px from the resolution tags
        assert [lv.mpp for lv in sec.levels][:4] == pytest.approx([2, 4, 8, 16])
        geoms = sec.annotations()
        assert len(geoms) >= 10
        report = sec.annotation_report
        assert not report["unknown_ids"] and not report["repaired"]
        for oid, g in geoms.items():
            assert oid in onto
            assert g.is_valid and not g.is_empty and g.geom_type in ("Polygon", "MultiPolygon")


def _mean_rgb_inside(sec, geom, mpp=16.0):
    img = sec.read_level(mpp).astype(float)
    from skimage.draw import polygon as draw_polygon

    mask = np.zeros(img.shape[:2], bool)
    for part in getattr(geom, "geoms", [geom]):
        xs, ys = np.asarray(part.exterior.coords).T
        rr, cc = draw_polygon(ys, xs, mask.shape)
        mask[rr, cc] = True
        for hole in part.interiors:
            hx, hy = np.asarray(hole.coords).T
            rr, cc = draw_polygon(hy, hx, mask.shape)
            mask[rr, cc] = False
    return img[mask].mean(axis=0), img[~mask].mean(axis=0) if (~mask).any() else None, mask


def test_pixels_agree_with_polygons(smoke_atlas: Path):
    atlas = Atlas(smoke_atlas)
    onto = atlas.ontology
    sec = atlas.section(5, 1001)
    geoms = sec.annotations(mpp=16.0)
    tissue = shapely.union_all(list(geoms.values()))
    inside, _, mask = _mean_rgb_inside(sec, tissue)
    img = sec.read_level(16.0).astype(float)
    background = img[~mask].mean(axis=0)
    assert inside.sum() < background.sum() - 30  # tissue is darker than the slide
    assert background.min() > 230  # near-white background
    lv, cp = onto.by_acronym("LV").id, next(i for i in geoms if onto.acronym(i).startswith("CP-"))
    assert lv in geoms
    lv_rgb, _, _ = _mean_rgb_inside(sec, geoms[lv])
    cp_rgb, _, _ = _mean_rgb_inside(sec, geoms[cp])
    assert lv_rgb.sum() > cp_rgb.sum() + 60  # an empty ventricle is lighter than the dense cortical plate


def test_regions_differ_more_between_than_within(smoke_atlas: Path):
    """Per-region mean colour: two halves of one region agree better than different regions."""
    atlas = Atlas(smoke_atlas)
    sec = atlas.section(5, 1009)
    img = sec.read_level(16.0).astype(float)
    from skimage.draw import polygon as draw_polygon

    halves = {}
    for oid, g in sec.annotations(mpp=16.0).items():
        if g.area < 1500:
            continue
        mask = np.zeros(img.shape[:2], bool)
        for part in getattr(g, "geoms", [g]):
            xs, ys = np.asarray(part.exterior.coords).T
            rr, cc = draw_polygon(ys, xs, mask.shape)
            mask[rr, cc] = True
        ys, xs = np.nonzero(mask)
        cut = np.median(xs)
        a, b = img[ys[xs <= cut], xs[xs <= cut]].mean(0), img[ys[xs > cut], xs[xs > cut]].mean(0)
        halves[oid] = (a, b)
    assert len(halves) >= 5
    within = np.median([np.abs(a - b).sum() for a, b in halves.values()])
    means = {k: (a + b) / 2 for k, (a, b) in halves.items()}
    keys = list(means)
    between = np.median([np.abs(means[i] - means[j]).sum() for i in keys for j in keys if i < j])
    assert between > within


def test_lowres_merge_gives_many_regions(smoke_atlas: Path):
    atlas = Atlas(smoke_atlas)
    mapping = merge_map(atlas.ontology, load_merge_spec("lowres"))
    labels = set()
    for rec in atlas.sections().itertuples():
        labels |= {mapping[i] for i in atlas.section(rec.specimen, rec.section).annotations() if mapping[i]}
    assert len(labels) >= 30


def _digest(root: Path) -> dict[str, str]:
    out = {}
    for p in sorted((root / "data2d").rglob("*.json")) + sorted((root / "data2d").rglob("*.tif")):
        out[p.name] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def test_same_seed_same_atlas_and_resume(smoke_atlas: Path, tmp_path: Path):
    # a second atlas with one section per specimen keeps the run short; compare it with a fresh twin
    a = generate(tmp_path / "a", "smoke", seed=0, workers=1, progress=False, sections_per_specimen=1)
    b = generate(tmp_path / "b", "smoke", seed=0, workers=2, progress=False, sections_per_specimen=1)
    assert _digest(a) == _digest(b)  # byte-identical annotations and TIFFs, whatever the number of workers
    sa, sb = Atlas(a).section(3, 1001), Atlas(b).section(3, 1001)
    assert np.array_equal(sa.read_level(16.0), sb.read_level(16.0))
    # resume: a finished section is not rewritten
    tif = next((a / "data2d").rglob("*.tif"))
    mtime = tif.stat().st_mtime_ns
    generate(a, "smoke", seed=0, workers=1, progress=False, sections_per_specimen=1)
    assert tif.stat().st_mtime_ns == mtime
    # other parameters into the same directory are refused
    with pytest.raises(ValueError, match="other parameters"):
        generate(a, "smoke", seed=1, workers=1, progress=False, sections_per_specimen=1)


def test_plan_covers_the_brain_and_profiles_are_data():
    plan = section_plan(load_profile("demo"))
    sag = [p["position"] for p in plan if p["plane"] == "sagittal" and p["specimen"] == 5]
    cor = [p["position"] for p in plan if p["plane"] == "coronal"]
    assert min(sag) < 0.2 and max(sag) > 0.6  # medial to lateral
    assert max(cor) > 0.4 and min(cor) < -0.4  # anterior to posterior
    with pytest.raises(ValueError, match="unknown"):
        load_profile("nope")


def test_comparison_figure(smoke_atlas: Path, tmp_path: Path):
    from PIL import Image

    from cytoclip.synth.figures import compare_with_reference

    reference_dir = Path(__file__).resolve().parents[1] / "book" / "figures" / "dharani_reference"
    out = compare_with_reference(smoke_atlas, reference_dir, tmp_path / "cmp.png", specimen=5)
    img = np.asarray(Image.open(out).convert("RGB"))
    assert img.shape[0] > 500 and img.shape[1] > 1000
    assert img.std() > 10  # not a blank canvas
    with pytest.raises(FileNotFoundError, match="reference screenshot"):
        compare_with_reference(smoke_atlas, tmp_path, tmp_path / "x.png")


def test_polygons_lie_inside_the_image(smoke_atlas: Path):
    atlas = Atlas(smoke_atlas)
    for rec in atlas.sections().itertuples():
        sec = atlas.section(rec.specimen, rec.section)
        h, w = sec.levels[0].height, sec.levels[0].width
        for oid, g in sec.annotations().items():
            x0, y0, x1, y1 = g.bounds
            assert x0 >= 0 and y0 >= 0 and x1 <= w and y1 <= h, (rec.section, oid, g.bounds, (w, h))


def test_region_darkness_follows_its_cytoarchitecture(smoke_atlas: Path):
    """Image and annotation agree: a region's measured stain follows what its cytoarchitecture should give."""
    from cytoclip.synth import load_profile
    from cytoclip.synth.render import cytoarchitecture

    atlas = Atlas(smoke_atlas)
    onto = atlas.ontology
    dev = load_profile("smoke")["development"]
    sec = atlas.section(5, 1001)
    img = sec.read_level(16.0).astype(float)
    measured, expected = [], []
    for oid, g in sec.annotations(mpp=16.0).items():
        if g.area < 400:
            continue
        mean, _, _ = _mean_rgb_inside(sec, g.buffer(-1.5) if g.buffer(-1.5).area > 50 else g)
        c = cytoarchitecture(onto.acronym(oid), 24.0, dev)
        measured.append(-np.log(mean[:2].mean() / 246.0))  # optical density of the red/green channels
        expected.append(c.tissue * (c.density * c.intensity * 2 * np.pi * c.soma ** 2 / c.elong + c.neuropil))
    assert len(measured) >= 15
    rank = lambda v: np.argsort(np.argsort(v))  # noqa: E731
    rho = np.corrcoef(rank(measured), rank(expected))[0, 1]
    assert rho > 0.6, rho


def test_sagittal_and_coronal_cut_one_brain():
    """Both planes sample the same 3-D anatomy: on the line where they cross, they give the same labels."""
    from cytoclip.synth.anatomy import Brain

    brain = Brain.make(22.0, 4, load_profile("smoke")["development"])
    ys = np.linspace(0.7, -0.9, 200, dtype=np.float32)
    xs = np.linspace(1.0, -1.0, 220, dtype=np.float32)
    zs = np.linspace(-0.9, 0.9, 180, dtype=np.float32)
    z_cut, x_cut = zs[130], xs[90]
    sx, sy = np.meshgrid(xs, ys)
    sag, sag_names, _ = brain.labels(sx, sy, np.full_like(sx, z_cut))
    cz, cy = np.meshgrid(zs, ys)
    cor, cor_names, _ = brain.labels(np.full_like(cz, x_cut), cy, cz)
    a = [sag_names[v] for v in sag[:, 90]]
    b = [cor_names[v] for v in cor[:, 130]]
    assert sum(v != "background" for v in a) > 40
    assert np.mean([p == q for p, q in zip(a, b)]) > 0.97


def test_development_is_declared_with_sources():
    from cytoclip.synth.anatomy import Development
    from cytoclip.synth.render import cytoarchitecture

    dev = load_profile("smoke")["development"]
    sources = set(dev["sources"])
    for key in ("zones", "ventricle_scale", "ge_scale", "cerebellum_scale", "cp_lamination", "cell_sparse_layer"):
        cited = dev[key]["source"]
        assert set([cited] if isinstance(cited, str) else cited) <= sources, key
    assert all(s["source"] in sources for s in dev["sulci"].values())
    young, old = Development.at(dev, 14.0), Development.at(dev, 24.0)
    assert {s["name"] for s in young.sulci} == {"lateral"}
    assert {"calcarine", "central", "superior_temporal"} <= {s["name"] for s in old.sulci}
    zone = lambda d, z: dict(d.zones)[z] / sum(f for _, f in d.zones)  # noqa: E731
    assert zone(old, "CP") > zone(young, "CP") and zone(old, "VZ") < zone(young, "VZ")
    # lamination at 24 GW in parietal and occipital, not frontal; the sparse layer reaches frontal by 17 GW
    assert cytoarchitecture("CP-PAR", 24, dev).layers > 0 and cytoarchitecture("CP-OCC", 24, dev).layers > 0
    assert cytoarchitecture("CP-FCTx", 24, dev).layers == 0 and cytoarchitecture("CP-PAR", 21, dev).layers == 0
    assert cytoarchitecture("SP-ORB", 14, dev).sparse_top > 0 and cytoarchitecture("SP-FCTx", 14, dev).sparse_top == 0
    assert cytoarchitecture("SP-FCTx", 17, dev).sparse_top > 0
