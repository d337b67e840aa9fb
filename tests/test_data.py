"""Transforms (zero padding, bicubic resize) and the image-text dataset over a hand-made prepared dataset."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from cytoclip.data import ImageTextDataset, model_transform, pad_to_square


def test_pad_to_square_centres_with_zeros():
    img = Image.fromarray(np.full((20, 50, 3), 200, np.uint8))  # h=20, w=50
    out = np.asarray(pad_to_square(img))
    assert out.shape == (50, 50, 3)
    assert (out[:15] == 0).all() and (out[35:] == 0).all()  # 15 rows of zeros above and below
    assert (out[15:35] == 200).all()
    tall = np.asarray(pad_to_square(Image.fromarray(np.full((31, 10, 3), 9, np.uint8))))
    assert tall.shape == (31, 31, 3) and (tall[:, :10] == 0).all() and (tall[:, 10:20] == 9).all()
    square = Image.fromarray(np.ones((8, 8, 3), np.uint8))
    assert pad_to_square(square) is square
    with pytest.raises(TypeError, match="PIL.Image"):
        pad_to_square(np.zeros((2, 3, 3)))


def test_model_transform_shape_and_zero_padding():
    tf = model_transform(32, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    img = Image.fromarray(np.full((40, 160, 3), 255, np.uint8))
    x = tf(img)
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32
    # padded rows are zeros before normalisation: (0 - 0.5) / 0.25 = -2; the image rows are (1 - 0.5)/0.25 = 2
    assert torch.allclose(x[:, 0], torch.full((3, 32), -2.0))
    assert torch.allclose(x[:, 16], torch.full((3, 32), 2.0), atol=1e-4)
    with pytest.raises(ValueError, match="image_size"):
        model_transform(0, (0, 0, 0), (1, 1, 1))


def _dataset(tmp_path):
    rows = []
    for i, (label, split, t) in enumerate([("Pons", "train", "exact"), ("Amygdala", "train", "exact"),
                                           ("Pons", "val", "exact"), ("Thalamus", "val", "square224"),
                                           ("Amygdala", "train", "square224")]):
        rel = f"images/{t}/img{i}.png"
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((10 + i, 20, 3), 10 * i, np.uint8)).save(tmp_path / rel)
        rows.append({"path": rel, "image_type": t, "label": label, "caption": label if i != 2 else f"{label}, part 2",
                     "split": split, "specimen": 1, "section": i, "label_id": i})
    m = pd.DataFrame(rows)
    m.to_parquet(tmp_path / "manifest.parquet")
    return m


def test_dataset_items_classes_and_filters(tmp_path):
    _dataset(tmp_path)
    ds = ImageTextDataset(tmp_path, image_type="exact", split="train")
    assert ds.class_names == ["Amygdala", "Pons", "Thalamus"]  # whole manifest, sorted
    assert len(ds) == 2 and len(ds.frame) == 2
    img, text, label = ds[0]
    assert img.shape == (3, 10, 20)
    assert ds.captions[text] == "Pons" and ds.class_names[label] == "Pons"
    val = ImageTextDataset(tmp_path, split="val")
    assert sorted(val.frame["label"]) == ["Pons", "Thalamus"]
    assert "Pons, part 2" in val.captions
    with pytest.raises(ValueError, match="image_type 'tile'"):
        ImageTextDataset(tmp_path, image_type="tile")
    with pytest.raises(FileNotFoundError, match="manifest.parquet"):
        ImageTextDataset(tmp_path / "nowhere")


def test_dataset_with_tokenizer_in_dataloader_workers(tmp_path):
    _dataset(tmp_path)
    tok = _Tokenizer()
    ds = ImageTextDataset(tmp_path, transform=model_transform(16, (0.5,) * 3, (0.5,) * 3), tokenize=tok)
    loader = DataLoader(ds, batch_size=2, num_workers=2, shuffle=False)
    batches = list(loader)
    assert sum(b[0].shape[0] for b in batches) == 5
    images, tokens, labels = batches[0]
    assert images.shape == (2, 3, 16, 16) and tokens.shape == (2, 4)
    assert labels.tolist() == [ds.class_names.index("Pons"), ds.class_names.index("Amygdala")]


class _Tokenizer:
    """A picklable stand-in for open_clip's tokenizer: caption length and first bytes as ids."""

    def __call__(self, texts):
        return torch.tensor([[len(t)] + [ord(c) for c in t[:3]] for t in texts])


