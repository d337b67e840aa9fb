"""Figures of the study (matplotlib/seaborn; every function returns a ``matplotlib.figure.Figure``) and the
table of our numbers beside the paper's.

Figures are built with the object API (``Figure``), never ``pyplot`` state, so they work under any backend and
do not leak between notebook cells. Pass ``synthetic=True`` when the data is the synthetic atlas: every title then
ends with "(synthetic atlas)", so a figure can never be mistaken for a result on DHARANI.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.patches import Patch, Rectangle

__all__ = [
    "SYNTHETIC_SUFFIX",
    "titled",
    "confusion_matrix_figure",
    "seeds_figure",
    "per_region_f1_figure",
    "embedding_figure",
    "umap_figure",
    "retrieval_examples_figure",
    "training_curves_figure",
    "segmentation_overlay_figure",
    "section_figure",
    "image_grid_figure",
    "boxes_figure",
    "label_counts_figure",
    "beside_paper_figure",
    "ours_vs_paper_figure",
    "save_figure",
    "show",
]

SYNTHETIC_SUFFIX = "(synthetic atlas)"


def titled(title: str, synthetic: bool) -> str:
    """``title`` with the synthetic-atlas label appended when ``synthetic``."""
    return f"{title} {SYNTHETIC_SUFFIX}" if synthetic else title


def save_figure(fig: Figure, path: str | os.PathLike, dpi: int = 120) -> Path:
    """Write ``fig`` atomically (format from the suffix, e.g. ``.png``)."""
    from cytoclip.io import atomic_path

    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format=path.suffix.lstrip(".") or "png")
    return path


def show(fig: Figure) -> None:
    """Show ``fig`` in a notebook, once. The figure functions here build pyplot-free ``Figure`` objects (no global
    state, nothing left open), which ``plt.show()`` does not know about: those go through IPython's ``display``;
    a figure made with ``plt.subplots`` goes through ``plt.show()`` (displaying it as well would show it twice)."""
    import matplotlib.pyplot as plt

    if getattr(fig.canvas, "manager", None) is not None:
        plt.show()
        return
    try:
        from IPython.display import Image, display
    except ImportError:  # outside IPython there is nothing to show it in; save_figure has written the file
        return
    # as PNG bytes: IPython has no image formatter for a bare Figure unless pyplot's inline backend registered one
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    display(Image(data=buf.getvalue(), format="png"))


# ---------------------------------------------------------------------------------------------- classification
def confusion_matrix_figure(y_true: Sequence, y_pred: Sequence, labels: Sequence | None = None,
                            normalize: str | None = "true", synthetic: bool = False,
                            title: str = "Confusion matrix", max_labels: int = 60) -> Figure:
    """Row-normalised confusion matrix heatmap with region names on both axes.

    ``labels`` fixes the order (default: sorted union of true and predicted); ``normalize`` as in scikit-learn
    (``"true"`` rows sum to 1, ``None`` raw counts). With more than ``max_labels`` classes the tick labels are
    dropped (unreadable) but the matrix is still drawn.
    """
    import seaborn as sns
    from sklearn.metrics import confusion_matrix

    if labels is None:
        labels = sorted(set(map(str, y_true)) | set(map(str, y_pred)))
        y_true, y_pred = [str(x) for x in y_true], [str(x) for x in y_pred]
    labels = list(labels)
    cm = confusion_matrix(y_true, y_pred, labels=labels, normalize=normalize)
    side = min(4 + 0.25 * len(labels), 24)
    fig = Figure(figsize=(side + 1.5, side))
    ax = fig.add_subplot()
    show = len(labels) <= max_labels
    sns.heatmap(cm, ax=ax, cmap="viridis", vmin=0, vmax=1 if normalize else None, square=True,
                xticklabels=labels if show else False, yticklabels=labels if show else False,
                cbar_kws={"label": "fraction of true class" if normalize == "true" else "count"})
    ax.set_xlabel("predicted region")
    ax.set_ylabel("true region")
    ax.set_title(titled(title, synthetic))
    if show:
        ax.tick_params(axis="x", labelrotation=90, labelsize=7)
        ax.tick_params(axis="y", labelrotation=0, labelsize=7)
    fig.tight_layout()
    return fig


def per_region_f1_figure(per_class: pd.DataFrame, synthetic: bool = False, title: str = "Per-region F1",
                         top: int | None = None) -> Figure:
    """Horizontal bars of F1 per region (sorted), annotated with each region's support.

    ``per_class`` is the ``per_class`` DataFrame of :func:`cytoclip.metrics.classification_report`
    (columns ``label, f1, support``); ``top`` keeps the ``top`` best and worst halves when there are many regions.
    """
    missing = {"label", "f1", "support"} - set(per_class.columns)
    if missing:
        raise ValueError(f"per_class: missing columns {sorted(missing)}; expected classification_report's table")
    df = per_class[per_class["support"] > 0].sort_values("f1", ascending=True)
    if top is not None and len(df) > top:
        df = pd.concat([df.head(top // 2), df.tail(top - top // 2)])
    fig = Figure(figsize=(7, max(2.5, 0.22 * len(df) + 1)))
    ax = fig.add_subplot()
    y = np.arange(len(df))
    ax.barh(y, df["f1"], color="#4c72b0")
    ax.set_yticks(y, [f"{lab} (n={int(s)})" for lab, s in zip(df["label"], df["support"])], fontsize=7)
    ax.set_xlim(0, 1)
    ax.set_xlabel("F1")
    ax.set_title(titled(title, synthetic))
    fig.tight_layout()
    return fig


# -------------------------------------------------------------------------------------------------- embedding
def _project_2d(embeddings: np.ndarray, seed: int, method: str = "umap") -> tuple[np.ndarray, str]:
    """UMAP to 2-D; PCA when asked or when there are too few points for UMAP's neighbourhood graph (n < 15)."""
    x = np.asarray(embeddings, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"embeddings: expected a 2-D (n, d) array, got shape {x.shape}")
    if method not in ("umap", "pca"):
        raise ValueError(f"method: expected 'umap' or 'pca', got {method!r}")
    if len(x) < 15 or method == "pca":
        from sklearn.decomposition import PCA

        n_comp = min(2, len(x), x.shape[1])
        xy = PCA(n_components=n_comp, random_state=seed).fit_transform(x)
        if xy.shape[1] < 2:
            xy = np.column_stack([xy, np.zeros(len(xy))])
        return xy, ("PCA" if method == "pca" else f"PCA (n={len(x)} < 15 points: too few for UMAP)")
    import umap

    reducer = umap.UMAP(n_neighbors=min(15, len(x) - 1), metric="cosine", random_state=seed, n_jobs=1)
    return reducer.fit_transform(x), "UMAP (cosine)"


