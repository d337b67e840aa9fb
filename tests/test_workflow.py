"""Unit tests of the build-or-reuse steps (cytoclip.workflow), the headline schema and paper layout
(cytoclip.report) and the protocol's departures (cytoclip.protocol), on small data."""

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
    noted = report.headline_row(key, "f1_weighted", 0.5, departures="epochs 10 (paper 50)",
                                seeds={"mean": 0.5, "std": 0.1, "n": 3})
    assert noted["departures"] == "epochs 10 (paper 50)" and noted["n_seeds"] == 3
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


def test_paper_layout_one_row_per_model():
    rows = []
    for model, size, value in (("CytoCLIP (CLIP)", "224", 0.2), ("CytoCLIP (CLIP)", "336", 0.3)):
        key = report.paper_key("I", model=model, image_size=size, label_type="single")
        for m in report.CLASSIFICATION_METRICS:
            rows.append(report.headline_row(key, m, value, (value - 0.01, value + 0.01)))
    table = report.beside_paper(report.headline_frame(rows))
    layout = report.paper_layout(table, "I")
    ours = layout[layout["F1 ours"] != ""]
    assert len(ours) == 2 and list(layout.columns[-6:]) == ["P ours", "P paper", "R ours", "R paper", "F1 ours",
                                                             "F1 paper"]
    assert ours.loc[ours["image_size"] == "336", "F1 ours"].item() == "0.300 [0.29, 0.31]"
    assert ours.loc[ours["image_size"] == "336", "F1 paper"].item() == "0.839"
    # a key column with one value on every row leaves the columns for the caption (the table fits the page)
    shared = layout.attrs["shared"]
    assert shared and not set(shared) & set(layout.columns)
    assert "image_size" not in shared and "model" not in shared
    html = report.table_html(layout)
    assert "<caption>All rows: " in html and "0.300<br><small>[0.29, 0.31]</small>" in html
    assert "F1 ours" in report.paper_layout(table, "I", fold_shared=False).columns[-2]


def test_departure_summary_groups_values_per_key():
    from cytoclip import protocol

    pages = [[{"key": "epochs", "ours": 10, "paper": 50, "reason": "CPU"},
              {"key": "model", "ours": "tiny", "paper": "hf:a", "reason": "no weights"}],
             [{"key": "epochs", "ours": 6, "paper": 50, "reason": "CPU"},
              {"key": "model", "ours": "tiny", "paper": "hf:b", "reason": "no weights"}], []]
    rows = [d for page in pages for d in page]
    assert protocol.departure_summary(rows) == ["model tiny (paper hf:a, hf:b)", "epochs 6, 10 (paper 50)"]


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
                others = [x for x in labels if x != lab][:1]
                rows.append({"path": path, "image_type": t, "label": lab, "label_id": 100 + li, "caption": lab,
                             "multi_labels": [lab] + (others if li == 0 else []), "specimen": specimen,
                             "ontology_path": f"Brain / Forebrain / Part {lab}",
                             "section": s, "age_gw": age, "plane": plane,
                             "split": "val" if s % 3 == 0 else "train", "mpp": 16.0})
    pd.DataFrame(rows).to_parquet(root / "manifest.parquet")
    (root / "report.json").write_text('{"synthetic": true}')
    return root


def test_experiment_dataset_selects_planes_and_splits(tmp_path: Path):
    d = _dataset(tmp_path, n_sections=8)
    sag = wf.experiment_dataset(d, "square224", planes=["sagittal"], split="sections", split_seed=0)
    m = pd.read_parquet(sag / "manifest.parquet")
    assert set(m["plane"]) == {"sagittal"} and set(m["split"]) == {"train", "val"}
    assert all(Path(p).is_absolute() and Path(p).is_file() for p in m["path"])
    # the same derivation is the same directory; another seed or selection is another one
    assert wf.experiment_dataset(d, "square224", planes=["sagittal"], split="sections", split_seed=0) == sag
    assert wf.experiment_dataset(d, "square224", planes=["sagittal"], split="sections", split_seed=1) != sag
    from cytoclip.provenance import data_label

    assert data_label(sag) == "synthetic atlas"
    multi = wf.experiment_dataset(d, "square224", planes=["sagittal"], label_type="multi")
    mm = pd.read_parquet(multi / "manifest.parquet")
    assert set(mm["label"]) == {"A, B", "B", "C"} and set(mm["primary_label"]) == {"A", "B", "C"}
    with pytest.raises(ValueError, match="plane"):
        wf.experiment_dataset(d, "square224", planes=["axial"])


