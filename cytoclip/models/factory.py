"""``create_model``: spec parsing and the backend registry (name -> builder)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import torch

# importing the backends registers their saved formats in SAVED_FORMATS (heavy libraries load lazily inside)
from cytoclip.models import hf_backend, openclip_backend, pathology
from cytoclip.models.base import SAVED_FORMATS, CytoModel, ModelSpecError


def _load_saved(spec: dict, device="cpu", pretrained: bool = True, allow_download: bool | None = None) -> CytoModel:
    """Builder for ``{"backend": "saved", "path": dir}``: a directory written by :meth:`CytoModel.save`."""
    extra = set(spec) - {"backend", "path"}
    if extra:
        raise ModelSpecError(f"{spec['path']}: a saved model takes no options, got {sorted(extra)}")
    return CytoModel.load(spec["path"], device=device)


#: backend name -> builder(spec: dict, device, pretrained, allow_download) -> CytoModel
BACKENDS: dict[str, Callable[..., CytoModel]] = {
    "tiny": openclip_backend.build_tiny,
    "tiny-vit": openclip_backend.build_tiny,
    "open_clip": openclip_backend.build_open_clip,
    "hf": hf_backend.build_hf,
    "uni": pathology.build_uni,
    "conch": pathology.build_conch,
    "saved": _load_saved,
}

_PREFIXED = ("hf", "open_clip", "uni", "conch")
SPEC_HELP = ("'tiny', 'tiny-vit', 'hf:<dir or hub id>', 'open_clip:<name | hf-hub:org/repo | dir>[@<checkpoint>]', "
             "'uni:<checkpoint path | dir | hf-hub:org/repo>', 'conch:<checkpoint path | dir | hf-hub:org/repo>', "
             "a saved model directory or a training run directory (holding model/)")


def parse_spec(spec: str | os.PathLike | dict, **overrides: Any) -> dict:
    """Turn a spec string/dict into a dict with ``backend`` plus backend options; ``overrides`` are merged in.

    ``"open_clip:ViT-B-16@/w/ckpt.pt"`` -> ``{"backend": "open_clip", "name": "ViT-B-16", "checkpoint": ...}``;
    ``"hf:openai/clip-vit-large-patch14"`` -> ``{"backend": "hf", "source": ...}``; a directory holding
    ``cytoclip_model.json`` (or ``model/cytoclip_model.json``) -> ``{"backend": "saved", "path": ...}``.
    """
    if isinstance(spec, dict):
        out = dict(spec)
        if "backend" not in out:
            raise ModelSpecError(f"model spec dict {spec!r}: missing field 'backend' (one of {sorted(BACKENDS)})")
    elif isinstance(spec, (str, os.PathLike)):
        s = str(spec).strip()
        if not s:
            raise ModelSpecError(f"empty model spec; expected {SPEC_HELP}")
        prefix, sep, rest = s.partition(":")
        if s in ("tiny", "tiny-vit"):
            out = {"backend": s}
        elif sep and prefix in _PREFIXED:
            if not rest:
                raise ModelSpecError(f"model spec {s!r}: nothing after '{prefix}:'; expected {SPEC_HELP}")
            if prefix == "open_clip":
                # the checkpoint follows the last '@' (hub ids and names never contain '@')
                name, at, ckpt = rest.rpartition("@") if "@" in rest else (rest, "", "")
                out = {"backend": "open_clip", "name": name}
                if ckpt:
                    out["checkpoint"] = ckpt
            elif prefix == "hf":
                out = {"backend": "hf", "source": rest}
            else:
                out = {"backend": prefix, "checkpoint": rest}
        elif CytoModel.find_saved(s) is not None:
            out = {"backend": "saved", "path": str(Path(s).resolve())}
        elif Path(s).exists():
            raise ModelSpecError(f"{s}: a path but not a saved model (no cytoclip_model.json in it or in model/)")
        else:
            raise ModelSpecError(f"unknown model spec {s!r}; expected {SPEC_HELP}")
    else:
        raise ModelSpecError(f"model spec: expected a string, path or dict, got {type(spec).__name__}")
    out.update(overrides)
    if out["backend"] not in BACKENDS:
        raise ModelSpecError(f"model spec: unknown backend {out['backend']!r}; expected one of {sorted(BACKENDS)}")
    return out


def create_model(spec: str | os.PathLike | dict, device: str | torch.device = "cpu", pretrained: bool = True,
                 allow_download: bool | None = None, **overrides: Any) -> CytoModel:
    """Build any model of the study behind one interface (:class:`CytoModel`), in eval mode on ``device``.

    ``spec``: ``tiny`` | ``tiny-vit`` | ``hf:<dir or hub id>`` | ``open_clip:<name|hf-hub:..|dir>[@ckpt]`` |
    ``uni:<ckpt>`` | ``conch:<ckpt>`` | a saved model dir or run dir | a dict with ``backend``.
    ``pretrained=False`` builds the architecture with random (seeded) weights where that makes sense.
    Nothing is downloaded unless ``allow_download=True`` or env ``CYTOCLIP_ALLOW_DOWNLOAD=1``; absent weights
    raise :class:`~cytoclip.models.ModelWeightsNotFound`. ``overrides`` are backend options (e.g.
    ``image_size``, ``seed``); unknown ones raise :class:`~cytoclip.models.ModelSpecError`.
    """
    parsed = parse_spec(spec, **overrides)
    model = BACKENDS[parsed["backend"]](parsed, device=device, pretrained=pretrained, allow_download=allow_download)
    return model.eval()
