"""Torch datasets over a prepared dataset and the paper's image transform (Section III-E).

Whole-region crops are rarely square; the paper pads them to a square with zero-valued pixels (centred)
before the bicubic resize, so the model's own centre crop cannot cut part of the region away.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
from PIL import Image
from torch.utils.data import Dataset
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode


def to_rgb(img: Any) -> Image.Image:
    """An RGB PIL image from a PIL image of any mode or a uint8 array ``(H, W)``, ``(H, W, 3)``, ``(H, W, 4)``."""
    if isinstance(img, Image.Image):
        return img if img.mode == "RGB" else img.convert("RGB")
    if isinstance(img, np.ndarray):
        arr = img
        if arr.ndim == 2:
            arr = np.stack([arr] * 3, axis=-1)
        if arr.ndim != 3 or arr.shape[2] not in (3, 4):
            raise ValueError(f"image array: expected (H, W), (H, W, 3) or (H, W, 4), got shape {arr.shape}")
        if arr.dtype != np.uint8:
            raise ValueError(f"image array: expected dtype uint8, got {arr.dtype}")
        return Image.fromarray(np.ascontiguousarray(arr[..., :3]))
    raise TypeError(f"image: expected a PIL image or a uint8 numpy array, got {type(img).__name__}")


class ToRGB:
    """Transform form of :func:`to_rgb` (a class so it pickles into DataLoader workers)."""

    def __call__(self, img: Any) -> Image.Image:
        return to_rgb(img)

    def __repr__(self) -> str:
        return "ToRGB()"


def pad_to_square(img: Image.Image) -> Image.Image:
    """Pad ``img`` to a square of side max(width, height) with zeros (black), the image centred."""
    if not isinstance(img, Image.Image):
        raise TypeError(f"pad_to_square: expected a PIL.Image, got {type(img).__name__}")
    w, h = img.size
    if w == h:
        return img
    side = max(w, h)
    fill = 0 if len(img.getbands()) == 1 else (0,) * len(img.getbands())
    out = Image.new(img.mode, (side, side), fill)
    out.paste(img, ((side - w) // 2, (side - h) // 2))
    return out


class PadToSquare:
    """Transform form of :func:`pad_to_square` (a class so it pickles into DataLoader workers).

    The one implementation of the paper's zero padding: :mod:`cytoclip.models` uses it too.
    """

    def __call__(self, img: Image.Image) -> Image.Image:
        return pad_to_square(img)

    def __repr__(self) -> str:
        return "PadToSquare(fill=0)"


def model_transform(image_size: int, mean: Sequence[float], std: Sequence[float]) -> T.Compose:
    """Pad to square with zeros -> bicubic resize to ``image_size`` -> tensor -> normalise by mean/std."""
    if int(image_size) <= 0:
        raise ValueError(f"image_size: expected a positive number of pixels, got {image_size}")
    return T.Compose([
        PadToSquare(),
        T.Resize((int(image_size), int(image_size)), interpolation=InterpolationMode.BICUBIC),
        T.ToTensor(),
        T.Normalize(mean=list(mean), std=list(std)),
    ])


def load_manifest(dataset_dir: str | os.PathLike) -> pd.DataFrame:
    """Read ``<dataset_dir>/manifest.parquet`` with a clear error when it is missing."""
    path = Path(dataset_dir) / "manifest.parquet"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no manifest; expected a dataset made by `cytoclip prepare regions|tiles`")
    return pd.read_parquet(path)


class ImageTextDataset(Dataset):
    """Images of a prepared dataset with their captions and class indices.

    Items are ``(image, text, label_index)``: ``image`` after ``transform`` (default: a float tensor in [0, 1]
    of the image as stored), ``text`` = ``tokenize([caption])[0]`` when ``tokenize`` is given, else the index of
    the row's caption in :attr:`captions`; ``label_index`` indexes :attr:`class_names`.

    :attr:`class_names` are the sorted labels of the *whole* manifest (before the image-type/split filters), so
    the label index means the same class in the train and validation datasets; pass ``class_names`` to fix
    the order across datasets. :attr:`captions` are the sorted unique captions of the whole manifest.
    ``split`` selects rows by the manifest's ``split`` column, or by ``split_scheme`` recomputed with
    :func:`cytoclip.splits.assign_split` (``seed`` / ``val_fraction`` go with it).
    """

    def __init__(self, dataset_dir: str | os.PathLike, manifest: pd.DataFrame | None = None,
                 image_type: str | None = None, split: str | None = None, split_scheme: str | None = None,
                 transform: Callable | None = None, tokenize: Callable | None = None,
                 class_names: Sequence[str] | None = None, seed: int = 0, val_fraction: float = 0.2):
        self.dataset_dir = Path(dataset_dir)
        frame = load_manifest(self.dataset_dir) if manifest is None else manifest.copy()
        for col in ("path", "label", "caption"):
            if col not in frame.columns:
                raise ValueError(f"{self.dataset_dir}: manifest lacks column {col!r}")
        if class_names is None:
            class_names = sorted(frame["label"].astype(str).unique())
        self.class_names = list(class_names)
        self.captions = sorted(frame["caption"].astype(str).unique())
        if split_scheme is not None:
            from cytoclip.splits import assign_split

            frame["split"] = assign_split(frame, split_scheme, seed=seed, val_fraction=val_fraction)
        if image_type is not None:
            types = sorted(frame["image_type"].astype(str).unique()) if "image_type" in frame else []
            if image_type not in types:
                raise ValueError(f"{self.dataset_dir}: image_type {image_type!r} not in the manifest; "
                                 f"expected one of {types}")
            frame = frame[frame["image_type"] == image_type]
        if split is not None:
            if "split" not in frame.columns:
                raise ValueError(f"{self.dataset_dir}: manifest has no 'split' column; pass split_scheme")
            frame = frame[frame["split"] == split]
        self.frame = frame.reset_index(drop=True)
        class_index = {c: i for i, c in enumerate(self.class_names)}
        unknown = sorted(set(self.frame["label"].astype(str)) - set(class_index))
        if unknown:
            raise ValueError(f"{self.dataset_dir}: labels {unknown[:5]} are not in class_names")
        caption_index = {c: i for i, c in enumerate(self.captions)}
        # Plain numpy arrays: cheap to pickle into DataLoader worker processes.
        self._paths = np.array([str(self.dataset_dir / p) for p in self.frame["path"]], dtype=object)
        self._label_idx = np.array([class_index[c] for c in self.frame["label"].astype(str)], dtype=np.int64)
        self._caption_idx = np.array([caption_index[c] for c in self.frame["caption"].astype(str)],
                                     dtype=np.int64)
        self._caption = self.frame["caption"].astype(str).to_numpy()
        self.transform = transform if transform is not None else T.ToTensor()
        self.tokenize = tokenize

    def __len__(self) -> int:
        return len(self._paths)

    @property
    def labels(self) -> np.ndarray:
        """The label index of every item (same order as the dataset)."""
        return self._label_idx

    def load_image(self, index: int) -> Image.Image:
        """The stored image of item ``index`` as RGB (decoded with PIL; the error names the file)."""
        path = self._paths[index]
        try:
            with Image.open(path) as im:
                return im.convert("RGB")
        except (OSError, ValueError) as exc:
            raise OSError(f"{path}: cannot read image ({exc})") from None

    def __getitem__(self, index: int) -> tuple[Any, Any, int]:
        image = self.transform(self.load_image(index))
        if self.tokenize is not None:
            text = self.tokenize([self._caption[index]])[0]
        else:
            text = int(self._caption_idx[index])
        return image, text, int(self._label_idx[index])

    def __repr__(self) -> str:
        return (f"ImageTextDataset({str(self.dataset_dir)!r}, n={len(self)}, "
                f"classes={len(self.class_names)})")


__all__ = ["to_rgb", "ToRGB", "pad_to_square", "PadToSquare", "model_transform", "load_manifest", "ImageTextDataset"]
