"""cytoclip.plots: every figure function yields a Figure with the expected axes on small data (Agg backend)."""

from __future__ import annotations

import json

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from cytoclip import metrics as M
from cytoclip import plots as P

REGIONS = ["Amygdala", "Hippocampus", "Pons", "Thalamus"]


@pytest.fixture
def labels():
    rng = np.random.default_rng(0)
    y = [REGIONS[i] for i in rng.integers(0, 4, 40)]
    p = [t if rng.random() < 0.7 else REGIONS[rng.integers(0, 4)] for t in y]
    return y, p


def test_confusion_matrix_figure(labels):
    y, p = labels
    fig = P.confusion_matrix_figure(y, p, synthetic=True)
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    assert ax.get_title().endswith("(synthetic atlas)")
    assert [t.get_text() for t in ax.get_xticklabels()] == REGIONS
    assert ax.get_xlabel() == "predicted region" and ax.get_ylabel() == "true region"
    # the heatmap's data is row-normalised
    mesh = ax.collections[0]
    cm = np.asarray(mesh.get_array()).reshape(4, 4)
    assert np.allclose(cm.sum(axis=1), 1.0)
    assert not P.confusion_matrix_figure(y, p).axes[0].get_title().endswith("(synthetic atlas)")


def test_per_region_f1_figure(labels):
    rep = M.classification_report(*labels)
    fig = P.per_region_f1_figure(rep["per_class"], synthetic=True)
    ax = fig.axes[0]
    assert len(ax.patches) == 4 and ax.get_xlim() == (0, 1)
    widths = sorted(round(b.get_width(), 6) for b in ax.patches)
    assert widths == sorted(round(v, 6) for v in rep["per_class"]["f1"])
    with pytest.raises(ValueError, match="missing columns"):
        P.per_region_f1_figure(pd.DataFrame({"label": ["a"]}))


def _emb_meta():
    rng = np.random.default_rng(1)
    emb = rng.normal(size=(40, 16)).astype(np.float32)
    meta = pd.DataFrame({"region": [REGIONS[i % 4] for i in range(40)], "age_gw": [21.0, 24.0] * 20,
                         "plane": ["sagittal"] * 40})
    return emb, meta


@pytest.mark.slow  # umap-learn's first call compiles with numba (~25 s on 2 cores)
def test_embedding_figure_umap():
    emb, meta = _emb_meta()
    fig = P.embedding_figure(emb, meta, synthetic=True)
    assert len(fig.axes) == 3 and "UMAP" in fig._suptitle.get_text()
    assert fig._suptitle.get_text().endswith("(synthetic atlas)")
    assert len(fig.axes[0].collections[0].get_offsets()) == 40


def test_embedding_figure_pca_and_fallback():
    emb, meta = _emb_meta()
    fig = P.embedding_figure(emb, meta, method="pca", palette={"Pons": "#123456"})
    assert len(fig.axes) == 3 and fig._suptitle.get_text() == "Image embeddings: PCA"
    assert len(fig.axes[0].collections[0].get_offsets()) == 40
    small = P.embedding_figure(emb[:8], {"region": meta["region"][:8]})
    assert len(small.axes) == 1 and "PCA" in small._suptitle.get_text()
    with pytest.raises(ValueError, match="color_by"):
        P.embedding_figure(emb, {"region": ["a"]})


def test_retrieval_examples_figure_frames():
    rng = np.random.default_rng(2)
    imgs = [rng.integers(0, 255, (16, 16, 3), dtype=np.uint8) for _ in range(10)]
    labs = ["a", "b"] * 5
    sim = np.eye(10) + rng.random((10, 10)) * 0.1
    fig = P.retrieval_examples_figure(imgs, labs, imgs, labs, sim, n_queries=3, k=5, exclude_self=True)
    assert len(fig.axes) == 3 * 6
    frames = [p.get_edgecolor()[:3] for ax in fig.axes for p in ax.patches]
    assert len(frames) == 15  # one frame per retrieved image
    green, red = matplotlib.colors.to_rgb("#2ca02c"), matplotlib.colors.to_rgb("#d62728")
    assert all(np.allclose(f, green) or np.allclose(f, red) for f in frames)
    # frame colour agrees with the label of the shown result
    for r in range(3):
        q_title = fig.axes[r * 6].get_title().removeprefix("query: ")
        for ax in fig.axes[r * 6 + 1:(r + 1) * 6]:
            ok = ax.get_title().split("\n")[0] == q_title
            assert np.allclose(ax.patches[0].get_edgecolor()[:3], green if ok else red)


