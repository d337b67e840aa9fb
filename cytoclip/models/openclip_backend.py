"""open_clip backends: the tiny from-scratch models (``tiny``, ``tiny-vit``) and ``open_clip:<name>[@ckpt]``
(built-in architectures, ``hf-hub:`` repos such as BiomedCLIP, local open_clip directories).

Models are built from their open_clip config with open_clip's own classes (``CLIP`` / ``CustomTextCLIP``);
hub ids for the config, the weights and an HF text tower are resolved to local files first, so nothing is
downloaded unless allowed.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Sequence

import torch

from cytoclip.io import read_json, write_json
from cytoclip.models.base import (
    OPENAI_MEAN,
    OPENAI_STD,
    CytoModel,
    ModelSpecError,
    hf_snapshot,
    load_module_safetensors,
    save_module_safetensors,
    weights_not_found,
)

CONFIG_DIR = Path(__file__).resolve().parent.parent / "resources" / "model_configs"
#: tiny backends -> open_clip config name in resources/model_configs
TINY_CONFIGS = {"tiny": "cytoclip-tiny", "tiny-vit": "cytoclip-tiny-vit"}
TINY_OPTIONS = {"image_size", "seed", "embed_dim", "context_length", "model_cfg"}
OPEN_CLIP_OPTIONS = {"image_size", "seed", "checkpoint", "name", "source"}
WEIGHTS_FILE = "open_clip_model.safetensors"  # open_clip's preferred name, so open_clip's local-dir: finds it
CONFIG_FILE = "open_clip_config.json"
TEXT_DIR = "text"  # HF text tower config + tokenizer of a saved model

_registered = False


def register_configs() -> None:
    """Register the packaged tiny configs with open_clip (idempotent), so ``open_clip.create_model`` knows them."""
    global _registered
    if not _registered:
        import open_clip

        open_clip.add_model_config(CONFIG_DIR)
        _registered = True


def _deep_update(base: dict, upd: dict) -> dict:
    for k, v in upd.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            _deep_update(base[k], v)
        else:
            base[k] = copy.deepcopy(v)
    return base


def fit_timm_input_size(module: torch.nn.Module, image_size) -> None:
    """Resize a timm image tower's input (and position embeddings) to ``image_size``, as open_clip does after
    loading weights: open_clip builds timm trunks at their default size whatever the config says."""
    from open_clip.timm_model import TimmModel

    size = tuple(image_size) if isinstance(image_size, (list, tuple)) else (int(image_size), int(image_size))
    visual = getattr(module, "visual", None)
    if isinstance(visual, TimmModel):
        current = getattr(getattr(visual.trunk, "patch_embed", None), "img_size", None)
        if current is not None and tuple(current) != size:
            visual.set_input_size(size)


def build_openclip_module(model_cfg: dict, seed: int = 0) -> torch.nn.Module:
    """Instantiate open_clip's ``CLIP`` (or ``CustomTextCLIP`` for HF/custom text towers) from a config dict,
    random-initialised under ``seed`` without disturbing the global RNG, at the config's image size.
    Never downloads."""
    from open_clip.model import CLIP, CustomTextCLIP

    cfg = copy.deepcopy(model_cfg)
    text_cfg = cfg.get("text_cfg", {})
    custom = bool(cfg.pop("custom_text", False)) or "hf_model_name" in text_cfg
    if "hf_model_name" in text_cfg:
        text_cfg["hf_model_pretrained"] = False  # weights come from the CLIP checkpoint, never the hub
    if "timm_model_name" in cfg.get("vision_cfg", {}):
        cfg["vision_cfg"]["timm_model_pretrained"] = False
    cls = CustomTextCLIP if custom else CLIP
    if "multimodal_cfg" in cfg:
        raise ModelSpecError("open_clip CoCa models (multimodal_cfg) are not supported by cytoclip.models")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        module = cls(**cfg)
    if cfg.get("vision_cfg", {}).get("image_size"):
        fit_timm_input_size(module, cfg["vision_cfg"]["image_size"])
    return module


def make_tokenizer(model_cfg: dict):
    """open_clip's tokenizer for a config: bundled ``SimpleTokenizer`` (no download) or ``HFTokenizer`` on a
    local directory named by ``text_cfg.hf_tokenizer_name``."""
    from open_clip.tokenizer import HFTokenizer, SimpleTokenizer

    text_cfg = model_cfg.get("text_cfg", {})
    ctx = int(text_cfg.get("context_length", 77))
    kwargs = dict(text_cfg.get("tokenizer_kwargs") or {})
    name = text_cfg.get("hf_tokenizer_name")
    if name:
        return HFTokenizer(str(name), context_length=ctx, tokenizer_mode=text_cfg.get("tokenizer_mode"),
                           local_files_only=True, **kwargs)
    return SimpleTokenizer(context_length=ctx, **kwargs)


def load_openclip_checkpoint(module: torch.nn.Module, path: Path, name: str = "") -> None:
    """Load an open_clip checkpoint (``.pt``/``.bin``/``.safetensors``, optionally ``{"state_dict": ...}`` with
    ``module.`` prefixes) strictly, with open_clip's own key conversions and position-embedding resizing, plus
    resampling of a timm tower's ``pos_embed`` when the model's image size differs from the checkpoint's."""
    from open_clip.convert import convert_state_dict
    from open_clip.factory import load_state_dict
    from open_clip.model import convert_to_custom_text_state_dict, resize_pos_embed, resize_text_pos_embed

    try:
        state = load_state_dict(str(path))
    except Exception as exc:
        raise ValueError(f"{path}: not a readable open_clip checkpoint ({exc})") from None
    state = convert_state_dict(module, state)
    if "positional_embedding" in state and not hasattr(module, "positional_embedding"):
        state = convert_to_custom_text_state_dict(state)
    for key in ("logit_scale", "logit_bias"):
        if key in state and getattr(module, key, None) is not None:
            state[key] = state[key].reshape(getattr(module, key).shape)
    own = module.state_dict()
    for key in [k for k in state if k.endswith("embeddings.position_ids") and k not in own]:
        del state[key]  # buffers that newer transformers versions no longer keep
    resize_pos_embed(state, module)
    resize_text_pos_embed(state, module)
    key = "visual.trunk.pos_embed"
    if key in state and key in own and state[key].shape != own[key].shape:
        from timm.layers import resample_abs_pos_embed

        trunk = module.visual.trunk
        prefix = 0 if getattr(trunk, "no_embed_class", False) else getattr(trunk, "num_prefix_tokens", 1)
        state[key] = resample_abs_pos_embed(state[key], new_size=list(trunk.patch_embed.grid_size),
                                            num_prefix_tokens=prefix)
    result = module.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(f"{path}: checkpoint does not match open_clip model {name!r}; missing keys "
                         f"{result.missing_keys[:5]}, unexpected keys {result.unexpected_keys[:5]}")


