"""cytoclip.evaluate: embeddings cache, zero-shot, retrieval, baselines, adjacency, segmentation, and
evaluate() end to end on a tiny in-test dataset with a tiny random model (synthetic-labelled): every reported
number recomputed from the arrays it leaves behind."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import json

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from shapely.geometry import box

from cytoclip import evaluate as E

torch.set_num_threads(1)

REGIONS = {74: "Hippocampus", 85: "Subiculum", 160: "Thalamus", 205: "Pons"}
PATHS = {74: "Brain / Forebrain / Telencephalon / Cerebral cortex / Allocortex / Hippocampal formation / Hippocampus",
         85: "Brain / Forebrain / Telencephalon / Cerebral cortex / Allocortex / Hippocampal formation / Subiculum",
         160: "Brain / Forebrain / Diencephalon / Thalamus", 205: "Brain / Brainstem / Hindbrain / Pons"}
COLORS = {74: (200, 60, 60), 85: (60, 200, 60), 160: (60, 60, 200), 205: (200, 200, 60)}


@pytest.fixture(scope="module")
def model():
    from cytoclip.models import create_model

    return create_model("tiny", image_size=64, embed_dim=32)


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory):
    """4 regions x 2 sections x 3 images, square224 crops; section 2 is the validation split."""
    root = tmp_path_factory.mktemp("ds")
    atlas = root / "atlas"
    atlas.mkdir()
    (atlas / "SYNTHETIC.md").write_text("synthetic atlas\n")
    rng = np.random.default_rng(0)
    rows = []
    for lid, name in REGIONS.items():
        for section in (1, 2):
            for k in range(3):
                img = np.clip(np.array(COLORS[lid]) + rng.normal(0, 20, (40, 48, 3)), 0, 255).astype(np.uint8)
                rel = f"images/{lid}_{section}_{k}.png"
                (root / "images").mkdir(exist_ok=True)
                Image.fromarray(img).save(root / rel)
                neighbour = "Subiculum" if name == "Hippocampus" else None
                multi = [name] + ([neighbour] if neighbour else [])
                rows.append({"path": rel, "image_type": "square224", "label": name, "label_id": lid,
                             "caption": name, "acronym": name[:3], "ontology_path": PATHS[lid],
                             "multi_labels": multi, "multi_label_ids": [lid] + ([85] if neighbour else []),
                             "mask_path": "", "specimen": 1, "section": section, "age_gw": 21.0,
                             "plane": "sagittal", "x0": 0, "y0": 0, "x1": 48, "y1": 40, "mpp": 16.0,
                             "split": "train" if section == 1 else "val"})
    pd.DataFrame(rows).to_parquet(root / "manifest.parquet", index=False)
    (root / "report.json").write_text(json.dumps({"dataset": "regions", "synthetic": True}))
    return root


# ------------------------------------------------------------------------------------------------ embeddings
def test_embed_images_cache_hit_avoids_recompute(model, dataset_dir, tmp_path, monkeypatch):
    from cytoclip.data import ImageTextDataset

    ds = ImageTextDataset(dataset_dir, image_type="square224", split="val", transform=model.transform)
    calls = []
    original = model.encode_image

    def counting(x, normalize=True):
        calls.append(len(x))
        return original(x, normalize=normalize)

    monkeypatch.setattr(model, "encode_image", counting)
    first = E.embed_images(model, ds, batch_size=5, cache_dir=tmp_path)
    assert first.shape == (12, 32) and sum(calls) == 12 and len(calls) == 3
    assert np.allclose(np.linalg.norm(first, axis=1), 1, atol=1e-5)
    second = E.embed_images(model, ds, batch_size=5, cache_dir=tmp_path)
    assert sum(calls) == 12  # loaded from the cache
    assert np.array_equal(first, second) and len(list(tmp_path.glob("img-*.npy"))) == 1
    # a different item set (train split) is a different cache entry
    train = ImageTextDataset(dataset_dir, image_type="square224", split="train", transform=model.transform)
    E.embed_images(model, train, batch_size=12, cache_dir=tmp_path)
    assert sum(calls) == 24 and len(list(tmp_path.glob("img-*.npy"))) == 2
    with pytest.raises(ValueError, match="cache_key"):
        E.embed_images(model, [torch.zeros(3, 64, 64)], cache_dir=tmp_path)


def test_class_texts_prompts():
    assert E.class_texts(["Pons"]) == [["Pons"]]
    assert E.class_texts(["Pons"], ["a {}", "{} region"]) == [["a Pons", "Pons region"]]
    assert E.class_texts(["Subiculum"], "ontology_path", {"Subiculum": PATHS[85]}) == \
        [["Subiculum, part of the hippocampal formation"]]
    with pytest.raises(ValueError, match="ontology_paths"):
        E.class_texts(["Pons"], "ontology_path")
    with pytest.raises(ValueError, match="template"):
        E.class_texts(["Pons"], "no placeholder")


def test_zero_shot_picks_most_similar_text(model):
    text = np.eye(3, dtype=np.float32)
    img = np.array([[0.9, 0.1, 0.0], [0.0, 0.2, 0.95]], dtype=np.float32)
    pred, probs = E.zero_shot(model, img, ["a", "b", "c"], text_emb=text)
    assert pred.tolist() == [0, 2] and np.allclose(probs.sum(axis=1), 1)
    real = E.text_classifier(model, ["Pons", "Thalamus"], ["{}", "a section of {}"])
    assert real.shape == (2, 32) and np.allclose(np.linalg.norm(real, axis=1), 1, atol=1e-5)


# ------------------------------------------------------------------------------------------------- retrieval
def test_sample_retrieval_set_random_and_seeded():
    idx = E.sample_retrieval_set(100, 20, seed=3)
    assert len(idx) == 20 and len(set(idx.tolist())) == 20 and (np.diff(idx) > 0).all()
    assert np.array_equal(idx, E.sample_retrieval_set(100, 20, seed=3))
    assert not np.array_equal(idx, E.sample_retrieval_set(100, 20, seed=4))
    assert len(E.sample_retrieval_set(100, None)) == 100 and len(E.sample_retrieval_set(10, 925)) == 10
    # a uniform draw: over many seeds every item is drawn about size/n of the time
    counts = np.bincount(np.concatenate([E.sample_retrieval_set(50, 10, seed=s) for s in range(500)]), minlength=50)
    assert counts.min() > 60 and counts.max() < 140  # expected 100 each
    with pytest.raises(ValueError, match="retrieval_size"):
        E.sample_retrieval_set(10, 0)


def test_retrieval_one_caption_per_image_and_image_only():
    rng = np.random.default_rng(0)
    centers = np.eye(4, 16)
    y = np.repeat(np.array(["a", "b", "c", "d"]), 5)
    img = centers[np.repeat(np.arange(4), 5)] + rng.normal(0, 0.05, (20, 16))
    img /= np.linalg.norm(img, axis=1, keepdims=True)
    only = E.retrieval(img, y)
    assert only["text_to_image"] is None and only["image_to_text"] is None
    assert only["image_to_image"]["recall_at_1"] == pytest.approx(0.25)  # 1 of 4 other same-class images
    assert only["image_to_image"]["recall_at_5"] == pytest.approx(1.0)
    assert only["image_to_image"]["hit_at_1"] == pytest.approx(1.0)
    captions = centers[np.repeat(np.arange(4), 5)]  # each image's own caption: 5 identical per region
    full = E.retrieval(img, y, text_emb=captions, n_boot=50)
    assert full["text_to_image"]["recall_at_5"] == pytest.approx(1.0)
    assert full["image_to_text"]["recall_at_1"] == pytest.approx(0.2)  # 1 of the 5 captions of its region
    assert full["image_to_text"]["hit_at_1"] == pytest.approx(1.0)
    ci = full["image_to_image"]["ci"]["recall_at_1"]
    assert ci["low"] <= ci["estimate"] <= ci["high"]
    with pytest.raises(ValueError, match="one caption embedding per image"):
        E.retrieval(img, y, text_emb=centers)


def test_linear_probe_and_knn_on_separable_blobs():
    rng = np.random.default_rng(1)
    centers = rng.normal(size=(3, 8)) * 4
    ytr, yva = np.repeat(["x", "y", "z"], 20), np.repeat(["x", "y", "z"], 10)
    tr = centers[np.repeat(np.arange(3), 20)] + rng.normal(size=(60, 8))
    va = centers[np.repeat(np.arange(3), 10)] + rng.normal(size=(30, 8))
    lp = E.linear_probe(tr, ytr, va)
    kn = E.knn(tr, ytr, va, k=5)
    assert (lp == yva).mean() > 0.9 and (kn == yva).mean() > 0.9 and len(lp) == 30
    with pytest.raises(ValueError, match="two classes"):
        E.linear_probe(tr[:5], ["x"] * 5, va)


# -------------------------------------------------------------------------------------------- error analysis
def test_region_adjacency_and_label_adjacency():
    geoms = {1: box(0, 0, 10, 10), 2: box(10, 0, 20, 10), 3: box(10.5, 20, 30, 30), 4: box(50, 50, 60, 60)}
    assert E.region_adjacency(geoms, tolerance=0.0) == {frozenset({1, 2})}
    assert E.region_adjacency(geoms, tolerance=10.0) == {frozenset({1, 2}), frozenset({2, 3})}

    class FakeOntology:
        parents = {11: 1, 12: 1, 21: 2, 1: None, 2: None, 9: None}

        def __contains__(self, i):
            return i in self.parents

        def ancestors(self, i):
            out = []
            while self.parents[i] is not None:
                i = self.parents[i]
                out.insert(0, i)
            return tuple(out)

    class FakeSection:
        def annotations(self, mpp=None):
            # children 11 and 12 of class 1 touch child 21 of class 2; 9 (excluded) touches both
            return {11: box(0, 0, 5, 10), 12: box(5, 0, 10, 10), 21: box(10, 0, 20, 10), 9: box(0, 10, 20, 12)}

    class FakeAtlas:
        def section(self, specimen, section):
            return FakeSection()

    pairs = E.label_adjacency(FakeAtlas(), [(1, 1)], {1: "A", 2: "B"}, FakeOntology(), tolerance=0.0)
    assert pairs == {frozenset({"A", "B"})}


# --------------------------------------------------------------------------------------------- segmentation
class FakeSection:
    """A 4 x 3 tile section at 2 um/px: left half region 0 colour, right half region 1, bottom row glass."""

    def __init__(self, tile=64):
        self.tile = tile
        h, w = 3 * tile, 4 * tile
        img = np.full((h, w, 3), 250, np.uint8)
        img[: 2 * tile, : 2 * tile] = (120, 40, 160)
        img[: 2 * tile, 2 * tile:] = (40, 40, 90)
        self.img = img

    def size(self, mpp=None):
        f = 2.0 / (mpp or 2.0)
        return round(self.img.shape[1] * f), round(self.img.shape[0] * f)

    def read_region(self, x, y, w, h, mpp=None):
        f = (mpp or 2.0) / 2.0
        xs = np.clip(((np.arange(w) + x) * f).astype(int), 0, self.img.shape[1] - 1)
        ys = np.clip(((np.arange(h) + y) * f).astype(int), 0, self.img.shape[0] - 1)
        return self.img[ys][:, xs]


def test_segment_section_and_predict_area(model):
    sec = FakeSection()
    names = ["Thalamus", "Pons"]
    seg = E.segment_section(model, sec, names, tile=64, mpp=2.0, colors=["#ff0000", "#0000ff"])
    assert seg["labels"].shape == (3, 4) and seg["color"].shape == (3, 4, 3)
    assert (seg["labels"][2] == -1).all() and (seg["labels"][:2] >= 0).all()  # glass row not classified
    assert (seg["color"][2] == 255).all() and seg["cell_mpp"] == 128.0
    assert ((seg["scores"][:2] > 0) & (seg["scores"][:2] <= 1)).all()
    label, score, top = E.predict_area(model, sec, box(0, 0, 100, 60), names, mpp=2.0, top_k=2)
    assert label in names and 0 < score <= 1 and [t[0] for t in top][0] == label and len(top) == 2
    assert sum(p for _, p in top) == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(ValueError, match="empty box"):
        E.predict_area(model, sec, (5, 5, 5, 9), names)


def test_annotation_grid_and_segmentation_scores():
    truth = E.annotation_grid({0: box(0, 0, 100, 100), 1: box(0, 0, 50, 50)}, (2, 3), cell=50)
    assert truth.tolist() == [[1, 0, -1], [0, 0, -1]]  # smaller nested region wins; outside = -1
    pred = np.array([[1, 1, 0], [0, -1, 1]])
    s = E.segmentation_scores(pred, truth, class_names=["A", "B"])
    # scored pixels: (0,0) 1/1 ok, (0,1) 0/1 wrong, (1,0) 0/0 ok, (1,1) 0/-1 wrong
    assert s["pixel_accuracy"] == 0.5 and s["n_pixels"] == 4
    assert s["iou"]["A"] == pytest.approx(1 / 3) and s["iou"]["B"] == pytest.approx(1 / 2)
    assert s["mean_iou"] == pytest.approx((1 / 3 + 1 / 2) / 2)
    with pytest.raises(ValueError, match="shape"):
        E.segmentation_scores(pred[:1], truth)


# -------------------------------------------------------------------------------------------- end to end
def test_data_label(tmp_path, dataset_dir):
    from cytoclip.provenance import data_label

    assert data_label(dataset_dir) == "synthetic atlas"
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "report.json").write_text(json.dumps({"synthetic": False}))
    assert data_label(tmp_path / "d") == "DHARANI"
    (tmp_path / "derived").mkdir()
    (tmp_path / "derived" / "source.json").write_text(json.dumps({"parent": str(dataset_dir)}))
    assert data_label(tmp_path / "derived") == "synthetic atlas"  # a derived dataset is what its parent is
    with pytest.raises(ValueError, match="cannot tell"):
        data_label(tmp_path)


class _TouchingAtlas:
    """Hippocampus touches Subiculum, Thalamus touches Pons (ids of the packaged ontology)."""

    class _Section:
        def annotations(self, mpp=None):
            return {74: box(0, 0, 10, 10), 85: box(10, 0, 20, 10), 160: box(0, 50, 10, 60),
                    205: box(10, 50, 20, 60)}

    def section(self, specimen, section):
        return self._Section()


def _brute_recall(sim, q, g, k, exclude_self=False):
    """Recall@K by the paper's definition, query by query, in plain Python (stable ties: lower index first)."""
    out = []
    for i in range(sim.shape[0]):
        cand = [j for j in range(sim.shape[1]) if not (exclude_self and j == i)]
        relevant = [j for j in cand if g[j] == q[i]]
        if not relevant:
            continue
        top = sorted(cand, key=lambda j: (-sim[i, j], j))[:k]
        out.append(sum(1 for j in top if g[j] == q[i]) / len(relevant))
    return float(np.mean(out))