def embedding_figure(embeddings: np.ndarray, color_by: Mapping[str, Sequence] | pd.DataFrame,
                     synthetic: bool = False, title: str = "Image embeddings", seed: int = 0,
                     palette: Mapping[Any, str] | None = None, max_legend: int = 20,
                     method: str = "umap") -> Figure:
    """2-D UMAP of embeddings, one panel per colouring (e.g. ``{"region": ..., "age_gw": ..., "plane": ...}``).

    Falls back to PCA (and says so in the title) only when there are fewer than 15 points; ``method="pca"`` asks
    for PCA outright (UMAP's first call in a process spends ~20 s compiling with numba). ``palette`` maps region
    names to colours (e.g. ontology colours). Legends are drawn for up to ``max_legend`` categories.
    """
    if isinstance(color_by, pd.DataFrame):
        color_by = {c: color_by[c].tolist() for c in color_by.columns}
    if not color_by:
        raise ValueError("color_by: give at least one colouring, e.g. {'region': labels}")
    for key, vals in color_by.items():
        if len(vals) != len(embeddings):
            raise ValueError(f"color_by[{key!r}]: {len(vals)} values for {len(embeddings)} embeddings")
    xy, method = _project_2d(embeddings, seed, method)
    import seaborn as sns

    fig = Figure(figsize=(5.2 * len(color_by), 4.8))
    axes = fig.subplots(1, len(color_by), squeeze=False)[0]
    for ax, (key, vals) in zip(axes, color_by.items()):
        vals = list(vals)
        cats = sorted(set(map(str, vals)))
        pal = ({c: palette.get(c, "#888888") for c in cats} if palette and key in ("region", "label")
               else dict(zip(cats, sns.color_palette("husl", len(cats)).as_hex())))
        colors = [pal[str(v)] for v in vals]
        ax.scatter(xy[:, 0], xy[:, 1], c=colors, s=10, linewidths=0)
        ax.set_title(f"coloured by {key}", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        if len(cats) <= max_legend:
            ax.legend(handles=[Patch(color=pal[c], label=c) for c in cats], fontsize=6, loc="best", frameon=False)
    fig.suptitle(titled(f"{title}: {method}", synthetic))
    fig.tight_layout()
    return fig


umap_figure = embedding_figure


# -------------------------------------------------------------------------------------------------- retrieval
def _load_image(img: Any) -> np.ndarray:
    if isinstance(img, (str, os.PathLike)):
        from PIL import Image

        with Image.open(img) as im:
            return np.asarray(im.convert("RGB"))
    return np.asarray(img)


def retrieval_examples_figure(query_images: Sequence, query_labels: Sequence, gallery_images: Sequence,
                              gallery_labels: Sequence, similarity: np.ndarray, n_queries: int = 4, k: int = 5,
                              exclude_self: bool = False, synthetic: bool = False, seed: int = 0,
                              title: str = "Image-to-image retrieval") -> Figure:
    """Rows of query + top-``k`` gallery images; correct (same label) results framed green, wrong ones red.

    Images are arrays or paths. ``similarity`` is (queries x gallery); ``exclude_self`` drops gallery item i
    from query i's ranking (one set used as both). ``n_queries`` queries are drawn with a seeded generator.
    """
    sim = np.asarray(similarity)
    if sim.shape != (len(query_images), len(gallery_images)):
        raise ValueError(f"similarity: shape {sim.shape} does not match {len(query_images)} queries x "
                         f"{len(gallery_images)} gallery images")
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(len(query_images), size=min(n_queries, len(query_images)), replace=False))
    k = min(k, len(gallery_images) - (1 if exclude_self else 0))
    fig = Figure(figsize=(1.6 * (k + 1), 1.8 * len(rows)))
    axes = fig.subplots(len(rows), k + 1, squeeze=False)
    for r, q in enumerate(rows):
        order = [int(j) for j in np.argsort(-sim[q], kind="stable") if not (exclude_self and j == q)][:k]
        ax = axes[r, 0]
        ax.imshow(_load_image(query_images[q]))
        ax.set_title(f"query: {query_labels[q]}", fontsize=7)
        for c, j in enumerate(order, start=1):
            ax = axes[r, c]
            ax.imshow(_load_image(gallery_images[j]))
            ok = gallery_labels[j] == query_labels[q]
            ax.add_patch(Rectangle((0, 0), 1, 1, transform=ax.transAxes, fill=False, lw=4,
                                   edgecolor="#2ca02c" if ok else "#d62728"))
            ax.set_title(f"{gallery_labels[j]}\n{sim[q, j]:.2f}", fontsize=6)
        for ax in axes[r]:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle(titled(f"{title}: query and top {k} (green = same region)", synthetic), fontsize=9)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------------------------------- training
