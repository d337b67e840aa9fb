"""Torch datasets over a prepared dataset and the paper's image transform (Section III-E).

Whole-region crops are rarely square; the paper pads them to a square with zero-valued pixels (centred)
before the bicubic resize, so the model's own centre crop cannot cut part of the region away.

One dataset abstraction for both layouts of a prepared dataset. :class:`ImageTextDataset` reads the manifest;
its rows name image files (``tiles/.../r_c.jpg``) or, for a dataset written with ``--format shards``,
members of WebDataset tars (``webdataset/<key>-<n>.tar#<sample>.jpg``), which it reads by random access
(validation, evaluation). :attr:`ImageTextDataset.sharded` tells which; :meth:`ImageTextDataset.stream` gives
the sequential reader of the same rows that training uses on shards (:class:`ShardStream`, the ``webdataset``
library's tar reader and shuffle buffer), with the same transform, seeded the same way per item.
"""

from __future__ import annotations

import functools
import io
import itertools
import multiprocessing
import os
import random
import tarfile
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch.utils.data import Dataset, IterableDataset
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


class ToNormalizedTensor(T.ToTensor):
    """``T.ToTensor()`` then ``T.Normalize(mean, std)``, fused: the same float32 values bit for bit, in two
    fewer passes over the image's float copy (the loader's per-image cost is memory traffic: ToTensor's
    permute-then-contiguous-then-divide and Normalize's clone were ~1.4 ms of a ~5 ms image on one core).

    A :class:`~torchvision.transforms.ToTensor` subclass, so transforms that insert PIL augmentation before the
    ``ToTensor`` step (:func:`cytoclip.models.base.augmenting_transform`) find it. RGB and L uint8 PIL images
    take the fused path (its operations are ToTensor's and Normalize's own, in their order, so each pixel's
    value is identical); any other input goes through ``to_tensor`` + ``normalize`` unchanged.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.mean, self.std = [float(m) for m in mean], [float(s) for s in std]
        if len(self.mean) != len(self.std) or any(s == 0 for s in self.std):
            raise ValueError(f"normalisation: expected as many means as non-zero stds, got mean={self.mean}, "
                             f"std={self.std}")
        self._mean = torch.tensor(self.mean, dtype=torch.float32).view(-1, 1, 1)
        self._std = torch.tensor(self.std, dtype=torch.float32).view(-1, 1, 1)

    def __call__(self, pic: Any) -> torch.Tensor:
        if isinstance(pic, Image.Image) and pic.mode in ("RGB", "L") and len(self.mean) == len(pic.getbands()):
            u = torch.from_numpy(np.array(pic).reshape(pic.height, pic.width, -1)).permute(2, 0, 1)  # writable
            out = torch.empty(u.shape, dtype=torch.float32)
            out.copy_(u)  # uint8 -> float32 and HWC -> CHW in one strided pass (exact: integers < 2**24)
            return out.div_(255).sub_(self._mean).div_(self._std)
        from torchvision.transforms import functional as F

        return F.normalize(F.to_tensor(pic), self.mean, self.std)

    def __repr__(self) -> str:
        return f"ToNormalizedTensor(mean={self.mean}, std={self.std})"


def model_transform(image_size: int, mean: Sequence[float], std: Sequence[float]) -> T.Compose:
    """Pad to square with zeros -> bicubic resize to ``image_size`` -> tensor -> normalise by mean/std (the last
    two fused: :class:`ToNormalizedTensor`, the values of ``T.ToTensor()`` + ``T.Normalize`` exactly)."""
    if int(image_size) <= 0:
        raise ValueError(f"image_size: expected a positive number of pixels, got {image_size}")
    return T.Compose([
        PadToSquare(),
        T.Resize((int(image_size), int(image_size)), interpolation=InterpolationMode.BICUBIC),
        ToNormalizedTensor(mean, std),
    ])


def seeded_call(fn: Callable[[], Any], seed: int, epoch: int, index: int) -> Any:
    """``fn()`` with torch's and Python's global RNGs seeded by ``(seed, epoch, index)`` alone, so the random
    augmentation of item ``index`` in ``epoch`` is the same whichever process, worker or layout (files or
    shards) loads it; the caller's RNG streams are left as they were."""
    item_seed = (int(seed) * 1_000_003 + int(epoch) * 10_007 + int(index)) % (2**63 - 1)
    # the CPU generator alone (what transforms draw from), saved and restored as torch.random.fork_rng(devices=[])
    # does, without its context-manager overhead; torch.manual_seed would also queue lazy seeding of every
    # accelerator backend, formatting a stack trace each time (~1 ms an item)
    gen = torch.default_generator
    torch_state, py_state = gen.get_state(), random.getstate()
    gen.manual_seed(item_seed)
    random.seed(item_seed)
    try:
        return fn()
    finally:
        gen.set_state(torch_state)
        random.setstate(py_state)