def test_evaluate_end_to_end_and_recomputable(model, dataset_dir, tmp_path):
    out = tmp_path / "results"
    res = E.evaluate(model, dataset_dir, out, n_boot=20, retrieval_size=8, embedding_method="pca",
                     atlas=_TouchingAtlas())
    on_disk = json.loads((out / "results.json").read_text())
    expected = {"data", "model", "run_dir", "dataset", "image_type", "split", "seed", "label_type", "n_classes",
                "class_names", "training_data", "validation_data", "classification", "per_class", "retrieval",
                "errors", "figures", "arrays"}
    assert expected <= set(on_disk)
    assert on_disk["data"] == "synthetic atlas" and on_disk["image_type"] == "square224"
    assert on_disk["validation_data"] == {"n_images": 12, "n_labels": 4, "specimens": [1], "planes": ["sagittal"],
                                          "ages_gw": [21.0], "n_sections": 1}
    assert on_disk["training_data"]["n_images"] == 12 and on_disk["label_type"] == "single"
    c = on_disk["classification"]
    assert c["ci"]["accuracy"]["low"] <= c["accuracy"] <= c["ci"]["accuracy"]["high"]
    assert len(on_disk["per_class"]) >= 1 and {"label", "f1", "support"} <= set(on_disk["per_class"][0])
    # every number recomputed from the saved arrays
    a = E.load_arrays(out)
    from sklearn.metrics import f1_score

    logits = a["image_embeddings"] @ a["class_text_embeddings"].T
    pred = a["class_names"][logits.argmax(axis=1)]
    assert (pred == a["predictions"]).all()
    assert c["f1_weighted"] == pytest.approx(f1_score(a["labels"], pred, average="weighted", zero_division=0))
    assert c["f1_macro"] == pytest.approx(f1_score(a["labels"], pred, average="macro", zero_division=0))
    r = on_disk["retrieval"]
    ridx = a["retrieval_indices"]
    assert r["n_images"] == len(ridx) == 8 and r["requested_size"] == 8
    img, cap, lab = a["image_embeddings"][ridx], a["caption_embeddings"], a["labels"][ridx]
    for k in (1, 5, 10):
        assert r["image_to_image"][f"recall_at_{k}"] == pytest.approx(_brute_recall(img @ img.T, lab, lab, k, True))
        assert r["text_to_image"][f"recall_at_{k}"] == pytest.approx(_brute_recall(cap @ img.T, lab, lab, k))
        assert r["image_to_text"][f"recall_at_{k}"] == pytest.approx(_brute_recall(img @ cap.T, lab, lab, k))
    errs = on_disk["errors"]
    n_err = int((pred != a["labels"]).sum())
    assert sum(d["n_errors"] for d in errs["by_tree_distance"] or []) == n_err == errs["by_adjacency"]["n_errors"]
    pairs = {frozenset(("Hippocampus", "Subiculum")), frozenset(("Thalamus", "Pons"))}
    wrong = [(t, p) for t, p in zip(a["labels"], pred) if t != p]
    assert errs["by_adjacency"]["n_adjacent"] == sum(frozenset(p) in pairs for p in wrong)
    assert set(on_disk["figures"]) == {"confusion_matrix", "per_region_f1", "embeddings", "retrieval_examples"}
    for rel in on_disk["figures"].values():
        assert (out / rel).read_bytes()[:4] == b"\x89PNG"
    preds = pd.read_parquet(out / "predictions.parquet")
    assert len(preds) == 12 and (preds["predicted"].to_numpy() == pred).all()
    # the CLI reaches the same function and, for the same model and settings, the same numbers
    from cytoclip.cli import main

    model.save(tmp_path / "saved")
    E.evaluate(tmp_path / "saved", dataset_dir, tmp_path / "py", n_boot=0, figures=False, retrieval_size=6)
    rc = main(["evaluate", "--model", str(tmp_path / "saved"), "--dataset", str(dataset_dir), "--output-dir",
               str(tmp_path / "cli"), "--n-boot", "0", "--no-figures", "--retrieval-size", "6"])
    cli = json.loads((tmp_path / "cli" / "results.json").read_text())
    py = json.loads((tmp_path / "py" / "results.json").read_text())
    assert rc == 0 and cli["figures"] == {} and cli["retrieval"]["n_images"] == 6
    assert cli["classification"] == py["classification"] and cli["retrieval"] == py["retrieval"]


