"""The trainer: contrastive fine-tuning (or from-scratch training) of a CLIP model on a prepared dataset.

Paper Section III-D: AdamW, base learning rate 5e-5, 50 epochs, batch 64, symmetric cross-entropy. The same
loop runs on a laptop CPU (fp32, one process) and on GPUs (bf16/fp16 autocast, DDP through ``torchrun`` or
SLURM, ``torch.compile`` optional).

Determinism and exact resume: the order of the training items in epoch *e* is a function of ``(seed, e)``
(``DistributedSampler.set_epoch``) and the random augmentation of an item a function of ``(seed, e, index)``,
so neither depends on how many loader workers ran or where a run was interrupted. ``checkpoint-last/`` holds
the model, optimizer, scheduler, scaler, the step and the RNG states of every rank (tensors in safetensors, the
rest as JSON: :mod:`cytoclip.checkpoint`; nothing is unpickled); a resumed run skips the batches already done
and continues with the same weights an uninterrupted run would have.

No non-finite tensor reaches a checkpoint or the saved model: a step whose loss or whose updated buffers (e.g.
BatchNorm running statistics) are not finite is skipped and the buffers are put back as they were before it,
and every save first checks every parameter, buffer and optimizer state, refusing (FloatingPointError naming
the tensors) rather than writing a non-finite value.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import itertools
import math
import os
import random
import shutil
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import torch.nn as nn

from cytoclip import checkpoint as ckpt_io
from cytoclip.evaluate.zero_shot import ontology_paths_of
from cytoclip.io import atomic_path, fingerprint, is_reusable, work_fingerprint, write_json
from cytoclip.loss import TARGETS, ContrastiveLoss

#: the run's checkpoint directory (cytoclip.checkpoint format)
CHECKPOINT = "checkpoint-last"
#: the pickle checkpoint of cytoclip before the safetensors format; never loaded (unpickling can run code)
LEGACY_CHECKPOINT = "checkpoint-last.pt"
#: files the trainer writes in a run dir through cytoclip.io.atomic_path (their temp names are swept at start)
_RUN_FILES = ("config.json", "metrics.jsonl", "log.csv", "finished.json", LEGACY_CHECKPOINT)
PRECISIONS = ("auto", "bf16", "fp16", "fp32")
SCHEDULES = ("cosine", "constant")
#: fields that never change what a finished run holds (how it runs, how often it logs and checkpoints): left out
#: of the run's work fingerprint (cytoclip.io's one resume rule; num_workers and device are io.RUN_ONLY_PARAMS too).
#: Caveat: on a sharded dataset the loader's worker count sets which worker streams which shards, so it changes
#: the sample order (not the data, the schedule or the model's recipe); it is still counted as run-only.
RUN_ONLY_FIELDS = ("resume", "num_workers", "checkpoint_every_steps", "log_every_steps", "device", "compile")
#: fields that may change between an interrupted run and its resumption without breaking exactness
RESUME_FREE = (*RUN_ONLY_FIELDS, "max_steps")
#: the record a finished run writes last (after model/): its work fingerprint, read by :func:`is_finished`
FINISHED = "finished.json"


@dataclasses.dataclass
class TrainConfig:
    """Everything a training run depends on; written in full to ``<run_dir>/config.json``.

    Defaults are the paper's (III-D): AdamW, ``lr`` 5e-5, 50 epochs, batch 64, no augmentation (the paper
    describes none; profiles turn ``augment`` on explicitly). The paper does not give the weight decay; 0.2 is
    the value of the original CLIP recipe and the default of open_clip's training script, with which the paper
    trained BiomedCLIP. Models trained from scratch (``tiny``) want a larger rate (~5e-4 with warm-up), which
    the study's profiles set.
    """

    dataset: str = ""                     # prepared dataset directory (holding manifest.parquet)
    run_dir: str = "runs/train"
    model: str = "tiny"
    init_from: str | None = None          # a saved model / run dir whose weights start the run (overrides model)
    image_size: int | None = None         # input size passed to the model factory (None = the model's default)
    image_type: str | None = None         # None: the manifest's only image type
    split: str | None = None              # split scheme; None: the manifest's 'split' column (cytoclip.splits)
    val_split: str = "val"
    targets: str = "pairs"                # pairs | labels | ontology
    sigma: float = 1.0                    # ontology targets: exp(-hops / sigma)
    ontology: str | None = None           # ontology targets: None = packaged DHARANI ontology, or a path
    epochs: int = 50
    batch_size: int = 64                  # per process; the loss sees batch_size * world_size pairs
    lr: float = 5e-5
    weight_decay: float = 0.2
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-6
    schedule: str = "cosine"              # cosine | constant (after warm-up)
    warmup_steps: int = 0
    grad_clip: float | None = None        # max global grad norm
    grad_accum_steps: int = 1             # micro-batches per optimizer step (each micro-batch its own negatives)
    freeze_image: bool = False
    freeze_text: bool = False
    augment: bool = False                 # the model's train_transform (flips, mild jitter); off as in the paper
    precision: str = "auto"               # auto: bf16 (or fp16) on CUDA, fp32 on CPU
    compile: bool = False
    channels_last: bool = True            # NHWC weights/inputs: faster convs (CPU oneDNN, CUDA AMP)
    num_workers: int = 2
    seed: int = 0
    device: str = "auto"                  # auto | cpu | cuda | cuda:N
    val_every_epochs: int = 1             # 0: no validation
    prompt: str = "{}"                    # zero-shot validation text per class name
    shuffle: bool = True                  # False: the manifest's order every epoch (files and shards alike)
    shuffle_buffer: int = 2000            # sharded datasets: samples in the streaming shuffle buffer (<= 1: none)
    checkpoint_every_steps: int = 0       # 0: checkpoint at epoch ends only
    log_every_steps: int = 0              # 0: log epochs only
    max_steps: int | None = None          # stop after this many optimizer steps (schedule unchanged; tests)
    max_nonfinite: int = 5                # consecutive non-finite steps before giving up
    resume: bool | str = "auto"           # auto: resume a matching checkpoint; True: must; False: never

    def validate(self) -> "TrainConfig":
        """Check every field's type and range; raises ValueError naming the field and what was expected."""
        def need(cond: bool, field: str, what: str) -> None:
            if not cond:
                raise ValueError(f"TrainConfig.{field}: expected {what}, got {getattr(self, field)!r}")

        def is_int(v) -> bool:
            return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))

        def is_num(v) -> bool:  # a finite real number (inf and NaN are refused everywhere)
            return is_int(v) or (isinstance(v, (float, np.floating)) and math.isfinite(v))

        def text(field: str, optional: bool = False) -> None:
            v = getattr(self, field)
            need((optional and v is None) or (isinstance(v, str) and v.strip() != ""), field,
                 ("None or " if optional else "") + "a non-empty string")

        def flag(field: str) -> None:
            need(isinstance(getattr(self, field), (bool, np.bool_)), field, "True or False")

        text("dataset")
        text("run_dir")
        text("model")
        text("init_from", optional=True)
        text("image_type", optional=True)
        text("split", optional=True)
        text("val_split")
        text("ontology", optional=True)
        need(self.image_size is None or (is_int(self.image_size) and self.image_size >= 16), "image_size",
             "None (the model's default) or an integer >= 16 (pixels)")
        need(self.targets in TARGETS, "targets", f"one of {TARGETS}")
        need(is_num(self.sigma) and self.sigma > 0, "sigma", "a finite number > 0")
        need(is_int(self.epochs) and self.epochs >= 1, "epochs", "an integer >= 1")
        need(is_int(self.batch_size) and self.batch_size >= 2, "batch_size",
             "an integer >= 2 (a contrastive batch needs negatives)")
        need(is_num(self.lr) and self.lr > 0, "lr", "a finite learning rate > 0")
        need(is_num(self.weight_decay) and self.weight_decay >= 0, "weight_decay", "a finite number >= 0")
        # AdamW's decoupled decay multiplies the weights by (1 - lr * weight_decay) at each step
        need(float(self.lr) * float(self.weight_decay) < 1, "weight_decay",
             f"lr * weight_decay < 1 (AdamW scales the weights by 1 - lr * weight_decay; lr is {self.lr!r})")
        need(isinstance(self.betas, (tuple, list)) and len(self.betas) == 2
             and all(is_num(b) and 0 <= b < 1 for b in self.betas), "betas", "two numbers in [0, 1)")
        need(is_num(self.eps) and 0 < self.eps < 1, "eps", "a number in (0, 1)")
        need(self.schedule in SCHEDULES, "schedule", f"one of {SCHEDULES}")
        need(is_int(self.warmup_steps) and self.warmup_steps >= 0, "warmup_steps", "an integer >= 0")
        need(self.grad_clip is None or (is_num(self.grad_clip) and self.grad_clip > 0), "grad_clip",
             "None or a finite norm > 0")
        need(is_int(self.grad_accum_steps) and self.grad_accum_steps >= 1, "grad_accum_steps", "an integer >= 1")
        for field in ("freeze_image", "freeze_text", "augment", "compile", "channels_last", "shuffle"):
            flag(field)
        need(self.precision in PRECISIONS, "precision", f"one of {PRECISIONS}")
        need(is_int(self.num_workers) and self.num_workers >= 0, "num_workers", "an integer >= 0")
        need(is_int(self.shuffle_buffer) and self.shuffle_buffer >= 0, "shuffle_buffer", "an integer >= 0 (samples)")
        need(is_int(self.seed) and 0 <= self.seed < 2**63, "seed", "an integer in [0, 2**63)")
        need(isinstance(self.device, str) and _is_device(self.device), "device", "'auto', 'cpu', 'cuda' or 'cuda:N'")
        need(is_int(self.val_every_epochs) and self.val_every_epochs >= 0, "val_every_epochs", "an integer >= 0")
        need(isinstance(self.prompt, str) and ("{}" in self.prompt or self.prompt == "ontology_path"), "prompt",
             "a string with '{}' where the class name goes, or 'ontology_path'")
        need(is_int(self.checkpoint_every_steps) and self.checkpoint_every_steps >= 0, "checkpoint_every_steps",
             "an integer >= 0")
        need(is_int(self.log_every_steps) and self.log_every_steps >= 0, "log_every_steps", "an integer >= 0")
        need(self.max_steps is None or (is_int(self.max_steps) and self.max_steps >= 1), "max_steps",
             "None or an integer >= 1")
        need(is_int(self.max_nonfinite) and self.max_nonfinite >= 1, "max_nonfinite", "an integer >= 1")
        need(isinstance(self.resume, (bool, np.bool_)) or self.resume == "auto", "resume", "True, False or 'auto'")
        return self

    def to_dict(self) -> dict:
        """Plain JSON-serialisable dict of the fields."""
        d = dataclasses.asdict(self)
        d["betas"] = list(d["betas"])
        return d

    @classmethod
    def from_dict(cls, d: dict, source: str = "config") -> "TrainConfig":
        """Build from a dict (e.g. a YAML file); unknown keys raise a ValueError naming them and ``source``.
        Numbers written as strings (YAML 1.1 reads ``5e-4`` as a string) are converted for the numeric fields."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            renamed = [f"{k!r} is now {RENAMED[k]!r}" for k in unknown if k in RENAMED]
            hint = f" ({'; '.join(renamed)})" if renamed else ""
            raise ValueError(f"{source}: unknown training option(s) {unknown}{hint}; expected some of {sorted(names)}")
        d = dict(d)
        for key in _FLOAT_FIELDS:
            if isinstance(d.get(key), str):
                try:
                    d[key] = float(d[key])
                except ValueError:
                    raise ValueError(f"{source}: {key}: expected a number, got {d[key]!r}") from None
        if "betas" in d and isinstance(d["betas"], (list, tuple)):
            d["betas"] = tuple(float(b) if isinstance(b, str) else b for b in d["betas"])
        return cls(**d)


#: old field names -> new ones (one name per option across the CLI, Python and config files)
RENAMED = {"dataset_dir": "dataset", "split_scheme": "split"}
_FLOAT_FIELDS = ("lr", "weight_decay", "eps", "sigma", "grad_clip")


def _is_device(device: str) -> bool:
    if device == "auto":
        return True
    try:
        return torch.device(device).type in ("cpu", "cuda", "mps", "xpu")
    except (RuntimeError, ValueError):
        return False


# ============================================================================================ distributed
@dataclasses.dataclass
class DistInfo:
    """Rank layout of this process."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    initialised_here: bool = False

    @property
    def is_main(self) -> bool:
        """True on the rank that writes files and shows progress."""
        return self.rank == 0


