"""Tests of cytoclip.export: a trained run exported in its base library's format loads with that library alone
and gives the embeddings cytoclip gives (to 1e-5); the model card says what the model was trained on."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from cytoclip.models import create_model
from cytoclip.train import TrainConfig, train

torch.set_num_threads(1)
TEXTS = ["Thalamus", "Cerebellum", "basal nuclei of the forebrain"]


def _dataset(root):
    from test_train import make_dataset  # the trainer tests' synthetic texture dataset (labelled synthetic)

    return make_dataset(root, n_train=4, n_val=2, n_classes=3)


def _run(dataset, run_dir, model, image_size=None):
    return train(TrainConfig(dataset=str(dataset), run_dir=str(run_dir), model=model, image_size=image_size,
                             epochs=1, batch_size=4, lr=1e-4, warmup_steps=0, num_workers=0, seed=0, device="cpu",
                             max_steps=None))  # one epoch: 3 steps, then the validation record


def _images(size, seed=0):
    return torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _card(path):
    text = (path / "README.md").read_text()
    assert text.startswith("---\n")
    front, body = text[4:].split("\n---\n", 1)
    return yaml.safe_load(front), body


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    return _run(_dataset(root / "ds"), root / "run", "tiny", image_size=64)


def test_tiny_run_exports_to_open_clip_and_loads_with_open_clip_alone(tiny_run, tmp_path, monkeypatch):
    import open_clip

    from cytoclip.export import export_model

    out = export_model(tiny_run, tmp_path / "export")
    ours = create_model(tiny_run)
    monkeypatch.chdir(tmp_path)  # nothing depends on the working directory
    module, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{out}")
    tokenizer = open_clip.get_tokenizer(f"local-dir:{out}")
    module.eval()
    with torch.no_grad():
        assert torch.allclose(module.encode_image(_images(64), normalize=True), ours.encode_image(_images(64)),
                              atol=1e-5)
        assert torch.equal(tokenizer(TEXTS), ours.tokenize(TEXTS))
        assert torch.allclose(module.encode_text(tokenizer(TEXTS), normalize=True),
                              ours.encode_text(ours.tokenize(TEXTS)), atol=1e-5)
        # open_clip's own preprocessing of a square image matches cytoclip's transform
        img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (80, 80, 3), dtype=np.uint8))
        assert torch.allclose(preprocess(img), ours.transform(img), atol=0.05)
    # the export differs from the untrained model: the trained weights went out
    untrained = create_model("tiny", image_size=64)
    assert not torch.allclose(untrained.encode_image(_images(64)), ours.encode_image(_images(64)), atol=1e-3)

    meta, body = _card(out)
    config = json.loads((tiny_run / "config.json").read_text())
    labels = config["resolved"]["class_names"]
    assert meta["library_name"] == "open_clip" and meta["cytoclip"]["data"] == "synthetic atlas"
    assert "synthetic-data" in meta["tags"] and "base_model" not in meta  # tiny has no hub base model
    assert (out / "labels.txt").read_text().splitlines() == labels
    assert "**Data: synthetic atlas** (not DHARANI)" in body and all(label in body for label in labels)
    assert "| accuracy (zero-shot) |" in body and "| synthetic atlas |" in body
    assert "## Intended use" in body and "## Limits" in body


def test_export_refuses_an_existing_directory_and_image_only_models(tiny_run, tmp_path):
    from cytoclip.export import ExportError, export_model

    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "file").write_text("x")
    with pytest.raises(ExportError, match="exists and is not empty"):
        export_model(tiny_run, tmp_path / "taken")
    export_model(tiny_run, tmp_path / "taken", force=True)
    assert not (tmp_path / "taken" / "file").exists() and (tmp_path / "taken" / "open_clip_config.json").is_file()
    uni = {"backend": "uni", "arch": "vit_tiny_patch16_224", "timm_kwargs": {"img_size": 32}}
    create_model(uni, pretrained=False).save(tmp_path / "uni")
    with pytest.raises(ExportError, match="'timm' model"):
        export_model(tmp_path / "uni", tmp_path / "uni-export")
    assert not (tmp_path / "uni-export").exists()


@pytest.fixture(scope="module")
def hf_base(tmp_path_factory):
    """A small random-weight transformers CLIPModel written with save_pretrained (no download)."""
    from test_models import _write_clip_bpe
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    d = tmp_path_factory.mktemp("hf_base")
    _write_clip_bpe(d)
    CLIPTokenizer(vocab=str(d / "vocab.json"), merges=str(d / "merges.txt")).save_pretrained(d)
    cfg = CLIPConfig(
        text_config=dict(vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=16),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=48, patch_size=16),
        projection_dim=24)
    torch.manual_seed(0)
    CLIPModel(cfg).save_pretrained(d)
    return d


def test_hf_run_exports_with_save_pretrained_and_loads_with_transformers_alone(hf_base, tmp_path):
    from transformers import CLIPModel, CLIPProcessor

    from cytoclip.export import export_model

    run = _run(_dataset(tmp_path / "ds"), tmp_path / "run", f"hf:{hf_base}", image_size=48)
    out = export_model(run, tmp_path / "export")
    ours = create_model(run)
    model = CLIPModel.from_pretrained(out).eval()
    processor = CLIPProcessor.from_pretrained(out)
    with torch.no_grad():
        feats = model.get_image_features(pixel_values=_images(48))
        feats = feats if isinstance(feats, torch.Tensor) else feats.pooler_output
        assert torch.allclose(torch.nn.functional.normalize(feats, dim=-1), ours.encode_image(_images(48)), atol=1e-5)
        tokens = processor(text=TEXTS, padding="max_length", max_length=16, return_tensors="pt")["input_ids"]
        assert torch.equal(tokens, ours.tokenize(TEXTS))
        text = model.get_text_features(input_ids=tokens)
        text = text if isinstance(text, torch.Tensor) else text.pooler_output
        assert torch.allclose(torch.nn.functional.normalize(text, dim=-1), ours.encode_text(tokens), atol=1e-5)
        img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (60, 60, 3), dtype=np.uint8))
        pixels = processor(images=img, return_tensors="pt")["pixel_values"][0]
        assert pixels.shape == (3, 48, 48) and torch.allclose(pixels, ours.transform(img), atol=0.05)
    base = CLIPModel.from_pretrained(hf_base).eval()
    assert not torch.equal(base.visual_projection.weight, model.visual_projection.weight)  # the trained weights
    meta, body = _card(out)
    assert meta["library_name"] == "transformers" and "base_model" not in meta  # a local base, not a hub id
    assert f"hf:{hf_base}" in body and "CLIPModel.from_pretrained" in body


def test_cli_export_with_results(tiny_run, tmp_path, capsys):
    from cytoclip.cli import main

    results = {"data": "DHARANI", "dataset": "/data/prepared/dharani/regions", "split": "sections",
               "class_names": ["A", "B"],
               "classification": {"method": "zero-shot (class-name prompts)", "accuracy": 0.5,
                                  "f1_weighted": 0.25, "ci": {"accuracy": [0.4, 0.6]}},
               "retrieval": {"ks": [1], "image_to_image": {"recall_at_1": 0.125}, "text_to_image": None,
                             "image_to_text": None}}
    (tmp_path / "results.json").write_text(json.dumps(results))
    assert main(["export", str(tiny_run), str(tmp_path / "out"), "--results", str(tmp_path / "results.json")]) == 0
    assert "open_clip layout" in capsys.readouterr().out
    meta, body = _card(tmp_path / "out")
    assert meta["cytoclip"]["data"] == "DHARANI" and "synthetic-data" not in meta["tags"]
    assert "| accuracy (zero-shot (class-name prompts)) | 0.500 | 0.400–0.600 |" in body
    assert "image-to-image Recall@1" in body and "| DHARANI |" in body
    assert main(["export", str(tiny_run), str(tmp_path / "out")]) == 2  # exists: a one-line input error


def test_cli_max_steps_run_saves_its_model_and_exports(tmp_path, capsys):
    """`cytoclip train --max-steps` ends with model/ saved, like a finished run, and that run exports."""
    from cytoclip.cli import main

    dataset = _dataset(tmp_path / "ds")
    run = tmp_path / "run"
    assert main(["train", "--dataset", str(dataset), "--model", "tiny", "--image-size", "64", "--epochs", "5",
                 "--batch-size", "4", "--num-workers", "0", "--device", "cpu", "--run-dir", str(run),
                 "--max-steps", "1"]) == 0
    config = json.loads((run / "config.json").read_text())
    assert config["resolved"]["stops_at_step"] == 1 and config["resolved"]["total_steps"] == 15
    assert (run / "model" / "cytoclip_model.json").is_file()
    assert main(["export", str(run), str(tmp_path / "out")]) == 0
    meta, body = _card(tmp_path / "out")
    assert "(stopped at step 1)" in body and "No metrics recorded" in body