def test_multi_region_rule_on_a_multi_dataset(model, dataset_dir, tmp_path):
    """A multi-region dataset (labels = the primary region and its neighbours) is scored by the paper's rule."""
    from cytoclip import workflow as wf

    multi = wf.experiment_dataset(dataset_dir, "square224", split="sections", label_type="multi")
    manifest = pd.read_parquet(multi / "manifest.parquet")
    assert set(manifest["label"]) == {"Hippocampus, Subiculum", "Subiculum", "Thalamus", "Pons"}
    assert (manifest["primary_label"] == manifest["label"].str.split(", ").str[0]).all()
    res = E.evaluate(model, multi, tmp_path, n_boot=0, figures=False)
    assert res["label_type"] == "multi"
    a = E.load_arrays(tmp_path)
    regions = {lab: lab.split(", ") for lab in a["class_names"]}
    hits = np.array([p in regions[q] for p, q in zip(a["primary_labels"], a["predictions"])])
    assert res["classification"]["hit_rate"] == pytest.approx(hits.mean())


class _ImageOnly:
    """The tiny model seen as an image-only foundation model (like UNI): no text tower."""

    has_text = False

    def __init__(self, inner):
        self.inner, self.module, self.spec, self.name = inner, inner.module, {"backend": "image-only"}, "image-only"
        self.transform = inner.transform

    def encode_image(self, x, normalize=True):
        return self.inner.encode_image(x, normalize=normalize)

    def eval(self):
        return self

    def to(self, device):
        return self


def test_evaluate_image_only_uses_probe(model, dataset_dir, tmp_path):
    res = E.evaluate(_ImageOnly(model), dataset_dir, tmp_path, n_boot=0, figures=False)
    assert res["has_text"] is False and res["classification"]["method"] == "linear probe"
    assert res["retrieval"]["text_to_image"] is None and res["retrieval"]["image_to_text"] is None
    assert res["retrieval"]["n_images"] == 12  # the paper's 925 > the validation split: all of it
    assert res["linear_probe"]["accuracy"] > 0.9  # colour blobs are separable in any embedding
    assert res["knn"]["accuracy"] > 0.9
    assert res["errors"]["confused_pairs"] is not None
    with pytest.raises(ValueError, match="image-only"):
        E.embed_texts(_ImageOnly(model), ["Pons"])


def test_retrieval_without_relevant_items_is_nan_not_an_error():
    """Every label once (e.g. multi-region labels): image-to-image has no relevant item for any query."""
    img = np.eye(3, 4, dtype=np.float32)
    res = E.retrieval(img, ["a", "b", "c"], n_boot=20)
    assert np.isnan(res["image_to_image"]["recall_at_1"]) and res["image_to_image"]["n_queries"] == 0
    assert res["image_to_image"]["ci"] == {}
