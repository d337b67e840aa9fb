"""The steps a notebook chains, with the study's defaults: build what is missing, reuse what exists.

Each function takes the notebook's plain parameters (paths, names, numbers) and returns a path, so that
`papermill notebooks/<experiment>.ipynb out.ipynb` with no parameters runs on the embedded default (the
synthetic atlas) and reuses the atlas, prepared datasets and training runs that earlier notebooks left behind.
Data flows one way: atlas -> prepared dataset -> run -> results.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cytoclip.io import read_json, write_json

SYNTHETIC_MARKER = "SYNTHETIC.md"


def is_synthetic(atlas_root: str | os.PathLike) -> bool:
    """True when the atlas was written by `cytoclip synth` (it carries a SYNTHETIC.md label)."""
    return (Path(atlas_root) / SYNTHETIC_MARKER).is_file()


def data_label(atlas_root: str | os.PathLike) -> str:
    """How results on this atlas are labelled everywhere: "synthetic atlas" or "DHARANI"."""
    return "synthetic atlas" if is_synthetic(atlas_root) else "DHARANI"


def ensure_atlas(source: str = "synthetic", atlas_root: str | os.PathLike | None = None,
                 atlas_profile: str | None = "demo", data_dir: str | os.PathLike = "data", seed: int = 0,
                 workers: int | None = None) -> Path:
    """The atlas to work on: a real DHARANI mirror (checked), or the synthetic atlas, generated if incomplete.

    Generation resumes: sections already written completely are kept.
    """
    if source == "dharani":
        if not atlas_root:
            raise ValueError("source 'dharani' needs atlas_root: the path of a local DHARANI mirror "
                             "(set data.atlas in _config.yml or pass -p atlas_root PATH)")
        root = Path(atlas_root)
        if not (root / "data2d").is_dir():
            raise FileNotFoundError(f"{root}: not a DHARANI mirror (expected data2d/ and ontology/ inside; see README)")
        return root
    if source != "synthetic":
        raise ValueError(f"source: expected 'synthetic' or 'dharani', got {source!r}")
    from cytoclip.synth import generate

    root = Path(atlas_root) if atlas_root else Path(data_dir) / f"synthetic-{atlas_profile}"
    return Path(generate(root, profile=atlas_profile or "demo", seed=seed, workers=workers))


def prepared_dir(atlas_root: str | os.PathLike, kind: str, data_dir: str | os.PathLike = "data",
                 max_tiles_per_section: int | None = None) -> Path:
    """Where the prepared dataset of ``kind`` ("regions" or "tiles") for an atlas lives.

    A tile subsample is a different dataset, so it gets its own directory (``tiles-max120``): changing the
    parameter never overwrites a finished dataset.
    """
    name = kind if kind != "tiles" or max_tiles_per_section is None else f"tiles-max{int(max_tiles_per_section)}"
    return Path(data_dir) / "prepared" / Path(atlas_root).name / name


def ensure_prepared(atlas_root: str | os.PathLike, kind: str = "regions", data_dir: str | os.PathLike = "data",
                    seed: int = 0, workers: int | None = None, **params: Any) -> Path:
    """The prepared dataset of ``kind`` for an atlas; prepared (resuming finished sections) when needed."""
    out = prepared_dir(atlas_root, kind, data_dir, params.get("max_tiles_per_section"))
    if kind == "regions":
        from cytoclip.regions import prepare_regions

        return Path(prepare_regions(atlas_root, out, seed=seed, workers=workers, **params))
    if kind == "tiles":
        from cytoclip.tiles import prepare_tiles

        return Path(prepare_tiles(atlas_root, out, seed=seed, workers=workers, **params))
    raise ValueError(f"kind: expected 'regions' or 'tiles', got {kind!r}")


def multi_region_dataset(dataset_dir: str | os.PathLike, image_type: str) -> Path:
    """A derived dataset whose captions and labels are the multi-region labels (paper III-B, Table I "Multi").

    The caption of a SquareBBox image becomes its primary region followed by the neighbours with more than 80 % of
    their area inside the crop ("Hippocampus, Subiculum"); the class set is the set of such captions. The images are
    not copied: the derived manifest points at the parent dataset's files with absolute paths. ``primary_label``
    keeps the single-region label for the multi-region metric.
    """
    dataset_dir = Path(dataset_dir).resolve()
    manifest = pd.read_parquet(dataset_dir / "manifest.parquet")
    frame = manifest[manifest["image_type"] == image_type].copy()
    if frame.empty:
        raise ValueError(f"{dataset_dir}: no images of type {image_type!r} for a multi-region dataset")
    frame["primary_label"] = frame["label"]
    joined = frame["multi_labels"].map(lambda labels: ", ".join(str(x) for x in labels))
    frame["label"] = joined
    frame["caption"] = joined
    frame["path"] = frame["path"].map(lambda p: str(dataset_dir / p))
    out = dataset_dir.parent / f"{dataset_dir.name}-multi-{image_type}"
    out.mkdir(parents=True, exist_ok=True)
    from cytoclip.io import atomic_path

    with atomic_path(out / "manifest.parquet") as tmp:
        frame.to_parquet(tmp, index=False)
    write_json(out / "source.json", {"parent": str(dataset_dir), "image_type": image_type,
                                     "rule": "caption = primary label + neighbours with > 80 % of their area inside"})
    for name in ("report.json",):
        if (dataset_dir / name).is_file():
            write_json(out / name, read_json(dataset_dir / name))
    return out


# ================================================================================================ data
def study_data(source: str = "synthetic", atlas_root: str | os.PathLike | None = None,
               atlas_profile: str | None = "demo", data_dir: str | os.PathLike = "data", seed: int = 0,
               kinds: tuple[str, ...] = ("regions",), max_tiles_per_section: int | None = None,
               workers: int | None = None) -> dict[str, Path]:
    """The atlas and the prepared datasets a notebook needs, built when missing and reused when present.

    Returns ``{"atlas": root, "regions": dir, "tiles": dir}`` (only the ``kinds`` asked for besides the atlas).
    ``workers`` defaults to all cores (sections are rendered and prepared in parallel).
    """
    atlas = ensure_atlas(source, atlas_root, atlas_profile, data_dir, seed, workers=workers)
    out: dict[str, Path] = {"atlas": atlas}
    for kind in kinds:
        extra = {"max_tiles_per_section": max_tiles_per_section} if kind == "tiles" else {}
        out[kind] = ensure_prepared(atlas, kind, data_dir, seed=seed, workers=workers, **extra)
    return out


def _write_derived(parent: Path, frame: pd.DataFrame, name: str, info: dict) -> Path:
    """A derived dataset beside ``parent``: its manifest points at the parent's images with absolute paths."""
    from cytoclip.io import atomic_path

    frame = frame.copy()
    frame["path"] = frame["path"].map(lambda p: str(parent / p) if not os.path.isabs(str(p)) else str(p))
    out = parent.parent / f"{parent.name}-{name}"
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "manifest.parquet") as tmp:
        frame.reset_index(drop=True).to_parquet(tmp, index=False)
    write_json(out / "source.json", {"parent": str(parent), **info})
    if (parent / "labels.json").is_file():
        write_json(out / "labels.json", read_json(parent / "labels.json"))
    return out


