"""The common model interface (:class:`CytoModel`), its errors, offline weight lookup and transforms.

Every backend (tiny open_clip models, Hugging Face CLIP, open_clip/BiomedCLIP, UNI, CONCH) is wrapped in a
:class:`CytoModel` subclass so training and evaluation code never branches on where a model came from.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cytoclip.data import ToRGB, model_transform  # the one home of the image transforms
from cytoclip.io import read_json, write_json

#: file in every saved model directory: backend format, resolved spec and preprocessing
MODEL_JSON = "cytoclip_model.json"
#: OpenAI CLIP normalisation (open_clip's and transformers' default for CLIP models)
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
#: ImageNet normalisation (timm ViTs such as UNI)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: CLIP's initial temperature, stored in log space: ln(1 / 0.07)
INIT_LOGIT_SCALE = float(np.log(1 / 0.07))
#: saved-directory format (``cytoclip_model.json`` field ``format``) -> the CytoModel subclass that loads it.
#: Filled by ``CytoModel.__init_subclass__`` as each backend module defines its class, so base needs no
#: import of the factory (the package's ``__init__`` imports every backend before any load can happen).
SAVED_FORMATS: dict[str, type["CytoModel"]] = {}


class ModelWeightsNotFound(FileNotFoundError):
    """A model's weights (or config/tokenizer files) are not on disk and downloading is not allowed."""


class ModelSpecError(ValueError):
    """A model spec string/dict is malformed or names an unknown backend or option."""


class TextTowerMissing(TypeError):
    """``encode_text``/``tokenize`` called on an image-only model (check ``model.has_text`` first)."""


# ----------------------------------------------------------------------------------------------------------
# offline-first weight lookup
# ----------------------------------------------------------------------------------------------------------

def downloads_allowed(allow_download: bool | None = None) -> bool:
    """Whether this call may download weights: the explicit argument wins, else env ``CYTOCLIP_ALLOW_DOWNLOAD=1``."""
    if allow_download is not None:
        return bool(allow_download)
    return os.environ.get("CYTOCLIP_ALLOW_DOWNLOAD", "").strip().lower() in {"1", "true", "yes"}


def hf_cache_dir() -> str:
    """The Hugging Face hub cache directory in effect (honours ``HF_HOME`` / ``HF_HUB_CACHE``)."""
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def weights_not_found(model: str, looked: Sequence[str], how: str, cause: BaseException | None = None,
                      allow_download: bool = False) -> ModelWeightsNotFound:
    """Build the standard error: names the model, every place looked, the HF cache and offline flag, and a fix."""
    offline = os.environ.get("HF_HUB_OFFLINE", "<unset>")
    lines = [
        f"{model}: weights not found.",
        "Looked in: " + "; ".join(str(p) for p in looked) + ".",
        f"Hugging Face cache: {hf_cache_dir()} (HF_HUB_OFFLINE={offline}); downloads "
        + ("were allowed but failed." if allow_download else
           "are disabled (pass allow_download=True or set CYTOCLIP_ALLOW_DOWNLOAD=1 to fetch)."),
        f"To supply the weights: {how}",
    ]
    if cause is not None:
        lines.append(f"Underlying error: {type(cause).__name__}: {str(cause).splitlines()[0] if str(cause) else ''}")
    return ModelWeightsNotFound("\n".join(lines))


def hf_snapshot(repo_id: str, model: str, allow_download: bool, allow_patterns: Sequence[str] | None = None,
                how: str | None = None) -> Path:
    """Local directory of a Hugging Face hub repo: from the cache, or downloaded only when allowed."""
    from huggingface_hub import snapshot_download

    try:
        path = snapshot_download(repo_id, local_files_only=not allow_download,
                                 allow_patterns=list(allow_patterns) if allow_patterns else None)
    except Exception as exc:  # huggingface_hub raises several types (LocalEntryNotFound, HTTP, auth)
        raise weights_not_found(
            model, [f"hf-hub:{repo_id} in the Hugging Face cache"],
            how or f"run `hf download {repo_id}` (huggingface_hub's command line) on a machine with network access "
                   f"(or copy the cache), or pass a local directory instead of the hub id",
            cause=exc, allow_download=allow_download) from None
    return Path(path)


