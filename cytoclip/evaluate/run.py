"""The one evaluation path: a model (or a training run) on a prepared dataset -> every number of the paper's
protocol, the arrays they were computed from, and figures.

``cytoclip evaluate`` and every notebook call :func:`evaluate`; nothing else computes a headline number. What it
leaves in ``output_dir``:

* ``results.json``: the numbers (classification with bootstrap intervals, the multi-region rule when the dataset
  has multi-region labels, retrieval Recall@K and hit@K, error analysis) and what they were computed on (run
  directory, dataset directory, image type, split, seed, and the specimens / planes / ages of the training and
  validation images);
* ``embeddings.npz``: the arrays every number can be recomputed from (see :data:`ARRAYS`);
* ``predictions.parquet``: one row per validation image; ``figures/*.png``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cytoclip.evaluate.classification import classification_summary, multi_region_summary
from cytoclip.evaluate.embed import embed_images, embed_texts
from cytoclip.evaluate.retrieval import retrieval, sample_retrieval_set
from cytoclip.evaluate.zero_shot import ontology_paths_of, text_classifier, zero_shot
from cytoclip.io import atomic_path, read_json, write_json

__all__ = ["ARRAYS", "RETRIEVAL_SIZES", "evaluate", "resolve_evaluation", "load_arrays"]

#: the paper's retrieval set sizes (Section IV-E): 925 whole-region images, 1237 tiles, drawn from validation
RETRIEVAL_SIZES = {"regions": 925, "tiles": 1237}

#: the named arrays of ``embeddings.npz`` (rows of the validation images in ``predictions.parquet`` order)
ARRAYS = {
    "image_embeddings": "(N, d) float32, L2-normalised embeddings of the validation images",
    "labels": "(N,) str, the true label of each validation image (multi-region datasets: the multi-region label)",
    "class_names": "(C,) str, the candidate labels, in the order of the classifier's columns",
    "class_text_embeddings": "(C, d) float32, embedding of the prompt of each class name (absent for image-only)",
    "predictions": "(N,) str, the predicted label of each validation image",
    "scores": "(N,) float32, the probability of the predicted label",
    "retrieval_indices": "(R,) int, rows of the retrieval set (a seeded random sample of the validation images)",
    "caption_embeddings": "(R, d) float32, embedding of each retrieval image's own caption (absent for image-only)",
    "primary_labels": "(N,) str, the primary region of each image (multi-region datasets only)",
}


def _run_config(model: Any) -> dict | None:
    """The ``config.json`` of a training run directory (None for a model spec or a ready model)."""
    if isinstance(model, (str, os.PathLike)) and (Path(model) / "config.json").is_file():
        cfg = read_json(Path(model) / "config.json")
        return cfg.get("config", cfg)
    return None


def resolve_evaluation(model: Any, dataset: str | os.PathLike, image_type: str | None = None,
                       split: str | None = None, seed: int | None = None,
                       retrieval_size: int | None = None, manifest: pd.DataFrame | None = None) -> dict[str, Any]:
    """The evaluation settings that every door resolves the same way.

    For a training run directory, ``image_type``, ``split`` and ``seed`` default to the run's own; otherwise to
    the dataset's first image type among ``square224``/``tile`` (the paper's), the manifest's split column and 0.
    ``retrieval_size`` defaults to the paper's size for the dataset kind (:data:`RETRIEVAL_SIZES`).
    """
    from cytoclip.data import load_manifest

    manifest = load_manifest(dataset) if manifest is None else manifest
    types = sorted(manifest["image_type"].astype(str).unique())
    run = _run_config(model) or {}
    image_type = image_type or run.get("image_type") or next((t for t in ("square224", "tile") if t in types),
                                                             types[0])
    if image_type not in types:
        raise ValueError(f"{dataset}: image_type {image_type!r} not in the manifest; expected one of {types}")
    kind = "tiles" if image_type == "tile" else "regions"
    return {"image_type": image_type, "split": split if split is not None else run.get("split"),
            "seed": int(seed if seed is not None else run.get("seed", 0)),
            "retrieval_size": int(retrieval_size if retrieval_size is not None else RETRIEVAL_SIZES[kind]),
            "label_type": "multi" if "primary_label" in manifest.columns else "single"}


def _load_model(model: Any, device: str | None, model_kwargs: Mapping[str, Any] | None) -> tuple[Any, str]:
    if isinstance(model, (str, os.PathLike, dict)):
        from cytoclip.models import create_model

        net = create_model(model, device=device or "cpu", **dict(model_kwargs or {}))
        return net, str(model) if not isinstance(model, dict) else net.name
    if device is not None:
        model.to(device)
    return model, getattr(model, "name", type(model).__name__)


def _jsonable(summary: Mapping[str, Any]) -> dict:
    return {k: v for k, v in summary.items() if k != "per_class"}


def evaluate(model: Any, dataset: str | os.PathLike, output_dir: str | os.PathLike, *,
             image_type: str | None = None, split: str | None = None, split_seed: int = 0, val_split: str = "val",
             seed: int | None = None,
             retrieval_size: int | None = None, prompt: str | Sequence[str] = "{}", n_boot: int = 1000,
             probes: bool | None = None, figures: bool = True, errors: bool = True, atlas: Any = None,
             batch_size: int = 64, device: str | None = None, num_workers: int = 0,
             embedding_method: str = "umap", model_kwargs: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Evaluate ``model`` (a training run dir, a saved model dir, a factory spec, or a ready ``CytoModel``) on the
    validation split of a prepared ``dataset``; returns the results dict also written to ``results.json``.

    * classification: zero-shot naming of each validation image by the most similar class-name prompt (the
      paper's), scored with weighted and macro P/R/F1 and accuracy; on a multi-region dataset (manifest column
      ``primary_label``) the paper's multi-region rule (the primary label among the predicted label's regions).
      Image-only models (no text tower) are scored by a linear probe on frozen embeddings instead;
    * retrieval: a seeded random sample of ``retrieval_size`` validation images, each with its own caption;
      Recall@K (the paper's) and hit@K for image-to-image, text-to-image and image-to-text;
    * error analysis: most-confused pairs, tree distance in the ontology, adjacency (when ``atlas`` is given).

    ``split``: a :mod:`cytoclip.splits` scheme applied with ``split_seed`` (default: the manifest's ``split``
    column, or the run's scheme); ``val_split`` the value of that column that is scored (``val``; the cross
    experiments also hold ``val_within``: held-out sections of the training distribution). ``seed`` draws the retrieval set and the bootstrap (default: the run's seed).
    ``probes`` (linear probe and k-NN on frozen embeddings) defaults to on for image-only models only.
    """
    from cytoclip.data import ImageTextDataset, load_manifest
    from cytoclip.provenance import data_label, split_provenance

    dataset, output_dir = Path(dataset), Path(output_dir)
    manifest = load_manifest(dataset)  # read once: the settings and the evaluation use the same table
    settings = resolve_evaluation(model, dataset, image_type, split, seed, retrieval_size, manifest=manifest)
    image_type, split, seed = settings["image_type"], settings["split"], settings["seed"]
    run_dir = str(Path(model).resolve()) if _run_config(model) is not None else None
    if split is not None:
        from cytoclip.splits import assign_split

        manifest = manifest.assign(split=assign_split(manifest, split, seed=split_seed).values)
    elif "split" not in manifest.columns:
        raise ValueError(f"{dataset / 'manifest.parquet'}: no 'split' column; pass split")
    class_names = sorted(manifest["label"].astype(str).unique())
    net, model_label = _load_model(model, device, model_kwargs)
    net.eval()
    has_text = bool(getattr(net, "has_text", False))
    probes = (not has_text) if probes is None else probes

    def subset(name: str) -> ImageTextDataset:
        return ImageTextDataset(dataset, manifest=manifest, image_type=image_type, split=name,
                                transform=net.transform, class_names=class_names)

    val_ds, train_ds = subset(val_split), subset("train")
    if len(val_ds) == 0:
        raise ValueError(f"{dataset}: no validation images of type {image_type!r} (split {split or 'manifest'})")
    val = val_ds.frame.reset_index(drop=True)
    y_true = val["label"].astype(str).to_numpy()
    val_emb = embed_images(net, val_ds, batch_size, num_workers=num_workers, desc="embed validation")
    arrays: dict[str, np.ndarray] = {"image_embeddings": val_emb, "labels": y_true,
                                     "class_names": np.asarray(class_names)}
    results: dict[str, Any] = {
        "data": data_label(dataset), "model": model_label, "model_spec": getattr(net, "spec", None),
        "run_dir": run_dir, "dataset": str(dataset.resolve()), "image_type": image_type,
        "split": split or "manifest", "val_split": val_split, "split_seed": split_seed if split is not None else None, "seed": seed,
        "prompt": prompt, "label_type": settings["label_type"], "n_boot": n_boot, "has_text": has_text,
        "n_classes": len(class_names), "class_names": class_names,
        "training_data": split_provenance(train_ds.frame), "validation_data": split_provenance(val),
        "classification": None, "per_class": None, "retrieval": None, "linear_probe": None, "knn": None,
        "errors": None, "figures": {}, "arrays": "embeddings.npz",
    }
    preds = val[[c for c in ("path", "label", "specimen", "section", "age_gw", "plane") if c in val.columns]].copy()

    # ---- classification
    summary, y_pred = None, None
    if has_text:
        class_emb = text_classifier(net, class_names, prompt, ontology_paths_of(manifest))
        idx, probs = zero_shot(net, val_emb, class_names, text_emb=class_emb)
        y_pred = np.asarray(class_names)[idx]
        arrays.update(class_text_embeddings=class_emb, predictions=y_pred,
                      scores=probs[np.arange(len(idx)), idx].astype(np.float32))
        if settings["label_type"] == "multi":
            regions_of = _regions_of_labels(manifest)
            primary = val["primary_label"].astype(str).to_numpy()
            summary = multi_region_summary(primary, [regions_of[p] for p in y_pred], n_boot=n_boot, seed=seed)
            arrays["primary_labels"] = primary
        else:
            summary = classification_summary(y_true, y_pred, n_boot=n_boot, seed=seed)
        summary["method"] = "zero-shot (class-name prompts)"
        preds["predicted"], preds["score"] = y_pred, arrays["scores"]
    if probes and len(train_ds) and train_ds.frame["label"].nunique() >= 2:
        from cytoclip.evaluate.baselines import knn, linear_probe

        train_emb = embed_images(net, train_ds, batch_size, num_workers=num_workers, desc="embed training")
        train_y = train_ds.frame["label"].astype(str).to_numpy()
        for name, pred in (("linear_probe", linear_probe(train_emb, train_y, val_emb, seed=seed)),
                           ("knn", knn(train_emb, train_y, val_emb))):
            s = classification_summary(y_true, pred, n_boot=n_boot, seed=seed)
            s["method"] = name.replace("_", " ")
            results[name] = _jsonable(s)
            preds[name] = pred
            if summary is None and name == "linear_probe":  # image-only models are scored by their probe
                summary, y_pred = s, np.asarray(pred).astype(str)
                arrays["predictions"] = y_pred
    if summary is not None:
        results["classification"] = _jsonable(summary)
        results["per_class"] = summary["per_class"].to_dict(orient="records")

    # ---- retrieval: a seeded random sample of the validation images, each with its own caption
    ridx = sample_retrieval_set(len(val), settings["retrieval_size"], seed)
    cap_emb = None
    if has_text:
        captions = val["caption"].astype(str) if "caption" in val.columns else val["label"].astype(str)
        template = prompt if isinstance(prompt, str) and "{}" in prompt else "{}"
        cap_emb = embed_texts(net, [template.format(c) for c in captions.iloc[ridx]])
        arrays["caption_embeddings"] = cap_emb
    arrays["retrieval_indices"] = ridx
    results["retrieval"] = retrieval(val_emb[ridx], y_true[ridx], cap_emb, n_boot=n_boot, seed=seed)
    results["retrieval"]["requested_size"] = settings["retrieval_size"]

    # ---- error analysis of the headline predictions
    if errors and y_pred is not None and settings["label_type"] == "single":
        results["errors"] = _error_analysis(y_true, y_pred, manifest, val, atlas)

    output_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(output_dir / "embeddings.npz") as tmp:
        with open(tmp, "wb") as fh:
            # strings as unicode arrays, never object arrays: the file loads without pickle
            np.savez_compressed(fh, **{k: np.asarray(v).astype(str) if np.asarray(v).dtype == object
                                       else np.asarray(v) for k, v in arrays.items()})
    with atomic_path(output_dir / "predictions.parquet") as tmp:
        preds.to_parquet(tmp, index=False)
    if figures:
        results["figures"] = _write_figures(output_dir, results["data"] == "synthetic atlas", y_true, y_pred,
                                            summary, val_emb, val, dataset, ridx, seed, embedding_method)
    write_json(output_dir / "results.json", results)
    return results