#: separates a tar from the member in a sharded manifest's ``path`` (``webdataset/S1_10-000000.tar#S1_10_3_4.jpg``)
MEMBER_SEP = "#"


@functools.lru_cache(maxsize=64)
def _tar_index(tar_path: str) -> dict[str, tuple[int, int]]:
    """``{member name: (data offset, size)}`` of a tar, read once per process (random access to its members)."""
    try:
        with tarfile.open(tar_path) as tar:
            return {m.name: (m.offset_data, m.size) for m in tar.getmembers() if m.isfile()}
    except (OSError, tarfile.TarError) as exc:
        raise OSError(f"{tar_path}: cannot read the WebDataset shard ({exc})") from None


def read_member(tar_path: str, member: str) -> bytes:
    """The bytes of ``member`` in the tar ``tar_path`` (uncompressed shards, as the preparation writes them)."""
    index = _tar_index(str(tar_path))
    if member not in index:
        raise OSError(f"{tar_path}: no member {member!r}; the manifest and its shards disagree (re-run prepare)")
    offset, size = index[member]
    with open(tar_path, "rb") as f:
        f.seek(offset)
        return f.read(size)


def open_rgb(source: Any, name: str) -> Image.Image:
    """Decode an image (a path, or a binary file object) to RGB with PIL; the error names ``name``. The one
    decoder of both layouts, so files and shards give the same pixels.

    A path is read whole first and decoded from memory, as a shard member is: no file stays open with the
    returned image (PIL keeps multi-frame files open after ``load``). An RGB image is returned as decoded,
    without ``convert``'s copy."""
    try:
        if isinstance(source, (str, os.PathLike)):
            with open(source, "rb") as f:
                source = io.BytesIO(f.read())
        im = Image.open(source)
        im.load()
        return im if im.mode == "RGB" else im.convert("RGB")
    except (OSError, ValueError) as exc:
        raise OSError(f"{name}: cannot read image ({exc})") from None


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
        #: True when the rows are members of WebDataset tars (``--format shards``), False for image files
        self.sharded = bool(len(self._paths)) and all(MEMBER_SEP in p and ".tar" + MEMBER_SEP in p
                                                      for p in self._paths)
        if self.sharded and "key" not in self.frame.columns:
            raise ValueError(f"{self.dataset_dir}: manifest rows point into tars but there is no 'key' column; "
                             "expected a dataset made by `cytoclip prepare ... --format shards`")

    def __len__(self) -> int:
        return len(self._paths)

    @property
    def labels(self) -> np.ndarray:
        """The label index of every item (same order as the dataset)."""
        return self._label_idx

    def load_image(self, index: int) -> Image.Image:
        """The stored image of item ``index`` as RGB (decoded with PIL; the error names the file)."""
        path = self._paths[index]
        if self.sharded:
            tar, member = path.split(MEMBER_SEP, 1)
            return open_rgb(io.BytesIO(read_member(tar, member)), path)
        return open_rgb(path, path)

    def item(self, index: int, image: Image.Image) -> tuple[Any, Any, int]:
        """The item of row ``index`` made from its decoded ``image``: ``(transform(image), text, label)``."""
        if self.tokenize is not None:
            text = self.tokenize([self._caption[index]])[0]
        else:
            text = int(self._caption_idx[index])
        return self.transform(image), text, int(self._label_idx[index])

    def __getitem__(self, index: int) -> tuple[Any, Any, int]:
        return self.item(index, self.load_image(index))

    def shards(self) -> list[str]:
        """The tars holding this dataset's rows (absolute paths), in manifest order; only those with a row of
        the selected image type and split, so a split reads whole shards and filters the rest by key."""
        if not self.sharded:
            raise ValueError(f"{self.dataset_dir}: not a sharded dataset (its manifest names image files)")
        return list(dict.fromkeys(p.split(MEMBER_SEP, 1)[0] for p in self._paths))

    def stream(self, seed: int, batch_size: int, batches_per_epoch: int, shuffle: bool = True,
               shuffle_buffer: int = 2000, rank: int = 0, world_size: int = 1) -> "ShardStream":
        """The sequential reader of these rows from their shards, for training (see :class:`ShardStream`)."""
        return ShardStream(self, seed=seed, batch_size=batch_size, batches_per_epoch=batches_per_epoch,
                           shuffle=shuffle, shuffle_buffer=shuffle_buffer, rank=rank, world_size=world_size)

    def __repr__(self) -> str:
        return (f"ImageTextDataset({str(self.dataset_dir)!r}, n={len(self)}, "
                f"classes={len(self.class_names)})")