# ------------------------------------------------------------------------------------------- shards (streaming)

class _PixelHash:
    """Transform to a stable id of the decoded pixels (tiles are distinct images), picklable into workers."""

    def __call__(self, img):
        import hashlib

        return int.from_bytes(hashlib.sha256(np.asarray(img).tobytes()).digest()[:7], "little")


def _ids(items) -> list[int]:
    return [int(x[0]) for x in items]


@pytest.fixture(scope="module")
def tile_layouts(tmp_path_factory):
    """The same tiles of the mini atlas in both layouts: (files dataset, shards dataset with 5 samples a tar)."""
    from cytoclip.tiles import prepare_tiles
    from tests.test_regions import _write_mini_atlas

    root = tmp_path_factory.mktemp("layouts")
    atlas = _write_mini_atlas(root / "atlas")
    kw = dict(workers=1, max_tiles_per_section=12, keep_unlabelled=True)
    return (prepare_tiles(atlas, root / "files", **kw),
            prepare_tiles(atlas, root / "shards", format="shards", shard_size=5, **kw))


def test_sharded_rows_read_like_files(tile_layouts):
    files, shards = tile_layouts
    f = ImageTextDataset(files, transform=_PixelHash())  # every row (the mini atlas is mostly unlabelled)
    s = ImageTextDataset(shards, transform=_PixelHash())
    assert s.sharded and not f.sharded and len(s) == len(f) == 60
    assert [f[i] for i in range(len(f))] == [s[i] for i in range(len(s))]  # random access into the tars
    assert all(u.endswith(".tar") for u in s.shards()) and len(s.shards()) >= 5
    with pytest.raises(ValueError, match="not a sharded dataset"):
        f.shards()


def test_stream_order_split_workers_ranks_and_resume(tile_layouts):
    files, shards = tile_layouts
    f = ImageTextDataset(files, transform=_PixelHash())
    s = ImageTextDataset(shards, transform=_PixelHash())
    n, bs = len(s), 2
    batches = n // bs
    # no shuffling, one worker: the manifest's order, the per-file path's items
    plain = s.stream(seed=0, batch_size=bs, batches_per_epoch=batches, shuffle=False)
    assert list(plain) == [f[i] for i in range(batches * bs)]
    # a split streams only its samples (the other rows of the same tars are filtered out by key)
    train = ImageTextDataset(shards, split="train", transform=_PixelHash())
    t = list(train.stream(seed=0, batch_size=1, batches_per_epoch=len(train)))
    assert len(train.shards()) < len(s.shards()) and sorted(_ids(t)) == sorted(x[0] for x in train)

    def epoch(stream, e, workers, skip=0):
        stream.set_epoch(e, skip)
        loader = DataLoader(stream, batch_size=bs, num_workers=workers, collate_fn=lambda b: b)
        return [item for batch in loader for item in batch]

    one = s.stream(seed=3, batch_size=bs, batches_per_epoch=batches, shuffle_buffer=8)
    e0 = epoch(one, 0, 0)
    assert sorted(_ids(e0)) == sorted(_ids(plain)) and _ids(e0) != _ids(plain)  # all once, shuffled
    assert _ids(epoch(one, 1, 0)) != _ids(e0)  # reshuffled each epoch
    two = s.stream(seed=3, batch_size=bs, batches_per_epoch=batches, shuffle_buffer=8)
    full = epoch(two, 0, 2)
    assert len(full) == batches * bs and full == epoch(two, 0, 2)  # exact batch count, repeatable
    # resuming after 3 batches (workers rotated) continues the same sequence
    assert epoch(two, 0, 2, skip=3) == full[3 * bs:]
    # per-rank sharding: two ranks read disjoint shards
    ranks = [s.stream(seed=3, batch_size=bs, batches_per_epoch=2, rank=r, world_size=2) for r in (0, 1)]
    got = [set(_ids(epoch(r, 0, 0))) for r in ranks]
    assert len(got[0]) == len(got[1]) == 2 * bs and not got[0] & got[1]
    with pytest.raises(ValueError, match="shard"):
        s.stream(seed=0, batch_size=bs, batches_per_epoch=1, world_size=len(s.shards()) + 1)