# ----------------------------------------------------------------------------------------------------------
# transforms (paper III-E: pad to square with zeros, bicubic resize, the model's normalisation)
# ----------------------------------------------------------------------------------------------------------

def eval_transform(image_size: int, mean: Sequence[float], std: Sequence[float]) -> Callable:
    """The eval transform: :func:`cytoclip.data.model_transform` (pad to square with zeros, bicubic resize,
    normalise), preceded by :class:`~cytoclip.data.ToRGB` so uint8 arrays and non-RGB PIL images are accepted."""
    from torchvision import transforms as T

    return T.Compose([ToRGB(), model_transform(image_size, mean, std)])


def _flatten_compose(transform: Callable) -> list:
    from torchvision import transforms as T

    if isinstance(transform, T.Compose):
        return [step for t in transform.transforms for step in _flatten_compose(t)]
    return [transform]


def augmenting_transform(base: Callable) -> Callable:
    """Light augmentation within ``base``: random flips and mild brightness/contrast jitter (no crops, so a
    region is never cut away).

    The augmentation is applied after ``base``'s resize (just before its ``ToTensor``), on the small model-size
    image rather than the stored crop: the same result for flips, and several times cheaper for the jitter.
    """
    from torchvision import transforms as T

    augment = [T.RandomHorizontalFlip(), T.RandomVerticalFlip(), T.ColorJitter(brightness=0.1, contrast=0.1)]
    steps = _flatten_compose(base)
    at = next((i for i, step in enumerate(steps) if isinstance(step, T.ToTensor)), None)
    if at is None:  # an opaque preprocessing function: augment the input image instead
        return T.Compose([ToRGB(), *augment, base])
    return T.Compose(steps[:at] + augment + steps[at:])


# ----------------------------------------------------------------------------------------------------------
# the interface
# ----------------------------------------------------------------------------------------------------------