def dist_env() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from torchrun's variables, else SLURM's, else a single process."""
    env = os.environ
    if "WORLD_SIZE" in env and "RANK" in env:
        return int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0))
    if "SLURM_NTASKS" in env and "SLURM_PROCID" in env:
        return int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"]), int(env.get("SLURM_LOCALID", 0))
    return 0, 1, 0


def init_distributed(device_type: str) -> DistInfo:
    """Join the process group when launched by torchrun/SLURM with more than one process (nccl on CUDA,
    gloo on CPU). A group that already exists (e.g. made by a test) is used as is."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return DistInfo(torch.distributed.get_rank(), torch.distributed.get_world_size(), dist_env()[2], False)
    rank, world, local = dist_env()
    if world <= 1:
        return DistInfo()
    if "MASTER_ADDR" not in os.environ or "MASTER_PORT" not in os.environ:
        raise RuntimeError(f"distributed run (WORLD_SIZE/SLURM_NTASKS={world}) needs MASTER_ADDR and MASTER_PORT "
                           "in the environment; launch with torchrun, or export them in the SLURM script")
    os.environ.setdefault("RANK", str(rank))
    os.environ.setdefault("WORLD_SIZE", str(world))
    backend = "nccl" if device_type == "cuda" else "gloo"
    torch.distributed.init_process_group(backend, rank=rank, world_size=world)
    return DistInfo(rank, world, local, True)