def test_fused_tensor_normalisation_equals_totensor_then_normalize():
    """The loader's fused ToTensor + Normalize gives torchvision's values bit for bit (RGB, L and other modes),
    and the augmenting transform still finds its ToTensor step (the flips/jitter go just before it)."""
    from torchvision import transforms as T

    from cytoclip.data import ToNormalizedTensor
    from cytoclip.models.base import augmenting_transform

    rng = np.random.default_rng(3)
    mean, std = (0.481, 0.458, 0.408), (0.269, 0.261, 0.276)
    for shape, m, s in (((37, 53, 3), mean, std), ((21, 18), (0.5,), (0.3,)), ((9, 11, 4), mean + (0.1,), std + (0.2,))):
        img = Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8))
        ref = T.Normalize(m, s)(T.ToTensor()(img))
        got = ToNormalizedTensor(m, s)(img)
        assert got.dtype == torch.float32 and got.is_contiguous() and torch.equal(got, ref)
    img = Image.fromarray(rng.integers(0, 256, (40, 60, 3), dtype=np.uint8))
    old = T.Compose([T.Resize((32, 32), interpolation=T.InterpolationMode.BICUBIC), T.ToTensor(), T.Normalize(mean, std)])
    assert torch.equal(model_transform(32, mean, std)(pad_to_square(img)), old(pad_to_square(img)))
    steps = augmenting_transform(model_transform(32, mean, std)).transforms
    assert isinstance(steps[-1], ToNormalizedTensor) and isinstance(steps[-2], T.ColorJitter)
    with pytest.raises(ValueError, match="non-zero stds"):
        ToNormalizedTensor((0.5,), (0.0,))


def test_open_rgb_decodes_paths_and_bytes_alike_and_keeps_no_file_open(tmp_path):
    import io
    import os
    from pathlib import Path

    from cytoclip.data import open_rgb

    rng = np.random.default_rng(5)
    arr = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
    Image.fromarray(arr).save(tmp_path / "a.jpg", quality=90)
    Image.fromarray(arr[..., 0]).save(tmp_path / "g.png")
    frames = [Image.fromarray(arr), Image.fromarray(255 - arr)]
    frames[0].save(tmp_path / "m.tif", save_all=True, append_images=frames[1:])  # PIL keeps these files open
    for name in ("a.jpg", "g.png", "m.tif"):
        path = tmp_path / name
        with Image.open(path) as ref:
            expected = np.asarray(ref.convert("RGB"))
        from_path, from_bytes = open_rgb(path, name), open_rgb(io.BytesIO(path.read_bytes()), name)
        assert from_path.mode == "RGB" and np.array_equal(np.asarray(from_path), expected)
        assert np.array_equal(np.asarray(from_bytes), expected)
    fds = Path("/proc/self/fd")
    if fds.is_dir():
        held = [open_rgb(tmp_path / "m.tif", "m.tif") for _ in range(3)]
        assert not any(os.path.realpath(fds / fd) == str((tmp_path / "m.tif").resolve()) for fd in os.listdir(fds))
        del held
    (tmp_path / "bad.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(OSError, match="bad.jpg: cannot read image"):
        open_rgb(tmp_path / "bad.jpg", "bad.jpg")
    with pytest.raises(OSError, match="gone.jpg: cannot read image"):
        open_rgb(tmp_path / "gone.jpg", "gone.jpg")
