"""Tests of cytoclip.models: every loader in its real on-disk format, with small random-initialised models."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from cytoclip.models import (
    MODEL_ZOO,
    CytoModel,
    ModelSpecError,
    ModelWeightsNotFound,
    TextTowerMissing,
    create_model,
    describe_model,
    model_zoo_table,
    parse_spec,
)
from cytoclip.models.openclip_backend import build_openclip_module

torch.set_num_threads(1)
B = 2  # batch size for every encode check


@pytest.fixture(scope="module")
def tiny():
    return create_model("tiny", image_size=64)


def _images(size: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(B, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# --------------------------------------------------------------------------------------------------------- tiny

def test_tiny_encode_shapes_normalisation_and_logit_scale(tiny):
    img = tiny.encode_image(_images(64))
    tokens = tiny.tokenize(["Thalamus", "Cerebral cortex"])
    txt = tiny.encode_text(tokens)
    assert tokens.dtype == torch.long and tokens.shape == (B, tiny.spec["context_length"])
    assert img.shape == txt.shape == (B, tiny.spec["embed_dim"])
    assert torch.allclose(img.norm(dim=-1), torch.ones(B), atol=1e-5)
    assert torch.allclose(txt.norm(dim=-1), torch.ones(B), atol=1e-5)
    raw = tiny.encode_image(_images(64), normalize=False)
    assert not torch.allclose(raw.norm(dim=-1), torch.ones(B))
    assert isinstance(tiny.logit_scale, torch.nn.Parameter) and tiny.logit_scale.requires_grad
    assert tiny.logit_scale.item() == pytest.approx(math.log(1 / 0.07), abs=1e-5)
    # the default image tower is open_clip's ModifiedResNet (BatchNorm): of the small towers tried on the demo
    # atlas it is the one that learns the regions in the CPU budget (README, "The tiny model")
    from open_clip.modified_resnet import ModifiedResNet
    assert isinstance(tiny.module.visual, ModifiedResNet)
    json.dumps(tiny.spec)  # the resolved spec is JSON-serialisable


def test_tiny_default_size_and_vit_variant():
    m = create_model("tiny")
    assert m.image_size == 112 and m.encode_image(_images(112)).shape == (B, 128)
    v = create_model("tiny-vit", image_size=64)
    assert v.module.visual.transformer.width == 192 and len(v.module.visual.transformer.resblocks) == 6
    assert v.encode_image(_images(64)).shape == (B, 128)


def test_tiny_seeded_init():
    a, b, c = (create_model("tiny", image_size=64, seed=s) for s in (3, 3, 4))
    assert _same_weights(a.module, b.module)
    assert not _same_weights(a.module, c.module)


def test_tiny_save_load_round_trip_identical(tiny, tmp_path):
    tiny.save(tmp_path / "run" / "model")
    files = {p.name for p in (tmp_path / "run" / "model").iterdir()}
    assert {"cytoclip_model.json", "open_clip_model.safetensors", "open_clip_config.json"} <= files
    assert not any(name.startswith(".") for name in files)  # no temporary leftovers
    images, tokens = _images(64), tiny.tokenize(["Pons", "Medulla"])
    for loaded in (CytoModel.load(tmp_path / "run" / "model"), create_model(tmp_path / "run"),
                   create_model(str(tmp_path / "run" / "model"))):
        assert loaded.spec["backend"] == "tiny" and loaded.image_size == 64
        assert torch.equal(loaded.encode_image(images), tiny.encode_image(images))
        assert torch.equal(loaded.encode_text(tokens), tiny.encode_text(tokens))


def test_transform_pads_to_square_with_zeros(tiny):
    img = np.full((20, 40, 3), 255, dtype=np.uint8)  # wide white image: rows above/below become black
    x = tiny.transform(img)
    assert x.shape == (3, 64, 64)
    mean, std = torch.tensor(tiny.mean)[:, None], torch.tensor(tiny.std)[:, None]
    assert torch.allclose(x[:, 0, :], (0 - mean) / std, atol=1e-4)  # top row: zero padding
    assert torch.allclose(x[:, 32, :], (1 - mean) / std, atol=1e-2)  # centre row: the white image
    assert tiny.train_transform(img).shape == (3, 64, 64)


def test_freeze_towers(tiny):
    counts = tiny.freeze(image=True)
    assert counts["image"] == 0 and counts["text"] > 0 and counts["shared"] == 1
    assert all(not p.requires_grad for p in tiny.module.visual.parameters())
    assert tiny.logit_scale.requires_grad
    counts = tiny.freeze(image=False, text=True)
    assert counts["image"] > 0 and counts["text"] == 0
    tiny.freeze(text=False)
    assert all(p.requires_grad for p in tiny.parameters())


def test_bad_specs_raise_clear_errors(tmp_path):
    with pytest.raises(ModelSpecError, match="unknown model spec 'nonsense'"):
        create_model("nonsense")
    with pytest.raises(ModelSpecError, match=r"unknown option\(s\) \['widht'\]"):
        create_model("tiny", widht=3)
    with pytest.raises(ModelSpecError, match="nothing after 'hf:'"):
        parse_spec("hf:")
    with pytest.raises(ModelSpecError, match="not a saved model"):
        create_model(tmp_path)
    assert parse_spec("open_clip:hf-hub:org/repo@/w/ck.pt") == {
        "backend": "open_clip", "name": "hf-hub:org/repo", "checkpoint": "/w/ck.pt"}


# ----------------------------------------------------------------------------------------------------- HF CLIP

def _write_clip_bpe(directory):
    """open_clip's bundled CLIP BPE written as the vocab.json/merges.txt an HF CLIPTokenizer reads."""
    from open_clip.tokenizer import SimpleTokenizer

    from cytoclip.models.standins import write_clip_tokenizer

    write_clip_tokenizer(directory)
    return SimpleTokenizer()


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    d = tmp_path_factory.mktemp("hf_clip")
    _write_clip_bpe(d)
    tok = CLIPTokenizer(vocab=str(d / "vocab.json"), merges=str(d / "merges.txt"))
    cfg = CLIPConfig(
        text_config=dict(vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=16),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=16),
        projection_dim=24)
    torch.manual_seed(0)
    CLIPModel(cfg).save_pretrained(d)
    tok.save_pretrained(d)
    return d