def _read_run_log(run_dir: Path) -> pd.DataFrame:
    csv, jsonl = run_dir / "log.csv", run_dir / "metrics.jsonl"
    if csv.exists():
        return pd.read_csv(csv)
    if jsonl.exists():
        rows = [json.loads(line) for line in jsonl.read_text().splitlines() if line.strip()]
        return pd.DataFrame(rows)
    raise FileNotFoundError(f"{run_dir}: no log.csv or metrics.jsonl; expected a run directory made by "
                            "`cytoclip train`")


def training_curves_figure(run_dir_or_log: str | os.PathLike | pd.DataFrame, synthetic: bool = False,
                           title: str = "Training curves") -> Figure:
    """Loss (left) and every other numeric metric (right) against step/epoch, from a run's log.

    Accepts a run directory (reads ``log.csv``, else ``metrics.jsonl``) or a DataFrame. Columns whose name
    contains "loss" go to the left panel; other numeric columns except the x axis, ``lr`` and time columns go to
    the right one (learning rate, when logged, is drawn on a twin axis of the loss panel).
    """
    df = run_dir_or_log if isinstance(run_dir_or_log, pd.DataFrame) else _read_run_log(Path(run_dir_or_log))
    if df.empty:
        raise ValueError("training log: empty; nothing to plot")
    xcol = next((c for c in ("step", "global_step", "epoch") if c in df.columns), None)
    x = df[xcol] if xcol else pd.Series(np.arange(len(df)), name="row")
    num = [c for c in df.columns if pd.api.types.is_numeric_dtype(df[c]) and c != xcol]
    # counts (images, skipped steps) are not metrics on the 0-1 scale of the validation panel
    skip = {"lr", "learning_rate", "time", "elapsed", "elapsed_s", "wall_s", "epoch", "step", "val_n",
            "nonfinite_steps"}
    losses = [c for c in num if "loss" in c.lower()]
    others = [c for c in num if c not in losses and c.lower() not in skip and not c.lower().endswith("_s")]
    fig = Figure(figsize=(11, 4))
    ax_l, ax_r = fig.subplots(1, 2)
    for c in losses:
        m = df[c].notna()
        ax_l.plot(x[m], df[c][m], label=c, marker="." if m.sum() < 30 else None)
    ax_l.set_xlabel(x.name)
    ax_l.set_ylabel("loss")
    ax_l.set_title("loss", fontsize=9)
    if losses:
        ax_l.legend(fontsize=7)
    lr_col = next((c for c in ("lr", "learning_rate") if c in df.columns), None)
    if lr_col:
        ax_lr = ax_l.twinx()
        ax_lr.plot(x, df[lr_col], color="grey", lw=0.8, ls="--")
        ax_lr.set_ylabel("learning rate", color="grey")
    for c in others:
        m = df[c].notna()
        ax_r.plot(x[m], df[c][m], label=c, marker="." if m.sum() < 30 else None)
    ax_r.set_xlabel(x.name)
    ax_r.set_title("validation metrics", fontsize=9)
    if others:
        ax_r.legend(fontsize=7)
    fig.suptitle(titled(title, synthetic))
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------------------------------------- segmentation
def segmentation_overlay_figure(image: np.ndarray, label_raster: np.ndarray, class_names: Sequence[str],
                                colors: Mapping[int, str] | Sequence[str], alpha: float = 0.5,
                                synthetic: bool = False, title: str = "Coarse segmentation",
                                max_legend: int = 25) -> Figure:
    """Section image with the predicted label raster over it (ontology colours) and a legend of the regions shown.

    ``label_raster`` holds class indices (``-1`` = background, not drawn); it may be coarser than ``image``
    (e.g. one cell per tile) and is stretched over the same extent. ``colors[i]`` is the "#rrggbb" of class i.
    """
    from matplotlib.colors import to_rgb

    img = np.asarray(image)
    lab = np.asarray(label_raster)
    if lab.ndim != 2:
        raise ValueError(f"label_raster: expected a 2-D array of class indices, got shape {lab.shape}")
    h, w = img.shape[:2]
    rgba = np.zeros(lab.shape + (4,), dtype=np.float32)
    present = [int(i) for i in np.unique(lab) if i >= 0]
    for i in present:
        if i >= len(class_names):
            raise ValueError(f"label_raster: class index {i} but only {len(class_names)} class names")
        rgba[lab == i] = (*to_rgb(colors[i]), alpha)
    fig = Figure(figsize=(9, 9 * h / max(w, 1) * 0.8 + 1))
    ax = fig.add_subplot()
    ax.imshow(img, extent=(0, w, h, 0))
    ax.imshow(rgba, extent=(0, w, h, 0), interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    counts = {i: int((lab == i).sum()) for i in present}
    shown = sorted(present, key=lambda i: -counts[i])[:max_legend]
    ax.legend(handles=[Patch(color=colors[i], label=class_names[i]) for i in shown], fontsize=6,
              loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False)
    ax.set_title(titled(title, synthetic))
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------------------------- atlas and data
def _outline(ax: Any, geom: Any, color: str, scale: float = 1.0, lw: float = 0.6) -> None:
    for poly in getattr(geom, "geoms", [geom]):
        if hasattr(poly, "exterior"):
            xy = np.asarray(poly.exterior.coords) * scale
            ax.plot(xy[:, 0], xy[:, 1], lw=lw, color=color)


def section_figure(thumbnail: np.ndarray, outlines: Mapping[Any, Any] | None = None,
                   colors: Mapping[Any, str] | None = None, close_up: np.ndarray | None = None,
                   title: str = "Section", close_up_title: str = "Close-up", synthetic: bool = False) -> Figure:
    """A section thumbnail with annotation outlines (``outlines``: id -> shapely geometry in thumbnail pixels,
    ``colors``: id -> "#rrggbb"), and optionally a full-resolution close-up beside it."""
    n = 2 if close_up is not None else 1
    fig = Figure(figsize=(6 * n, 5))
    axes = fig.subplots(1, n, squeeze=False)[0]
    axes[0].imshow(thumbnail)
    for key, geom in (outlines or {}).items():
        _outline(axes[0], geom, (colors or {}).get(key, "k"))
    axes[0].set_title(titled(title, synthetic))
    if close_up is not None:
        axes[1].imshow(close_up)
        axes[1].set_title(titled(close_up_title, synthetic))
    for ax in axes:
        ax.axis("off")
    fig.tight_layout()
    return fig


def image_grid_figure(images: Sequence[Sequence[Any]], row_labels: Sequence[str], col_labels: Sequence[str],
                      title: str = "", synthetic: bool = False, size: float = 2.6) -> Figure:
    """A grid of images (paths or arrays; None leaves a cell empty), e.g. the image types of a few regions."""
    nr, nc = len(images), max((len(r) for r in images), default=1)
    fig = Figure(figsize=(size * nc, size * nr))
    axes = fig.subplots(nr, nc, squeeze=False)
    for r, row in enumerate(images):
        for c in range(nc):
            ax = axes[r][c]
            ax.axis("off")
            img = row[c] if c < len(row) else None
            if img is not None:
                ax.imshow(_load_image(img))
            ax.set_title(f"{str(row_labels[r])[:24]}\n{col_labels[c]}", fontsize=8)
    fig.suptitle(titled(title, synthetic))
    fig.tight_layout()
    return fig


def boxes_figure(image: np.ndarray, boxes: Sequence[Sequence[float]], colors: Sequence[str] | None = None,
                 polygons: Sequence[np.ndarray] = (), title: str = "", synthetic: bool = False) -> Figure:
    """Boxes ``(x0, y0, x1, y1)`` (e.g. the tile grid) and polygons (``(n, 2)`` arrays, e.g. a drawn area) over
    an image, all in the image's pixels."""
    fig = Figure(figsize=(7, 5))
    ax = fig.subplots()
    ax.imshow(image)
    for i, (x0, y0, x1, y1) in enumerate(boxes):
        ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, lw=0.5,
                               ec=colors[i] if colors is not None else "k"))
    for xy in polygons:
        xy = np.asarray(xy)
        ax.plot(xy[:, 0], xy[:, 1], color="red", lw=1.5)
    ax.set_title(titled(title, synthetic))
    ax.axis("off")
    fig.tight_layout()
    return fig


