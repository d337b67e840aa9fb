"""A model as a tool opens it: the network and what its training run records (labels, prompt, image scale).

A training run directory (or its ``model/`` subdirectory) records in ``config.json`` the class names it was
trained on, the prompt template and the prepared dataset; the dataset's manifest gives each class its ontology
id and the scale of the training images (µm/px and size). A bare factory spec (``tiny``, ``hf:...``) records
nothing: its candidate names must be given (:mod:`cytoclip.annotate.labels`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["TrainedModel", "open_model", "run_record", "resolve_device"]

#: scale of the whole-region images (paper III-B) when a model records none
REGION_MPP = 16.0


@dataclass
class TrainedModel:
    """A model and its training record.

    ``class_names``: the training labels (None for a factory spec); ``label_ids``: label -> ontology id (from the
    training manifest); ``prompt``: the template it was trained and validated with; ``image_type``; ``mpp`` and
    ``tile``: µm/px and side in px of its training images (None when unknown); ``run_dir``: where they came from.
    """

    model: Any
    spec: str
    class_names: list[str] | None = None
    label_ids: dict[str, int] = field(default_factory=dict)
    prompt: str = "{}"
    image_type: str | None = None
    mpp: float | None = None
    tile: int | None = None
    run_dir: Path | None = None

    @property
    def read_mpp(self) -> float:
        """µm/px at which areas are read for this model: its training images' scale, else 16 (whole regions)."""
        return float(self.mpp) if self.mpp else REGION_MPP


def resolve_device(device: str | None) -> str:
    """``auto``/None -> cuda when a GPU is visible, else mps when available, else cpu; anything else as given."""
    if device not in (None, "", "auto"):
        return str(device)
    import torch

    if torch.cuda.is_available():
        return "cuda"
    mps = getattr(torch.backends, "mps", None)
    return "mps" if mps is not None and mps.is_available() else "cpu"


def _run_dir_of(spec: Any) -> Path | None:
    """The training run directory behind a spec: the spec itself, or the parent of a run's ``model/``."""
    if not isinstance(spec, (str, os.PathLike)):
        return None
    path = Path(spec)
    for cand in (path, path.parent):
        if (cand / "config.json").is_file() and (cand / "model").is_dir():
            return cand
    return None


def run_record(spec: Any) -> dict:
    """What a run directory records for a tool: ``class_names``, ``prompt``, ``image_type``, ``dataset``,
    ``label_ids``, ``mpp``, ``tile``, ``run_dir`` (empty dict for a factory spec or a model saved alone).

    The ids and scale come from the training dataset's manifest when it is still on disk; without it the
    names are resolved through the ontology (:mod:`cytoclip.annotate.labels`).
    """
    from cytoclip.io import read_json

    run_dir = _run_dir_of(spec)
    if run_dir is None:
        return {}
    config = read_json(run_dir / "config.json")
    if not isinstance(config, dict):
        raise ValueError(f"{run_dir / 'config.json'}: expected a JSON object (a cytoclip training config)")
    resolved = config.get("resolved") or {}
    names = resolved.get("class_names")
    if names is not None and (not isinstance(names, list) or not all(isinstance(n, str) for n in names)):
        raise ValueError(f"{run_dir / 'config.json'}: resolved.class_names must be a list of label names")
    record = {"run_dir": run_dir, "class_names": names, "prompt": config.get("prompt") or "{}",
              "image_type": resolved.get("image_type") or config.get("image_type"), "dataset": config.get("dataset"),
              "label_ids": {}, "mpp": None, "tile": None}
    record.update(_manifest_facts(config.get("dataset"), record["image_type"], run_dir))
    return record


def _manifest_facts(dataset: Any, image_type: str | None, run_dir: Path) -> dict:
    """label -> ontology id, µm/px and image side of the training images, from the run's dataset manifest."""
    import pandas as pd

    if not dataset:
        return {}
    ds = Path(dataset)
    for cand in (ds, run_dir / ds):  # absolute, or relative to where the run was started (tried as is first)
        if (cand / "manifest.parquet").is_file():
            ds = cand
            break
    else:
        return {}
    cols = ["label", "label_id", "image_type", "mpp", "x0", "x1"]
    try:
        m = pd.read_parquet(ds / "manifest.parquet", columns=cols)
    except Exception:  # an old or foreign manifest: the names alone still work
        return {}
    if image_type is not None and (m["image_type"] == image_type).any():
        m = m[m["image_type"] == image_type]
    ids = {str(k): int(v) for k, v in zip(m["label"], m["label_id"])}
    out: dict[str, Any] = {"label_ids": ids}
    if len(m):
        out["mpp"] = float(m["mpp"].iloc[0])
        if image_type == "tile":  # tiles are read at their own size; region crops vary and are resized
            out["tile"] = int(round(float((m["x1"] - m["x0"]).median())))
    return out


def open_model(spec: Any, device: str | None = None, **overrides: Any) -> TrainedModel:
    """Open a run dir, a saved model or any factory spec (:func:`cytoclip.models.create_model`) with its record.

    ``device``: cpu, cuda, cuda:N, mps or auto/None (the best available). ``overrides`` go to the factory
    (e.g. ``image_size`` of an untrained ``tiny``).
    """
    from cytoclip.models import create_model

    if isinstance(spec, (str, os.PathLike)) and ("/" in str(spec) or os.sep in str(spec)) \
            and ":" not in str(spec) and not Path(spec).exists():
        raise FileNotFoundError(f"{spec}: model not found (expected a training run directory, a saved model "
                                f"directory or a model spec such as tiny)")
    if hasattr(spec, "encode_image"):  # an open CytoModel
        net, text = spec, getattr(spec, "name", "model")
        record: dict = {}
    else:
        net = create_model(spec, device=resolve_device(device), **overrides)
        text, record = str(spec), run_record(spec)
    if not getattr(net, "has_text", False):
        raise ValueError(f"{text}: image-only model (no text tower); naming regions needs a CLIP model")
    return TrainedModel(model=net, spec=text, class_names=record.get("class_names"),
                        label_ids=record.get("label_ids") or {}, prompt=record.get("prompt") or "{}",
                        image_type=record.get("image_type"), mpp=record.get("mpp"), tile=record.get("tile"),
                        run_dir=record.get("run_dir"))
