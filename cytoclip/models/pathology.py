"""Pathology foundation models: UNI (image-only timm ViT-L/16) and CONCH (image-text CoCa, via the ``conch``
package, ``conch-fork`` on PyPI). Both are gated on the Hugging Face hub (MahmoodLab/UNI, MahmoodLab/CONCH), so weights are always
read from a local file, directory or the HF cache; nothing is downloaded unless allowed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
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
UNI_HOW = ("accept the terms of https://huggingface.co/MahmoodLab/UNI, then `hf download "
           "MahmoodLab/UNI pytorch_model.bin` and pass uni:<path to pytorch_model.bin> (or its directory, or "
           "uni:hf-hub:MahmoodLab/UNI once it is in the HF cache)")
CONCH_HOW = ("accept the terms of https://huggingface.co/MahmoodLab/CONCH, then `hf download "
             "MahmoodLab/CONCH pytorch_model.bin` and pass conch:<path to pytorch_model.bin>")
CONCH_INSTALL = "pip install conch-fork"
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
        raise ImportError(f"conch: the CONCH package is not installed; install it with `{CONCH_INSTALL}` (the "
                          f"PyPI build of github.com/mahmoodlab/CONCH; or the extra: pip install "
                          f"'cytoclip[conch]')") from None
    return open_clip_custom


def conch_config(model_cfg: dict | None = None, name: str = CONCH_CONFIG) -> dict:
    """CONCH's CoCa config: the package's ``model_configs/<name>.json`` (the real CONCH, ViT-B/16 at 448 px,
    context 128), or ``model_cfg`` itself when given (tests and stand-ins use small ones)."""
    if model_cfg is not None:
        cfg = json.loads(json.dumps(model_cfg))
    else:
        occ = _conch()
        path = Path(occ.__file__).parent / "model_configs" / f"{name}.json"
        if not path.is_file():
            raise ModelSpecError(f"conch: config {path} not found in the installed conch package")
        cfg = json.loads(path.read_text())
    cfg.pop("custom_text", None)  # a flag of CONCH's factory, not a CoCa argument
    return cfg


def build_conch_module(cfg: dict, seed: int = 0) -> nn.Module:
    """CONCH's ``CoCa`` from a config, random-initialised under ``seed`` without disturbing the global RNG."""
    _conch()
    from conch.open_clip_custom.coca_model import CoCa

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        return CoCa(**json.loads(json.dumps(cfg)))


def load_conch_checkpoint(module: nn.Module, path: Path, label: str) -> None:
    """Load a CONCH ``pytorch_model.bin`` strictly (``torch.load(weights_only=True)``; ``state_dict`` and
    ``module.`` wrappers unwrapped; position embeddings resized as CONCH's own loader does). Unlike CONCH's
    ``strict=False`` loader, a checkpoint missing keys (e.g. every ``text.*`` key) is refused, naming them."""
    from conch.open_clip_custom.coca_model import resize_pos_embed

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"{path}: not a readable PyTorch state dict for {label} ({exc})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not state:
        raise ValueError(f"{path}: expected a state dict (name -> tensor) for {label}, got {type(state).__name__}")
    if all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    resize_pos_embed(state, module)
    result = module.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        towers = sorted({k.split(".")[0] for k in result.missing_keys})
        raise ValueError(f"{path}: state dict does not match {label}: {len(result.missing_keys)} missing keys "
                         f"(towers {towers}; e.g. {result.missing_keys[:5]}), {len(result.unexpected_keys)} "
                         f"unexpected keys {result.unexpected_keys[:5]}")


def conch_tokenize(tokenizer, texts: Sequence[str], context_length: int = 128) -> torch.Tensor:
    """CONCH's tokenisation through the current tokenizer API (``tokenizer(...)``; CONCH's own ``tokenize``
    calls ``batch_encode_plus``, which transformers 5 removed): ``context_length - 1`` byte-level BPE tokens
    with start/end, padded, plus one ``<pad>`` slot that CoCa's text tower replaces with its CLS token."""
    enc = tokenizer(list(texts), max_length=context_length - 1, add_special_tokens=True,
                    return_token_type_ids=False, truncation=True, padding="max_length", return_tensors="pt")
    return F.pad(enc["input_ids"], (0, 1), value=tokenizer.pad_token_id).long()


