"""Random-weight stand-ins of the paper's real models, in each model's real on-disk format, and the ``paper``
profile pointed at them, so the real path runs end to end without a download
(``cytoclip study run --profile paper --stand-ins``).

The stand-ins are the real architectures at their real input sizes and context lengths (``full``), or the same
families at tiny widths (``small``, for the tests):

==========  =====================================================  ==========================================
name        architecture (full)                                    on disk, as the real weights come
==========  =====================================================  ==========================================
clip336     CLIP ViT-L/14-336, text 12 x 768, context 77           ``save_pretrained`` dir -> ``hf:<dir>``
clip224     CLIP ViT-L/14 (224 px), same text tower                 ``save_pretrained`` dir -> ``hf:<dir>``
biomedclip  BiomedCLIP: timm ViT-B/16 + BERT-base text, context 256  ``open_clip_config.json`` + BERT config/vocab
                                                                    + ``open_clip_pytorch_model.bin``
                                                                    -> ``open_clip:<dir>``
uni         UNI: timm ViT-L/16, 224 px, LayerScale, no head         ``pytorch_model.bin`` -> ``uni:<dir>``
conch       CONCH: CoCa ViT-B/16, 448 px, context 128 (when the    ``pytorch_model.bin`` -> ``conch:<dir>``
            ``conch`` package is installed)
==========  =====================================================  ==========================================

Everything is written from local configs (nothing from the hub): CLIP's BPE vocabulary is open_clip's bundled
one, the BERT vocabulary is a small made-up one padded to BERT's size. A stand-in is written once per folder
(atomic per model; a rerun reuses it).
"""

from __future__ import annotations

import copy
import os
import re
from pathlib import Path
from typing import Any

import torch

from cytoclip.io import atomic_dir, read_json, write_json

#: the real models' specs (``_config.yml`` ``base_models`` and the paper profile's models) -> stand-in name
REAL_SPECS = {
    "hf:openai/clip-vit-large-patch14-336": "clip336",
    "hf:openai/clip-vit-large-patch14": "clip224",
    "open_clip:hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224": "biomedclip",
    "uni:hf-hub:MahmoodLab/UNI": "uni",
    "conch:hf-hub:MahmoodLab/CONCH": "conch",
}