def split_dataset(dataset_dir: str | os.PathLike, scheme: str, seed: int = 0, within_fraction: float = 0.2,
                  image_type: str | None = None) -> Path:
    """A derived dataset whose ``split`` column follows ``scheme`` with a within-distribution hold-out.

    For the cross-distribution schemes (``cross_age``, ``cross_plane``) the training side of the scheme is split
    again by whole sections (paper III-F): ``train`` (trained on), ``val_within`` (held-out sections of the
    training distribution) and ``val`` (the other age/plane). One training run then gives both the cross number
    and the within-distribution number beside it. Rows outside the scheme are dropped.
    """
    from cytoclip.splits import assign_split

    parent = Path(dataset_dir).resolve()
    manifest = load_manifest_checked(parent)
    if image_type is not None:
        manifest = manifest[manifest["image_type"] == image_type]
        if manifest.empty:
            raise ValueError(f"{parent}: no images of type {image_type!r}")
    split = assign_split(manifest, scheme, seed=seed)
    frame = manifest.assign(split=split.values).dropna(subset=["split"])
    train = frame[frame["split"] == "train"]
    if train.empty or (frame["split"] == "val").sum() == 0:
        raise ValueError(f"{parent}: split scheme {scheme!r} leaves an empty train or val side "
                         f"(train {len(train)}, val {(frame['split'] == 'val').sum()})")
    within_scheme = "tiles" if "tile" in set(train.get("image_type", [])) else "sections"
    inner = assign_split(train, within_scheme, seed=seed, val_fraction=within_fraction)
    frame.loc[train.index[inner.values == "val"], "split"] = "val_within"
    frame.loc[train.index[pd.isna(inner.values)], "split"] = None  # tiles touching the held-out band: unused
    frame = frame[frame["split"].isin(["train", "val", "val_within"])]
    tag = f"{scheme}-{image_type}" if image_type else scheme
    return _write_derived(parent, frame, tag, {"scheme": scheme, "seed": seed, "within_fraction": within_fraction,
                                               "splits": frame["split"].value_counts().to_dict()})


