"""The zero-shot classifier: name each image by the most similar class text (the paper's classification by
region names). The one implementation used by training-time validation, the notebooks and ``cytoclip evaluate``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from cytoclip.evaluate.embed import embed_texts

__all__ = ["class_texts", "ontology_paths_of", "text_classifier", "zero_shot", "temperature"]


def _ontology_prompt(name: str, path: str | None) -> str:
    """"Subiculum, part of the hippocampal formation": the class name and its parent from the ontology path."""
    parts = [p.strip() for p in str(path or "").split("/") if p.strip()]
    if len(parts) < 2:
        return name
    return f"{name}, part of the {parts[-2].lower()}"


def ontology_paths_of(frame: Any) -> dict[str, str] | None:
    """Class name -> ontology path from a manifest with ``label`` and ``ontology_path`` columns (None without the
    column): what ``prompt="ontology_path"`` needs."""
    if "ontology_path" not in getattr(frame, "columns", ()):
        return None
    return dict(zip(frame["label"].astype(str), frame["ontology_path"].astype(str)))


def class_texts(class_names: Sequence[str], prompt: str | Sequence[str] = "{}",
                ontology_paths: Mapping[str, str] | None = None) -> list[list[str]]:
    """The text(s) that stand for each class: one list of prompts per class.

    ``prompt``: a template with ``{}`` (the paper: the bare region name, ``"{}"``); a list of templates (their
    embeddings are averaged); or ``"ontology_path"``: "<name>, part of the <parent>" from ``ontology_paths``
    (class name -> "Brain / ... / parent / name", the manifest's ``ontology_path`` column).
    """
    names = list(class_names)
    if isinstance(prompt, str) and prompt == "ontology_path":
        if ontology_paths is None:
            raise ValueError("prompt='ontology_path' needs ontology_paths (class name -> ontology path)")
        return [[_ontology_prompt(n, ontology_paths.get(n))] for n in names]
    templates = [prompt] if isinstance(prompt, str) else list(prompt)
    if not templates or any("{}" not in t for t in templates):
        raise ValueError(f"prompt: expected template(s) containing '{{}}' or 'ontology_path', got {prompt!r}")
    return [[t.format(n) for t in templates] for n in names]


def text_classifier(model: Any, class_names: Sequence[str], prompt: str | Sequence[str] = "{}",
                    ontology_paths: Mapping[str, str] | None = None) -> np.ndarray:
    """One L2-normalised text embedding per class ``(C, d)``; several templates are averaged then renormalised."""
    groups = class_texts(class_names, prompt, ontology_paths)
    flat = [t for g in groups for t in g]
    emb = embed_texts(model, flat)
    per = len(groups[0])
    emb = emb.reshape(len(groups), per, -1).mean(axis=1)
    return emb / np.linalg.norm(emb, axis=1, keepdims=True).clip(1e-12)


def temperature(model: Any) -> float:
    """exp(logit_scale) of the model, capped at 100 as in CLIP (100 when the model has none)."""
    scale = getattr(model, "logit_scale", None)
    # CytoModel.logit_scale is the learnable log-temperature (CLIP convention): use exp, capped as CLIP does
    if scale is None:
        return 100.0
    with torch.no_grad():
        return float(min(torch.as_tensor(scale).detach().float().exp().item(), 100.0))


def zero_shot(model: Any, image_emb: np.ndarray, class_names: Sequence[str], prompt: str | Sequence[str] = "{}",
              ontology_paths: Mapping[str, str] | None = None, text_emb: np.ndarray | None = None
              ) -> tuple[np.ndarray, np.ndarray]:
    """Name each image by the most similar class text (the paper's classification by region names).

    Returns ``(pred, probs)``: predicted class indices ``(N,)`` and class probabilities ``(N, C)``, the softmax of
    the model's temperature times cosine similarity. ``text_emb`` skips embedding the class texts again.
    """
    if text_emb is None:
        text_emb = text_classifier(model, class_names, prompt, ontology_paths)
    if text_emb.shape[0] != len(class_names):
        raise ValueError(f"text_emb: {text_emb.shape[0]} rows for {len(class_names)} class names")
    logits = temperature(model) * (np.asarray(image_emb, np.float32) @ text_emb.T)
    logits -= logits.max(axis=1, keepdims=True)
    probs = np.exp(logits)
    probs /= probs.sum(axis=1, keepdims=True)
    return probs.argmax(axis=1), probs