_CLIP_TEXT = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                  num_attention_heads=12, max_position_embeddings=77)
_CLIP_L14 = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                 patch_size=14)
_SMALL_CLIP_TEXT = dict(_CLIP_TEXT, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
_SMALL_L14 = dict(_CLIP_L14, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
_BERT_BASE = dict(vocab_size=30522, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                  intermediate_size=3072, max_position_embeddings=512)

#: size -> stand-in name -> architecture. ``full`` is the real models' configuration (OpenAI CLIP's config.json,
#: BiomedCLIP's open_clip_config.json, UNI's model card, CONCH's package config).
ARCHITECTURES: dict[str, dict[str, dict[str, Any]]] = {
    "full": {
        "clip336": {"kind": "hf", "text": _CLIP_TEXT, "vision": dict(_CLIP_L14, image_size=336), "projection_dim": 768},
        "clip224": {"kind": "hf", "text": _CLIP_TEXT, "vision": dict(_CLIP_L14, image_size=224), "projection_dim": 768},
        "biomedclip": {"kind": "open_clip", "bert": _BERT_BASE, "model_cfg": {
            "embed_dim": 512,
            "vision_cfg": {"timm_model_name": "vit_base_patch16_224", "timm_model_pretrained": False,
                           "timm_pool": "", "timm_proj": "linear", "image_size": 224},
            "text_cfg": {"hf_proj_type": "mlp", "hf_pooler_type": "cls_last_hidden_state_pooler",
                         "context_length": 256}}},
        "uni": {"kind": "uni", "arch": "vit_large_patch16_224", "timm_kwargs": None},
        "conch": {"kind": "conch", "model_cfg": None},
    },
    "small": {
        "clip336": {"kind": "hf", "text": _SMALL_CLIP_TEXT, "vision": dict(_SMALL_L14, image_size=336),
                    "projection_dim": 24},
        "clip224": {"kind": "hf", "text": _SMALL_CLIP_TEXT, "vision": dict(_SMALL_L14, image_size=224),
                    "projection_dim": 24},
        "biomedclip": {"kind": "open_clip", "bert": dict(_BERT_BASE, vocab_size=2000, hidden_size=32,
                                                         num_hidden_layers=1, num_attention_heads=2,
                                                         intermediate_size=64), "model_cfg": {
            "embed_dim": 24,
            "vision_cfg": {"timm_model_name": "vit_tiny_patch16_224", "timm_model_pretrained": False,
                           "timm_pool": "", "timm_proj": "linear", "image_size": 224},
            "text_cfg": {"hf_proj_type": "mlp", "hf_pooler_type": "cls_last_hidden_state_pooler",
                         "context_length": 256}}},
        "uni": {"kind": "uni", "arch": "vit_tiny_patch16_224", "timm_kwargs": None},
        "conch": {"kind": "conch", "model_cfg": {
            "embed_dim": 16, "embed_dim_caption": 32,
            "vision_cfg": {"image_size": 448, "patch_size": 16, "width": 32, "layers": 1, "num_heads": 2,
                           "attentional_pool_caption": True, "attentional_pool_contrast": True,
                           "attn_pooler_heads": 2, "n_queries_contrast": 1, "n_queries_caption": 4,
                           "output_tokens": True},
            "text_cfg": {"context_length": 128, "vocab_size": 32007, "width": 32, "heads": 2, "layers": 1,
                         "embed_cls": True, "output_tokens": True},
            "multimodal_cfg": {"context_length": 128, "vocab_size": 32007, "width": 32, "heads": 2,
                               "layers": 1}}},
    },
}

#: what ``--stand-ins`` changes in the profile besides the models: a tiny synthetic atlas and a step or two per
#: run (the batch is small so that full-size ViT-L steps fit a CPU; on a GPU the paper's 64 fits)
STANDIN_PARAMS = {"source": "synthetic", "atlas": None, "atlas_profile": "smoke", "epochs": 1, "batch_size": 8,
                  "num_workers": 0, "max_tiles_per_section": 60, "n_boot": 20, "embedding_method": "pca"}
MARKER = "standin.json"


def conch_available() -> bool:
    """Whether the ``conch`` package (``pip install conch-fork``) can be imported."""
    try:
        import conch.open_clip_custom  # noqa: F401
    except ImportError:
        return False
    return True


# ------------------------------------------------------------------------------------------------- tokenizers
def write_clip_tokenizer(directory: Path) -> None:
    """open_clip's bundled CLIP BPE written as an HF ``CLIPTokenizer`` (vocab.json + merges.txt + config): the
    same tokens as OpenAI CLIP's tokenizer, without a download."""
    import json

    from open_clip.tokenizer import SimpleTokenizer
    from transformers import CLIPTokenizer

    st = SimpleTokenizer()
    # open_clip names the special tokens <start_of_text>/<end_of_text>; HF's CLIP tokenizer uses <|...|>
    special = {"<start_of_text>": "<|startoftext|>", "<end_of_text>": "<|endoftext|>"}
    vocab = {special.get(k, k): v for k, v in st.encoder.items()}
    (directory / "vocab.json").write_text(json.dumps(vocab))
    merges = sorted(st.bpe_ranks, key=st.bpe_ranks.get)
    (directory / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    CLIPTokenizer(vocab=str(directory / "vocab.json"), merges=str(directory / "merges.txt")).save_pretrained(directory)


def write_bert_tokenizer(directory: Path, vocab_size: int) -> None:
    """A WordPiece vocabulary of BERT's size: special tokens, characters and their ``##`` pieces, the words of
    the packaged DHARANI region names, then ``[unusedN]`` up to ``vocab_size``."""
    from transformers import BertTokenizer

    from cytoclip.ontology import Ontology

    onto = Ontology.load()
    words = sorted({w for i in onto.ids for w in re.findall(r"[a-z]+", onto.name(i).lower())})
    chars = [chr(c) for c in range(ord("a"), ord("z") + 1)] + list("0123456789,.;:-/()'")
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + chars + [f"##{c}" for c in chars]
    tokens += [w for w in words if w not in tokens]
    if len(tokens) > vocab_size:
        tokens = tokens[:vocab_size]
    tokens += [f"[unused{i}]" for i in range(vocab_size - len(tokens))]
    (directory / "vocab.txt").write_text("\n".join(tokens) + "\n")
    BertTokenizer(str(directory / "vocab.txt"), do_lower_case=True).save_pretrained(directory)


# ------------------------------------------------------------------------------------------------- writers
def _write_hf(d: Path, arch: dict, seed: int) -> str:
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    from cytoclip.models.base import OPENAI_MEAN, OPENAI_STD

    cfg = CLIPConfig(text_config=arch["text"], vision_config=arch["vision"], projection_dim=arch["projection_dim"])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        CLIPModel(cfg).save_pretrained(d, safe_serialization=True)
    write_clip_tokenizer(d)
    size = int(arch["vision"]["image_size"])
    CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size},
                       image_mean=list(OPENAI_MEAN), image_std=list(OPENAI_STD)).save_pretrained(d)
    return "hf:{dir}"


def _write_open_clip(d: Path, arch: dict, seed: int, final: Path) -> str:
    from transformers import BertConfig

    from cytoclip.models.base import OPENAI_MEAN, OPENAI_STD
    from cytoclip.models.openclip_backend import build_openclip_module

    bert = d / "bert"
    bert.mkdir()
    BertConfig(**arch["bert"]).save_pretrained(bert)
    write_bert_tokenizer(bert, arch["bert"]["vocab_size"])
    cfg = copy.deepcopy(arch["model_cfg"])
    cfg["text_cfg"].update(hf_model_name=str(bert), hf_tokenizer_name=str(bert))
    module = build_openclip_module(cfg, seed=seed)
    torch.save(module.state_dict(), d / "open_clip_pytorch_model.bin")  # BiomedCLIP's file on the hub
    # the config names the text tower where it will live (as BiomedCLIP's names its hub repo)
    final_bert = str(final / "bert")
    cfg["text_cfg"].update(hf_model_name=final_bert, hf_tokenizer_name=final_bert)
    write_json(d / "open_clip_config.json", {"model_cfg": cfg, "preprocess_cfg": {
        "mean": list(OPENAI_MEAN), "std": list(OPENAI_STD)}})
    return "open_clip:{dir}"


def _write_uni(d: Path, arch: dict, seed: int) -> str:
    import timm

    from cytoclip.models.pathology import UNI_TIMM_KWARGS

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = timm.create_model(arch["arch"], pretrained=False, **{**UNI_TIMM_KWARGS, **(arch["timm_kwargs"] or {})})
    torch.save(net.state_dict(), d / "pytorch_model.bin")  # UNI's file on the hub
    return "uni:{dir}"


def _write_conch(d: Path, arch: dict, seed: int) -> str:
    from cytoclip.models.pathology import build_conch_module, conch_config

    module = build_conch_module(conch_config(arch["model_cfg"]), seed=seed)
    torch.save(module.state_dict(), d / "pytorch_model.bin")  # CONCH's file on the hub
    return "conch:{dir}"


def standin_spec(name: str, directory: Path, size: str) -> dict | str:
    """The model spec that loads stand-in ``name`` from ``directory`` with the real loaders (CONCH and UNI of the
    small size name their architecture, the real ones are the loaders' defaults)."""
    arch = ARCHITECTURES[size][name]
    spec = {"hf": "hf:{dir}", "open_clip": "open_clip:{dir}", "uni": "uni:{dir}", "conch": "conch:{dir}"}[arch["kind"]]
    spec = spec.format(dir=directory)
    if size != "full" and arch["kind"] == "uni":
        return {"backend": "uni", "checkpoint": str(directory), "arch": arch["arch"]}
    if size != "full" and arch["kind"] == "conch":
        return {"backend": "conch", "checkpoint": str(directory), "model_cfg": arch["model_cfg"]}
    return spec


def write_standins(root: str | os.PathLike, size: str = "full", names: list[str] | None = None, seed: int = 0,
                   log=print) -> dict[str, Any]:
    """Write the stand-ins ``names`` (default: all; ``conch`` only when its package is installed) of ``size``
    (``full`` | ``small``) under ``root/<size>/<name>/``; returns name -> model spec. Existing ones are reused."""
    if size not in ARCHITECTURES:
        raise ValueError(f"stand-ins: size {size!r}; expected one of {sorted(ARCHITECTURES)}")
    root = Path(root).resolve() / size
    wanted = names or [n for n in ARCHITECTURES[size] if n != "conch" or conch_available()]
    unknown = sorted(set(wanted) - set(ARCHITECTURES[size]))
    if unknown:
        raise ValueError(f"stand-ins: unknown model(s) {unknown}; expected some of {sorted(ARCHITECTURES[size])}")
    specs: dict[str, Any] = {}
    for name in wanted:
        arch = ARCHITECTURES[size][name]
        d = root / name
        record = {"name": name, "size": size, "seed": seed, "architecture": arch}
        if not ((d / MARKER).is_file() and read_json(d / MARKER) == _jsonable(record)):
            log(f"stand-ins: writing {name} ({size}) to {d}")
            with atomic_dir(d) as tmp:
                if arch["kind"] == "hf":
                    _write_hf(tmp, arch, seed)
                elif arch["kind"] == "open_clip":
                    _write_open_clip(tmp, arch, seed, d)
                elif arch["kind"] == "uni":
                    _write_uni(tmp, arch, seed)
                else:
                    _write_conch(tmp, arch, seed)
                write_json(tmp / MARKER, record)  # last: a directory holding it is complete
        specs[name] = standin_spec(name, d, size)
    return specs


def _jsonable(obj: Any) -> Any:
    import json

    return json.loads(json.dumps(obj))


# ------------------------------------------------------------------------------------------------- the profile
def use_standins(study: Any, profile: str = "paper", folder: str | os.PathLike | None = None, size: str = "full",
                 max_steps: int = 2, log=print) -> dict[str, Any]:
    """Point ``profile`` of a loaded study at stand-ins (written under ``folder/models``, default
    ``<study root>/data/standins``): every real model spec of the profile and of ``base_models`` is replaced by
    its stand-in, the data by the smoke synthetic atlas (:data:`STANDIN_PARAMS`), the runs and the book go under
    ``folder`` (the real ``runs/`` and ``book/`` are left alone), and each training run stops after
    ``max_steps`` (the profile's ``max_steps`` parameter, which every training page passes to its runs). Changes the study in
    memory only; returns the stand-in specs."""
    folder = Path(folder) if folder else study.root / "data" / "standins"
    folder = (study.root / folder).resolve() if not folder.is_absolute() else folder.resolve()
    try:
        book = folder.relative_to(study.root.resolve()) / "book"
    except ValueError:
        from cytoclip.study import StudyConfigError

        raise StudyConfigError(f"--stand-ins {folder}: must be inside the study root {study.root} (the book's "
                               f"results are addressed relative to it)") from None
    specs = write_standins(folder / "models", size=size, log=log)

    def swap(spec: Any) -> Any:
        name = REAL_SPECS.get(str(spec)) if isinstance(spec, str) else None
        return specs.get(name, spec) if name else spec

    params = study.profiles[profile].setdefault("params", {})
    params.update(STANDIN_PARAMS, runs_dir=str(folder / "runs"))
    params["model"] = swap(params.get("model", study.defaults.get("model")))
    bases = dict(params.get("base_models") or study.defaults.get("base_models") or {})
    params["base_models"] = {k: swap(v) for k, v in bases.items()}
    for exp in study.experiments.values():
        block = exp.profiles.get(profile)
        if block and "model" in block:
            block["model"] = swap(block["model"])
    study.data.update(source="synthetic", atlas=None)
    study.paths["book"] = str(book)
    params["max_steps"] = int(max_steps)
    return specs