class CytoModel:
    """One interface over every backend.

    Attributes: ``module`` (the ``nn.Module`` to optimise), ``spec`` (resolved, JSON-serialisable),
    ``image_size``, ``mean``, ``std``, ``has_text``; properties ``logit_scale`` (learnable, log space),
    ``transform`` / ``train_transform`` and ``device``.
    Subclasses implement ``_image_features``, ``_text_features``, ``tokenize``, ``_tower``, ``_save_files``
    and ``_load``; ``format`` names the saved-directory layout.
    """

    format: ClassVar[str] = ""
    has_text: ClassVar[bool] = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("format"):  # a class that names its own saved format: register it as the loader
            other = SAVED_FORMATS.get(cls.format)
            if other is not None and other.__qualname__ != cls.__qualname__:
                raise TypeError(f"saved format {cls.format!r} is claimed by both {other.__qualname__} and "
                                f"{cls.__qualname__}")
            SAVED_FORMATS[cls.format] = cls

    def __init__(self, module: nn.Module, spec: dict, image_size: int, mean: Sequence[float],
                 std: Sequence[float]):
        self.module = module
        self.spec = dict(spec)
        self.image_size = int(image_size)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self._transform: Callable | None = None
        self._train_transform: Callable | None = None

    # -- features ------------------------------------------------------------------------------------------
    def _image_features(self, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} must implement _image_features")

    def _text_features(self, tokens: torch.Tensor) -> torch.Tensor:
        raise TextTowerMissing(f"{self.name} is image-only (has_text=False): it has no text encoder")

    def encode_image(self, images: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """Embed a batch of transformed images ``(B, 3, H, W)``; L2-normalised when ``normalize``."""
        if not isinstance(images, torch.Tensor) or images.ndim != 4:
            raise ValueError(f"{self.name}.encode_image: expected a (B, 3, H, W) tensor, got "
                             f"{getattr(images, 'shape', type(images).__name__)}")
        feats = self._image_features(images.to(self.device))
        return F.normalize(feats, dim=-1) if normalize else feats

    def encode_text(self, tokens: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """Embed a batch of token ids from :meth:`tokenize`; L2-normalised when ``normalize``.
        Image-only models raise :class:`TextTowerMissing`."""
        if not self.has_text:
            raise TextTowerMissing(f"{self.name} is image-only (has_text=False): it has no text encoder")
        feats = self._text_features(tokens.to(self.device))
        return F.normalize(feats, dim=-1) if normalize else feats

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        """Token ids ``(N, context_length)`` (LongTensor) for a list of strings."""
        raise TextTowerMissing(f"{self.name} is image-only (has_text=False): it has no tokenizer")

    @staticmethod
    def _check_texts(texts: Sequence[str] | str) -> list[str]:
        if isinstance(texts, str):
            texts = [texts]
        texts = list(texts)
        bad = [t for t in texts if not isinstance(t, str)]
        if bad:
            raise TypeError(f"tokenize: expected a list of str, got {type(bad[0]).__name__} ({bad[0]!r})")
        return texts

    # -- parameters and devices -------------------------------------------------------------------------------
    @property
    def logit_scale(self) -> nn.Parameter:
        """The learnable temperature in log space (CLIP: initialised to ln(1/0.07)); use ``.exp()``."""
        return self.module.logit_scale

    @property
    def name(self) -> str:
        """A short human-readable name (the spec's source or backend)."""
        return str(self.spec.get("source") or self.spec.get("backend"))

    @property
    def device(self) -> torch.device:
        """Device of the module's parameters."""
        return next(self.module.parameters()).device

    def parameters(self, recurse: bool = True) -> Iterator[nn.Parameter]:
        """The module's parameters (frozen ones included; filter on ``requires_grad`` for the optimiser)."""
        return self.module.parameters(recurse)

    def named_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        """The module's named parameters."""
        return self.module.named_parameters()

    def to(self, device: str | torch.device) -> "CytoModel":
        """Move the module to ``device``; returns self."""
        self.module.to(device)
        return self

    def train(self, mode: bool = True) -> "CytoModel":
        """Set training mode; returns self."""
        self.module.train(mode)
        return self

    def eval(self) -> "CytoModel":
        """Set eval mode; returns self."""
        self.module.eval()
        return self

    def autocast(self, dtype: torch.dtype | None = None):
        """Mixed-precision context for this model's device: bf16/fp16 autocast on CUDA, a no-op on CPU."""
        if self.device.type != "cuda":
            return contextlib.nullcontext()
        if dtype is None:
            dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast(device_type="cuda", dtype=dtype)

    def _tower(self, param_name: str) -> str:
        """Which tower a parameter belongs to: ``"image"``, ``"text"`` or ``"shared"`` (e.g. logit_scale)."""
        raise NotImplementedError

    def freeze(self, image: bool | None = None, text: bool | None = None) -> dict[str, int]:
        """Freeze (True) / unfreeze (False) / leave (None) each tower; ``logit_scale`` stays trainable.
        Returns the number of trainable parameters per tower afterwards."""
        wanted = {"image": image, "text": text}
        counts = {"image": 0, "text": 0, "shared": 0}
        for pname, p in self.module.named_parameters():
            tower = self._tower(pname)
            if wanted.get(tower) is not None:
                p.requires_grad_(not wanted[tower])
            if p.requires_grad:
                counts[tower] += p.numel()
        return counts

    # -- transforms -------------------------------------------------------------------------------------------
    @property
    def transform(self) -> Callable:
        """Eval preprocessing: pad to square with zeros, bicubic resize to ``image_size``, normalise."""
        if self._transform is None:
            self._transform = eval_transform(self.image_size, self.mean, self.std)
        return self._transform

    @property
    def train_transform(self) -> Callable:
        """:attr:`transform` preceded by light augmentation (flips, mild brightness/contrast jitter)."""
        if self._train_transform is None:
            self._train_transform = augmenting_transform(self.transform)
        return self._train_transform

    # -- persistence ------------------------------------------------------------------------------------------
    def _save_files(self, tmp: Path) -> dict:
        """Write weights + config/tokenizer files into ``tmp``; return extra entries for ``cytoclip_model.json``."""
        raise NotImplementedError

    @classmethod
    def _load(cls, path: Path, meta: dict, device: str | torch.device) -> "CytoModel":
        raise NotImplementedError

    def save(self, path: str | os.PathLike) -> Path:
        """Save weights (safetensors), tokenizer/config files and ``cytoclip_model.json`` into directory ``path``.

        Files are written into a temporary directory and moved in; ``cytoclip_model.json`` goes last, so a
        directory holding it is complete. The directory reloads offline with :meth:`load`.
        """
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".save-", dir=path))
        try:
            extra = self._save_files(tmp)
            for item in sorted(tmp.iterdir()):
                target = path / item.name
                if target.is_dir() and not target.is_symlink():
                    shutil.rmtree(target)
                os.replace(item, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        meta = {"format": self.format, "spec": self.spec, "image_size": self.image_size,
                "mean": list(self.mean), "std": list(self.std), "has_text": self.has_text, **extra}
        write_json(path / MODEL_JSON, meta)
        return path

    @staticmethod
    def find_saved(path: str | os.PathLike) -> Path | None:
        """The saved-model directory for ``path`` (itself or its ``model/`` subdirectory), or None."""
        path = Path(path)
        for cand in (path, path / "model"):
            if (cand / MODEL_JSON).is_file():
                return cand
        return None

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | torch.device = "cpu") -> "CytoModel":
        """Load a directory written by :meth:`save` (or a training run dir holding ``model/``), offline."""
        saved = cls.find_saved(path)
        if saved is None:
            raise FileNotFoundError(f"{path}: not a saved model directory (expected {MODEL_JSON} in it or in "
                                    f"its model/ subdirectory)")
        meta = read_json(saved / MODEL_JSON)
        fmt = meta.get("format")
        if fmt not in SAVED_FORMATS:
            raise ModelSpecError(f"{saved / MODEL_JSON}: field 'format' is {fmt!r}; expected one of "
                                 f"{sorted(SAVED_FORMATS)}")
        model = SAVED_FORMATS[fmt]._load(saved, meta, device)
        model.spec.setdefault("loaded_from", str(saved))
        return model.eval()

    def __repr__(self) -> str:
        n = sum(p.numel() for p in self.module.parameters())
        return (f"{type(self).__name__}(spec={self.spec.get('backend')!r}, image_size={self.image_size}, "
                f"has_text={self.has_text}, params={n / 1e6:.2f}M, device={self.device})")


def save_module_safetensors(module: nn.Module, path: Path) -> None:
    """Write a module's weights as safetensors (handles shared tensors, which ``save_file`` refuses)."""
    from safetensors.torch import save_model

    save_model(module, str(path))


def load_module_safetensors(module: nn.Module, path: Path, device: str | torch.device = "cpu") -> None:
    """Load safetensors weights strictly into ``module``; the error names the file and the mismatched keys."""
    from safetensors.torch import load_model

    if not path.is_file():
        raise FileNotFoundError(f"{path}: weights file not found")
    try:
        missing, unexpected = load_model(module, str(path), strict=False, device=str(device))
    except Exception as exc:
        raise ValueError(f"{path}: could not load weights ({exc})") from None
    if missing or unexpected:
        raise ValueError(f"{path}: weights do not match the model architecture; missing keys "
                         f"{sorted(missing)[:5]}, unexpected keys {sorted(unexpected)[:5]}")