class ShardStream(IterableDataset):
    """Training items of a sharded :class:`ImageTextDataset`, streamed from its tars with ``webdataset``.

    Per epoch *e* (:meth:`set_epoch`, read by loader workers through shared memory, so persistent workers
    follow it): the shard list is shuffled by ``(seed, e)``; rank *r* of *R* takes shards ``r::R`` and loader
    worker *w* of *W* takes ``w::W`` of those (the islices of ``wds.split_by_node`` / ``wds.split_by_worker``,
    done here with the trainer's own rank and a worker index that a mid-epoch resume can rotate); the worker
    reads them with ``wds.tarfile_to_samples``, keeps the samples of the dataset's rows (the split, by key),
    shuffles them in a ``wds.shuffle`` buffer of ``shuffle_buffer`` samples (its RNG seeded by ``(seed, e, r,
    w)``), then decodes and transforms each exactly as the per-file path does (:func:`open_rgb`,
    :meth:`ImageTextDataset.item`, augmentation seeded by ``(seed, e, row index)``: :func:`seeded_call`).

    Every rank yields exactly ``batches_per_epoch`` batches of ``batch_size`` per epoch (DDP needs equal step
    counts): worker *w* yields the batches *j* with ``j % W == w`` (the DataLoader's round-robin order), cycling
    through its shards again if they hold fewer samples. The order is a function of ``(seed, epoch, rank,
    world_size, W)``. A resume after ``skip`` batches of an epoch (:meth:`set_epoch`) drops each worker's
    finished samples before decoding and rotates the workers so the loader's first batch is batch ``skip``:
    exact when the loader has the same number of workers. ``shuffle=False``: shards and samples in manifest
    order (with one worker and one rank, the order of the per-file path without shuffling).
    """

    def __init__(self, dataset: ImageTextDataset, seed: int, batch_size: int, batches_per_epoch: int,
                 shuffle: bool = True, shuffle_buffer: int = 2000, rank: int = 0, world_size: int = 1):
        import webdataset  # noqa: F401  (fail here, in the main process, when it is missing)

        self.dataset, self.seed = dataset, int(seed)
        self.batch_size, self.batches_per_epoch = int(batch_size), int(batches_per_epoch)
        self.shuffle, self.shuffle_buffer = bool(shuffle), int(shuffle_buffer)
        self.rank, self.world_size = int(rank), int(world_size)
        self.urls = dataset.shards()
        if len(self.urls) < self.world_size:
            raise ValueError(f"{dataset.dataset_dir}: {len(self.urls)} shard(s) for {self.world_size} processes; "
                             "each process needs at least one (prepare with a smaller --shard-size)")
        self._row = {str(k): i for i, k in enumerate(dataset.frame["key"].astype(str))}
        # (epoch, batches already done in it): shared memory, so workers forked once see every epoch's values
        self._state = multiprocessing.get_context().RawArray("q", 2)

    @property
    def shards_per_rank(self) -> int:
        """The fewest shards a rank reads (the most loader workers that each get one)."""
        return len(self.urls) // self.world_size

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        """Stream ``epoch`` from its batch ``skip_batches`` on (set before each ``iter`` of the loader)."""
        self._state[0], self._state[1] = int(epoch), int(skip_batches)

    def __len__(self) -> int:
        return max(0, self.batches_per_epoch - int(self._state[1])) * self.batch_size

    def _rng(self, *parts: int) -> random.Random:
        # a string seed: stable across processes and runs (hash() of a tuple is too, but says less)
        return random.Random("-".join(map(str, (self.seed, *parts))))

    def _samples(self, epoch: int, worker: int, n_workers: int) -> Iterator[dict]:
        """Raw samples (bytes) of this rank and worker, one pass over its shards after another."""
        import webdataset as wds

        urls = list(self.urls)
        if self.shuffle:
            self._rng(epoch).shuffle(urls)
        mine = list(itertools.islice(itertools.islice(urls, self.rank, None, self.world_size), worker, None,
                                     n_workers))
        for n_pass in itertools.count():
            src = wds.tarfile_to_samples()(iter([{"url": u} for u in mine]))
            src = (s for s in src if s["__key__"] in self._row)
            if self.shuffle and self.shuffle_buffer > 1:
                rng = self._rng(epoch, self.rank, worker, n_pass)
                src = wds.shuffle(self.shuffle_buffer, min(self.shuffle_buffer, 100), rng=rng)(src)
            yielded = False
            for sample in src:
                yielded = True
                yield sample
            if not yielded:
                raise ValueError(f"{self.dataset.dataset_dir}: shards {mine} hold none of the dataset's rows")

    def __iter__(self) -> Iterator[tuple[Any, Any, int]]:
        info = torch.utils.data.get_worker_info()
        w, n_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        epoch, skip = int(self._state[0]), int(self._state[1])
        if skip >= self.batches_per_epoch:
            return
        logical = (w + skip) % n_workers  # the worker whose next batch is batch `skip + w` of the epoch
        done = len(range(logical, skip, n_workers)) * self.batch_size
        quota = len(range(logical, self.batches_per_epoch, n_workers)) * self.batch_size
        samples = itertools.islice(self._samples(epoch, logical, n_workers), done, quota)
        for sample in samples:
            index = self._row[sample["__key__"]]
            name = f"{sample.get('__url__')}#{sample['__key__']}"
            ext = next((e for e in ("jpg", "png", "jpeg") if e in sample), None)
            if ext is None:
                raise OSError(f"{name}: no jpg/png image in the sample (members {sorted(sample)})")
            data = sample[ext]
            yield seeded_call(lambda: self.dataset.item(index, open_rgb(io.BytesIO(data), name)),
                              self.seed, epoch, index)

    def __repr__(self) -> str:
        return (f"ShardStream({str(self.dataset.dataset_dir)!r}, shards={len(self.urls)}, rank={self.rank}/"
                f"{self.world_size}, shuffle_buffer={self.shuffle_buffer if self.shuffle else 0})")


__all__ = ["to_rgb", "ToRGB", "pad_to_square", "PadToSquare", "model_transform", "ToNormalizedTensor", "load_manifest",
           "ImageTextDataset", "ShardStream", "seeded_call", "read_member", "open_rgb", "MEMBER_SEP"]
