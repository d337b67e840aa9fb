"""Pathology foundation models: UNI (image-only timm ViT-L/16) and CONCH (image-text CoCa, via the ``conch``
package). Both are gated on the Hugging Face hub (MahmoodLab/UNI, MahmoodLab/CONCH), so weights are always
read from a local file, directory or the HF cache; nothing is downloaded unless allowed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from cytoclip.models.base import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    INIT_LOGIT_SCALE,
    OPENAI_MEAN,
    OPENAI_STD,
    CytoModel,
    ModelSpecError,
    downloads_allowed,
    hf_snapshot,
    load_module_safetensors,
    save_module_safetensors,
    weights_not_found,
)

#: UNI's architecture as its model card defines it (timm)
UNI_ARCH = "vit_large_patch16_224"
UNI_TIMM_KWARGS = {"img_size": 224, "patch_size": 16, "init_values": 1e-5, "num_classes": 0,
                   "dynamic_img_size": True}
UNI_HOW = ("accept the terms of https://huggingface.co/MahmoodLab/UNI, then `huggingface-cli download "
           "MahmoodLab/UNI pytorch_model.bin` and pass uni:<path to pytorch_model.bin> (or its directory, or "
           "uni:hf-hub:MahmoodLab/UNI once it is in the HF cache)")
CONCH_HOW = ("accept the terms of https://huggingface.co/MahmoodLab/CONCH, then `huggingface-cli download "
             "MahmoodLab/CONCH pytorch_model.bin` and pass conch:<path to pytorch_model.bin>")
CONCH_INSTALL = "pip install git+https://github.com/mahmoodlab/CONCH"
CONCH_CONFIG = "conch_ViT-B-16"
WEIGHTS_FILE = "model.safetensors"


def resolve_weights_file(ref: str, model: str, filename: str, how: str, allow_download: bool) -> Path:
    """A weights file from ``ref``: a file path, a directory holding ``filename``, or ``hf-hub:org/repo`` in the
    HF cache (downloaded only when allowed). Raises :class:`ModelWeightsNotFound` naming where it looked."""
    if ref.startswith("hf-hub:"):
        local = hf_snapshot(ref[len("hf-hub:"):], model, allow_download, allow_patterns=[filename, "*.json", "*.yaml"],
                            how=how)
        candidates = [local / filename]
    else:
        p = Path(ref).expanduser()
        candidates = [p / filename] if p.is_dir() else [p]
    for c in candidates:
        if c.is_file():
            return c
    raise weights_not_found(model, [str(c) for c in candidates], how, allow_download=allow_download)


class ImageOnlyModule(nn.Module):
    """An image encoder plus a learnable ``logit_scale`` so image-only models fit the training interface."""

    def __init__(self, visual: nn.Module):
        super().__init__()
        self.visual = visual
        self.logit_scale = nn.Parameter(torch.tensor(INIT_LOGIT_SCALE))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Image features of the wrapped encoder."""
        return self.visual(images)


class TimmImageModel(CytoModel):
    """An image-only timm model (UNI): ``has_text`` is False, ``encode_text``/``tokenize`` raise."""

    format = "timm"
    has_text = False

    def _image_features(self, images):
        return self.module(images)

    def _tower(self, param_name: str) -> str:
        return "shared" if param_name == "logit_scale" else "image"

    def _save_files(self, tmp: Path) -> dict:
        save_module_safetensors(self.module, tmp / WEIGHTS_FILE)
        return {"weights": WEIGHTS_FILE, "arch": self.spec["arch"], "timm_kwargs": self.spec["timm_kwargs"]}

    @classmethod
    def _load(cls, path: Path, meta: dict, device) -> "TimmImageModel":
        import timm

        module = ImageOnlyModule(timm.create_model(meta["arch"], pretrained=False, **meta["timm_kwargs"]))
        load_module_safetensors(module, path / meta.get("weights", WEIGHTS_FILE))
        return cls(module.to(device), meta["spec"], meta["image_size"], meta["mean"], meta["std"])