def load_arrays(output_dir: str | os.PathLike) -> dict[str, np.ndarray]:
    """The arrays an evaluation left in ``output_dir/embeddings.npz`` (no pickle: strings are unicode arrays)."""
    with np.load(Path(output_dir) / "embeddings.npz", allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def _regions_of_labels(manifest: pd.DataFrame) -> dict[str, list[str]]:
    """Multi-region label -> its regions (the label's primary region first), from the manifest."""
    out: dict[str, list[str]] = {}
    for label, regions in zip(manifest["label"].astype(str), manifest["multi_labels"]):
        out.setdefault(label, [str(r) for r in regions])
    return out


def _error_analysis(y_true: np.ndarray, y_pred: np.ndarray, manifest: pd.DataFrame, val: pd.DataFrame,
                    atlas: Any) -> dict:
    from cytoclip.evaluate.errors import error_analysis, label_adjacency
    from cytoclip.ontology import Ontology

    distance, adjacent, out_extra = None, None, {}
    if "label_id" in manifest.columns:
        ids = dict(zip(manifest["label"].astype(str), manifest["label_id"].astype(int)))
        if atlas is not None and not hasattr(atlas, "section"):
            from cytoclip.atlas import Atlas

            atlas = Atlas(atlas)
        onto = getattr(atlas, "ontology", None) or Ontology.load()
        if all(i in onto for i in ids.values()):
            distance = lambda a, b: float(onto.distance(ids[a], ids[b]))  # noqa: E731  (tree hops of two names)
        if atlas is not None and {"specimen", "section"} <= set(val.columns):
            sections = sorted({(int(a), int(b)) for a, b in zip(val["specimen"], val["section"])})
            mpp = float(val["mpp"].iloc[0]) if "mpp" in val.columns else 16.0
            adjacent = label_adjacency(atlas, sections, {v: k for k, v in ids.items()}, onto, mpp=mpp)
        else:
            out_extra["adjacency"] = "not computed: no atlas given"
    res = error_analysis(y_true, y_pred, distance, adjacent)
    return {"confused_pairs": res["confused_pairs"].to_dict(orient="records"),
            "by_tree_distance": (res["by_tree_distance"].to_dict(orient="records")
                                 if res["by_tree_distance"] is not None else None),
            "mean_tree_distance": res["mean_tree_distance"], "by_adjacency": res["by_adjacency"], **out_extra}


def _write_figures(out_dir: Path, synthetic: bool, y_true: np.ndarray, y_pred: np.ndarray | None,
                   summary: Mapping | None, val_emb: np.ndarray, val: pd.DataFrame, dataset: Path,
                   ridx: np.ndarray, seed: int, embedding_method: str) -> dict[str, str]:
    # plots build bare Figure objects (no pyplot), so a notebook's backend stays untouched
    from cytoclip import plots as P

    written: dict[str, str] = {}

    def save(name: str, fig: Any) -> None:
        P.save_figure(fig, out_dir / "figures" / f"{name}.png")
        written[name] = f"figures/{name}.png"

    if y_pred is not None and summary is not None:
        truth = y_true if summary.get("label_type") != "multi" else None
        if truth is not None:
            save("confusion_matrix", P.confusion_matrix_figure(truth, y_pred, synthetic=synthetic))
        save("per_region_f1", P.per_region_f1_figure(summary["per_class"], synthetic=synthetic, top=40))
    color_by = {"region": y_true.tolist()}
    for col in ("age_gw", "plane"):
        if col in val.columns and val[col].nunique() > 1:
            color_by[col] = val[col].astype(str).tolist()
    save("embeddings", P.embedding_figure(val_emb, color_by, synthetic=synthetic, seed=seed, method=embedding_method))
    if len(ridx) >= 2:
        sub = val_emb[ridx]
        paths = [Path(p) if os.path.isabs(str(p)) else dataset / p for p in val["path"].iloc[ridx]]
        labels = y_true[ridx].tolist()
        save("retrieval_examples", P.retrieval_examples_figure(paths, labels, paths, labels, sub @ sub.T,
                                                               exclude_self=True, synthetic=synthetic, seed=seed))
    return written