def label_counts_figure(counts: pd.Series, title: str = "Images per region", synthetic: bool = False) -> Figure:
    """Bar chart of images per label, sorted by count (label names are too many to print)."""
    counts = counts.sort_values(ascending=False)
    fig = Figure(figsize=(9, 3.5))
    ax = fig.subplots()
    ax.bar(np.arange(len(counts)), counts.to_numpy(), color="#4a7ab5")
    ax.set_xticks([])
    ax.set_xlabel(f"region ({len(counts)}, sorted by count)")
    ax.set_ylabel("images")
    ax.set_title(titled(title, synthetic))
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------------------------------- ours and the paper
def beside_paper_figure(table: pd.DataFrame, category: str, metric: str = "f1_weighted", ours_label: str = "ours",
                        title: str = "", synthetic: bool = False) -> Figure:
    """Bars of ours (with its interval) beside the paper's number, one pair per ``category`` value, from a
    :func:`cytoclip.report.beside_paper` table."""
    sub = table[table["metric"] == metric].dropna(subset=["ours"])
    fig = Figure(figsize=(6.5, 3.6))
    ax = fig.subplots()
    x = np.arange(len(sub))
    err = [sub["ours"] - sub["ci_low"], sub["ci_high"] - sub["ours"]]
    ax.bar(x - 0.2, sub["ours"], 0.4, yerr=err, label=ours_label, color="#4a7ab5")
    ax.bar(x + 0.2, sub["paper"], 0.4, label="paper (DHARANI)", color="#b5804a")
    ax.set_xticks(x, sub[category].tolist())
    ax.set_ylabel(metric.replace("_", " "))
    ax.set_ylim(0, 1)
    ax.legend()
    ax.set_title(titled(title, synthetic))
    fig.tight_layout()
    return fig