def test_hf_clip_from_save_pretrained_dir(hf_dir, tmp_path):
    from open_clip.tokenizer import SimpleTokenizer

    m = create_model(f"hf:{hf_dir}")
    assert m.image_size == 32 and m.has_text
    tokens = m.tokenize(["thalamus", "basal nuclei"])
    # same BPE as open_clip's tokenizer, padded to the model's 16 positions
    assert tokens.shape == (B, 16)
    expected = SimpleTokenizer(context_length=16)(["thalamus", "basal nuclei"])
    assert torch.equal(tokens[0, :4], expected[0, :4]) and torch.equal(tokens[1, :6], expected[1, :6])
    assert (tokens[0, 4:] == 49407).all()  # HF's CLIP tokenizer pads with the end token
    img, txt = m.encode_image(_images(32)), m.encode_text(tokens)
    assert img.shape == txt.shape == (B, 24)
    assert torch.allclose(img.norm(dim=-1), torch.ones(B), atol=1e-5)
    assert m.logit_scale.item() == pytest.approx(math.log(1 / 0.07), abs=1e-4)
    m.save(tmp_path / "saved")
    again = create_model(tmp_path / "saved")
    assert torch.equal(again.encode_image(_images(32)), img)
    assert torch.equal(again.encode_text(tokens), txt)
    assert again.spec["source"] == str(hf_dir)


def test_hf_accepts_the_study_image_size_when_it_is_the_models(hf_dir):
    # the paper profile passes image_size (336 / 224) with hf: models, as the trainer does for every model
    assert create_model(f"hf:{hf_dir}", image_size=32).image_size == 32
    with pytest.raises(ModelSpecError, match=r"image_size 64 asked for, but the model is 32 px"):
        create_model(f"hf:{hf_dir}", image_size=64)


