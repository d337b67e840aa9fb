"""Build-or-reuse steps that a notebook chains: the atlas, the prepared datasets, the experiment's dataset and
its training runs. Each takes plain parameters and returns a path; what exists and is complete is reused.

Data flows one way: atlas -> prepared dataset -> experiment dataset (selection, split, label type) -> run.
Everything a number is computed from is passed on as an argument; evaluation lives in :mod:`cytoclip.evaluate`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from cytoclip.io import atomic_path, fingerprint, read_json, write_json

__all__ = ["atlas_dir", "ensure_atlas", "prepared_dir", "ensure_prepared", "study_data", "experiment_dataset",
           "subset_dataset", "label_counts", "validation_section", "run_dir_for", "ensure_run", "run_seeds",
           "training_log", "default_device", "try_model"]


# ================================================================================================ data
def atlas_dir(data_dir: str | os.PathLike, atlas_profile: str, atlas_seed: int = 0) -> Path:
    """Where the synthetic atlas of a profile and seed lives: ``<data_dir>/synthetic-<profile>-seed<seed>``, so
    atlases of two seeds coexist."""
    return Path(data_dir) / f"synthetic-{atlas_profile}-seed{int(atlas_seed)}"


def ensure_atlas(source: str = "synthetic", atlas: str | os.PathLike | None = None,
                 atlas_profile: str | None = "demo", data_dir: str | os.PathLike = "data", atlas_seed: int = 0,
                 workers: int | None = None) -> str | Path:
    """The atlas to work on: a real DHARANI root (a local mirror or an fsspec URL), or the synthetic atlas,
    generated (resuming finished sections) when incomplete."""
    if source == "dharani":
        if not atlas:
            raise ValueError("source 'dharani' needs atlas: the path or URL of a DHARANI root "
                             "(set data.atlas in _config.yml or pass -p atlas PATH)")
        return atlas if "://" in str(atlas) else Path(atlas)
    if source != "synthetic":
        raise ValueError(f"source: expected 'synthetic' or 'dharani', got {source!r}")
    from cytoclip.synth import generate

    root = Path(atlas) if atlas else atlas_dir(data_dir, atlas_profile or "demo", atlas_seed)
    return Path(generate(root, profile=atlas_profile or "demo", seed=atlas_seed, workers=workers))


def prepared_dir(atlas: str | os.PathLike, kind: str, data_dir: str | os.PathLike = "data",
                 max_tiles_per_section: int | None = None) -> Path:
    """Where the prepared dataset of ``kind`` ("regions" or "tiles") for an atlas lives. A tile subsample is a
    different dataset (``tiles-max120``): changing the parameter never overwrites a finished dataset."""
    name = kind if kind != "tiles" or max_tiles_per_section is None else f"tiles-max{int(max_tiles_per_section)}"
    return Path(data_dir) / "prepared" / str(atlas).rstrip("/").rsplit("/", 1)[-1] / name


def ensure_prepared(atlas: str | os.PathLike, kind: str = "regions", data_dir: str | os.PathLike = "data",
                    workers: int | None = None, **params: Any) -> Path:
    """The prepared dataset of ``kind`` for an atlas; prepared (resuming finished sections) when needed."""
    out = prepared_dir(atlas, kind, data_dir, params.get("max_tiles_per_section"))
    if kind == "regions":
        from cytoclip.regions import prepare_regions

        params.pop("max_tiles_per_section", None)
        return Path(prepare_regions(atlas, out, workers=workers, **params))
    if kind == "tiles":
        from cytoclip.tiles import prepare_tiles

        return Path(prepare_tiles(atlas, out, workers=workers, **params))
    raise ValueError(f"kind: expected 'regions' or 'tiles', got {kind!r}")


def study_data(source: str = "synthetic", atlas: str | os.PathLike | None = None,
               atlas_profile: str | None = "demo", data_dir: str | os.PathLike = "data", atlas_seed: int = 0,
               kinds: Sequence[str] = ("regions",), max_tiles_per_section: int | None = None,
               workers: int | None = None) -> dict[str, Any]:
    """``{"atlas": root, "regions": dir, "tiles": dir, "square_scale": f}`` (the ``kinds`` asked for), built
    when missing; the region images' SquareBBox sides are the paper's times ``square_scale``
    (:func:`cytoclip.provenance.brain_scale`).
    ``workers`` defaults to all cores (sections are rendered and prepared in parallel)."""
    from cytoclip.provenance import brain_scale

    root = ensure_atlas(source, atlas, atlas_profile, data_dir, atlas_seed, workers=workers)
    # the paper's SquareBBox sides are pixels of real-size sections: on the synthetic atlas's smaller brains
    # they are scaled with the brain, so a box covers the same share of it (DHARANI: 1.0, the paper's crops)
    scale = brain_scale(root)
    out: dict[str, Any] = {"atlas": root, "square_scale": scale}
    for kind in kinds:
        extra = ({"max_tiles_per_section": max_tiles_per_section} if kind == "tiles" else
                 {"square_scale": scale} if scale != 1.0 else {})
        out[kind] = ensure_prepared(root, kind, data_dir, workers=workers, **extra)
    return out


def _write_derived(parent: Path, frame: pd.DataFrame, info: dict) -> Path:
    """A derived dataset beside ``parent`` named by what derived it; its manifest points at the parent's images
    with absolute paths and ``source.json`` records the parent and the derivation."""
    out = parent.parent / f"{parent.name}-{info['name']}-{fingerprint(info)[:8]}"
    frame = frame.copy()
    frame["path"] = frame["path"].map(lambda p: str(p) if os.path.isabs(str(p)) else str(parent / p))
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "manifest.parquet") as tmp:
        frame.reset_index(drop=True).to_parquet(tmp, index=False)
    for name in ("labels.json",):
        if (parent / name).is_file():
            write_json(out / name, read_json(parent / name))
    write_json(out / "source.json", {"parent": str(parent), **info,
                                     "splits": frame["split"].value_counts().to_dict()})
    return out


def experiment_dataset(dataset: str | os.PathLike, image_type: str | Sequence[str] | None = None,
                       planes: Sequence[str] | None = None, split: str = "sections", split_seed: int = 0,
                       label_type: str = "single", within_fraction: float = 0.2, prompt: str = "{}") -> Path:
    """The dataset one experiment trains and validates on, derived from a prepared dataset.

    * ``image_type``: the image type(s) kept; ``planes``: the sectioning planes kept (Tables I-II: sagittal);
    * ``split``: a :mod:`cytoclip.splits` scheme with ``split_seed``, written into the ``split`` column. For the
      cross schemes (``cross_age``, ``cross_plane``) the training side is split again by whole sections:
      ``train``, ``val_within`` (held-out sections of the training distribution, ``within_fraction``) and ``val``
      (the other age or plane), so one run gives the cross number and the within number beside it;
    * ``label_type="multi"``: the multi-region labels of paper III-B become the labels and captions ("Hippocampus,
      Subiculum": the primary region and the neighbours with > 80 % of their area in the crop);
      ``primary_label`` keeps the single region for the paper's multi-region rule;
    * ``prompt``: the training caption of each image, rendered from its label by the zero-shot classifier's own
      rule (:func:`cytoclip.evaluate.zero_shot.class_texts`: a ``{}`` template, or ``"ontology_path"``), so a
      model is trained on the text it is later asked to match. The paper's is the bare name, ``"{}"``.

    Rows outside the selection or the split are dropped. The images are not copied.
    """
    from cytoclip.data import load_manifest
    from cytoclip.splits import assign_split

    parent = Path(dataset).resolve()
    frame = load_manifest(parent)
    types = [image_type] if isinstance(image_type, str) else list(image_type or [])
    if types:
        missing = sorted(set(types) - set(frame["image_type"].astype(str)))
        if missing:
            raise ValueError(f"{parent}: image type(s) {missing} absent; has {sorted(set(frame['image_type']))}")
        frame = frame[frame["image_type"].isin(types)]
    if planes:
        frame = frame[frame["plane"].isin(list(planes))]
        if frame.empty:
            raise ValueError(f"{parent}: no images of plane(s) {list(planes)}")
    frame = frame.assign(split=assign_split(frame, split, seed=split_seed).values).dropna(subset=["split"])
    if split in ("cross_age", "cross_plane"):
        train = frame[frame["split"] == "train"]
        within = "tiles" if "tile" in set(train["image_type"]) else "sections"
        inner = assign_split(train, within, seed=split_seed, val_fraction=within_fraction)
        frame.loc[train.index[inner.values == "val"], "split"] = "val_within"
        frame.loc[train.index[pd.isna(inner.values)], "split"] = None  # tiles touching a held-out band
        frame = frame.dropna(subset=["split"])
    if (frame["split"] == "train").sum() == 0 or (frame["split"] == "val").sum() == 0:
        raise ValueError(f"{parent}: split {split!r} leaves an empty train or val side "
                         f"({frame['split'].value_counts().to_dict()})")
    if label_type == "multi":
        if "multi_labels" not in frame.columns:
            raise ValueError(f"{parent}: no multi_labels column for multi-region labels")
        joined = frame["multi_labels"].map(lambda labels: ", ".join(str(x) for x in labels))
        frame = frame.assign(primary_label=frame["label"], label=joined, caption=joined)
    elif label_type != "single":
        raise ValueError(f"label_type: expected 'single' or 'multi', got {label_type!r}")
    if prompt != "{}":
        from cytoclip.evaluate.zero_shot import class_texts, ontology_paths_of

        names = sorted(frame["label"].astype(str).unique())
        text = {n: t[0] for n, t in zip(names, class_texts(names, prompt, ontology_paths_of(frame)))}
        frame = frame.assign(caption=frame["label"].astype(str).map(text))
    info = {"name": f"{split}-{label_type}", "image_types": types or None, "planes": list(planes or []) or None,
            "split": split, "split_seed": int(split_seed), "label_type": label_type,
            "within_fraction": within_fraction}
    if prompt != "{}":  # the name of the paper's datasets is unchanged
        info["prompt"] = prompt
    return _write_derived(parent, frame, info)


def subset_dataset(dataset: str | os.PathLike, n_regions: int = 60,
                   image_types: Sequence[str] = ("exact", "exact_mask", "square224")) -> Path:
    """A derived dataset of the ``n_regions`` most frequent labels present in every one of ``image_types``
    (paper Table II: ~60 regions), keeping the parent's split; ties broken by label name."""
    from cytoclip.data import load_manifest

    parent = Path(dataset).resolve()
    frame = load_manifest(parent)
    missing = [t for t in image_types if t not in set(frame["image_type"])]
    if missing:
        raise ValueError(f"{parent}: image types {missing} absent; has {sorted(set(frame['image_type']))}")
    frame = frame[frame["image_type"].isin(list(image_types))]
    common = set.intersection(*(set(frame.loc[frame["image_type"] == t, "label"]) for t in image_types))
    counts = frame[frame["label"].isin(common)].groupby("label").size()
    chosen = sorted(counts.index, key=lambda lab: (-counts[lab], lab))[:n_regions]
    return _write_derived(parent, frame[frame["label"].isin(chosen)],
                          {"name": f"subset{n_regions}", "n_regions": len(chosen), "labels": chosen,
                           "image_types": list(image_types)})


def label_counts(dataset: str | os.PathLike) -> pd.DataFrame:
    """Images and labels per image type and split of a prepared dataset."""
    from cytoclip.data import load_manifest

    manifest = load_manifest(dataset)
    return manifest.groupby(["image_type", "split"], dropna=False).agg(
        images=("path", "size"), labels=("label", "nunique")).reset_index()


def validation_section(dataset: str | os.PathLike) -> tuple[int, Any]:
    """(specimen, section) of the validation section with the most validation images."""
    from cytoclip.data import load_manifest

    val = load_manifest(dataset)
    val = val[val["split"] == "val"]
    if val.empty:
        raise ValueError(f"{dataset}: no validation images, so no validation section")
    counts = val.groupby(["specimen", "section"]).size().sort_values(ascending=False, kind="stable")
    specimen, section = counts.index[0]
    return int(specimen), section


# ================================================================================================ training
def run_dir_for(runs_dir: str | os.PathLike, profile: str, experiment: str, seed: int = 0) -> Path:
    """Where a training run lives: ``<runs_dir>/<profile>/<experiment>-seed<seed>``."""
    return Path(runs_dir) / str(profile) / f"{experiment}-seed{int(seed)}"


def run_seeds(seed: int, seeds: Sequence[int] | None) -> list[int]:
    """The run seeds of an experiment: ``seeds`` when given (several runs, mean ± std), else ``[seed]``."""
    out = [int(s) for s in (seeds if seeds is not None else [seed])]
    if not out or len(set(out)) != len(out):
        raise ValueError(f"seeds: expected distinct integers, got {seeds!r}")
    return out


def ensure_run(log=print, **params: Any) -> Path:
    """Train a :class:`cytoclip.train.TrainConfig` of ``params`` (its field names; ``None`` keeps the default)
    unless its ``run_dir`` already holds a finished run of the same work (:func:`cytoclip.train.is_finished`:
    the same fields but the run-only ones, and the same dataset manifest). An interrupted run resumes from its
    last checkpoint; a finished run of other work is trained again in the same directory. A finished run of the
    same work in a sibling directory (another experiment's name) is returned instead of training it again."""
    from cytoclip.train import FINISHED, TrainConfig, is_finished, train

    config = TrainConfig(**{k: str(v) if isinstance(v, Path) else v for k, v in params.items() if v is not None})
    # the one resume rule (cytoclip.io.is_reusable through train.is_finished): the same work fingerprint,
    # run-only settings (workers, device, logging and checkpoint cadence) never counting
    if is_finished(config):
        log(f"reusing the finished run {config.run_dir}")
        return Path(config.run_dir)
    # the same work finished under another name (two experiments that train one configuration, e.g. both
    # CytoCLIP rows of the demo, where one tiny model stands in for CLIP and BiomedCLIP): shared, not redone
    import dataclasses

    for other in sorted(Path(config.run_dir).parent.glob(f"*/{FINISHED}")):
        if other.parent != Path(config.run_dir) and is_finished(dataclasses.replace(config, run_dir=str(other.parent))):
            log(f"sharing the finished run {other.parent}: the same work as {config.run_dir}")
            return other.parent
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