class ConchModel(CytoModel):
    """CONCH (CoCa ViT-B/16) through the ``conch`` package (``conch-fork`` on PyPI); the contrastive image/text
    embeddings (``encode_image(..., proj_contrast=True)``)."""

    format = "conch"

    def __init__(self, module, spec: dict, image_size: int, mean, std, model_cfg: dict):
        super().__init__(module, spec, image_size, mean, std)
        self._tokenizer = _conch().get_tokenizer()
        self.model_cfg = model_cfg
        self.context_length = int(model_cfg["text_cfg"].get("context_length", 128))

    def _image_features(self, images):
        return self.module.encode_image(images, normalize=False, proj_contrast=True)

    def _text_features(self, tokens):
        return self.module.encode_text(tokens, normalize=False)

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        """CONCH's byte-level BPE tokenisation (context 128, last slot reserved for its CLS token)."""
        return conch_tokenize(self._tokenizer, self._check_texts(texts), self.context_length)

    def _tower(self, param_name: str) -> str:
        if param_name.startswith("visual."):
            return "image"
        return "shared" if param_name == "logit_scale" else "text"

    def _save_files(self, tmp: Path) -> dict:
        save_module_safetensors(self.module, tmp / WEIGHTS_FILE)
        return {"weights": WEIGHTS_FILE, "conch_config": CONCH_CONFIG, "model_cfg": self.model_cfg}

    @classmethod
    def _load(cls, path: Path, meta: dict, device) -> "ConchModel":
        cfg = conch_config(meta.get("model_cfg"), meta.get("conch_config", CONCH_CONFIG))
        module = build_conch_module(cfg)
        load_module_safetensors(module, path / meta.get("weights", WEIGHTS_FILE))
        return cls(module.to(device), meta["spec"], meta["image_size"], meta["mean"], meta["std"], cfg)


def build_conch(spec: dict, device="cpu", pretrained: bool = True, allow_download: bool | None = None) -> ConchModel:
    """``conch:<pytorch_model.bin | dir | hf-hub:MahmoodLab/CONCH>``: CONCH's CoCa (``conch_ViT-B-16`` from the
    ``conch`` package, or ``model_cfg``), weights loaded strictly with ``torch.load(weights_only=True)``.
    ``pretrained=False`` keeps random (seeded) weights. Raises ImportError naming the installable package when
    ``conch`` is absent."""
    _conch()
    allowed = {"checkpoint", "model_cfg", "seed"}
    unknown = set(spec) - allowed - {"backend"}
    if unknown:
        raise ModelSpecError(f"conch: unknown option(s) {sorted(unknown)}; accepted: {sorted(allowed)}")
    label = f"conch:{spec.get('checkpoint', '')}"
    ckpt = None
    if pretrained:
        if not spec.get("checkpoint"):
            raise weights_not_found(label, ["(no checkpoint given)"], CONCH_HOW)
        ckpt = resolve_weights_file(str(spec["checkpoint"]), label, "pytorch_model.bin", CONCH_HOW,
                                    downloads_allowed(allow_download))
    cfg = conch_config(spec.get("model_cfg"))
    module = build_conch_module(cfg, seed=int(spec.get("seed", 0)))
    if ckpt is not None:
        load_conch_checkpoint(module, ckpt, "CONCH (CoCa)")
    size = cfg["vision_cfg"].get("image_size", 224)
    size = size[0] if isinstance(size, (list, tuple)) else int(size)
    resolved = {"backend": "conch", "source": "CONCH", "checkpoint": str(ckpt) if ckpt else None,
                "pretrained": ckpt is not None, "image_size": size}
    if spec.get("model_cfg") is not None:
        resolved["model_cfg"] = cfg
    # CONCH's factory sets OpenAI CLIP statistics on its image tower
    return ConchModel(module.to(device), resolved, size, OPENAI_MEAN, OPENAI_STD, cfg)