def test_experiment_dataset_cross_age_adds_within_holdout(tmp_path: Path):
    d = _dataset(tmp_path, n_sections=8)
    derived = wf.experiment_dataset(d, "square224", split="cross_age")
    m = pd.read_parquet(derived / "manifest.parquet")
    assert set(m["split"]) == {"train", "val", "val_within"}
    assert set(m.loc[m["split"] == "val", "age_gw"]) == {21.0}
    assert set(m.loc[m["split"] != "val", "age_gw"]) == {24.0}
    # held-out (label, section) pairs are never trained on (paper III-F holds out sections per label)
    pairs = m["label"] + "@" + m["section"].astype(str)
    train_secs = set(pairs[m["split"] == "train"])
    within_secs = set(pairs[m["split"] == "val_within"])
    assert within_secs and not (within_secs & train_secs)


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
    from cytoclip.evaluate import classification_summary

    y = np.array(["a", "b", "c"] * 20)
    p = y.copy()
    p[:6] = "a"
    s = classification_summary(y, p, n_boot=200)
    assert 0.8 < s["accuracy"] < 1.0
    for m in ("precision_weighted", "recall_weighted", "f1_weighted", "f1_macro", "accuracy"):
        assert s["ci"][m]["low"] <= s[m] <= s["ci"][m]["high"]
    assert s["ci"]["f1_weighted"]["high"] > s["ci"]["f1_weighted"]["low"]
    assert classification_summary(y, p, n_boot=0)["ci"] == {}


def test_label_counts_and_run_seeds(tmp_path: Path):
    d = _dataset(tmp_path)
    counts = wf.label_counts(d)
    assert counts["images"].sum() == 15 and set(counts["split"]) == {"train", "val"}
    assert wf.run_seeds(3, None) == [3] and wf.run_seeds(0, [0, 1, 2]) == [0, 1, 2]
    with pytest.raises(ValueError, match="distinct"):
        wf.run_seeds(0, [1, 1])
    assert wf.run_dir_for("runs", "demo", "train_clip224", 1) == Path("runs/demo/train_clip224-seed1")
    assert wf.atlas_dir("data", "demo", 2) == Path("data/synthetic-demo-seed2")


def test_try_model_reports_the_reason():
    model, reason = wf.try_model("uni:/nonexistent/uni.safetensors", device="cpu")
    assert model is None and "/nonexistent" in reason


# ------------------------------------------------------------------------------------------------ protocol
def test_the_study_declares_every_departure_from_the_paper():
    from cytoclip import study as st
    from cytoclip.protocol import departures

    study = st.load_study(Path(__file__).resolve().parent.parent / "_config.yml")
    assert departures(study, "train_clip336", "paper") == []
    demo = {d["key"]: d for d in departures(study, "train_clip336", "demo")}
    assert {"model", "epochs", "source", "augment"} <= set(demo) and all(d["reason"] for d in demo.values())
    assert demo["epochs"]["paper"] == "50" and demo["epochs"]["ours"] == "10"
    # the planes of Table I are the paper's in every profile: sagittal only
    assert "planes" not in demo and st.resolve_params(study, "train_clip336", "demo")["planes"] == ["sagittal"]
    # values a user set by hand are departures too, with their own reason
    params = dict(st.resolve_params(study, "train_clip336", "paper"), targets="labels")
    assert departures(study, "train_clip336", "paper", params) == [
        {"key": "targets", "paper": "pairs", "ours": "labels", "reason": "set for this run"}]


def test_a_departure_without_a_reason_is_refused(tmp_path: Path):
    import yaml

    from cytoclip import study as st

    config = yaml.safe_load((Path(__file__).resolve().parent.parent / "_config.yml").read_text())
    del config["profiles"]["demo"]["departures"]["augment"]
    (tmp_path / "_config.yml").write_text(yaml.safe_dump(config))
    with pytest.raises(st.StudyConfigError, match=r"departs from the paper in \['augment'\]"):
        st.load_study(tmp_path / "_config.yml")