def test_training_curves_from_csv_and_jsonl(tmp_path):
    log = pd.DataFrame({"step": [1, 2, 3, 4], "train_loss": [4.0, 3.0, 2.5, 2.0], "lr": [1e-4] * 4,
                        "val_accuracy": [np.nan, 0.3, np.nan, 0.5]})
    run = tmp_path / "run"
    run.mkdir()
    log.to_csv(run / "log.csv", index=False)
    fig = P.training_curves_figure(run, synthetic=True)
    assert len(fig.axes) == 3  # loss, metrics, lr twin
    assert [ln.get_label() for ln in fig.axes[0].lines] == ["train_loss"]
    assert [ln.get_label() for ln in fig.axes[1].lines] == ["val_accuracy"]
    run2 = tmp_path / "run2"
    run2.mkdir()
    (run2 / "metrics.jsonl").write_text("\n".join(json.dumps({"epoch": i, "loss": 1.0 / (i + 1)})
                                                  for i in range(3)))
    assert len(P.training_curves_figure(run2).axes[0].lines) == 1
    with pytest.raises(FileNotFoundError, match="log.csv"):
        P.training_curves_figure(tmp_path / "nothing")


def test_segmentation_overlay_figure():
    img = np.full((64, 96, 3), 255, np.uint8)
    lab = -np.ones((4, 6), int)
    lab[1:3, 1:4] = 0
    lab[1:3, 4:6] = 2
    fig = P.segmentation_overlay_figure(img, lab, REGIONS[:3], ["#ff0000", "#00ff00", "#0000ff"], synthetic=True)
    ax = fig.axes[0]
    assert len(ax.images) == 2
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["Amygdala", "Pons"]
    with pytest.raises(ValueError, match="class index"):
        P.segmentation_overlay_figure(img, lab + 5, REGIONS[:3], ["#ff0000"] * 3)


def test_study_figures_build(labels):
    img = np.full((40, 60, 3), 200, np.uint8)
    from shapely.geometry import box

    fig = P.section_figure(img, {1: box(5, 5, 20, 20)}, {1: "#ff0000"}, close_up=img, synthetic=True)
    assert len(fig.axes) == 2 and fig.axes[0].get_title().endswith("(synthetic atlas)")
    assert len(fig.axes[0].lines) == 1
    fig = P.boxes_figure(img, [(0, 0, 10, 10), (10, 0, 20, 10)], ["#000000"] * 2, polygons=[np.eye(2) * 10])
    assert len(fig.axes[0].patches) == 2 and len(fig.axes[0].lines) == 1
    fig = P.image_grid_figure([[img, None]], ["Pons"], ["exact", "square224"])
    assert len(fig.axes) == 2 and len(fig.axes[0].images) == 1 and not fig.axes[1].images
    fig = P.label_counts_figure(pd.Series({"a": 3, "b": 5}))
    assert [p.get_height() for p in fig.axes[0].patches] == [5, 3]
    table = pd.DataFrame({"table": ["II", "II"], "image_type": ["ExactBBox", "SquareBBox"],
                          "metric": ["f1_weighted"] * 2, "ours": [0.3, 0.4], "ci_low": [0.2, 0.3],
                          "ci_high": [0.4, 0.5], "paper": [0.796, 0.799]})
    fig = P.beside_paper_figure(table, "image_type")
    assert len(fig.axes[0].patches) == 4
    fig = P.ours_vs_paper_figure(table)
    assert fig.axes[0].get_legend() is not None


def test_save_figure_atomic(tmp_path, labels):
    out = P.save_figure(P.confusion_matrix_figure(*labels), tmp_path / "figs" / "cm.png")
    assert out.exists() and out.read_bytes()[:4] == b"\x89PNG"
    assert [p.name for p in out.parent.iterdir()] == ["cm.png"]


def test_show_displays_pyplot_free_figure_as_png():
    """plots.show puts a pyplot-free Figure on the page as PNG (IPython has no formatter for a bare Figure)."""
    from unittest import mock

    from matplotlib.figure import Figure

    fig = Figure()
    fig.add_subplot().plot([1, 2])
    with mock.patch("IPython.display.display") as shown:
        P.show(fig)
    assert shown.call_count == 1 and shown.call_args[0][0].data[:4] == b"\x89PNG"
