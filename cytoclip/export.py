"""``cytoclip export <run> <dir>``: a fine-tuned model in its base library's own format, with a model card.

- ``hf:`` models: ``save_pretrained`` of the ``transformers.CLIPModel`` and a ``CLIPProcessor`` (tokenizer and
  image processor), loadable by ``CLIPModel.from_pretrained(dir)`` / ``CLIPProcessor.from_pretrained(dir)``;
- ``open_clip:`` and ``tiny`` models: ``open_clip_model.safetensors`` + ``open_clip_config.json`` (plus an HF text
  tower's config and tokenizer files), loadable by ``open_clip.create_model_and_transforms('local-dir:<dir>')``
  and ``open_clip.get_tokenizer('local-dir:<dir>')``.

Every export carries ``README.md``, a model card in the Hugging Face Hub layout (YAML front matter, then the
training data and its data label — "synthetic atlas" or "DHARANI", :mod:`cytoclip.provenance` —, the labels, the
metrics with the data they were computed on, intended use and limits) and ``labels.txt`` (one class name a line,
the order of the training labels). The directory appears whole or not at all (:func:`cytoclip.io.atomic_dir`).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

import yaml

from cytoclip.io import atomic_dir, read_json

#: saved format (``CytoModel.format``) -> the library an export is loadable by
EXPORT_LIBRARIES = {"hf": "transformers", "open_clip": "open_clip"}
PAPER = "Ta et al., CytoCLIP (arXiv 2601.12282)"
DHARANI_CITATION = ("Verma, R. et al. (2025) DHARANI: A 3D developing human-brain atlas resource, J Comp Neurol "
                    "533: e70006 (CC BY 4.0)")


class ExportError(ValueError):
    """The model cannot be exported (unsupported format, existing output directory)."""


# ------------------------------------------------------------------------------------------------- what was trained
def run_info(source: str | os.PathLike) -> dict[str, Any]:
    """What a run directory says about its training: config, resolved block, last validation metrics, data label.
    Empty fields for a saved model or spec that is not a run."""
    run = Path(source)
    info: dict[str, Any] = {"run_dir": None, "config": {}, "resolved": {}, "metrics": {}, "data": None}
    if not (run / "config.json").is_file():
        return info
    raw = read_json(run / "config.json")
    config = raw.get("config", raw)
    info.update(run_dir=str(run.resolve()), config=config, resolved=dict(config.get("resolved") or {}))
    records = []
    if (run / "metrics.jsonl").is_file():
        records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    last_val = next((r for r in reversed(records) if "val_accuracy" in r), None)
    if last_val is not None:
        info["metrics"] = {k: v for k, v in last_val.items() if k.startswith("val_") or k in ("epoch", "step")}
    info["data"] = _data_label(config.get("dataset")) or info["resolved"].get("data") or (last_val or {}).get("data")
    return info


def _data_label(dataset: str | None) -> str | None:
    from cytoclip.provenance import data_label

    if not dataset or not Path(dataset).exists():
        return None
    try:
        return data_label(dataset)
    except ValueError:
        return None


def _metric_rows(info: dict, results: dict | None) -> list[dict[str, Any]]:
    """Rows of the card's metrics table: (metric, value, 95 % interval, computed on, data label)."""
    rows = []
    if results:
        where = f"{results.get('split', '?')} split of {Path(str(results.get('dataset', '?'))).name}"
        cls = results.get("classification") or {}
        for key in ("accuracy", "f1_weighted", "precision_weighted", "recall_weighted", "f1_macro"):
            if key in cls and cls[key] is not None:
                ci = (cls.get("ci") or {}).get(key)
                rows.append({"metric": f"{key} ({cls.get('method', 'zero-shot')})", "value": cls[key],
                             "ci": ci, "on": where, "data": results.get("data")})
        ret = results.get("retrieval") or {}
        for task in ("image_to_image", "text_to_image", "image_to_text"):
            for k in ret.get("ks", []) if ret.get(task) else []:
                rows.append({"metric": f"{task.replace('_', '-')} Recall@{k} (paper's definition)",
                             "value": ret[task].get(f"recall_at_{k}"), "ci": None, "on": where,
                             "data": results.get("data")})
    elif info["metrics"]:
        m = info["metrics"]
        where = f"validation split during training (step {m.get('step', '?')})"
        for key, name in (("val_accuracy", "accuracy (zero-shot)"), ("val_f1_weighted", "f1_weighted (zero-shot)")):
            if key in m:
                rows.append({"metric": name, "value": m[key], "ci": None, "on": f"{where}, n={m.get('val_n')}",
                             "data": info["data"]})
    return rows