class OpenClipModel(CytoModel):
    """An open_clip ``CLIP``/``CustomTextCLIP`` module with its tokenizer and preprocessing."""

    format = "open_clip"

    def __init__(self, module, spec: dict, model_cfg: dict, preprocess_cfg: dict, text_dir: Path | None = None,
                 text_hub_id: str | None = None):
        size = model_cfg["vision_cfg"].get("image_size", 224)
        size = size[0] if isinstance(size, (list, tuple)) else size
        super().__init__(module, spec, size, preprocess_cfg.get("mean", OPENAI_MEAN),
                         preprocess_cfg.get("std", OPENAI_STD))
        self.model_cfg = model_cfg
        self.preprocess_cfg = dict(preprocess_cfg)
        self.text_dir = text_dir
        #: the hub id of an HF text tower (BiomedCLIP's BERT), kept for the open_clip config of a saved copy
        self.text_hub_id = text_hub_id
        self._tokenizer = make_tokenizer(model_cfg)
        self.context_length = int(model_cfg["text_cfg"].get("context_length", 77))

    def _image_features(self, images):
        return self.module.encode_image(images, normalize=False)

    def _text_features(self, tokens):
        return self.module.encode_text(tokens, normalize=False)

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        """open_clip tokenisation padded/truncated to the model's context length."""
        return self._tokenizer(self._check_texts(texts)).long()

    def _tower(self, param_name: str) -> str:
        if param_name.startswith("visual."):
            return "image"
        if param_name in ("logit_scale", "logit_bias"):
            return "shared"
        return "text"

    def _save_files(self, tmp: Path) -> dict:
        save_module_safetensors(self.module, tmp / WEIGHTS_FILE)
        text_dir = None
        if "hf_model_name" in self.model_cfg.get("text_cfg", {}):
            # an HF text tower needs its config and tokenizer files to rebuild offline; they go at the top level,
            # where open_clip's own `local-dir:` loader reads the tokenizer from
            self.module.text.config.save_pretrained(tmp)
            self._tokenizer.tokenizer.save_pretrained(tmp)
            text_dir = "."
        # save() writes into a temporary directory inside the target: its parent is where the model will live
        write_json(tmp / CONFIG_FILE, self.open_clip_config(tmp.parent))
        return {"weights": WEIGHTS_FILE, "config": CONFIG_FILE, "text_dir": text_dir,
                "text_hub_id": self.text_hub_id}

    def open_clip_config(self, directory: Path) -> dict:
        """``open_clip_config.json`` for a copy of this model in ``directory``, in the form open_clip's own
        ``create_model_and_transforms('local-dir:<directory>')`` accepts.

        Preprocessing: open_clip's ``resize_mode: longest`` with ``fill_color: 0`` (resize the longer side,
        pad with zeros to a square; cytoclip pads first, then resizes: the same up to interpolation at the
        border). An HF text tower's ``hf_model_name`` is its hub id when it came from the hub (open_clip finds
        its config in the Hugging Face cache, as for the base model), else the absolute path of ``directory``
        (which holds the tower's config.json): a relative path would depend on the working directory."""
        cfg = copy.deepcopy(self.model_cfg)
        text_cfg = cfg["text_cfg"]
        if "hf_model_name" in text_cfg:
            text_cfg["hf_model_name"] = self.text_hub_id or str(Path(directory).resolve())
            text_cfg["hf_tokenizer_name"] = self.text_hub_id or str(Path(directory).resolve())
        text_cfg.pop("hf_model_pretrained", None)
        cfg.get("vision_cfg", {}).pop("timm_model_pretrained", None)
        pre = {"mean": list(self.mean), "std": list(self.std), "size": self.image_size,
               "interpolation": "bicubic", "resize_mode": "longest", "fill_color": 0}
        return {"model_cfg": cfg, "preprocess_cfg": pre}

    @classmethod
    def _load(cls, path: Path, meta: dict, device) -> "OpenClipModel":
        conf = read_json(path / meta.get("config", CONFIG_FILE))
        if "model_cfg" not in conf:
            raise ModelSpecError(f"{path / CONFIG_FILE}: missing field 'model_cfg'")
        cfg = conf["model_cfg"]
        text_dir = None
        if meta.get("text_dir"):
            text_dir = path / meta["text_dir"]
            cfg["text_cfg"]["hf_model_name"] = str(text_dir)
            cfg["text_cfg"]["hf_tokenizer_name"] = str(text_dir)
        module = build_openclip_module(cfg)
        load_module_safetensors(module, path / meta.get("weights", WEIGHTS_FILE))
        pre = {"mean": meta.get("mean", OPENAI_MEAN), "std": meta.get("std", OPENAI_STD)}
        return cls(module.to(device), meta["spec"], cfg, pre, text_dir=text_dir,
                   text_hub_id=meta.get("text_hub_id"))