def load_timm_state_dict(model: nn.Module, path: Path, label: str) -> None:
    """Load a timm ``pytorch_model.bin`` strictly; the error names the file and the mismatching keys."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"{path}: not a readable PyTorch state dict for {label} ({exc})") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a state dict (name -> tensor) for {label}, got {type(state).__name__}")
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(f"{path}: state dict does not match {label}; missing keys {result.missing_keys[:5]}, "
                         f"unexpected keys {result.unexpected_keys[:5]}")


def build_uni(spec: dict, device="cpu", pretrained: bool = True, allow_download: bool | None = None) -> TimmImageModel:
    """``uni:<pytorch_model.bin | dir | hf-hub:MahmoodLab/UNI>``: timm ``vit_large_patch16_224`` with UNI's
    kwargs (img_size 224, patch 16, init_values 1e-5, num_classes 0, dynamic_img_size), weights loaded
    strictly. Options ``arch`` / ``timm_kwargs`` select another timm ViT of the family (tests use a small one);
    ``pretrained=False`` keeps random (seeded) weights."""
    import timm

    allowed = {"checkpoint", "arch", "timm_kwargs", "seed"}
    unknown = set(spec) - allowed - {"backend"}
    if unknown:
        raise ModelSpecError(f"uni: unknown option(s) {sorted(unknown)}; accepted: {sorted(allowed)}")
    arch = spec.get("arch", UNI_ARCH)
    kwargs = {**UNI_TIMM_KWARGS, **(spec.get("timm_kwargs") or {})}
    label = f"uni:{spec.get('checkpoint', '')}"
    ckpt = None
    if pretrained:
        if not spec.get("checkpoint"):
            raise weights_not_found(label, ["(no checkpoint given)"], UNI_HOW)
        ckpt = resolve_weights_file(str(spec["checkpoint"]), label, "pytorch_model.bin", UNI_HOW,
                                    downloads_allowed(allow_download))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(spec.get("seed", 0)))
        visual = timm.create_model(arch, pretrained=False, **kwargs)  # never timm's own download
    if ckpt is not None:
        load_timm_state_dict(visual, ckpt, f"UNI ({arch})")
    size = kwargs.get("img_size", 224)
    size = size[0] if isinstance(size, (list, tuple)) else int(size)
    resolved = {"backend": "uni", "source": "UNI", "checkpoint": str(ckpt) if ckpt else None, "arch": arch,
                "timm_kwargs": kwargs, "pretrained": ckpt is not None, "image_size": size}
    return TimmImageModel(ImageOnlyModule(visual).to(device), resolved, size, IMAGENET_MEAN, IMAGENET_STD)


def _conch():
    try:
        from conch import open_clip_custom
    except ImportError:
        raise ImportError(f"conch: the CONCH package is not installed; install it with `{CONCH_INSTALL}` "
                          f"(it is not on PyPI)") from None
    return open_clip_custom


class ConchModel(CytoModel):
    """CONCH (CoCa ViT-B/16) through the ``conch`` package; the contrastive image/text embeddings.

    Written against CONCH's documented interface (``create_model_from_pretrained``, ``get_tokenizer``,
    ``tokenize``, ``encode_image(..., proj_contrast=True)``); not run here because the package and its gated
    weights are absent from this environment.
    """

    format = "conch"

    def __init__(self, module, spec: dict, image_size: int, mean, std):
        super().__init__(module, spec, image_size, mean, std)
        self._occ = _conch()
        self._tokenizer = self._occ.get_tokenizer()

    def _image_features(self, images):
        return self.module.encode_image(images, normalize=False, proj_contrast=True)

    def _text_features(self, tokens):
        return self.module.encode_text(tokens, normalize=False)

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        """CONCH's byte-level BPE tokenisation (context 128, last slot reserved for its CLS token)."""
        return self._occ.tokenize(self._tokenizer, self._check_texts(texts)).long()

    def _tower(self, param_name: str) -> str:
        if param_name.startswith("visual."):
            return "image"
        return "shared" if param_name == "logit_scale" else "text"

    def _save_files(self, tmp: Path) -> dict:
        save_module_safetensors(self.module, tmp / WEIGHTS_FILE)
        return {"weights": WEIGHTS_FILE, "conch_config": CONCH_CONFIG}

    @classmethod
    def _load(cls, path: Path, meta: dict, device) -> "ConchModel":
        occ = _conch()
        from conch.open_clip_custom.coca_model import CoCa

        cfg = json.loads((Path(occ.__file__).parent / "model_configs" / f"{meta['conch_config']}.json").read_text())
        cfg.pop("custom_text", None)
        module = CoCa(**cfg)
        load_module_safetensors(module, path / meta.get("weights", WEIGHTS_FILE))
        return cls(module.to(device), meta["spec"], meta["image_size"], meta["mean"], meta["std"])


def build_conch(spec: dict, device="cpu", pretrained: bool = True, allow_download: bool | None = None) -> ConchModel:
    """``conch:<pytorch_model.bin | dir | hf-hub:MahmoodLab/CONCH>`` via
    ``conch.open_clip_custom.create_model_from_pretrained("conch_ViT-B-16", checkpoint_path=...)``.
    Raises ImportError with install instructions when the ``conch`` package is absent."""
    occ = _conch()
    unknown = set(spec) - {"backend", "checkpoint"}
    if unknown:
        raise ModelSpecError(f"conch: unknown option(s) {sorted(unknown)}; accepted: ['checkpoint']")
    if not pretrained:
        raise ModelSpecError("conch: pretrained=False is not supported (CONCH is only used with its weights)")
    label = f"conch:{spec.get('checkpoint', '')}"
    if not spec.get("checkpoint"):
        raise weights_not_found(label, ["(no checkpoint given)"], CONCH_HOW)
    ckpt = resolve_weights_file(str(spec["checkpoint"]), label, "pytorch_model.bin", CONCH_HOW,
                                downloads_allowed(allow_download))
    module, _ = occ.create_model_from_pretrained(CONCH_CONFIG, checkpoint_path=str(ckpt), device=device)
    size = module.visual.image_size
    size = size[0] if isinstance(size, (list, tuple)) else int(size)
    mean = getattr(module.visual, "image_mean", None) or OPENAI_MEAN
    std = getattr(module.visual, "image_std", None) or OPENAI_STD
    resolved = {"backend": "conch", "source": "CONCH", "checkpoint": str(ckpt), "image_size": size}
    return ConchModel(module, resolved, size, mean, std)