# ------------------------------------------------------------------------------------------------- the model card
def model_card(model: Any, library: str, info: dict, labels: list[str], results: dict | None = None,
               name: str | None = None) -> str:
    """The model card (README.md in the Hugging Face Hub layout) of an exported model."""
    spec = info["resolved"].get("model_spec") or model.spec
    base = info["config"].get("model") or spec.get("source") or spec.get("backend")
    data = (results or {}).get("data") or info["data"] or "unknown"
    synthetic = data == "synthetic atlas"
    base_hub = _hub_id(str(base))
    tags = ["clip", "cytoclip", "histology", "nissl", "developing-human-brain", "brain-regions"]
    if synthetic:
        tags.append("synthetic-data")
    meta: dict[str, Any] = {"library_name": library, "pipeline_tag": "zero-shot-image-classification",
                            "tags": tags, "metrics": ["accuracy", "f1", "recall"]}
    if base_hub:
        meta["base_model"] = base_hub
    meta["cytoclip"] = {"data": data, "base_model_spec": str(base), "image_size": model.image_size,
                        "n_labels": len(labels)}
    title = name or f"CytoCLIP ({base}) fine-tuned on the {data}"
    cfg = info["config"]
    res = info["resolved"]
    lines = ["---", yaml.safe_dump(meta, sort_keys=False).strip(), "---", "", f"# {title}", ""]
    lines += [f"A CLIP model fine-tuned with the CytoCLIP study's code ({PAPER}) to name brain regions of "
              f"Nissl-stained sections of the developing human brain from their cytoarchitecture: an image of a "
              f"region and the region names as texts; the most similar name is the prediction.", ""]
    if synthetic:
        lines += ["> **Trained on the synthetic atlas**, a procedural stand-in written in the DHARANI layout, "
                  "**not on DHARANI data**. Its numbers say that the code path works; they say nothing about "
                  "how the model does on real sections.", ""]
    lines += ["## How to load", "", "```python"]
    if library == "transformers":
        lines += ["from transformers import CLIPModel, CLIPProcessor", "",
                  "model = CLIPModel.from_pretrained('<this folder>')",
                  "processor = CLIPProcessor.from_pretrained('<this folder>')",
                  "# pad the image to a square with black first (as in training), then: "
                  "processor(images=..., text=..., padding='max_length')"]
    else:
        lines += ["import open_clip", "",
                  "model, _, preprocess = open_clip.create_model_and_transforms('local-dir:<this folder>')",
                  "tokenizer = open_clip.get_tokenizer('local-dir:<this folder>')"]
    lines += ["```", "", "The labels are in `labels.txt` (one a line, the training order); the prompt used in "
              f"training is `{cfg.get('prompt', '{}')}` (the bare region name when `{{}}`).", ""]
    lines += ["## Training data", "", f"- **Data: {data}**" + (" (not DHARANI)" if synthetic else ""),
              f"- Dataset: `{cfg.get('dataset', 'unknown')}`",
              f"- Image type: `{res.get('image_type') or cfg.get('image_type')}`, {model.image_size} px input, split scheme `{cfg.get('split') or 'the manifest split'}`",
              f"- Images: {res.get('n_train', '?')} training, {res.get('n_val', '?')} validation",
              f"- Training: {cfg.get('epochs', '?')} epochs"
              + (f" (stopped at step {cfg['max_steps']})" if cfg.get("max_steps") else "")
              + f", batch {cfg.get('batch_size', '?')}, lr {cfg.get('lr', '?')}, weight decay "
                f"{cfg.get('weight_decay', '?')}, targets `{cfg.get('targets', '?')}`, seed {cfg.get('seed', '?')}",
              f"- Base model: `{base}`", ""]
    if results and results.get("training_data"):
        td = results["training_data"]
        lines += [f"- Specimens {td.get('specimens')}, planes {td.get('planes')}, ages (GW) {td.get('ages_gw')}", ""]
    lines += [f"## Labels ({len(labels)})", "", ", ".join(labels) if labels else "(not recorded)", ""]
    rows = _metric_rows(info, results)
    lines += ["## Metrics", ""]
    if rows:
        lines += ["| metric | value | 95 % interval | computed on | data |", "| --- | ---: | --- | --- | --- |"]
        for r in rows:
            ci = r["ci"]
            ci = f"{ci[0]:.3f}–{ci[1]:.3f}" if isinstance(ci, (list, tuple)) and len(ci) == 2 else ""
            value = f"{r['value']:.3f}" if isinstance(r["value"], (int, float)) else str(r["value"])
            lines.append(f"| {r['metric']} | {value} | {ci} | {r['on']} | {r['data']} |")
    else:
        lines.append("No metrics recorded (pass `--results` with a `cytoclip evaluate` results.json).")
    lines += ["", "## Intended use", "",
              "Research on the cytoarchitecture of the developing human brain: suggesting the region of a drawn area "
              "or a coarse parcellation of a Nissl section for a neuroanatomist to check and correct. The labels "
              "are the merged DHARANI regions the model was trained with.", "",
              "## Limits", "",
              "- Not for clinical use; predictions are suggestions for an expert, not annotations.",
              "- Trained on one stain (Nissl), the specimens, ages and planes above; other stains, ages, planes or "
              "scanners are outside what it has seen.",
              "- Preprocessing as in training: pad the image to a square with zeros, then resize (bicubic) to "
              f"{model.image_size} px and normalise with mean {list(model.mean)} and std {list(model.std)}."]
    if library == "transformers":
        lines.append("- `CLIPProcessor` resizes the shorter side and centre-crops: pad to a square first, or a "
                     "non-square crop loses its borders.")
    else:
        lines.append("- open_clip builds a timm image tower at timm's default input size; a model fine-tuned at "
                     "another size needs `create_model_and_transforms(..., force_image_size=...)`.")
    if synthetic:
        lines.append("- Trained on synthetic images only: retrain on DHARANI before any use on real sections.")
    lines += ["", "## Citation", "", f"- {PAPER}", f"- {DHARANI_CITATION}", ""]
    return "\n".join(lines)