def test_hf_missing_weights_name_cache_and_offline_flag(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("CYTOCLIP_ALLOW_DOWNLOAD", raising=False)
    with pytest.raises(ModelWeightsNotFound) as err:
        create_model("hf:cytoclip-test/absent-clip")
    msg = str(err.value)
    assert "hf:cytoclip-test/absent-clip" in msg and "HF_HUB_OFFLINE=1" in msg
    # current huggingface_hub ships `hf`, no longer `huggingface-cli`
    assert "`hf download cytoclip-test/absent-clip`" in msg and "huggingface-cli" not in msg
    assert isinstance(err.value, FileNotFoundError)


@pytest.mark.parametrize("source", ["/nowhere/clip-vit-large-patch14-336", "./typo/clip", "~/no/such/clip",
                                    "models/openai/clip-vit-large-patch14"])
def test_hf_mistyped_local_path_is_not_looked_up_on_the_hub(source, monkeypatch):
    import transformers

    def no_hub(*args, **kwargs):  # a path must never reach the hub loaders
        raise AssertionError(f"looked up on the hub: {args}")

    monkeypatch.setattr(transformers.CLIPConfig, "from_pretrained", no_hub)
    with pytest.raises(ModelWeightsNotFound) as err:
        create_model(f"hf:{source}")
    msg = str(err.value)
    assert msg.startswith(f"hf:{source}: path not found") and "\n" not in msg
    assert "Hugging Face cache" not in msg


# ----------------------------------------------------------------------------------------------- open_clip

def _tiny_cfg() -> dict:
    from cytoclip.models.openclip_backend import register_configs
    import open_clip

    register_configs()
    cfg = open_clip.get_model_config("cytoclip-tiny")
    cfg["vision_cfg"]["image_size"] = 64
    return cfg


def test_open_clip_name_with_checkpoint(tmp_path):
    cfg = _tiny_cfg()
    ref = build_openclip_module(cfg, seed=7)
    torch.save({"state_dict": {f"module.{k}": v for k, v in ref.state_dict().items()}}, tmp_path / "ep.pt")
    m = create_model(f"open_clip:cytoclip-tiny@{tmp_path / 'ep.pt'}", image_size=64)
    assert _same_weights(m.module, ref)
    with pytest.raises(ModelWeightsNotFound, match="ep_missing.pt"):
        create_model(f"open_clip:cytoclip-tiny@{tmp_path / 'ep_missing.pt'}")
    with pytest.raises(ModelWeightsNotFound, match="no checkpoint given"):
        create_model("open_clip:ViT-B-16")


def _write_biomedclip_like(root, bert_ref: str):
    """A BiomedCLIP-shaped open_clip directory: timm ViT image tower + HF BERT text tower, random weights."""
    from transformers import BertConfig, BertTokenizer

    bert = root / "bert"
    bert.mkdir(parents=True)
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "thalamus", "basal", "nuclei", "cortex", "pons"]
    (bert / "vocab.txt").write_text("\n".join(words) + "\n")
    BertTokenizer(str(bert / "vocab.txt")).save_pretrained(bert)
    BertConfig(vocab_size=len(words), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
               intermediate_size=64, max_position_embeddings=32).save_pretrained(bert)
    model_cfg = {
        "embed_dim": 16,
        "vision_cfg": {"timm_model_name": "vit_tiny_patch16_224", "timm_model_pretrained": False,
                       "timm_pool": "", "timm_proj": "linear", "image_size": 32},
        "text_cfg": {"hf_model_name": bert_ref, "hf_tokenizer_name": bert_ref, "hf_proj_type": "mlp",
                     "hf_pooler_type": "cls_last_hidden_state_pooler", "context_length": 12},
    }
    local_cfg = json.loads(json.dumps(model_cfg).replace(bert_ref, str(bert)))
    module = build_openclip_module(local_cfg, seed=1)
    repo = root / "repo"
    repo.mkdir()
    (repo / "open_clip_config.json").write_text(json.dumps({
        "model_cfg": model_cfg, "preprocess_cfg": {"mean": [0.48145466, 0.4578275, 0.40821073],
                                                    "std": [0.26862954, 0.26130258, 0.27577711]}}))
    torch.save(module.state_dict(), repo / "open_clip_pytorch_model.bin")
    return repo, bert, module


