"""Tests of cytoclip.models.standins: stand-ins of the paper's models (the same families at tiny widths, at the
real input sizes and context lengths) load through the real loaders, train a step and are evaluated; the paper
profile points at them."""

from __future__ import annotations

import pytest
import torch

from cytoclip.models import create_model
from cytoclip.models.standins import REAL_SPECS, conch_available, use_standins, write_standins

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    root = tmp_path_factory.mktemp("standins")
    return root, write_standins(root, size="small", log=lambda *a: None)


#: name -> (image size, context length or None for image-only), as the real models
REAL_SHAPES = {"clip336": (336, 77), "clip224": (224, 77), "biomedclip": (224, 256), "uni": (224, None),
               "conch": (448, 128)}


def test_small_standins_load_with_the_real_loaders_at_real_sizes(small):
    root, specs = small
    assert set(specs) == set(REAL_SHAPES) - (set() if conch_available() else {"conch"})
    for name, spec in specs.items():
        size, context = REAL_SHAPES[name]
        m = create_model(spec)
        assert m.image_size == size, name
        img = m.encode_image(torch.zeros(1, 3, size, size))
        assert img.ndim == 2 and torch.allclose(img.norm(dim=-1), torch.ones(1), atol=1e-5)
        if context is None:
            assert not m.has_text
        else:
            tokens = m.tokenize(["Thalamus", "Basal nuclei"])
            assert tokens.shape == (2, context), name
            assert m.encode_text(tokens).shape == (2, img.shape[1])
    # the formats the real weights come in
    assert (root / "small" / "clip336" / "model.safetensors").is_file()
    assert (root / "small" / "biomedclip" / "open_clip_pytorch_model.bin").is_file()
    assert (root / "small" / "uni" / "pytorch_model.bin").is_file()


def test_standins_are_written_once(small):
    root, specs = small
    before = (root / "small" / "uni" / "pytorch_model.bin").stat().st_mtime_ns
    written = []
    assert write_standins(root, size="small", log=written.append) == specs
    assert written == [] and (root / "small" / "uni" / "pytorch_model.bin").stat().st_mtime_ns == before


def test_paper_profile_points_at_the_standins(tmp_path, monkeypatch):
    from cytoclip.study import load_study, resolve_params

    study = load_study("_config.yml")
    study.root = tmp_path  # write the stand-ins under a temporary study root
    specs = use_standins(study, "paper", tmp_path / "standins", size="small", log=lambda *a: None)
    assert study.paths["book"] == "standins/book"
    seen = set()
    for exp in study.experiments:
        p = resolve_params(study, exp, "paper")
        assert p["source"] == "synthetic" and p["atlas_profile"] == "smoke" and p["epochs"] == 1
        assert p["max_steps"] == 2  # a parameter of the pages, passed to every run (no side channel)
        assert p["runs_dir"] == str(tmp_path / "standins" / "runs")
        assert str(p["model"]) not in REAL_SPECS, (exp, p["model"])
        seen.add(str(p["model"]))
        assert all(str(v) not in REAL_SPECS or REAL_SPECS[str(v)] == "conch" and not conch_available()
                   for v in p["base_models"].values())
        assert p["output_dir"].startswith("standins/book/results/")
    # the paper's models: CLIP 336 by default, CLIP 224 and BiomedCLIP where the study says so
    assert {str(specs["clip336"]), str(specs["clip224"]), str(specs["biomedclip"])} <= seen
    assert resolve_params(study, "train_clip336", "paper")["image_size"] == 336
    assert resolve_params(study, "train_biomedclip224", "paper")["image_size"] == 224


def test_standins_train_a_step_and_evaluate(small, tmp_path, monkeypatch):
    """The code path of the paper profile: each text model trains (capped by ``max_steps``, as the pages' runs
    are under --stand-ins) and every model, image-only ones included, is evaluated."""
    from test_train import make_dataset

    from cytoclip.evaluate import evaluate
    from cytoclip.workflow import ensure_run

    root, specs = small
    dataset = make_dataset(tmp_path / "ds", n_train=4, n_val=2, n_classes=3)
    for name in ("clip336", "biomedclip"):
        size = REAL_SHAPES[name][0]
        run = ensure_run(log=lambda *a: None, dataset=str(dataset), run_dir=str(tmp_path / name), model=specs[name],
                         image_size=size, epochs=3, max_steps=1, batch_size=4, warmup_steps=0, num_workers=0,
                         device="cpu")
        import json

        config = json.loads((run / "config.json").read_text())
        assert config["max_steps"] == 1 and config["resolved"]["stops_at_step"] == 1
        assert (run / "model" / "cytoclip_model.json").is_file()
        res = evaluate(run, dataset, tmp_path / f"eval-{name}", n_boot=0, figures=False, errors=False)
        assert res["classification"]["accuracy"] is not None
    for name in [n for n in ("uni", "conch") if n in specs]:
        res = evaluate(specs[name], dataset, tmp_path / f"eval-{name}", n_boot=0, figures=False, errors=False)
        assert res["has_text"] == (name == "conch") and res["classification"] is not None
        assert (res["retrieval"]["text_to_image"] is None) == (name == "uni")
