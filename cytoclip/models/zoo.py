"""The study's models as data: spec, image size, role in the paper and where the weights come from, plus an
offline availability check so notebooks can list a model as "not run, weights absent" with the reason."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from cytoclip.models.base import ModelSpecError, ModelWeightsNotFound, hf_cache_dir

#: one row per model of the study; ``spec`` is what :func:`create_model` takes
MODEL_ZOO: list[dict] = [
    {"name": "tiny", "spec": "tiny", "image_size": 112, "role": "CPU default, trained from scratch (synthetic demo)",
     "weights": "none: random initialisation (seeded)", "has_text": True},
    {"name": "tiny-vit", "spec": "tiny-vit", "image_size": 112, "role": "CPU option: small ViT from scratch",
     "weights": "none: random initialisation (seeded)", "has_text": True},
    {"name": "CLIP ViT-L/14-336", "spec": "hf:openai/clip-vit-large-patch14-336", "image_size": 336,
     "role": "paper base model and zero-shot baseline (Table I)",
     "weights": "Hugging Face hub openai/clip-vit-large-patch14-336 (public)", "has_text": True},
    {"name": "CLIP ViT-L/14", "spec": "hf:openai/clip-vit-large-patch14", "image_size": 224,
     "role": "paper base model (Table I)", "weights": "Hugging Face hub openai/clip-vit-large-patch14 (public)",
     "has_text": True},
    {"name": "BiomedCLIP", "spec": "open_clip:hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224",
     "image_size": 224, "role": "paper base model and zero-shot baseline (Tables I, III)",
     "weights": "Hugging Face hub microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224 plus the text tower's "
                "config/tokenizer from microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract (public)",
     "has_text": True},
    {"name": "CONCH", "spec": "conch:hf-hub:MahmoodLab/CONCH", "image_size": 448,
     "role": "pathology foundation model baseline (image-text)",
     "weights": "Hugging Face hub MahmoodLab/CONCH (gated: accept terms) + `pip install conch-fork`", "has_text": True},
    {"name": "UNI", "spec": "uni:hf-hub:MahmoodLab/UNI", "image_size": 224,
     "role": "pathology foundation model baseline (image-only: linear probe / kNN)",
     "weights": "Hugging Face hub MahmoodLab/UNI (gated: accept terms)", "has_text": False},
]


def _zoo_row(spec: str) -> dict | None:
    return next((dict(r) for r in MODEL_ZOO if spec in (r["spec"], r["name"])), None)


def _hub_cached(repo: str) -> bool:
    from huggingface_hub import snapshot_download

    try:
        snapshot_download(repo, local_files_only=True)
    except Exception:  # any miss (not cached, partial cache) means unavailable offline
        return False
    return True


def check_available(spec: str | dict) -> tuple[bool, str]:
    """Whether ``spec``'s weights are on disk right now (no download, no model construction) and why not."""
    if isinstance(spec, dict):  # a spec dict (e.g. a small stand-in): its weights are a local path or none
        ref = spec.get("checkpoint") or spec.get("path") or spec.get("source") or spec.get("name")
        if ref is None or str(ref).startswith("hf-hub:"):
            return ref is None, "no weights to load" if ref is None else f"{ref}: a hub id in a spec dict"
        ok = Path(ref).expanduser().exists()
        return ok, f"found {ref}" if ok else f"not found: {ref}"
    offline = os.environ.get("HF_HUB_OFFLINE", "<unset>")
    cache = f"(HF cache {hf_cache_dir()}, HF_HUB_OFFLINE={offline})"
    prefix, _, rest = spec.partition(":")
    if spec in ("tiny", "tiny-vit"):
        return True, "random initialisation; nothing to download"
    if prefix not in ("hf", "open_clip", "uni", "conch"):  # a saved model or run directory
        from cytoclip.models.base import CytoModel

        ok = CytoModel.find_saved(spec) is not None
        return ok, f"saved model in {spec}" if ok else f"no saved model (cytoclip_model.json) in {spec}"
    if prefix == "conch":
        try:
            import conch  # noqa: F401
        except ImportError:
            return False, "the conch package is not installed (pip install conch-fork)"
    if prefix == "open_clip":
        rest = rest.rpartition("@")[2] if "@" in rest else rest
    if prefix == "open_clip" and "BiomedCLIP" in rest:
        needed = [rest[len("hf-hub:"):], "microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract"]
        missing = [r for r in needed if not _hub_cached(r)]
        return (not missing, "weights in the HF cache" if not missing else f"not in the HF cache: {missing} {cache}")
    if rest.startswith("hf-hub:"):
        repo = rest[len("hf-hub:"):]
    elif prefix == "hf" and not Path(rest).expanduser().exists():
        repo = rest  # a bare hub id
    else:
        ok = Path(rest).expanduser().exists()
        return ok, f"found {rest}" if ok else f"not found: {rest}"
    ok = _hub_cached(repo)
    return ok, f"hf-hub:{repo} in the HF cache" if ok else f"hf-hub:{repo} not in the HF cache {cache}"


def describe_model(spec: str) -> dict:
    """The zoo entry for ``spec`` (a zoo name or spec string; other specs get a minimal entry) plus
    ``available`` and ``reason`` from :func:`check_available`."""
    row = _zoo_row(spec)
    if row is None:
        from cytoclip.models.factory import parse_spec

        parsed = parse_spec(spec)  # raises ModelSpecError for malformed specs
        row = {"name": spec, "spec": spec, "image_size": None, "role": "user-supplied",
               "weights": parsed.get("checkpoint") or parsed.get("source") or parsed.get("path") or "",
               "has_text": parsed["backend"] != "uni"}
    try:
        row["available"], row["reason"] = check_available(row["spec"])
    except (ModelWeightsNotFound, ModelSpecError, OSError) as exc:
        row["available"], row["reason"] = False, str(exc).splitlines()[0]
    return row


def model_zoo_table() -> pd.DataFrame:
    """All zoo models with availability, one row each (columns: name, spec, image_size, role, weights,
    has_text, available, reason)."""
    return pd.DataFrame([describe_model(r["spec"]) for r in MODEL_ZOO])