def test_open_clip_hf_text_tower_local_dir_and_round_trip(tmp_path):
    repo, bert, ref = _write_biomedclip_like(tmp_path, bert_ref=str(tmp_path / "bert"))
    m = create_model(f"open_clip:{repo}")
    assert _same_weights(m.module, ref)
    tokens = m.tokenize(["thalamus", "basal nuclei"])
    assert tokens.shape == (B, 12) and tokens[0, 0] == 2 and tokens[0, 1] == 5  # [CLS] thalamus
    img, txt = m.encode_image(_images(32)), m.encode_text(tokens)
    assert img.shape == txt.shape == (B, 16)
    m.save(tmp_path / "saved")
    assert (tmp_path / "saved" / "config.json").is_file()  # the BERT config travels with the model
    again = create_model(tmp_path / "saved")
    assert torch.equal(again.encode_image(_images(32)), img) and torch.equal(again.encode_text(tokens), txt)
    # another image size resamples the timm tower's position embeddings from the checkpoint
    bigger = create_model(f"open_clip:{repo}", image_size=48)
    assert bigger.image_size == 48 and bigger.encode_image(_images(48)).shape == (B, 16)
    assert bigger.module.visual.trunk.pos_embed.shape[1] == 1 + 3 * 3


def _open_clip_alone(directory):
    """Load a saved directory with open_clip's own API only (no cytoclip code on the path)."""
    import open_clip

    module, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{directory}")
    return module.eval(), preprocess, open_clip.get_tokenizer(f"local-dir:{directory}")


def test_saved_open_clip_model_loads_with_open_clip_alone_from_another_folder(tmp_path, monkeypatch):
    import shutil

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    repo, bert, ref = _write_biomedclip_like(tmp_path / "src", bert_ref=str(tmp_path / "src" / "bert"))
    # open_clip builds a timm image tower at timm's default size (224 here) whatever the config says
    m = create_model(f"open_clip:{repo}", image_size=224)
    m.save(tmp_path / "saved")
    shutil.rmtree(tmp_path / "src")  # the original text tower files are gone: the saved copy is self-contained
    conf = json.loads((tmp_path / "saved" / "open_clip_config.json").read_text())
    assert conf["preprocess_cfg"]["resize_mode"] in ("shortest", "longest", "squash")  # what open_clip accepts
    assert Path(conf["model_cfg"]["text_cfg"]["hf_model_name"]).is_absolute()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    module, preprocess, tokenizer = _open_clip_alone(tmp_path / "saved")
    texts = ["thalamus", "basal nuclei"]
    assert torch.equal(tokenizer(texts), m.tokenize(texts))
    with torch.no_grad():
        assert torch.allclose(module.encode_image(_images(224), normalize=True), m.encode_image(_images(224)),
                              atol=1e-5)
        assert torch.allclose(module.encode_text(tokenizer(texts), normalize=True), m.encode_text(m.tokenize(texts)),
                              atol=1e-5)
    # cytoclip itself still loads the same directory
    assert torch.equal(create_model(tmp_path / "saved").encode_image(_images(224)), m.encode_image(_images(224)))


def test_saved_tiny_model_config_is_accepted_by_open_clip(tiny, tmp_path):
    tiny.save(tmp_path / "saved")
    module, preprocess, tokenizer = _open_clip_alone(tmp_path / "saved")  # was: AssertionError on pad_to_square
    with torch.no_grad():
        assert torch.allclose(module.encode_image(_images(64), normalize=True), tiny.encode_image(_images(64)),
                              atol=1e-5)
    assert torch.equal(tokenizer(["pons"]), tiny.tokenize(["pons"]))


def _fake_hub_repo(cache, repo_id: str, src_dir):
    """Lay ``src_dir``'s files out as the Hugging Face cache holds a downloaded repo."""
    import shutil

    base = cache / ("models--" + repo_id.replace("/", "--"))
    snap = base / "snapshots" / ("0" * 40)
    shutil.copytree(src_dir, snap)
    (base / "refs").mkdir(parents=True)
    (base / "refs" / "main").write_text("0" * 40)


