"""Unit tests of the notebook steps (cytoclip.workflow) and the headline schema (cytoclip.report), on small data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cytoclip import report
from cytoclip import workflow as wf


# ------------------------------------------------------------------------------------------------ report
def test_paper_key_finds_the_row_and_refuses_ambiguity():
    key = report.paper_key("I", model="CytoCLIP (CLIP)", image_size="336", label_type="multi")
    assert key["image_type"] == "Complete region" and key["labels"] == "86"
    assert "metric" not in key
    with pytest.raises(report.HeadlineError, match="differ in"):
        report.paper_key("I", model="CytoCLIP (CLIP)")  # 224 and 336, single and multi
    with pytest.raises(report.HeadlineError, match="no row"):
        report.paper_key("II", model="nonexistent")
    with pytest.raises(report.HeadlineError, match="unknown column"):
        report.paper_key("I", colour="red")


def test_headline_row_and_frame_validate():
    key = report.paper_key("II", image_type="SquareBBox")
    row = report.headline_row(key, "f1_weighted", 0.5, {"low": 0.4, "high": 0.6}, ours_model="tiny")
    assert row["ci_low"] == 0.4 and row["data"] == "synthetic atlas" and row["table"] == "II"
    frame = report.headline_frame([row])
    assert list(frame.columns) == report.HEADLINE_COLUMNS
    with pytest.raises(report.HeadlineError, match="data"):
        report.headline_row(key, "f1_weighted", 0.5, data="somewhere")
    with pytest.raises(report.HeadlineError, match="table"):
        report.headline_row({"table": "IX"}, "f1_weighted", 0.5)
    bad = pd.DataFrame([row]).drop(columns=["ci_low"])
    with pytest.raises(report.HeadlineError, match="ci_low"):
        report.headline_frame(bad, source="x.csv")


def _rows(value: float, ci=(0.1, 0.2)) -> list[dict]:
    key = report.paper_key("II", image_type="SquareBBox")
    return [report.headline_row(key, "f1_weighted", value, ci, ours_model="tiny")]


def test_write_collect_and_beside_paper(tmp_path: Path):
    report.write_results(tmp_path / "a", {"x": np.float32(1.5), "nan": float("nan"), "arr": np.arange(2)},
                         _rows(0.799, (0.7, 0.9)))
    report.write_results(tmp_path / "summary", {}, _rows(0.1))  # excluded from the collection
    written = (tmp_path / "a" / "results.json").read_text()
    assert '"nan": null' in written and '"x": 1.5' in written
    ours = report.collect_headlines(tmp_path)
    assert list(ours["experiment"]) == ["a"]
    table = report.add_verdicts(report.beside_paper(ours))
    sq = table[(table["image_type"] == "SquareBBox") & (table["metric"] == "f1_weighted")].iloc[0]
    assert sq["ours"] == pytest.approx(0.799) and sq["paper"] == pytest.approx(0.799)
    assert sq["verdict"] == "agrees" and sq["paper_data"] == report.PAPER_DATA
    # paper rows nobody ran are kept, marked "not run"
    assert (table["verdict"] == "not run").sum() == (table["ours"].isna()).sum() > 0
    statements = report.summary_statements(table)
    assert any(s.startswith("Table II: of 1 numbers") and "1 agree" in s for s in statements)


def test_verdicts():
    assert report.verdict(0.5, 0.4, 0.6, 0.55) == "agrees"
    assert report.verdict(0.5, 0.4, 0.6, 0.8) == "lower"
    assert report.verdict(0.9, float("nan"), float("nan"), 0.5) == "higher"
    assert report.verdict(0.52, float("nan"), float("nan"), 0.5) == "agrees"
    assert report.verdict(float("nan"), float("nan"), float("nan"), 0.5) == "not run"
    assert report.verdict(0.5, 0.4, 0.6, float("nan")) == "no paper number"


def test_table_one_ordering_statement():
    rows = []
    for model, size, value in (("CytoCLIP (CLIP)", "224", 0.2), ("CLIP (base, zero-shot)", "336", 0.3)):
        key = report.paper_key("I", model=model, image_size=size, label_type="single")
        rows.append(report.headline_row(key, "f1_weighted", value, (value - 0.01, value + 0.01)))
    table = report.add_verdicts(report.beside_paper(report.headline_frame(rows)))
    lines = report.summary_statements(table)
    assert any("Table I, ours: every trained CytoCLIP row does not beat" in s for s in lines)
    assert any("Table I, the paper: every trained CytoCLIP row beats" in s for s in lines)


# ------------------------------------------------------------------------------------------------ workflow
def _dataset(tmp_path: Path, n_sections: int = 5, labels=("A", "B", "C"), types=("square224",)) -> Path:
    """A tiny prepared dataset: one 8x8 PNG per (section, label, type), two ages and two planes."""
    root = tmp_path / "prepared" / "regions"
    (root / "img").mkdir(parents=True)
    rows = []
    colors = {lab: i * 80 for i, lab in enumerate(labels)}
    for s in range(n_sections):
        specimen, age, plane = (1, 24.0, "sagittal") if s < n_sections - 2 else (
            (2, 21.0, "sagittal") if s == n_sections - 2 else (3, 22.0, "coronal"))
        for li, lab in enumerate(labels):
            for t in types:
                path = f"img/{s}_{lab}_{t}.png"
                Image.fromarray(np.full((8, 8, 3), colors[lab], np.uint8)).save(root / path)
                rows.append({"path": path, "image_type": t, "label": lab, "label_id": 100 + li, "caption": lab,
                             "multi_labels": [lab], "specimen": specimen, "section": s, "age_gw": age,
                             "plane": plane, "split": "val" if s % 3 == 0 else "train", "mpp": 16.0})
    pd.DataFrame(rows).to_parquet(root / "manifest.parquet")
    return root


def test_retrieval_frame_spreads_over_labels(tmp_path: Path):
    d = _dataset(tmp_path, n_sections=7)
    frame = wf.retrieval_frame(d, size=3, seed=1)
    assert len(frame) == 3 and set(frame["label"]) == {"A", "B", "C"} and set(frame["split"]) == {"val"}
    assert frame.equals(wf.retrieval_frame(d, size=3, seed=1))
    with pytest.raises(ValueError, match="no 'test' images"):
        wf.retrieval_frame(d, size=3, split="test")


def test_split_dataset_adds_within_holdout(tmp_path: Path):
    d = _dataset(tmp_path, n_sections=8)
    derived = wf.split_dataset(d, "cross_age", seed=0)
    m = pd.read_parquet(derived / "manifest.parquet")
    assert set(m["split"]) == {"train", "val", "val_within"}
    assert set(m.loc[m["split"] == "val", "age_gw"]) == {21.0}
    assert set(m.loc[m["split"] != "val", "age_gw"]) == {24.0}
    # held-out (label, section) pairs are never trained on (paper III-F holds out sections per label)
    pairs = m["label"] + "@" + m["section"].astype(str)
    train_secs = set(pairs[m["split"] == "train"])
    within_secs = set(pairs[m["split"] == "val_within"])
    assert within_secs and not (within_secs & train_secs)
    assert all(Path(p).is_absolute() and Path(p).is_file() for p in m["path"])
    with pytest.raises(ValueError, match="no rows with age_gw == 30"):
        from cytoclip.splits import assign_split
        assign_split(pd.read_parquet(d / "manifest.parquet"), "cross_age", train_age=30)


def test_subset_dataset_keeps_common_frequent_labels(tmp_path: Path):
    d = _dataset(tmp_path, labels=("A", "B", "C", "D"), types=("exact", "exact_mask", "square224"))
    m = pd.read_parquet(d / "manifest.parquet")
    m = m[~((m["label"] == "D") & (m["image_type"] == "exact"))]  # D lacks one image type
    m.to_parquet(d / "manifest.parquet")
    sub = wf.subset_dataset(d, n_regions=2)
    labels = set(pd.read_parquet(sub / "manifest.parquet")["label"])
    assert labels == {"A", "B"}
    with pytest.raises(ValueError, match="image types"):
        wf.subset_dataset(d, image_types=("tile",))


def test_classification_summary_intervals():
    y = np.array(["a", "b", "c"] * 20, dtype=object)
    p = y.copy()
    p[:6] = "a"
    s = wf.classification_summary(y, p, n_boot=200)
    assert 0.8 < s["accuracy"] < 1.0
    for m in ("precision_weighted", "recall_weighted", "f1_weighted", "f1_macro", "accuracy"):
        assert s["ci"][m]["low"] <= s[m if m != "accuracy" else "accuracy"] <= s["ci"][m]["high"]
    assert s["ci"]["f1_weighted"]["high"] > s["ci"]["f1_weighted"]["low"]


def test_multi_region_summary_counts_primary_in_prediction():
    primary = ["A", "B", "C", "A"]
    predicted = [["A", "B"], ["A"], ["C"], ["B", "A"]]
    s = wf.multi_region_summary(primary, predicted, n_boot=50)
    assert s["hit_rate"] == pytest.approx(0.75)
    assert s["ci"]["f1_weighted"]["low"] <= s["f1_weighted"] <= s["ci"]["f1_weighted"]["high"]


def test_label_counts_and_ids(tmp_path: Path):
    d = _dataset(tmp_path)
    counts = wf.label_counts(d)
    assert counts["images"].sum() == 15 and set(counts["split"]) == {"train", "val"}
    assert wf.label_ids(d) == {"A": 100, "B": 101, "C": 102}


def test_try_model_reports_the_reason():
    model, reason = wf.try_model("uni:/nonexistent/uni.safetensors", device="cpu")
    assert model is None and "/nonexistent" in reason


def test_zero_shot_eval_and_retrieval_with_tiny_model(tmp_path: Path):
    import torch

    torch.manual_seed(0)
    d = _dataset(tmp_path, n_sections=4)
    model, reason = wf.try_model("tiny", device="cpu", pretrained=False, image_size=64, seed=0)
    assert model is not None, reason
    ds = wf.make_dataset(model, d, image_type="square224", split=None)
    zs = wf.zero_shot_eval(model, ds, batch_size=8)
    assert len(zs["y_pred"]) == len(ds) == 12 and set(zs["y_pred"]) <= {"A", "B", "C"}
    assert np.allclose(zs["probs"].sum(1), 1.0, atol=1e-5)
    r = wf.retrieval_eval(model, d, pd.read_parquet(d / "manifest.parquet"), ks=(1, 5), n_boot=20)
    rows = r["rows"]
    assert set(rows["task"]) == set(wf.RETRIEVAL_TASKS)
    assert ((rows["value"] >= 0) & (rows["value"] <= 1)).all()
    # with 4 relevant images per region, the paper's Recall@1 cannot exceed 1/3 (self excluded: 3 relevant)
    i2i = rows[(rows["task"] == "image-to-image") & (rows["metric"] == "recall_at_1")]
    assert float(i2i["value"].iloc[0]) <= 1 / 3 + 1e-9


def test_run_is_finished_compares_config(tmp_path: Path):
    from dataclasses import dataclass

    @dataclass
    class Cfg:
        run_dir: str
        epochs: int = 1

    run = tmp_path / "run"
    assert not wf.run_is_finished(run, Cfg(str(run)))
    (run / "model").mkdir(parents=True)
    from cytoclip.io import write_json

    write_json(run / "config.json", {"run_dir": str(run), "epochs": 1})
    assert wf.run_is_finished(run, Cfg(str(run)))
    assert not wf.run_is_finished(run, Cfg(str(run), epochs=2))


def test_train_config_maps_notebook_parameters(tmp_path: Path):
    cfg = wf.train_config(dataset_dir=tmp_path, run_dir=tmp_path / "r", model="tiny", epochs=2, lr=1e-3, seed=3,
                          warmup_steps=None)
    import dataclasses

    values = dataclasses.asdict(cfg)
    assert 2 in values.values() and 1e-3 in values.values()
    with pytest.raises(ValueError, match="no field"):
        wf.train_config(not_a_parameter=1)
