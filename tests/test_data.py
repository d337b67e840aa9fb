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