def test_experiment_dataset_renders_captions_from_the_prompt(tmp_path: Path):
    """The training caption follows the prompt by the zero-shot classifier's own rule; "{}" keeps the paper's."""
    d = _dataset(tmp_path, n_sections=8)
    bare = pd.read_parquet(wf.experiment_dataset(d, "square224") / "manifest.parquet")
    assert (bare["caption"] == bare["label"]).all()
    sentence = wf.experiment_dataset(d, "square224", prompt="a Nissl-stained section of the {}")
    m = pd.read_parquet(sentence / "manifest.parquet")
    assert set(m["caption"]) == {f"a Nissl-stained section of the {x}" for x in "ABC"}
    path = pd.read_parquet(wf.experiment_dataset(d, "square224", prompt="ontology_path") / "manifest.parquet")
    assert set(path["caption"]) == {f"{x}, part of the forebrain" for x in "ABC"}
    assert sentence != wf.experiment_dataset(d, "square224")
    with pytest.raises(ValueError, match="prompt"):
        wf.experiment_dataset(d, "square224", prompt="no placeholder")


def test_ensure_run_reuses_by_the_one_resume_rule(tmp_path: Path):
    """A finished run is reused when its work fingerprint matches (run-only settings never count) and trained
    again when a field that changes the result, or the dataset, changes."""
    import json

    import torch

    from cytoclip.workflow import ensure_run
    from tests.test_train import make_dataset

    torch.set_num_threads(1)
    ds = make_dataset(tmp_path / "ds", n_train=4, n_val=1, n_classes=2)
    base = dict(dataset=ds, run_dir=tmp_path / "run", model="tiny", image_size=64, epochs=1, batch_size=4,
                lr=5e-4, num_workers=0, seed=0, device="cpu", val_every_epochs=0)
    said = []
    run = ensure_run(log=said.append, **base)
    stamp = (run / "finished.json").stat().st_mtime_ns
    # other workers, device, logging cadence, resume mode: the same work, reused
    assert ensure_run(log=said.append, **{**base, "num_workers": 1, "device": "auto", "log_every_steps": 1,
                                          "resume": False}) == run
    assert said == [f"reusing the finished run {run}"] and (run / "finished.json").stat().st_mtime_ns == stamp
    # a field that changes the result: trained again
    ensure_run(log=said.append, **{**base, "lr": 1e-3})
    assert len(said) == 1 and json.loads((run / "config.json").read_text())["lr"] == 1e-3
    # the old configuration is other work now; a damaged record is work to redo
    ensure_run(log=said.append, **base)
    assert len(said) == 1
    (run / "finished.json").write_text("{broken")
    ensure_run(log=said.append, **base)
    assert len(said) == 1 and json.loads((run / "finished.json").read_text())["step"] == 2
    ensure_run(log=said.append, **base)
    assert len(said) == 2  # reused once more
    manifest = pd.read_parquet(ds / "manifest.parquet")
    manifest.assign(caption=manifest["caption"] + " region").to_parquet(ds / "manifest.parquet")
    ensure_run(log=said.append, **base)  # another dataset: trained again
    assert len(said) == 2


def test_ensure_run_shares_the_same_work_finished_under_another_name(tmp_path: Path):
    """Two experiments that train one configuration (the demo's CLIP and BiomedCLIP rows: one tiny model) train
    it once; a sibling run of other work is not taken."""
    import torch

    from cytoclip.workflow import ensure_run
    from tests.test_train import make_dataset

    torch.set_num_threads(1)
    ds = make_dataset(tmp_path / "ds", n_train=4, n_val=1, n_classes=2)
    base = dict(dataset=ds, model="tiny", image_size=64, epochs=1, batch_size=4, lr=5e-4, num_workers=0, seed=0,
                device="cpu", val_every_epochs=0)
    said = []
    first = ensure_run(log=said.append, run_dir=tmp_path / "runs" / "train_clip224-seed0", **base)
    shared = ensure_run(log=said.append, run_dir=tmp_path / "runs" / "train_biomedclip224-seed0", **base)
    assert shared == first and said[-1].startswith(f"sharing the finished run {first}")
    other = ensure_run(log=said.append, run_dir=tmp_path / "runs" / "other-seed1", **{**base, "seed": 1})
    assert other == tmp_path / "runs" / "other-seed1" and (other / "finished.json").is_file()
