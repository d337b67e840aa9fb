"""Image and text embeddings of a model (L2-normalised float32 arrays), with an optional on-disk cache."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cytoclip.io import atomic_path, fingerprint
from cytoclip.progress import tqdm

__all__ = ["model_fingerprint", "dataset_fingerprint", "embed_images", "embed_texts", "embed_arrays"]


def model_fingerprint(model: Any) -> str:
    """A short hash of the model's spec and weights (so a retrained run dir never reuses stale embeddings)."""
    h = hashlib.blake2b(digest_size=16)
    for name, tensor in sorted(model.module.state_dict().items()):
        h.update(name.encode())
        # raw bytes (reshape(-1) so 0-d tensors such as logit_scale can be viewed as bytes too)
        h.update(tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return fingerprint(getattr(model, "spec", None), repr(getattr(model, "transform", None)), h.hexdigest())


def dataset_fingerprint(dataset: Any) -> str | None:
    """A hash of a dataset's items (manifest file, selected paths, transform); None when it cannot be told.

    Works for :class:`cytoclip.data.ImageTextDataset` and any dataset with ``dataset_dir`` and a ``frame``
    holding a ``path`` column; other datasets need an explicit ``cache_key``.
    """
    frame, root = getattr(dataset, "frame", None), getattr(dataset, "dataset_dir", None)
    if frame is None or root is None or "path" not in getattr(frame, "columns", []):
        return None
    manifest = Path(root) / "manifest.parquet"
    return fingerprint(str(Path(root).resolve()), manifest if manifest.exists() else "no-manifest",
                       frame["path"].astype(str).tolist(), repr(getattr(dataset, "transform", None)))


def _first(item: Any) -> torch.Tensor:
    return item[0] if isinstance(item, (tuple, list)) else item


def _collate_images(batch: list) -> torch.Tensor:
    return torch.stack([_first(b) for b in batch])


@torch.inference_mode()
def embed_images(model: Any, dataset: Any, batch_size: int = 64, device: str | torch.device | None = None,
                 cache_dir: str | os.PathLike | None = None, cache_key: str | None = None, num_workers: int = 0,
                 desc: str = "embed images") -> np.ndarray:
    """L2-normalised image embeddings ``(len(dataset), d)`` as float32, in dataset order.

    ``dataset`` items are transformed image tensors or tuples whose first element is one (as
    :class:`cytoclip.data.ImageTextDataset` yields). With ``cache_dir`` the result is stored as
    ``img-<key>.npy`` where the key combines :func:`model_fingerprint` and :func:`dataset_fingerprint` (or
    ``cache_key``), and a later call with the same model and items loads it instead of recomputing.
    ``device`` defaults to the model's; mixed precision is used on CUDA through ``model.autocast()``.
    """
    if device is not None:
        model.to(device)
    cache_path = None
    if cache_dir is not None:
        key = cache_key or dataset_fingerprint(dataset)
        if key is None:
            raise ValueError(f"cache_dir given but {type(dataset).__name__} has no dataset_dir/frame to fingerprint; "
                             "pass cache_key")
        cache_path = Path(cache_dir) / f"img-{fingerprint(model_fingerprint(model), key)}.npy"
        if cache_path.exists():
            emb = np.load(cache_path)
            if len(emb) == len(dataset):
                return emb
    model.eval()
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                                         collate_fn=_collate_images)
    autocast = getattr(model, "autocast", None)
    out = []
    for images in tqdm(loader, desc=desc, unit="batch", leave=False):
        with autocast() if autocast else torch.autocast("cpu", enabled=False):
            feats = model.encode_image(images, normalize=True)
        out.append(feats.float().cpu().numpy())
    emb = np.concatenate(out) if out else np.zeros((0, 0), np.float32)
    if cache_path is not None:
        with atomic_path(cache_path) as tmp:
            np.save(tmp, emb)
    return emb


@torch.inference_mode()
def embed_texts(model: Any, texts: Sequence[str], batch_size: int = 256,
                device: str | torch.device | None = None) -> np.ndarray:
    """L2-normalised text embeddings ``(len(texts), d)`` (float32) through the model's own tokenizer."""
    if not getattr(model, "has_text", False):
        raise ValueError(f"{getattr(model, 'name', model)}: image-only model (has_text=False) cannot embed texts")
    if device is not None:
        model.to(device)
    texts = list(texts)
    autocast = getattr(model, "autocast", None)
    out = []
    for i in range(0, len(texts), batch_size):
        with autocast() if autocast else torch.autocast("cpu", enabled=False):
            feats = model.encode_text(model.tokenize(texts[i:i + batch_size]), normalize=True)
        out.append(feats.float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def _to_pil(arr: np.ndarray):
    from PIL import Image

    return Image.fromarray(np.ascontiguousarray(arr[..., :3]).astype(np.uint8))


@torch.inference_mode()
def embed_arrays(model: Any, arrays: Sequence[np.ndarray]) -> np.ndarray:
    """L2-normalised embeddings of RGB arrays (crops read from a section) through the model's eval transform."""
    batch = torch.stack([model.transform(_to_pil(a)) for a in arrays])
    autocast = getattr(model, "autocast", None)
    with autocast() if autocast else torch.autocast("cpu", enabled=False):
        return model.encode_image(batch, normalize=True).float().cpu().numpy()