def resolve_device(device: str, local_rank: int = 0) -> torch.device:
    """``auto`` -> ``cuda:<local_rank>`` when a GPU is visible, else ``cpu``; explicit values are checked."""
    if device in (None, "auto"):
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"TrainConfig.device: {device!r} asked for, but no CUDA device is visible")
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device(f"cuda:{local_rank}")
    return dev


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` -> bf16 on CUDA when supported, else fp16 on CUDA, fp32 on CPU. fp16 needs CUDA."""
    if precision == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "fp32"
    if precision == "fp16" and device.type != "cuda":
        raise ValueError("TrainConfig.precision: 'fp16' (with a GradScaler) needs a CUDA device; use 'bf16' or "
                         "'fp32' on CPU")
    return precision


# ============================================================================================ data
class EpochSeededItems(torch.utils.data.Dataset):
    """A dataset view whose random transforms of item *i* in epoch *e* depend only on ``(seed, e, i)``.

    Items are fetched by ``(epoch, index)`` keys (from :class:`EpochKeySampler`), so the epoch travels with
    the request: persistent loader workers, forked once, need no update between epochs. A plain integer
    index uses ``self.epoch``. The global RNGs are forked around each item, so the caller's RNG stream is left
    untouched (with ``num_workers=0`` the main process's stream would otherwise depend on how many items were
    loaded).
    """

    def __init__(self, dataset: torch.utils.data.Dataset, seed: int):
        self.dataset, self.seed, self.epoch = dataset, int(seed), 0

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        from cytoclip.data import seeded_call

        epoch, index = key if isinstance(key, tuple) else (self.epoch, key)
        return seeded_call(lambda: self.dataset[int(index)], self.seed, epoch, index)


class EpochKeySampler(torch.utils.data.Sampler):
    """``(epoch, index)`` keys of ``sampler``'s order for the current epoch, after the first ``skip`` (to
    resume inside an epoch). ``set_epoch`` reshuffles (a ``DistributedSampler``); one DataLoader with
    persistent workers serves every epoch, since the sampler is read in the main process at each ``iter``."""

    def __init__(self, sampler: torch.utils.data.DistributedSampler, skip: int = 0):
        self.sampler, self.skip, self.epoch = sampler, int(skip), 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        """Order of ``epoch``, leaving out its first ``skip`` items."""
        self.epoch, self.skip = int(epoch), int(skip)
        self.sampler.set_epoch(self.epoch)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return ((self.epoch, i) for i in itertools.islice(iter(self.sampler), self.skip, None))

    def __len__(self) -> int:
        return max(0, len(self.sampler) - self.skip)


def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: seed numpy and ``random`` from the worker's torch seed (itself derived
    from the loader's seeded generator), so worker-side randomness is reproducible."""
    s = torch.initial_seed() % 2**32
    np.random.seed(s)
    random.seed(s)


def _collate(batch):
    # default_collate stacks straight into shared memory in a loader worker: no second copy of the float batch
    # when it is sent to the main process (one pass over ~600 KB per 224-px image)
    images = torch.utils.data.default_collate([b[0] for b in batch])
    captions = torch.as_tensor([int(b[1]) for b in batch], dtype=torch.long)
    labels = torch.as_tensor([int(b[2]) for b in batch], dtype=torch.long)
    return images, captions, labels


def _ontology_distance(dataset_dir: Path, class_names: list[str], ontology: str | None) -> np.ndarray:
    """(K, K) tree-hop distances between the classes (via the manifest's ``label_id``)."""
    from cytoclip.data import load_manifest
    from cytoclip.ontology import Ontology

    frame = load_manifest(dataset_dir)
    if "label_id" not in frame.columns:
        raise ValueError(f"{dataset_dir / 'manifest.parquet'}: 'ontology' targets need a 'label_id' column")
    ids = frame.drop_duplicates("label").set_index("label")["label_id"].astype(int).to_dict()
    onto = Ontology.load(ontology)
    missing = [c for c in class_names if int(ids[c]) not in onto]
    if missing:
        raise ValueError(f"{dataset_dir}: label ids of {missing[:5]} are not in the ontology {ontology or 'packaged'}")
    k = len(class_names)
    dist = np.zeros((k, k), dtype=np.float32)
    for i, j in itertools.combinations(range(k), 2):
        dist[i, j] = dist[j, i] = onto.distance(int(ids[class_names[i]]), int(ids[class_names[j]]))
    return dist


# ============================================================================================ model pieces
class _Towers(nn.Module):
    """Both encoders behind one ``forward`` so DDP (and torch.compile) see a single module call."""

    def __init__(self, cyto: Any):
        super().__init__()
        self.net = cyto.module
        self._cyto = [cyto]  # a list hides the non-Module wrapper from nn.Module's attribute registry

    def forward(self, images: torch.Tensor, tokens: torch.Tensor):
        cyto = self._cyto[0]
        return cyto.encode_image(images, normalize=True), cyto.encode_text(tokens, normalize=True)


def _param_groups(module: nn.Module, weight_decay: float) -> list[dict]:
    # as CLIP/open_clip: no decay on gains, biases, norms, embeddings' scalars and the temperature
    decay, no_decay = [], []
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim < 2 or "bn" in name or "ln" in name or "bias" in name or "logit_scale" in name:
            no_decay.append(p)
        else:
            decay.append(p)
    if not decay and not no_decay:
        raise ValueError("TrainConfig.freeze_image/freeze_text: every parameter is frozen; nothing to train")
    return [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]


def _fused_kw(module: nn.Module, device: torch.device) -> dict:
    """``fused=True`` for AdamW where torch has the fused kernel (CPU, CUDA, MPS) and every parameter is a
    floating-point tensor on that device: one kernel instead of a loop of per-tensor ops (the CPU step of the
    tiny model takes about a third of the time of the default ``foreach`` one)."""
    params = [p for p in module.parameters() if p.requires_grad]
    ok = device.type in ("cpu", "cuda", "mps") and all(p.is_floating_point() and p.device.type == device.type
                                                      for p in params)
    return {"fused": True} if ok else {}


def lr_lambda(warmup_steps: int, total_steps: int, schedule: str):
    """Multiplier of the base rate at optimizer step *s*: linear warm-up, then cosine to 0 or constant."""
    def f(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return (step + 1) / warmup_steps
        if schedule == "constant":
            return 1.0
        done = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, done)))
    return f


def _rng_state(device: torch.device) -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict, device: torch.device) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# ============================================================================================ evaluation
@torch.no_grad()
def epoch_line(record: dict[str, Any], epochs: int) -> str:
    """One readable line for an epoch record: ``epoch 3/10 · loss 3.437 · val F1 0.213 (acc 0.25) · 33 img/s``."""
    parts = [f"epoch {record['epoch']}/{epochs}", f"loss {record['train_loss']:.3f}"]
    if "val_f1_weighted" in record:
        parts.append(f"val F1 {record['val_f1_weighted']:.3f} (acc {record['val_accuracy']:.3f}, "
                     f"{record['val_n']} images)")
    parts += [f"{record['images_per_s']:.0f} img/s", f"{record['epoch_time_s']:.1f} s"]
    if record.get("nonfinite_steps"):
        parts.append(f"{record['nonfinite_steps']} non-finite steps skipped")
    return " · ".join(parts)


def zero_shot_validation(model: Any, dataset: torch.utils.data.Dataset, class_names: list[str], prompt: str,
                         batch_size: int, device: torch.device, num_workers: int = 0,
                         amp_dtype: torch.dtype | None = None,
                         ontology_paths: dict[str, str] | None = None) -> dict:
    """Zero-shot accuracy and weighted F1 of ``model`` on ``dataset`` by the study's one zero-shot classifier
    (:mod:`cytoclip.evaluate.zero_shot`), so the validation curve measures what the evaluation reports
    (``device`` and ``amp_dtype`` are the model's own: it embeds under ``model.autocast``)."""
    from sklearn.metrics import f1_score

    from cytoclip.evaluate import embed_images, text_classifier, zero_shot
    from cytoclip.evaluate.zero_shot import ontology_paths_of

    was_training = model.module.training
    model.eval()
    try:
        emb = embed_images(model, dataset, batch_size=batch_size, num_workers=num_workers,
                           desc="zero-shot validation")
        if ontology_paths is None and hasattr(dataset, "frame"):
            ontology_paths = ontology_paths_of(dataset.frame)
        text_emb = text_classifier(model, class_names, prompt, ontology_paths)
        pred, _ = zero_shot(model, emb, class_names, text_emb=text_emb)
    finally:
        model.train(was_training)
    y_true = np.asarray(dataset.labels) if hasattr(dataset, "labels") else np.asarray([dataset[i][2]
                                                                                       for i in range(len(dataset))])
    return {"val_accuracy": float((pred == y_true).mean()),
            "val_f1_weighted": float(f1_score(y_true, pred, average="weighted", zero_division=0)),
            "val_n": int(len(y_true))}


# ============================================================================================ the trainer
def _data_label(dataset_dir: Path) -> str:
    from cytoclip.provenance import data_label

    try:
        return data_label(dataset_dir)
    except ValueError:  # a hand-made dataset that says nothing of its origin: recorded as such
        return "unknown"


def _write_logs(run_dir: Path, history: list[dict]) -> None:
    import pandas as pd

    with atomic_path(run_dir / "metrics.jsonl") as tmp:
        import json

        tmp.write_text("".join(json.dumps(r) + "\n" for r in history))
    with atomic_path(run_dir / "log.csv") as tmp:
        pd.DataFrame(history).to_csv(tmp, index=False)


def _comparable(cfg: dict) -> dict:
    return {k: v for k, v in cfg.items() if k not in RESUME_FREE}


def run_fingerprint(config: TrainConfig) -> str:
    """The work fingerprint of a run (:func:`cytoclip.io.work_fingerprint`): every field of ``config`` but the
    :data:`RUN_ONLY_FIELDS`, and the dataset's manifest (its bytes), so a changed dataset is other work."""
    if isinstance(config, dict):
        config = TrainConfig.from_dict(config)
    params = {k: v for k, v in config.to_dict().items() if k not in RUN_ONLY_FIELDS and k != "run_dir"}
    return work_fingerprint(params, fingerprint(Path(config.dataset) / "manifest.parquet"))


def is_finished(config: TrainConfig) -> bool:
    """True when ``config.run_dir`` holds a finished run of the same work (the one resume rule,
    :func:`cytoclip.io.is_reusable`: its ``finished.json``, written after ``model/``, holds
    :func:`run_fingerprint` of ``config``)."""
    run_dir = Path(config.run_dir)
    return is_reusable(run_dir / FINISHED, run_fingerprint(config), [run_dir / "model"])


def _sweep_run_dir(run_dir: Path) -> None:
    """Remove what a killed run left behind: temp files of the trainer's atomic writes, a half-written
    ``model/`` save, and files of an interrupted checkpoint save (see :func:`cytoclip.checkpoint.sweep`)."""
    if not run_dir.is_dir():
        return
    for name in _RUN_FILES:
        for tmp in run_dir.glob(f".{name}.*"):
            if tmp.is_file():
                tmp.unlink(missing_ok=True)
    if (run_dir / "model").is_dir():
        for tmp in (run_dir / "model").glob(".save-*"):
            shutil.rmtree(tmp, ignore_errors=True)
    ckpt_io.sweep(run_dir / CHECKPOINT)


def _load_checkpoint(run_dir: Path, config: TrainConfig) -> dict | None:
    """The run's checkpoint as ``{"tensors": {group: {name: tensor}}, "state": plain dict}``, or None (no
    checkpoint, ``resume=False``, or a different configuration with ``resume="auto"``). Never unpickles: a
    legacy ``checkpoint-last.pt`` is refused unless ``resume=False``; anything not in the
    :mod:`cytoclip.checkpoint` format, truncated or corrupt raises a CheckpointError naming the file."""
    directory, legacy = run_dir / CHECKPOINT, run_dir / LEGACY_CHECKPOINT
    if config.resume is False:
        if legacy.exists():
            warnings.warn(f"{legacy}: ignored (resume=False); cytoclip no longer reads pickle checkpoints",
                          stacklevel=3)
        return None
    if not ckpt_io.exists(directory):
        if legacy.exists():
            raise ckpt_io.CheckpointError(
                f"{legacy}: a pickle checkpoint (cytoclip before safetensors checkpoints, or not cytoclip's); it is "
                f"not loaded, since unpickling can run code; delete it, or pass resume=False to start afresh")
        if config.resume is True:
            raise FileNotFoundError(f"{directory / ckpt_io.STATE_FILE}: resume=True but there is no checkpoint "
                                    "to resume from")
        return None
    tensors, state = ckpt_io.load(directory)
    where = directory / ckpt_io.STATE_FILE
    missing = [k for k in _STATE_KEYS if k not in state] + [g for g in ("model", "optimizer", "rng")
                                                            if g not in tensors]
    if missing or not isinstance(state.get("config"), dict):
        raise ckpt_io.CheckpointError(f"{where}: not a cytoclip training checkpoint (missing {missing or ['config']})")
    old, new = _comparable(state["config"]), _comparable(config.to_dict())
    if old != new:
        diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        if config.resume is True:
            raise ValueError(f"{where}: the checkpoint was made with a different configuration (fields {diff}); "
                             "resume=True needs the same settings")
        warnings.warn(f"{where}: configuration changed (fields {diff}); starting the run afresh", stacklevel=3)
        return None
    return {"tensors": tensors, "state": state}


#: entries of a training checkpoint's plain state
_STATE_KEYS = ("step", "epoch", "optimizer", "scheduler", "scaler", "rng", "history", "nonfinite_total",
               "epoch_stats", "config", "sampler")


def _optimizer_to_checkpoint(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors, plain) of ``optimizer.state_dict()``: the per-parameter state tensors under
    ``state.<param index>.<key>``, everything else (param groups, non-tensor state) as plain data."""
    sd = optimizer.state_dict()
    tensors, plain_state = {}, {}
    for pid, entry in sd["state"].items():
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{int(pid)}.{key}"] = value
            else:
                plain_state.setdefault(str(pid), {})[key] = value
    return tensors, {"param_groups": ckpt_io.to_plain(sd["param_groups"]), "state": ckpt_io.to_plain(plain_state)}


def _optimizer_from_checkpoint(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor],
                               plain: dict, where: Path) -> None:
    """Load what :func:`_optimizer_to_checkpoint` wrote; state tensors shaped like their parameter take its
    memory layout (channels_last), as in the run that wrote them."""
    state: dict[int, dict] = {}
    for name, value in tensors.items():
        parts = name.split(".", 2)
        if len(parts) != 3 or parts[0] != "state" or not parts[1].isdigit():
            raise ckpt_io.CheckpointError(f"{where}: unexpected optimizer tensor {name!r}")
        state.setdefault(int(parts[1]), {})[parts[2]] = value
    for pid, entry in plain.get("state", {}).items():
        state.setdefault(int(pid), {}).update(entry)
    groups = [dict(g) for g in plain["param_groups"]]
    for g in groups:
        if isinstance(g.get("betas"), list):
            g["betas"] = tuple(g["betas"])
    optimizer.load_state_dict({"state": state, "param_groups": groups})
    params = [p for g in optimizer.param_groups for p in g["params"]]
    for p in params:
        for key, value in optimizer.state.get(p, {}).items():
            if isinstance(value, torch.Tensor) and value.shape == p.shape and value.stride() != p.stride():
                optimizer.state[p][key] = torch.empty_like(p, dtype=value.dtype).copy_(value)


def _rng_to_checkpoint(states: list[dict]) -> tuple[dict[str, torch.Tensor], list[dict]]:
    """(tensors, plain) of the RNG states of every rank: torch/CUDA byte states as tensors, Python's and
    numpy's as plain lists."""
    tensors, plain = {}, []
    for rank, st in enumerate(states):
        tensors[f"{rank}.torch"] = st["torch"]
        if "cuda" in st:
            tensors[f"{rank}.cuda"] = st["cuda"]
        version, internal, gauss = st["python"]
        name, keys, pos, has_gauss, cached = st["numpy"]
        plain.append({"python": [version, list(internal), gauss],
                      "numpy": [name, [int(k) for k in keys], int(pos), int(has_gauss), float(cached)]})
    return tensors, plain


def _rng_from_checkpoint(tensors: dict[str, torch.Tensor], plain: list[dict], rank: int) -> dict:
    version, internal, gauss = plain[rank]["python"]
    name, keys, pos, has_gauss, cached = plain[rank]["numpy"]
    state = {"python": (version, tuple(internal), gauss),
             "numpy": (name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached),
             "torch": tensors[f"{rank}.torch"]}
    if f"{rank}.cuda" in tensors:
        state["cuda"] = tensors[f"{rank}.cuda"]
    return state


def _nonfinite(named: Iterator[tuple[str, torch.Tensor]]) -> list[str]:
    """Names of the floating-point tensors holding a NaN or an infinity (one host sync for all)."""
    items = [(n, t) for n, t in named if isinstance(t, torch.Tensor) and t.is_floating_point() and t.numel()]
    if not items:
        return []
    flags = torch.stack([torch.isfinite(t).all() for _, t in items]).cpu().tolist()
    return [n for (n, _), ok in zip(items, flags) if not ok]


def _refuse_nonfinite(what: str, named: list[tuple[str, torch.Tensor]], dist: "DistInfo", device: torch.device,
                      run_dir: Path) -> None:
    """Raise FloatingPointError (on every rank, so none waits for the others) when any tensor of ``named``, on
    any rank, is not finite: nothing non-finite is ever written."""
    bad = _nonfinite(iter(named))
    n_bad = len(bad)
    if dist.world_size > 1:
        count = torch.tensor([float(n_bad)], device=device)
        torch.distributed.all_reduce(count)
        n_bad = int(count.item())
    if n_bad:
        shown = ", ".join(bad[:6]) + (f" and {len(bad) - 6} more" if len(bad) > 6 else "") if bad else \
            "(on another rank)"
        raise FloatingPointError(
            f"{run_dir}: refusing to save the {what}: {n_bad} tensor(s) hold NaN or inf: {shown}; the previous "
            "checkpoint is kept; lower TrainConfig.lr, set grad_clip, or use precision='fp32'/'bf16'")


def train(config: TrainConfig) -> Path:
    """Train ``config.model`` on ``config.dataset``; returns the run directory.

    Writes ``config.json`` (full config + resolved device/precision/world size/classes), ``metrics.jsonl`` and
    ``log.csv`` (one row per epoch, and per ``log_every_steps`` steps), ``checkpoint-last/`` (each epoch and
    every ``checkpoint_every_steps``) and the model via ``model.save(run_dir / "model")`` when the run ends
    (after its last epoch, or at ``max_steps``). Only rank 0 writes. A matching checkpoint is resumed exactly
    (``resume="auto"``/``True``).
    """
    if isinstance(config, dict):
        config = TrainConfig.from_dict(config)
    config.validate()
    dataset_dir, run_dir = Path(config.dataset), Path(config.run_dir)
    if not (dataset_dir / "manifest.parquet").is_file():
        raise FileNotFoundError(f"{dataset_dir / 'manifest.parquet'}: not found; expected a dataset made by "
                                "`cytoclip prepare regions|tiles`")
    wanted_device = resolve_device(config.device)
    dist = init_distributed(wanted_device.type)
    try:
        return _train(config, dataset_dir, run_dir, dist)
    finally:
        if dist.initialised_here:
            torch.distributed.destroy_process_group()


def build_model(config: TrainConfig, device: torch.device) -> Any:
    """The CytoModel to train: ``init_from`` (saved weights) or ``model`` (tiny models seeded by ``seed``),
    at ``image_size`` when one is set (passed to the model factory, whose backends refuse it where they cannot
    honour it), with the requested towers frozen."""
    from cytoclip.models import create_model

    spec = config.init_from or config.model
    kw: dict[str, Any] = {}
    if str(spec).startswith("tiny") and not config.init_from:
        kw["seed"] = config.seed
    if config.image_size is not None:
        kw["image_size"] = int(config.image_size)
    model = create_model(spec, device=device, **kw)
    if config.image_size is not None and int(model.image_size) != int(config.image_size):
        raise ValueError(f"TrainConfig.image_size: {config.image_size} asked for, but {spec!r} was built at "
                         f"{model.image_size} px")
    if not getattr(model, "has_text", True):
        raise ValueError(f"TrainConfig.model: {spec!r} is image-only; contrastive training needs a text tower")
    model.freeze(image=config.freeze_image or None, text=config.freeze_text or None)
    if config.channels_last:
        model.module.to(memory_format=torch.channels_last)
    return model


def build_datasets(config: TrainConfig, model: Any) -> tuple[Any, Any, str]:
    """(train dataset, validation dataset, image type) of ``config`` with ``model``'s transforms; class
    indices are shared (the validation set uses the training set's class names)."""
    from cytoclip.data import ImageTextDataset, load_manifest

    dataset_dir = Path(config.dataset)
    image_type = config.image_type
    if image_type is None:
        types = sorted(load_manifest(dataset_dir)["image_type"].astype(str).unique())
        if len(types) != 1:
            raise ValueError(f"{dataset_dir}: the manifest holds image types {types}; set TrainConfig.image_type")
        image_type = types[0]
    common = dict(image_type=image_type, split_scheme=config.split, seed=config.seed)
    train_ds = ImageTextDataset(dataset_dir, split="train",
                                transform=model.train_transform if config.augment else model.transform, **common)
    val_ds = ImageTextDataset(dataset_dir, split=config.val_split, transform=model.transform,
                              class_names=list(train_ds.class_names), **common)
    return train_ds, val_ds, image_type


def _train(config: TrainConfig, dataset_dir: Path, run_dir: Path, dist: DistInfo) -> Path:
    from cytoclip.progress import tqdm
    from cytoclip.progress import visible as progress_visible

    device = resolve_device(config.device, dist.local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        # fp32 matmuls outside autocast may use TF32 (as open_clip's trainer does); numerics within CLIP's needs
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    precision = resolve_precision(config.precision, device)
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    amp = (lambda: torch.autocast(device.type, dtype=amp_dtype)) if amp_dtype else contextlib.nullcontext
    if dist.is_main:
        _sweep_run_dir(run_dir)
        # the run dir holds unfinished work from here on, until the model and the record are written again
        (run_dir / FINISHED).unlink(missing_ok=True)
    ckpt = _load_checkpoint(run_dir, config)
    _seed_everything(config.seed)

    model = build_model(config, device)

    # -- data -------------------------------------------------------------------------------------------------
    train_ds, val_ds, image_type = build_datasets(config, model)
    class_names = list(train_ds.class_names)
    ontology_paths = ontology_paths_of(train_ds.frame) if hasattr(train_ds, "frame") else None
    # captions are tokenised once; items carry a caption index (cheap to collate, no tokenizer in workers)
    caption_tokens = model.tokenize(list(train_ds.captions)).to(device)
    per_rank = len(train_ds) // dist.world_size
    if per_rank < 2:
        raise ValueError(f"{dataset_dir}: {len(train_ds)} training images of type {image_type!r} "
                         f"({per_rank} per process): a contrastive batch needs at least 2")
    if per_rank < config.batch_size:
        # a small split (e.g. one specimen of the smoke atlas) trains with one batch per epoch rather than failing
        warnings.warn(f"{dataset_dir}: {per_rank} training images per process is fewer than one batch of "
                      f"{config.batch_size}; using batch_size={per_rank}")
        requested, config = config, dataclasses.replace(config, batch_size=per_rank)
    else:
        requested = config
    micro_per_epoch = per_rank // config.batch_size
    accum = int(config.grad_accum_steps)
    steps_per_epoch = math.ceil(micro_per_epoch / accum)
    total_steps = steps_per_epoch * config.epochs

    if config.warmup_steps >= total_steps:
        warnings.warn(f"TrainConfig.warmup_steps={config.warmup_steps} is not below the run's {total_steps} optimizer "
                      f"steps ({steps_per_epoch} per epoch): the learning rate never reaches TrainConfig.lr={config.lr}; "
                      "shorten the warm-up or train longer")

    distance = None
    if config.targets == "ontology":
        distance = _ontology_distance(dataset_dir, class_names, config.ontology)
    loss_fn = ContrastiveLoss(targets=config.targets, distance=distance, sigma=config.sigma,
                              gather_with_grad=True, local_loss=False).to(device)

    items = EpochSeededItems(train_ds, config.seed)
    stream, loader_workers = None, config.num_workers
    if train_ds.sharded:
        stream = train_ds.stream(config.seed, config.batch_size, micro_per_epoch, shuffle=config.shuffle,
                                 shuffle_buffer=config.shuffle_buffer, rank=dist.rank, world_size=dist.world_size)
        # each loader worker streams its own shards: no more workers than the rank has shards
        loader_workers = min(config.num_workers, stream.shards_per_rank)
    sampler = torch.utils.data.DistributedSampler(items, num_replicas=dist.world_size, rank=dist.rank,
                                                  shuffle=config.shuffle, seed=config.seed, drop_last=True)

    # -- optimisation -----------------------------------------------------------------------------------------
    towers: nn.Module = _Towers(model)
    optimizer = torch.optim.AdamW(_param_groups(model.module, config.weight_decay), lr=config.lr,
                                  betas=tuple(config.betas), eps=config.eps, **_fused_kw(model.module, device))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(config.warmup_steps, total_steps,
                                                                       config.schedule))
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    step, history, nonfinite_total, epoch_stats = 0, [], 0, None
    if ckpt is not None:
        where, tensors, state = run_dir / CHECKPOINT / ckpt_io.STATE_FILE, ckpt["tensors"], ckpt["state"]
        try:
            model.module.load_state_dict(tensors["model"])
            _optimizer_from_checkpoint(optimizer, tensors["optimizer"], state["optimizer"], where)
            scheduler.load_state_dict(state["scheduler"])
            scaler.load_state_dict(state["scaler"])
        except (RuntimeError, KeyError, ValueError, TypeError) as exc:
            raise ckpt_io.CheckpointError(f"{where}: does not fit this run's model/optimizer "
                                          f"({type(exc).__name__}: {str(exc).splitlines()[0]})") from None
        step, history = int(state["step"]), list(state["history"])
        nonfinite_total, epoch_stats = int(state["nonfinite_total"]), state.get("epoch_stats")
        if len(state["rng"]) != dist.world_size:
            raise ValueError(f"{where}: written by {len(state['rng'])} processes, resumed with "
                             f"{dist.world_size}; resume with the same number of processes")
        _set_rng_state(_rng_from_checkpoint(tensors["rng"], state["rng"], dist.rank), device)
        was = state["sampler"].get("loader_workers", loader_workers)
        if stream is not None and step % steps_per_epoch and was != loader_workers:
            warnings.warn(f"{where}: the run stopped inside an epoch with {was} loader workers and resumes with "
                          f"{loader_workers}; on shards the rest of that epoch is streamed in another order")
    if dist.world_size > 1:
        has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.module.modules())
        if device.type == "cuda":  # batch statistics over the global batch, as one process would see them
            model.module = nn.SyncBatchNorm.convert_sync_batchnorm(model.module)
            towers.net = model.module
        elif has_bn:  # torch's SyncBatchNorm runs on accelerators only
            warnings.warn(f"TrainConfig.model: {model.spec.get('backend')!r} has BatchNorm layers, whose statistics "
                          f"are per process on {device.type}: {dist.world_size} processes do not train the weights "
                          "of one process at the same global batch")
        ddp_kw = {"device_ids": [device.index]} if device.type == "cuda" else {}
        towers = nn.parallel.DistributedDataParallel(towers, **ddp_kw)
    ddp = towers if isinstance(towers, nn.parallel.DistributedDataParallel) else None
    if config.compile:
        towers = torch.compile(towers)
    model.train()

    # -- run dir ----------------------------------------------------------------------------------------------
    stop_at = total_steps if config.max_steps is None else min(total_steps, int(config.max_steps))
    resolved = {"device": str(device), "precision": precision, "world_size": dist.world_size,
                "model_spec": model.spec, "image_size": int(model.image_size), "image_type": image_type,
                "class_names": class_names,
                "n_train": len(train_ds), "n_val": len(val_ds), "steps_per_epoch": steps_per_epoch,
                "total_steps": total_steps, "data": _data_label(dataset_dir),
                "dataset_fingerprint": fingerprint(dataset_dir / "manifest.parquet"),
                "layout": "shards" if train_ds.sharded else "files",
                "torch": torch.__version__, "resumed_at_step": step if ckpt is not None else None,
                "stops_at_step": stop_at}
    if dist.is_main:
        write_json(run_dir / "config.json", {**requested.to_dict(), "resolved": {**resolved,
                                                                                 "batch_size": config.batch_size}})

    param_names = {id(p): n for n, p in model.module.named_parameters()}

    def model_tensors() -> list[tuple[str, torch.Tensor]]:
        return list(model.module.state_dict().items())

    def save_checkpoint(stats: dict | None) -> None:
        opt_tensors, opt_plain = _optimizer_to_checkpoint(optimizer)
        pid_names = {str(i): param_names.get(id(p), str(i))
                     for i, p in enumerate(p for g in optimizer.param_groups for p in g["params"])}
        named_opt = [(f"optimizer state {k.split('.')[2]} of {pid_names.get(k.split('.')[1], k)}", v)
                     for k, v in opt_tensors.items()]
        _refuse_nonfinite("checkpoint", model_tensors() + named_opt, dist, device, run_dir)
        rng = [_rng_state(device)]
        if dist.world_size > 1:
            rng = [None] * dist.world_size
            torch.distributed.all_gather_object(rng, _rng_state(device))
        if not dist.is_main:
            return
        rng_tensors, rng_plain = _rng_to_checkpoint(rng)
        state = {"step": step, "epoch": step // steps_per_epoch, "optimizer": opt_plain,
                 "scheduler": ckpt_io.to_plain(scheduler.state_dict()), "scaler": ckpt_io.to_plain(scaler.state_dict()),
                 "rng": rng_plain, "history": ckpt_io.to_plain(history), "nonfinite_total": nonfinite_total,
                 "epoch_stats": ckpt_io.to_plain(stats),
                 "config": requested.to_dict(),
                 "sampler": {"seed": config.seed, "epoch": step // steps_per_epoch,
                             "micro_batches_done": (step % steps_per_epoch) * accum,
                             "loader_workers": loader_workers}}
        ckpt_io.save(run_dir / CHECKPOINT, {"model": dict(model_tensors()), "optimizer": opt_tensors,
                                            "rng": rng_tensors}, state)

    # -- the loop ---------------------------------------------------------------------------------------------
    consecutive_bad = 0
    # buffers that the forward pass updates in train mode (BatchNorm running statistics): saved at the start of
    # each accumulation group and put back when the group is skipped, so a skipped step leaves no trace
    persistent = set(model.module.state_dict())
    buffers = [b for n, b in model.module.named_buffers() if n in persistent]
    float_buffers = [b for b in buffers if b.is_floating_point()]
    if not float_buffers:
        buffers = []
    saved_buffers: list[torch.Tensor] = []
    bar = tqdm(total=stop_at, initial=min(step, stop_at), desc=f"training {run_dir.name}", unit="step",
               enabled=dist.is_main)
    # one loader for the whole run: persistent workers are forked once, not at every epoch
    loader_kw = dict(batch_size=config.batch_size, collate_fn=_collate, drop_last=True,
                     pin_memory=device.type == "cuda", worker_init_fn=seed_worker,
                     generator=torch.Generator().manual_seed(config.seed))
    if stream is not None:  # a sharded dataset: streamed from its tars (cytoclip.data.ShardStream)
        loader = torch.utils.data.DataLoader(stream, num_workers=loader_workers,
                                             persistent_workers=loader_workers > 0, **loader_kw)
    else:
        keys = EpochKeySampler(sampler)
        loader = torch.utils.data.DataLoader(items, sampler=keys, num_workers=loader_workers,
                                             persistent_workers=loader_workers > 0, **loader_kw)
    while step < stop_at:
        epoch, done_in_epoch = divmod(step, steps_per_epoch)
        skip = done_in_epoch * accum
        if stream is not None:
            stream.set_epoch(epoch, skip)
        else:
            items.epoch = epoch
            keys.set_epoch(epoch, skip * config.batch_size)
        stats = epoch_stats if (epoch_stats and done_in_epoch) else {"loss_sum": 0.0, "n_batches": 0, "images": 0,
                                                                     "compute_s": 0.0, "nonfinite": 0}
        epoch_stats = None
        t_epoch = time.perf_counter()
        micro = skip
        group_bad = False
        optimizer.zero_grad(set_to_none=True)
        for images, captions, labels in loader:
            t0 = time.perf_counter()
            images = images.to(device, non_blocking=True)
            if config.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            labels = labels.to(device, non_blocking=True)
            tokens = caption_tokens[captions.to(device, non_blocking=True)]
            if buffers and micro % accum == 0:  # the first micro-batch of a group
                saved_buffers = [b.detach().clone() for b in buffers]
            micro += 1
            last_of_group = micro % accum == 0 or micro == micro_per_epoch
            # accumulation micro-batches skip DDP's gradient all-reduce; the group's last one syncs
            sync = ddp.no_sync() if ddp is not None and not last_of_group else contextlib.nullcontext()
            with sync:
                with amp():
                    img_f, txt_f = towers(images, tokens)
                    loss = loss_fn(img_f, txt_f, model.logit_scale, labels)
                # backward is queued before the one host sync of the step (the finiteness check); a non-finite
                # loss gives non-finite gradients, which are discarded with the whole accumulation group
                scaler.scale(loss / accum).backward()
            # one host sync: the loss, and whether the buffers the forward updated are still finite
            checks = [loss.detach().float().reshape(())]
            if float_buffers:
                checks.append(torch.stack([torch.isfinite(b).all() for b in float_buffers]).all().float())
            values = torch.stack(checks).tolist()
            loss_value = values[0]
            finite = math.isfinite(loss_value) and all(v == 1.0 for v in values[1:])
            if dist.world_size > 1:  # every rank must agree to skip, or ranks' weights would drift apart
                flag = torch.tensor([float(finite)], device=device)
                torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MIN)
                finite = bool(flag.item() > 0)
            if finite:
                stats["loss_sum"] += loss_value
                stats["n_batches"] += 1
            else:
                group_bad = True
            stats["images"] += images.shape[0] * dist.world_size
            if last_of_group:
                if group_bad:
                    optimizer.zero_grad(set_to_none=True)
                    with torch.no_grad():
                        for b, saved in zip(buffers, saved_buffers):
                            b.copy_(saved)
                    nonfinite_total += 1
                    stats["nonfinite"] += 1
                    consecutive_bad += 1
                    if consecutive_bad >= config.max_nonfinite:
                        bar.close()
                        raise FloatingPointError(
                            f"{run_dir}: the loss (or the model's buffers) was not finite for {consecutive_bad} "
                            f"consecutive steps (last at "
                            f"step {step}); lower TrainConfig.lr, set grad_clip, or use precision='fp32'/'bf16'")
                else:
                    consecutive_bad = 0
                    if config.grad_clip:
                        scaler.unscale_(optimizer)
                        torch.nn.utils.clip_grad_norm_(model.module.parameters(), config.grad_clip)
                    scaler.step(optimizer)
                    scaler.update()
                    optimizer.zero_grad(set_to_none=True)
                    with torch.no_grad():  # CLIP keeps the temperature within [1, 100]
                        model.logit_scale.clamp_(0, math.log(100))
                with warnings.catch_warnings():
                    # a skipped step still advances the schedule; torch warns when that precedes any optimizer step
                    warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)`")
                    scheduler.step()
                group_bad = False
                step += 1
                bar.update(1)
                if dist.is_main:
                    bar.set_postfix(epoch=f"{epoch + 1}/{config.epochs}", loss=f"{loss_value:.3f}",
                                    lr=f"{scheduler.get_last_lr()[0]:.2e}", refresh=False)
                if config.log_every_steps and step % config.log_every_steps == 0:
                    history.append({"kind": "step", "epoch": epoch, "step": step, "train_loss": loss_value,
                                    "lr": scheduler.get_last_lr()[0]})
                    if dist.is_main:
                        _write_logs(run_dir, history)
            stats["compute_s"] += time.perf_counter() - t0
            end_of_epoch = step % steps_per_epoch == 0 and last_of_group
            if last_of_group and not end_of_epoch and (
                    step >= stop_at or (config.checkpoint_every_steps and step % config.checkpoint_every_steps == 0)):
                save_checkpoint({**stats, "wall_s": stats.get("wall_s", 0.0) + time.perf_counter() - t_epoch})
            if step >= stop_at and not end_of_epoch:
                break
        if step % steps_per_epoch == 0:  # the epoch is complete: validate, log, checkpoint
            stats["wall_s"] = stats.get("wall_s", 0.0) + time.perf_counter() - t_epoch
            record = {"kind": "epoch", "epoch": epoch + 1, "step": step,
                      "train_loss": stats["loss_sum"] / max(1, stats["n_batches"]),
                      "lr": scheduler.get_last_lr()[0],
                      # images/s over the epoch's wall time (data loading included); the model-only rate beside it
                      "images_per_s": stats["images"] / max(1e-9, stats["wall_s"]),
                      "model_images_per_s": stats["images"] / max(1e-9, stats["compute_s"]),
                      "epoch_time_s": stats["wall_s"], "nonfinite_steps": stats["nonfinite"],
                      "data": resolved["data"]}
            if config.val_every_epochs and len(val_ds) and ((epoch + 1) % config.val_every_epochs == 0
                                                            or step == total_steps):
                if dist.is_main:
                    record.update(zero_shot_validation(model, val_ds, class_names, config.prompt, config.batch_size,
                                                       device, num_workers=config.num_workers,
                                                       amp_dtype=amp_dtype, ontology_paths=ontology_paths))
                if dist.world_size > 1:
                    torch.distributed.barrier()
            history.append(record)
            if dist.is_main:
                _write_logs(run_dir, history)
                if progress_visible():  # under the study runner the page shows the curves instead
                    bar.write(epoch_line(record, config.epochs))
            save_checkpoint(None)
    bar.close()
    del loader  # stops the persistent workers now rather than at garbage collection
    if step >= stop_at:  # finished, or stopped by max_steps: the model is saved either way
        _refuse_nonfinite("model", model_tensors(), dist, device, run_dir)
        if dist.is_main:
            model.eval()
            model.save(run_dir / "model")
            write_json(run_dir / FINISHED, {"fingerprint": run_fingerprint(requested), "step": step,
                                            "total_steps": total_steps})
    if dist.world_size > 1:
        torch.distributed.barrier()
    return run_dir