def _hub_id(spec: str) -> str | None:
    """The Hugging Face hub id in a base-model spec (``hf:org/name``, ``open_clip:hf-hub:org/name``), if any."""
    from cytoclip.models.hf_backend import looks_like_path

    ref = spec.split(":", 1)[1] if spec.startswith(("hf:", "open_clip:")) else ""
    ref = ref[len("hf-hub:"):] if ref.startswith("hf-hub:") else ref if spec.startswith("hf:") else ""
    return ref if ref and not looks_like_path(ref) and not Path(ref).exists() else None


# ------------------------------------------------------------------------------------------------- export
def _write_transformers(model: Any, out: Path) -> None:
    from transformers import CLIPImageProcessor, CLIPProcessor

    model.module.save_pretrained(out, safe_serialization=True)
    image_processor = CLIPImageProcessor(size={"shortest_edge": model.image_size},
                                         crop_size={"height": model.image_size, "width": model.image_size},
                                         image_mean=list(model.mean), image_std=list(model.std))
    CLIPProcessor(image_processor=image_processor, tokenizer=model.tokenizer).save_pretrained(out)


def _write_open_clip(model: Any, out: Path, final: Path) -> None:
    from cytoclip.io import write_json
    from cytoclip.models.base import save_module_safetensors
    from cytoclip.models.openclip_backend import CONFIG_FILE, WEIGHTS_FILE

    save_module_safetensors(model.module, out / WEIGHTS_FILE)
    if "hf_model_name" in model.model_cfg.get("text_cfg", {}):
        model.module.text.config.save_pretrained(out)  # the text tower's config, where hf_model_name points
        model._tokenizer.tokenizer.save_pretrained(out)  # open_clip's local-dir: reads the tokenizer from here
    write_json(out / CONFIG_FILE, model.open_clip_config(final))


def export_model(source: str | os.PathLike, output_dir: str | os.PathLike, results: str | os.PathLike | None = None,
                 force: bool = False, name: str | None = None) -> Path:
    """Export a run directory, saved model or model spec to ``output_dir`` in its base library's format, with
    ``README.md`` (model card) and ``labels.txt``; returns ``output_dir``.

    ``results``: a ``results.json`` of ``cytoclip evaluate`` whose numbers go into the card (default: the run's
    last validation metrics). An existing non-empty ``output_dir`` is refused unless ``force``.
    """
    from cytoclip.models import create_model

    out = Path(output_dir).resolve()
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not force:
        raise ExportError(f"{out}: exists and is not empty; pass force=True (--force) to replace it")
    model = create_model(source)
    library = EXPORT_LIBRARIES.get(model.format)
    if library is None:
        raise ExportError(f"{source}: a {model.format!r} model ({model.name}); export writes the base library's "
                          f"format of {sorted(EXPORT_LIBRARIES)} models (hf:, open_clip:, tiny) only; save it "
                          f"with cytoclip instead (CytoModel.save)")
    info = run_info(source)
    res = read_json(results) if results else None
    if res is not None and not isinstance(res, dict):
        raise ExportError(f"{results}: expected a results.json object of `cytoclip evaluate`")
    labels = list(info["resolved"].get("class_names") or (res or {}).get("class_names") or [])
    with atomic_dir(out) as tmp:
        if library == "transformers":
            _write_transformers(model, tmp)
        else:
            _write_open_clip(model, tmp, out)
        (tmp / "labels.txt").write_text("".join(f"{label}\n" for label in labels))
        (tmp / "README.md").write_text(model_card(model, library, info, labels, res, name=name))
    return out


# ------------------------------------------------------------------------------------------------- CLI
def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``cytoclip export``."""
    parser.add_argument("model", help="a training run directory (holding model/), a saved model directory or a "
                        "model spec (hf:..., open_clip:..., tiny)")
    parser.add_argument("output_dir", help="the export directory (open_clip or transformers layout + README.md)")
    parser.add_argument("--results", default=None, help="results.json of `cytoclip evaluate` for the card's "
                        "metrics (default: the run's last validation metrics)")
    parser.add_argument("--name", default=None, help="the model card's title")
    parser.add_argument("--force", action="store_true", help="replace an existing output directory")
    parser.set_defaults(func=_cmd_export)


def _cmd_export(args: argparse.Namespace) -> int:
    out = export_model(args.model, args.output_dir, results=args.results, force=args.force, name=args.name)
    lib = "open_clip" if (out / "open_clip_config.json").is_file() else "transformers"
    print(f"exported {args.model} -> {out} ({lib} layout, model card README.md)")
    return 0