def test_open_clip_hf_hub_offline_from_cache(tmp_path, monkeypatch):
    from huggingface_hub import constants

    repo, bert, ref = _write_biomedclip_like(tmp_path, bert_ref="cytoclip-test/tiny-bert")
    cache = tmp_path / "hub"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _fake_hub_repo(cache, "cytoclip-test/tiny-biomedclip", repo)
    with pytest.raises(ModelWeightsNotFound, match="cytoclip-test/tiny-bert"):
        create_model("open_clip:hf-hub:cytoclip-test/tiny-biomedclip")  # text tower files absent from cache
    _fake_hub_repo(cache, "cytoclip-test/tiny-bert", bert)
    m = create_model("open_clip:hf-hub:cytoclip-test/tiny-biomedclip")
    assert _same_weights(m.module, ref)
    with pytest.raises(ModelWeightsNotFound) as err:
        create_model("open_clip:hf-hub:cytoclip-test/absent")
    assert str(cache) in str(err.value) and "HF_HUB_OFFLINE=1" in str(err.value)


# ------------------------------------------------------------------------------------------------------- UNI

UNI_SMALL = {"arch": "vit_tiny_patch16_224", "timm_kwargs": {"img_size": 32}}


@pytest.fixture(scope="module")
def uni_ckpt(tmp_path_factory):
    import timm

    from cytoclip.models.pathology import UNI_TIMM_KWARGS

    d = tmp_path_factory.mktemp("uni")
    torch.manual_seed(0)
    net = timm.create_model("vit_tiny_patch16_224", pretrained=False, **{**UNI_TIMM_KWARGS, "img_size": 32})
    torch.save(net.state_dict(), d / "pytorch_model.bin")
    return d, net


def test_uni_loads_timm_state_dict(uni_ckpt, tmp_path):
    d, net = uni_ckpt
    m = create_model({"backend": "uni", "checkpoint": str(d), **UNI_SMALL})
    assert not m.has_text and m.image_size == 32 and m.mean == pytest.approx((0.485, 0.456, 0.406))
    x = _images(32)
    with torch.no_grad():
        assert torch.allclose(m.encode_image(x, normalize=False), net.eval()(x), atol=1e-6)
    assert m.encode_image(x).shape == (B, 192)
    with pytest.raises(TextTowerMissing):
        m.tokenize(["thalamus"])
    with pytest.raises(TextTowerMissing):
        m.encode_text(torch.zeros(B, 4, dtype=torch.long))
    m.save(tmp_path / "saved")
    assert torch.equal(create_model(tmp_path / "saved").encode_image(x), m.encode_image(x))


def test_uni_mismatched_state_dict_names_file(uni_ckpt, tmp_path):
    d, net = uni_ckpt
    state = net.state_dict()
    state.pop("cls_token")
    torch.save(state, tmp_path / "pytorch_model.bin")
    with pytest.raises(ValueError, match=re.escape(str(tmp_path / "pytorch_model.bin")) + ".*cls_token"):
        create_model({"backend": "uni", "checkpoint": str(tmp_path / "pytorch_model.bin"), **UNI_SMALL})


def test_real_uni_constructor_matches_state_dict_keys(uni_ckpt):
    import timm

    from cytoclip.models.pathology import UNI_ARCH, UNI_TIMM_KWARGS

    _, net = uni_ckpt
    with torch.device("meta"):
        uni = timm.create_model(UNI_ARCH, pretrained=False, **UNI_TIMM_KWARGS)
    big, small = uni.state_dict(), net.state_dict()

    def pattern(keys):
        return {re.sub(r"^blocks\.\d+\.", "blocks.N.", k) for k in keys}

    assert pattern(big) == pattern(small)  # same parameter names, only the depth differs
    assert len({k.split(".")[1] for k in big if k.startswith("blocks.")}) == 24
    assert tuple(big["pos_embed"].shape) == (1, 197, 1024)  # 14x14 patches + class token, UNI's layout
    assert "head.weight" not in big and "blocks.0.ls1.gamma" in big  # num_classes=0, init_values -> LayerScale