# ============================================================================================ CLI
_CLI_FIELDS = {  # CLI flag -> TrainConfig field
    "dataset": "dataset", "model": "model", "init_from": "init_from", "image_type": "image_type",
    "image_size": "image_size", "split": "split", "epochs": "epochs", "batch_size": "batch_size",
    "lr": "lr", "weight_decay": "weight_decay", "warmup_steps": "warmup_steps", "schedule": "schedule",
    "targets": "targets", "sigma": "sigma", "grad_clip": "grad_clip", "grad_accum_steps": "grad_accum_steps",
    "precision": "precision", "num_workers": "num_workers", "seed": "seed", "device": "device",
    "run_dir": "run_dir", "checkpoint_every_steps": "checkpoint_every_steps", "max_steps": "max_steps",
    "log_every_steps": "log_every_steps", "shuffle_buffer": "shuffle_buffer",
}


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``cytoclip train`` (defaults: :class:`TrainConfig`, then ``--config``, then flags)."""
    a = parser.add_argument
    a("--config", help="YAML file of TrainConfig fields (flags given on the command line override it)")
    a("--dataset", help="prepared dataset directory (holding manifest.parquet)")
    a("--model", help="model spec: tiny, tiny-vit, hf:DIR, open_clip:NAME[@CKPT], or a saved model/run dir")
    a("--init-from", help="saved model or run dir whose weights start the run")
    a("--image-type", help="exact | exact_mask | square224 | square336 | tile")
    a("--image-size", type=int, help="input size of a tiny model")
    a("--split", help="split scheme: sections | tiles | cross_age | cross_plane (default: manifest's split)")
    a("--epochs", type=int)
    a("--batch-size", type=int, help="per process")
    a("--lr", type=float)
    a("--weight-decay", type=float)
    a("--warmup-steps", type=int)
    a("--schedule", choices=SCHEDULES)
    a("--targets", choices=TARGETS)
    a("--sigma", type=float, help="ontology targets: exp(-hops/sigma)")
    a("--grad-clip", type=float)
    a("--grad-accum-steps", type=int)
    a("--precision", choices=PRECISIONS)
    a("--compile", action="store_true", default=None, help="torch.compile the model")
    a("--channels-last", action=argparse.BooleanOptionalAction, default=None,
      help="NHWC memory format for the model and its inputs (default on)")
    a("--freeze-image", action="store_true", default=None)
    a("--freeze-text", action="store_true", default=None)
    a("--augment", action=argparse.BooleanOptionalAction, default=None,
      help="the model's training augmentation (flips, mild jitter; default off, as in the paper)")
    a("--num-workers", type=int)
    a("--shuffle", action=argparse.BooleanOptionalAction, default=None,
      help="reshuffle the training items every epoch (default on; --no-shuffle: the manifest's order)")
    a("--shuffle-buffer", type=int, help="sharded datasets: samples in the streaming shuffle buffer")
    a("--seed", type=int)
    a("--device", help="auto | cpu | cuda | cuda:N")
    a("--checkpoint-every-steps", type=int)
    a("--log-every-steps", type=int)
    a("--max-steps", type=int, help="stop after this many optimizer steps (the schedule is unchanged)")
    a("--run-dir", help="run directory (e.g. runs/NAME)")
    g = parser.add_mutually_exclusive_group()
    g.add_argument("--resume", dest="resume", action="store_const", const=True, default=None,
                   help="continue from <run-dir>/checkpoint-last/ (error when there is none)")
    g.add_argument("--no-resume", dest="resume", action="store_const", const=False,
                   help="start afresh even when a checkpoint exists (default: resume a matching one)")
    parser.set_defaults(func=_cli)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """TrainConfig from parsed ``cytoclip train`` arguments (``--config`` YAML first, flags on top)."""
    values: dict[str, Any] = {}
    if args.config:
        import yaml

        path = Path(args.config)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: --config file not found")
        loaded = yaml.safe_load(path.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"{path}: expected a mapping of TrainConfig fields, got {type(loaded).__name__}")
        values.update(loaded)
    for flag, field in _CLI_FIELDS.items():
        v = getattr(args, flag, None)
        if v is not None:
            values[field] = v
    for field in ("compile", "channels_last", "freeze_image", "freeze_text", "augment", "resume", "shuffle"):
        v = getattr(args, field, None)
        if v is not None:
            values[field] = v
    return TrainConfig.from_dict(values, source=str(args.config or "command line"))


def _cli(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    if not config.dataset:
        print("cytoclip train: --dataset (or dataset in --config) is required", file=sys.stderr)
        return 2
    run_dir = train(config)
    print(run_dir)
    return 0


__all__ = ["TrainConfig", "train", "run_fingerprint", "is_finished", "RUN_ONLY_FIELDS", "build_model", "build_datasets", "configure_parser", "config_from_args", "zero_shot_validation",
           "EpochSeededItems", "EpochKeySampler", "lr_lambda", "init_distributed", "dist_env"]