def _check_options(spec: dict, allowed: set[str], backend: str) -> None:
    unknown = set(spec) - allowed - {"backend"}
    if unknown:
        raise ModelSpecError(f"{backend}: unknown option(s) {sorted(unknown)}; accepted: {sorted(allowed)}")


def build_tiny(spec: dict, device="cpu", pretrained: bool = True, allow_download: bool | None = None) -> OpenClipModel:
    """``tiny`` / ``tiny-vit``: small open_clip CLIPs from the packaged configs, random-initialised under
    ``seed`` (there are no pretrained weights; ``pretrained`` is ignored). Options: ``image_size`` (default
    112), ``seed`` (0), ``embed_dim``, ``context_length``, ``model_cfg`` (dict deep-merged into the config)."""
    import open_clip

    backend = spec["backend"]
    _check_options(spec, TINY_OPTIONS, backend)
    register_configs()
    cfg = open_clip.get_model_config(TINY_CONFIGS[backend])
    if cfg is None:
        raise ModelSpecError(f"{backend}: config {TINY_CONFIGS[backend]}.json missing from {CONFIG_DIR}")
    _deep_update(cfg, spec.get("model_cfg") or {})
    if spec.get("image_size") is not None:
        cfg["vision_cfg"]["image_size"] = int(spec["image_size"])
    if spec.get("embed_dim") is not None:
        cfg["embed_dim"] = int(spec["embed_dim"])
    if spec.get("context_length") is not None:
        cfg["text_cfg"]["context_length"] = int(spec["context_length"])
    size = int(cfg["vision_cfg"]["image_size"])
    if cfg["vision_cfg"].get("patch_size") and size % int(cfg["vision_cfg"]["patch_size"]):
        raise ModelSpecError(f"{backend}: image_size {size} must be a multiple of the patch size "
                             f"{cfg['vision_cfg']['patch_size']}")
    if size < 64:
        raise ModelSpecError(f"{backend}: image_size {size} too small; expected >= 64 (e.g. 112 or 224)")
    seed = int(spec.get("seed", 0))
    resolved = {"backend": backend, "config": TINY_CONFIGS[backend], "image_size": size, "seed": seed,
                "embed_dim": int(cfg["embed_dim"]), "context_length": int(cfg["text_cfg"]["context_length"]),
                "model_cfg": cfg}
    module = build_openclip_module(cfg, seed=seed)
    return OpenClipModel(module.to(device), resolved, cfg, {"mean": OPENAI_MEAN, "std": OPENAI_STD})