def test_missing_weights_name_path_and_offline_flag(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    missing = tmp_path / "nowhere" / "pytorch_model.bin"
    with pytest.raises(ModelWeightsNotFound) as err:
        create_model(f"uni:{missing}")
    msg = str(err.value)
    assert str(missing) in msg and "HF_HUB_OFFLINE=1" in msg and "MahmoodLab/UNI" in msg


# ----------------------------------------------------------------------------------------------------- CONCH

def test_conch_absent_names_the_installable_package(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "conch", None)  # as if the package were not installed
    (tmp_path / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(ImportError, match=re.escape("pip install conch-fork")):
        create_model(f"conch:{tmp_path / 'pytorch_model.bin'}")
    row = describe_model("CONCH")
    assert not row["available"] and "conch-fork" in row["reason"]


#: CONCH's CoCa layout (conch_ViT-B-16) at a tiny width: same towers, same context length of 128
CONCH_SMALL = {
    "embed_dim": 16, "embed_dim_caption": 32,
    "vision_cfg": {"image_size": 32, "patch_size": 16, "width": 32, "layers": 1, "num_heads": 2,
                   "attentional_pool_caption": True, "attentional_pool_contrast": True, "attn_pooler_heads": 2,
                   "n_queries_contrast": 1, "n_queries_caption": 4, "output_tokens": True},
    "text_cfg": {"context_length": 128, "vocab_size": 32007, "width": 32, "heads": 2, "layers": 1,
                 "embed_cls": True, "output_tokens": True},
    "multimodal_cfg": {"context_length": 128, "vocab_size": 32007, "width": 32, "heads": 2, "layers": 1},
}


@pytest.fixture(scope="module")
def conch_ckpt(tmp_path_factory):
    pytest.importorskip("conch", reason="the conch package (pip install conch-fork) is not installed")
    from cytoclip.models.pathology import build_conch_module

    d = tmp_path_factory.mktemp("conch")
    net = build_conch_module(CONCH_SMALL, seed=3)
    torch.save(net.state_dict(), d / "pytorch_model.bin")
    return d, net


def test_conch_tokenizes_and_encodes_text_with_the_current_tokenizer_api(conch_ckpt, tmp_path):
    d, net = conch_ckpt
    m = create_model({"backend": "conch", "checkpoint": str(d), "model_cfg": CONCH_SMALL})
    assert _same_weights(m.module, net) and m.image_size == 32 and m.has_text
    tokens = m.tokenize(["thalamus", "basal nuclei"])  # CONCH's own tokenize() calls batch_encode_plus
    pad = m._tokenizer.pad_token_id
    assert tokens.shape == (B, 128) and tokens.dtype == torch.long
    assert (tokens[:, 0] == m._tokenizer.bos_token_id).all() and (tokens[:, -1] == pad).all()
    assert (tokens[0] != pad).sum() < (tokens[1] != pad).sum()  # two words take more tokens than one
    txt, img = m.encode_text(tokens), m.encode_image(_images(32))
    assert txt.shape == img.shape == (B, 16)
    with torch.no_grad():
        assert torch.allclose(img, net.eval().encode_image(_images(32), normalize=True, proj_contrast=True),
                              atol=1e-6)
    m.save(tmp_path / "saved")
    again = create_model(tmp_path / "saved")
    assert torch.equal(again.encode_text(tokens), txt) and torch.equal(again.encode_image(_images(32)), img)


def test_conch_checkpoint_without_text_tower_is_refused_naming_the_keys(conch_ckpt, tmp_path):
    d, net = conch_ckpt
    state = {k: v for k, v in net.state_dict().items() if not k.startswith("text.")}
    torch.save(state, tmp_path / "pytorch_model.bin")
    with pytest.raises(ValueError, match=re.escape(str(tmp_path / "pytorch_model.bin")) + r".*missing keys.*'text'"):
        create_model({"backend": "conch", "checkpoint": str(tmp_path), "model_cfg": CONCH_SMALL})


# ------------------------------------------------------------------------------------------------------- zoo

def test_model_zoo_lists_the_papers_models():
    specs = {r["spec"] for r in MODEL_ZOO}
    assert {"hf:openai/clip-vit-large-patch14-336", "hf:openai/clip-vit-large-patch14",
            "open_clip:hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224"} <= specs
    for row in MODEL_ZOO:
        parse_spec(row["spec"])  # every zoo spec is well-formed
    table = model_zoo_table()
    assert {"name", "spec", "image_size", "weights", "available", "reason"} <= set(table.columns)
    assert table.set_index("name").loc["tiny", "available"]
    row = describe_model("uni:/nonexistent/uni.bin")
    assert not row["available"] and "/nonexistent/uni.bin" in row["reason"]