def subset_dataset(dataset_dir: str | os.PathLike, n_regions: int = 60, image_types: tuple[str, ...] = (
        "exact", "exact_mask", "square224"), seed: int = 0) -> Path:
    """A derived dataset of the ``n_regions`` most frequent labels present in every one of ``image_types``
    (paper Table II: ~60 regions), keeping the parent's split; ties broken by label name."""
    parent = Path(dataset_dir).resolve()
    manifest = load_manifest_checked(parent)
    missing = [t for t in image_types if t not in set(manifest["image_type"])]
    if missing:
        raise ValueError(f"{parent}: image types {missing} absent; has {sorted(set(manifest['image_type']))}")
    frame = manifest[manifest["image_type"].isin(image_types)]
    common = set.intersection(*(set(frame.loc[frame["image_type"] == t, "label"]) for t in image_types))
    counts = frame[frame["label"].isin(common)].groupby("label").size()
    chosen = sorted(counts.index, key=lambda lab: (-counts[lab], lab))[:n_regions]
    frame = frame[frame["label"].isin(chosen)]
    return _write_derived(parent, frame, f"subset{n_regions}", {"n_regions": len(chosen), "labels": chosen,
                                                                 "image_types": list(image_types), "seed": seed})


def load_manifest_checked(dataset_dir: str | os.PathLike) -> pd.DataFrame:
    """The manifest of a prepared dataset; the error names the directory when it is missing."""
    from cytoclip.data import load_manifest

    return load_manifest(dataset_dir)


def label_counts(dataset_dir: str | os.PathLike) -> pd.DataFrame:
    """Images per split and image type of a prepared dataset, with the number of labels."""
    manifest = load_manifest_checked(dataset_dir)
    counts = manifest.groupby(["image_type", "split"], dropna=False).agg(
        images=("path", "size"), labels=("label", "nunique")).reset_index()
    return counts


# ================================================================================================ training
#: notebook parameter -> the TrainConfig field names it may go by (the first one TrainConfig has is used)
_TRAIN_ALIASES: dict[str, tuple[str, ...]] = {
    "dataset_dir": ("dataset_dir", "data", "dataset", "train_data"),
    "run_dir": ("run_dir", "output_dir", "out_dir", "output"),
    "model": ("model", "model_spec", "spec"),
    "image_type": ("image_type",),
    "split": ("split", "split_scheme"),
    "image_size": ("image_size",),
    "targets": ("targets",),
    "epochs": ("epochs",),
    "batch_size": ("batch_size",),
    "lr": ("lr", "learning_rate"),
    "weight_decay": ("weight_decay", "wd"),
    "warmup_steps": ("warmup_steps", "warmup"),
    "num_workers": ("num_workers", "workers"),
    "seed": ("seed",),
    "device": ("device",),
    "init_from": ("init_from", "resume_from", "init"),
}


