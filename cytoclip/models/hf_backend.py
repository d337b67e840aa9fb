"""``hf:<dir or hub id>``: Hugging Face transformers ``CLIPModel`` (the paper's OpenAI CLIP ViT-L/14 and
ViT-L/14-336), with its tokenizer and image-processor statistics. Loads with ``local_files_only=True`` unless
downloads are allowed."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from cytoclip.models.base import (
    OPENAI_MEAN,
    OPENAI_STD,
    CytoModel,
    ModelWeightsNotFound,
    downloads_allowed,
    weights_not_found,
)

HF_OPTIONS = {"source", "seed", "image_size"}


def looks_like_path(source: str) -> bool:
    """Whether an ``hf:`` source can only be a local path: hub ids are ``name`` or ``org/name`` (no leading
    ``/``, ``.`` or ``~``, at most one ``/``, no backslash)."""
    return (source.startswith(("/", ".", "~")) or source.count("/") > 1 or "\\" in source
            or Path(source).is_absolute())


def _features(out) -> torch.Tensor:
    # transformers >= 5 returns a model output whose pooler_output is the projected embedding; 4.x a tensor
    return out if isinstance(out, torch.Tensor) else out.pooler_output


class HFClipModel(CytoModel):
    """A transformers ``CLIPModel`` with its tokenizer."""

    format = "hf"

    def __init__(self, module, spec: dict, tokenizer, image_size: int, mean, std):
        super().__init__(module, spec, image_size, mean, std)
        self.tokenizer = tokenizer
        self.context_length = int(module.config.text_config.max_position_embeddings)

    def _image_features(self, images):
        return _features(self.module.get_image_features(pixel_values=images))

    def _text_features(self, tokens):
        # no attention mask: CLIP's causal mask already hides the padding after the end token, and the
        # OpenAI tokenizer pads with the end token itself, so a pad-based mask would hide the pooled token
        return _features(self.module.get_text_features(input_ids=tokens))

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        """The model's tokenizer, padded/truncated to its context length."""
        enc = self.tokenizer(self._check_texts(texts), padding="max_length", truncation=True,
                             max_length=self.context_length, return_tensors="pt")
        return enc["input_ids"].long()

    def _tower(self, param_name: str) -> str:
        if param_name.startswith(("vision_model.", "visual_projection.")):
            return "image"
        if param_name.startswith(("text_model.", "text_projection.")):
            return "text"
        return "shared"

    def _save_files(self, tmp: Path) -> dict:
        from transformers import CLIPImageProcessor

        self.module.save_pretrained(tmp, safe_serialization=True)
        self.tokenizer.save_pretrained(tmp)
        CLIPImageProcessor(size={"shortest_edge": self.image_size},
                           crop_size={"height": self.image_size, "width": self.image_size},
                           image_mean=list(self.mean), image_std=list(self.std)).save_pretrained(tmp)
        return {"weights": "model.safetensors"}

    @classmethod
    def _load(cls, path: Path, meta: dict, device) -> "HFClipModel":
        model = build_hf({"backend": "hf", "source": str(path)}, device=device, allow_download=False)
        model.spec = dict(meta["spec"])
        return model


def _image_stats(source: str, config, local_only: bool) -> tuple[int, tuple, tuple]:
    """Image size, mean and std from the saved image processor, else the config's size with CLIP statistics."""
    from transformers import CLIPImageProcessor

    size = int(config.vision_config.image_size)
    try:
        proc = CLIPImageProcessor.from_pretrained(source, local_files_only=local_only)
    except (OSError, ValueError):
        return size, OPENAI_MEAN, OPENAI_STD
    return size, tuple(proc.image_mean), tuple(proc.image_std)


def build_hf(spec: dict, device="cpu", pretrained: bool = True, allow_download: bool | None = None) -> HFClipModel:
    """Load ``transformers.CLIPModel`` + tokenizer from a local directory or a hub id (cache only unless
    downloads are allowed). ``pretrained=False`` builds the same architecture with random weights (``seed``).
    ``image_size`` (the study's setting) must equal the model's own input size."""
    from transformers import AutoTokenizer, CLIPConfig, CLIPModel

    unknown = set(spec) - HF_OPTIONS - {"backend"}
    if unknown:
        from cytoclip.models.base import ModelSpecError

        raise ModelSpecError(f"hf: unknown option(s) {sorted(unknown)}; accepted: {sorted(HF_OPTIONS)}")
    source = str(spec["source"])
    allow = downloads_allowed(allow_download)
    is_dir = Path(source).expanduser().is_dir()
    if not is_dir and looks_like_path(source):
        # a hub id is 'name' or 'org/name'; anything else is a local path that is not there (no hub lookup)
        raise ModelWeightsNotFound(f"hf:{source}: path not found ({Path(source).expanduser()} is not a "
                                   f"directory); a local path, so it is not looked up on the hub (hub ids are "
                                   f"'org/name'): check the path of the save_pretrained directory")
    if is_dir:
        source = str(Path(source).expanduser().resolve())
    local_only = is_dir or not allow
    label = f"hf:{spec['source']}"
    how = (f"copy a `save_pretrained` directory (config.json, model.safetensors, tokenizer files) and pass its "
           f"path, or run `hf download {spec['source']}`" if not is_dir else
           f"check that {source} holds config.json, model.safetensors/pytorch_model.bin and tokenizer files")
    looked = [source if is_dir else f"hf-hub:{source} in the Hugging Face cache"]
    try:
        config = CLIPConfig.from_pretrained(source, local_files_only=local_only)
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local_only)
        if pretrained:
            module = CLIPModel.from_pretrained(source, local_files_only=local_only)
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(int(spec.get("seed", 0)))
                module = CLIPModel(config)
    except OSError as exc:  # transformers signals every missing file / offline miss with OSError
        raise weights_not_found(label, looked, how, cause=exc, allow_download=allow) from None
    size, mean, std = _image_stats(source, config, local_only)
    if spec.get("image_size") is not None and int(spec["image_size"]) != size:
        # the position embeddings are learnt at the checkpoint's size: a study setting must match it
        from cytoclip.models.base import ModelSpecError

        raise ModelSpecError(f"{label}: image_size {spec['image_size']} asked for, but the model is "
                             f"{size} px (config.json vision_config.image_size); use a checkpoint of that size")
    resolved = {"backend": "hf", "source": spec["source"], "pretrained": bool(pretrained), "image_size": size}
    if not pretrained:
        resolved["seed"] = int(spec.get("seed", 0))
    return HFClipModel(module.to(device), resolved, tokenizer, size, mean, std)