def _localise_hf_text(cfg: dict, model: str, allow_download: bool) -> None:
    """Replace hub ids of an HF text tower (model and tokenizer) by local snapshot directories."""
    text_cfg = cfg.get("text_cfg", {})
    for key in ("hf_model_name", "hf_tokenizer_name"):
        name = text_cfg.get(key)
        if name and not Path(name).exists():
            text_cfg[key] = str(hf_snapshot(
                name, f"{model} (text tower {name})", allow_download,
                allow_patterns=["*.json", "*.txt", "*.model"]))  # config + tokenizer; weights come from CLIP ckpt


def _find_checkpoint(directory: Path) -> Path | None:
    for name in (WEIGHTS_FILE, "open_clip_pytorch_model.safetensors", "open_clip_pytorch_model.bin",
                 "open_clip_pytorch_model.pth", "model.safetensors", "pytorch_model.bin"):
        if (directory / name).is_file():
            return directory / name
    return None


def build_open_clip(spec: dict, device="cpu", pretrained: bool = True,
                    allow_download: bool | None = None) -> OpenClipModel:
    """``open_clip:<name | hf-hub:org/repo | local dir>[@<checkpoint path>]``.

    ``name`` is an open_clip architecture (e.g. ``ViT-B-16``) whose weights must be given with ``@path``;
    ``hf-hub:org/repo`` (e.g. BiomedCLIP) is read from the Hugging Face cache (config, weights, and the HF text
    tower's config/tokenizer) unless downloads are allowed; a local directory holds ``open_clip_config.json``
    and weights. ``pretrained=False`` builds the architecture with random weights (seeded by ``seed``).
    """
    import open_clip

    from cytoclip.models.base import downloads_allowed

    _check_options(spec, OPEN_CLIP_OPTIONS, "open_clip")
    allow = downloads_allowed(allow_download)
    name = spec.get("name")
    if not name:
        raise ModelSpecError("open_clip: spec needs 'name' (an open_clip model name, hf-hub:org/repo or a dir)")
    label = f"open_clip:{name}"
    checkpoint = Path(spec["checkpoint"]).expanduser() if spec.get("checkpoint") else None
    preprocess = {"mean": OPENAI_MEAN, "std": OPENAI_STD}
    if name.startswith("hf-hub:") or Path(name).expanduser().is_dir():
        if name.startswith("hf-hub:"):
            repo = name[len("hf-hub:"):]
            local = hf_snapshot(repo, label, allow, allow_patterns=["*.json", "*.txt", "*.safetensors", "*.bin"])
        else:
            local = Path(name).expanduser().resolve()
        conf_path = local / CONFIG_FILE
        if not conf_path.is_file():
            raise weights_not_found(label, [str(conf_path)], f"place {CONFIG_FILE} and the weights in {local}")
        conf = read_json(conf_path)
        if "model_cfg" not in conf:
            raise ModelSpecError(f"{conf_path}: missing field 'model_cfg'")
        cfg = conf["model_cfg"]
        preprocess.update({k: v for k, v in conf.get("preprocess_cfg", {}).items() if k in ("mean", "std")})
        if checkpoint is None and pretrained:
            checkpoint = _find_checkpoint(local)
            if checkpoint is None:
                raise weights_not_found(label, [str(local)], f"put open_clip_pytorch_model.bin in {local}")
    else:
        register_configs()
        cfg = open_clip.get_model_config(name)
        if cfg is None:
            raise ModelSpecError(f"{label}: unknown open_clip model name; known: {open_clip.list_models()[:12]} ...")
        if pretrained and checkpoint is None:
            raise weights_not_found(label, ["(no checkpoint given)"],
                                    f"name the weights file: open_clip:{name}@/path/to/checkpoint.pt")
    if pretrained and checkpoint is not None and not checkpoint.is_file():
        raise weights_not_found(label, [str(checkpoint)], "check the path after '@' in the spec")
    if spec.get("image_size") is not None:
        cfg["vision_cfg"]["image_size"] = int(spec["image_size"])
    hub_text = cfg.get("text_cfg", {}).get("hf_model_name")
    hub_text = hub_text if hub_text and not Path(hub_text).exists() else None
    _localise_hf_text(cfg, label, allow)
    seed = int(spec.get("seed", 0))
    module = build_openclip_module(cfg, seed=seed)
    if pretrained and checkpoint is not None:
        load_openclip_checkpoint(module, checkpoint, name)
    resolved = {"backend": "open_clip", "source": name, "checkpoint": str(checkpoint) if checkpoint else None,
                "pretrained": bool(pretrained and checkpoint), "seed": seed,
                "image_size": cfg["vision_cfg"].get("image_size")}
    resolved["model_cfg"] = json.loads(json.dumps(cfg, default=str))
    return OpenClipModel(module.to(device), resolved, cfg, preprocess, text_hub_id=hub_text)