def run_dir_for(runs_dir: str | os.PathLike, profile: str, experiment: str) -> Path:
    """Where the training run of an experiment lives: ``<runs_dir>/<profile>/<experiment>``."""
    return Path(runs_dir) / str(profile) / str(experiment)


def train_config(**params: Any):
    """Map a notebook's parameters to :class:`cytoclip.train.TrainConfig`.

    Parameters are the notebook's names (``dataset_dir, run_dir, model, image_type, split, image_size, targets,
    epochs, batch_size, lr, weight_decay, warmup_steps, num_workers, seed, device, init_from``); ``None`` values
    keep the TrainConfig default. A parameter TrainConfig cannot take raises a ValueError naming it.
    """
    import dataclasses

    from cytoclip.train import TrainConfig

    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    kwargs: dict[str, Any] = {}
    for name, value in params.items():
        if value is None:
            continue
        aliases = _TRAIN_ALIASES.get(name, (name,))
        target = next((a for a in aliases if a in fields), None)
        if target is None:
            raise ValueError(f"train parameter {name!r}: TrainConfig has no field for it (tried {list(aliases)}; "
                             f"fields: {sorted(fields)})")
        kwargs[target] = str(value) if isinstance(value, Path) else value
    return TrainConfig(**kwargs)


def _config_dict(config: Any) -> dict:
    import dataclasses

    return json_safe(dataclasses.asdict(config))


def json_safe(obj: Any) -> Any:
    """A JSON round-trip of ``obj`` (paths and tuples become strings and lists) for comparing configs."""
    import json

    return json.loads(json.dumps(obj, default=str))


def run_is_finished(run_dir: str | os.PathLike, config: Any) -> bool:
    """True when ``run_dir`` holds a finished model trained with the same configuration as ``config``."""
    run_dir = Path(run_dir)
    cfg_path = run_dir / "config.json"
    if not (run_dir / "model").is_dir() or not cfg_path.is_file():
        return False
    stored = read_json(cfg_path)
    stored = stored.get("config", stored) if isinstance(stored, dict) else {}
    wanted = _config_dict(config)
    return all(stored.get(k) == v for k, v in wanted.items() if k in stored)


def ensure_run(config: Any, log=print) -> Path:
    """Train ``config`` unless its run dir already holds a finished run of the same config.

    An interrupted run (a ``checkpoint-last.pt`` without a final ``model/``) is resumed by
    :func:`cytoclip.train.train`; a finished run with a different configuration is trained again from scratch
    in the same directory (its old files are overwritten by the trainer).
    """
    from cytoclip.train import train

    run_dir = Path(getattr(config, "run_dir", None) or getattr(config, "output_dir", None) or "")
    if run_dir and run_is_finished(run_dir, config):
        log(f"reusing the finished run {run_dir}")
        return run_dir
    return Path(train(config))


def training_log(run_dir: str | os.PathLike) -> pd.DataFrame:
    """The run's ``log.csv`` (one row per logged step/epoch) as a DataFrame; empty when absent."""
    path = Path(run_dir) / "log.csv"
    return pd.read_csv(path) if path.is_file() else pd.DataFrame()