def seeds_figure(table: pd.DataFrame, variant: str = "variant", value: str = "value", metric_label: str = "",
                 title: str = "", synthetic: bool = False) -> Figure:
    """One dot per seed and the mean ± std over seeds, one column per ``variant`` (a long table: one row per
    variant and seed): what a comparison over seeds looks like before any summary."""
    fig = Figure(figsize=(max(4.0, 1.3 * table[variant].nunique() + 1.5), 3.4))
    ax = fig.subplots()
    names = list(dict.fromkeys(table[variant]))
    for i, name in enumerate(names):
        ys = table.loc[table[variant] == name, value].to_numpy(dtype=float)
        ax.scatter(np.full(len(ys), i) + np.linspace(-0.08, 0.08, len(ys)), ys, s=18, color="#4a7ab5", zorder=3)
        ax.errorbar([i + 0.22], [ys.mean()], yerr=[ys.std(ddof=1) if len(ys) > 1 else 0.0], fmt="s", ms=6,
                    color="#b5804a", capsize=3)
    ax.set_xticks(range(len(names)), names, rotation=20, ha="right")
    ax.set_ylabel(metric_label or value)
    ax.set_xlim(-0.5, len(names) - 0.3)
    ax.set_title(titled(title, synthetic))
    fig.tight_layout()
    return fig


def ours_vs_paper_figure(table: pd.DataFrame, ours_label: str = "ours", title: str = "Ours against the paper",
                         synthetic: bool = False) -> Figure:
    """Every headline number: the paper's value (x) against ours with its interval (y), one colour per table."""
    both = table.dropna(subset=["ours", "paper"])
    fig = Figure(figsize=(5, 5))
    ax = fig.subplots()
    for t, sub in both.groupby("table"):
        ax.errorbar(sub["paper"], sub["ours"], yerr=[sub["ours"] - sub["ci_low"], sub["ci_high"] - sub["ours"]],
                    fmt="o", ms=4, label=f"Table {t}")
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
    ax.set_xlabel("paper (DHARANI)")
    ax.set_ylabel(ours_label)
    if len(both):
        ax.legend()
    ax.set_title(titled(title, synthetic))
    fig.tight_layout()
    return fig