# ================================================================================================ models
def default_device() -> str:
    """``cuda`` when a GPU is visible, else ``cpu``."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def try_model(spec: str | os.PathLike, device: str | None = None, **kw: Any):
    """``(model, None)`` or ``(None, reason)``: the reason is create_model's own error message, so a notebook can
    list a model as "not run" with it instead of dropping it."""
    from cytoclip.models import create_model

    try:
        return create_model(spec, device=device or default_device(), **kw), None
    except Exception as exc:  # any failure to build the model is reported, not hidden
        return None, f"{type(exc).__name__}: {str(exc).strip()}"


def make_dataset(model: Any, dataset_dir: str | os.PathLike, image_type: str | None = None,
                 split: str | None = "val", split_scheme: str | None = None, seed: int = 0,
                 max_items: int | None = None):
    """An ImageTextDataset of ``dataset_dir`` with the model's eval transform; ``max_items`` draws a reproducible
    random subset (stratified by nothing: a plain sample of rows)."""
    from cytoclip.data import ImageTextDataset

    ds = ImageTextDataset(dataset_dir, image_type=image_type, split=split, split_scheme=split_scheme,
                          transform=model.transform, seed=seed)
    if len(ds) == 0:
        raise ValueError(f"{dataset_dir}: no images for image_type={image_type!r}, split={split!r}")
    if max_items is not None and len(ds) > max_items:
        keep = np.sort(np.random.default_rng(seed).choice(len(ds), size=max_items, replace=False))
        frame = ds.frame.iloc[keep]
        ds = ImageTextDataset(dataset_dir, manifest=frame, transform=model.transform, class_names=ds.class_names)
    return ds


# ================================================================================================ classification
def zero_shot_eval(model: Any, dataset: Any, class_names: list[str] | None = None, batch_size: int = 64,
                   top_k: int = 5) -> dict[str, Any]:
    """Zero-shot classification: each image gets the class whose name's text embedding is most similar.

    Returns ``y_true``, ``y_pred`` (names), ``top_k`` (names, best first), ``probs`` (softmax over classes with
    the model's temperature), ``image_embeddings`` and ``class_names``. Only the classes present in the dataset's
    manifest compete (the paper's setting: all region names of the dataset).
    """
    from cytoclip.evaluate import embed_images, zero_shot

    names = list(class_names or dataset.class_names)
    img = embed_images(model, dataset, batch_size=batch_size)
    _, probs = zero_shot(model, img, names)
    order = np.argsort(-probs, axis=1, kind="stable")
    y_true = np.array([dataset.class_names[i] for i in dataset.labels], dtype=object)
    return {"class_names": names, "y_true": y_true, "y_pred": np.array([names[i] for i in order[:, 0]], dtype=object),
            "top_k": [[names[j] for j in row[:top_k]] for row in order], "probs": probs, "image_embeddings": img}


def classification_summary(y_true: Any, y_pred: Any, seed: int = 0, n_boot: int = 500,
                           labels: list[str] | None = None) -> dict[str, Any]:
    """Weighted and macro P/R/F1 and accuracy with percentile bootstrap intervals (images resampled).

    ``labels`` fixes the scored classes (default: the union of true and predicted labels).
    """
    from cytoclip.metrics import bootstrap_ci, classification_report, prf_resampled

    yt, yp = np.asarray(y_true, dtype=object), np.asarray(y_pred, dtype=object)
    rep = classification_report(yt, yp, labels=labels)
    # integer codes over the union of labels: the resampled P/R/F1 are then counted, not recomputed per resample
    classes, codes = np.unique(np.concatenate([yt, yp]).astype(str), return_inverse=True)
    ct, cp = codes[:len(yt)], codes[len(yt):]
    cis: dict[str, dict] = {}
    for avg in ("weighted", "macro"):
        for i, m in enumerate(("precision", "recall", "f1")):
            def stat(idx: np.ndarray, avg=avg, i=i) -> np.ndarray:
                return prf_resampled(ct, cp, idx, len(classes), average=avg)[:, i]
            cis[f"{m}_{avg}"] = bootstrap_ci(stat, n=n_boot, seed=seed, n_items=len(yt), vectorized=True)
    cis["accuracy"] = bootstrap_ci((yt == yp).astype(float), n=n_boot, seed=seed)
    out = {k: v for k, v in rep.items() if k != "per_class"}
    out["ci"] = cis
    out["per_class"] = rep["per_class"]
    return out


def label_ids(dataset_dir: str | os.PathLike) -> dict[str, int]:
    """Class name -> ontology id of a prepared dataset (from its manifest)."""
    manifest = load_manifest_checked(dataset_dir)
    return dict(zip(manifest["label"].astype(str), manifest["label_id"].astype(int)))


def error_analysis(y_true: Any, y_pred: Any, onto: Any, name_to_id: dict[str, int],
                   adjacent: set[frozenset] | None = None, top: int = 10) -> dict[str, Any]:
    """Errors by tree distance (ontology hops), by adjacency in the sections, and the most-confused pairs."""
    from cytoclip.metrics import confused_pairs, errors_by_adjacency, errors_by_tree_distance

    def dist(a: str, b: str) -> float:
        return float(onto.distance(name_to_id[a], name_to_id[b]))

    out: dict[str, Any] = {"by_tree_distance": errors_by_tree_distance(y_true, y_pred, dist),
                           "confused_pairs": confused_pairs(y_true, y_pred, top=top)}
    if adjacent is not None:
        out["by_adjacency"] = errors_by_adjacency(y_true, y_pred, adjacent)
    return out


def label_adjacency(atlas_root: str | os.PathLike, dataset_dir: str | os.PathLike, max_sections: int = 20,
                    tolerance_px: float = 2.0) -> set[frozenset]:
    """Pairs of class names whose regions touch (within ``tolerance_px`` at 16 µm/px) in some section.

    The sections are those the dataset used (at most ``max_sections``, in manifest order); the geometry work is
    :func:`cytoclip.evaluate.label_adjacency`.
    """
    from cytoclip.atlas import Atlas
    from cytoclip.evaluate import label_adjacency as adjacency

    atlas = Atlas(atlas_root)
    manifest = load_manifest_checked(dataset_dir)
    label_ids = dict(zip(manifest["label_id"].astype(int), manifest["label"].astype(str)))
    keys = manifest[["specimen", "section"]].drop_duplicates().head(max_sections)
    return adjacency(atlas, list(keys.itertuples(index=False, name=None)), label_ids, atlas.ontology,
                     mpp=16.0, tolerance=tolerance_px)


# ================================================================================================ retrieval
RETRIEVAL_TASKS = ("image-to-image", "text-to-image", "image-to-text")


def retrieval_frame(dataset_dir: str | os.PathLike, size: int, image_type: str | None = None, split: str = "val",
                    seed: int = 0) -> pd.DataFrame:
    """The retrieval set: ``size`` images sampled (seeded, without replacement) from ``split`` of the dataset.

    Sampling is spread over labels (round-robin over a shuffled order) so that most regions appear at least
    once, as in the paper's set of 925 images over 75 regions.
    """
    manifest = load_manifest_checked(dataset_dir)
    frame = manifest if image_type is None else manifest[manifest["image_type"] == image_type]
    frame = frame[frame["split"] == split]
    if frame.empty:
        raise ValueError(f"{dataset_dir}: no {split!r} images of type {image_type!r} for the retrieval set")
    rng = np.random.default_rng(seed)
    shuffled = frame.iloc[rng.permutation(len(frame))]
    rank = shuffled.groupby("label").cumcount()  # 0 for the first image of each label, 1 for the second ...
    picked = shuffled.assign(_r=rank.values).sort_values("_r", kind="stable").head(int(size))
    return picked.drop(columns="_r").sort_index()


def retrieval_eval(model: Any, dataset_dir: str | os.PathLike, frame: pd.DataFrame, ks: tuple[int, ...] = (1, 5, 10),
                   batch_size: int = 64, seed: int = 0, n_boot: int = 300) -> dict[str, Any]:
    """Recall@K of the three retrieval tasks on ``frame`` (a :func:`retrieval_frame`), both definitions.

    image-to-image: every image queries the others (itself excluded); text-to-image: each region name queries the
    images; image-to-text: each image queries the region names. Image-only models get image-to-image only.
    Returns ``{"rows": DataFrame(task, definition, metric, value, ci_low, ci_high, n_queries), "similarity": ...,
    "labels": ...}``; the interval is a bootstrap over queries.
    """
    from cytoclip.data import ImageTextDataset
    from cytoclip.evaluate import embed_images, embed_texts
    from cytoclip.metrics import bootstrap_ci, recall_at_k_per_query

    ds = ImageTextDataset(dataset_dir, manifest=frame, transform=model.transform)
    labels = np.array([ds.class_names[i] for i in ds.labels], dtype=object)
    img = embed_images(model, ds, batch_size=batch_size, desc="retrieval set")
    names = sorted(set(labels))
    tasks: dict[str, tuple] = {"image-to-image": (img @ img.T, labels, labels, True)}
    if model.has_text:
        txt = embed_texts(model, names)
        tasks["text-to-image"] = (txt @ img.T, np.array(names, dtype=object), labels, False)
        tasks["image-to-text"] = (img @ txt.T, labels, np.array(names, dtype=object), False)
    rows = []
    for task, (sim, q, g, excl) in tasks.items():
        for definition in ("paper", "hit"):
            per_q = recall_at_k_per_query(sim, q, g, ks, exclude_self=excl, definition=definition)
            for k, values in per_q.items():
                ci = bootstrap_ci(values, n=n_boot, seed=seed) if np.isfinite(values).any() else None
                metric = f"recall_at_{k}" if definition == "paper" else f"hit_at_{k}"
                rows.append({"task": task, "definition": definition, "metric": metric,
                             "value": float(np.nanmean(values)) if ci else float("nan"),
                             "ci_low": ci["low"] if ci else float("nan"), "ci_high": ci["high"] if ci else float("nan"),
                             "n_queries": int(np.isfinite(values).sum())})
    return {"rows": pd.DataFrame(rows), "similarity": tasks["image-to-image"][0], "labels": labels,
            "paths": [str(p) for p in ds._paths]}


# ================================================================================================ whole sections
def validation_section(dataset_dir: str | os.PathLike, seed: int = 0) -> tuple[int, Any]:
    """(specimen, section) of a validation section of the dataset: the one with the most validation images."""
    manifest = load_manifest_checked(dataset_dir)
    val = manifest[manifest["split"] == "val"]
    if val.empty:
        raise ValueError(f"{dataset_dir}: no validation images, so no validation section")
    counts = val.groupby(["specimen", "section"]).size().sort_values(ascending=False, kind="stable")
    specimen, section = counts.index[0]
    return int(specimen), section


def multi_region_summary(primary: Any, predicted_sets: list[list[str]], seed: int = 0,
                         n_boot: int = 500) -> dict[str, Any]:
    """Weighted/macro P/R/F1 under the paper's multi-region rule (the primary label among the predicted labels),
    with bootstrap intervals over images; ``hit_rate`` is the fraction of images that are hits."""
    from cytoclip.metrics import bootstrap_ci, multi_region_report

    primary = np.asarray(primary, dtype=object)
    sets = np.empty(len(predicted_sets), dtype=object)
    sets[:] = [list(s) for s in predicted_sets]
    rep = multi_region_report(primary, sets)
    out = {k: v for k, v in rep.items() if k not in ("per_class", "hits")}
    out["hit_rate"] = float(np.mean(rep["hits"]))
    out["ci"] = {}
    for m in ("precision_weighted", "recall_weighted", "f1_weighted", "f1_macro"):
        out["ci"][m] = bootstrap_ci(lambda i, m=m: float(multi_region_report(primary[i], sets[i])[m]), n=n_boot,
                                    seed=seed, n_items=len(primary))
    out["per_class"] = rep["per_class"]
    return out
