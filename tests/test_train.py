"""Tests of cytoclip.train on a tiny synthetic texture dataset made here (labelled synthetic)."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from cytoclip import checkpoint as ckpt_io
from cytoclip.train import TrainConfig, config_from_args, configure_parser, lr_lambda, train

REPO = Path(__file__).resolve().parents[1]
CLASSES = ["Cortical plate", "Ganglionic eminence", "Thalamus", "Hippocampus", "Cerebellum"]
ONTOLOGY_IDS = [5, 6, 50, 181, 346]  # leaves of the packaged DHARANI ontology, at 2 to 8 hops from each other


def _texture(cls: int, rng: np.random.Generator, size: int = 48) -> np.ndarray:
    """A Nissl-like texture per class: its own hue, dot density and stripe frequency, plus noise."""
    hues = np.array([[200, 90, 160], [90, 60, 170], [150, 40, 120], [60, 40, 90], [230, 180, 210]], dtype=float)
    img = np.tile(hues[cls], (size, size, 1))
    yy, xx = np.mgrid[0:size, 0:size]
    img *= (0.75 + 0.25 * np.sin(xx * (cls + 1) * 0.35 + rng.uniform(0, 6)))[..., None]
    dots = rng.random((size, size)) < 0.02 * (cls + 1)
    img[dots] *= 0.3
    img += rng.normal(0, 8, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def make_dataset(root, n_train: int = 8, n_val: int = 3, n_classes: int = 4, seed: int = 0):
    """A prepared-like dataset: PNGs + manifest.parquet in the contract's columns + SYNTHETIC.md."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    rows = []
    for c in range(n_classes):
        for i in range(n_train + n_val):
            rel = f"images/{c}_{i}.png"
            Image.fromarray(_texture(c, rng)).save(root / rel)
            rows.append({"path": rel, "image_type": "square224", "label": CLASSES[c], "label_id": ONTOLOGY_IDS[c],
                         "caption": CLASSES[c], "acronym": CLASSES[c][:3], "ontology_path": CLASSES[c],
                         "multi_labels": [CLASSES[c]], "multi_label_ids": [ONTOLOGY_IDS[c]], "mask_path": "",
                         "specimen": 1, "section": i, "age_gw": 24.0, "plane": "sagittal",
                         "x0": 0, "y0": 0, "x1": 48, "y1": 48, "mpp": 16.0, "part": 0, "n_parts": 1,
                         "area_px": 2304, "overlap": 1.0, "split": "train" if i < n_train else "val"})
    pd.DataFrame(rows).to_parquet(root / "manifest.parquet")
    (root / "SYNTHETIC.md").write_text("synthetic test data\n")
    return root


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("ds"))


def _cfg(dataset, run_dir, **kw):
    base = dict(dataset=str(dataset), run_dir=str(run_dir), model="tiny", image_size=64, epochs=2,
                batch_size=8, lr=5e-4, warmup_steps=2, num_workers=0, seed=0, device="cpu")
    base.update(kw)
    return TrainConfig(**base)


def _weights(run_dir):
    from safetensors.torch import load_file

    files = list((run_dir / "model").glob("*.safetensors"))
    assert len(files) == 1
    return load_file(files[0])


def _ckpt(run_dir):
    """(tensor groups, plain state) of the run's checkpoint."""
    return ckpt_io.load(run_dir / "checkpoint-last")


def test_run_dir_contents_and_reload(dataset, tmp_path):
    torch.set_num_threads(1)
    run = train(_cfg(dataset, tmp_path / "run", epochs=1, log_every_steps=2))
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["epochs"] == 1 and cfg["resolved"]["precision"] == "fp32"
    assert cfg["resolved"]["data"] == "synthetic atlas"
    assert cfg["resolved"]["class_names"] == sorted(CLASSES[:4])
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in lines if r["kind"] == "epoch"]
    assert len(epochs) == 1 and any(r["kind"] == "step" for r in lines)
    rec = epochs[0]
    assert math.isfinite(rec["train_loss"]) and rec["images_per_s"] > 0
    assert 0.0 <= rec["val_accuracy"] <= 1.0 and rec["val_n"] == 12
    log = pd.read_csv(run / "log.csv")
    assert {"train_loss", "lr", "val_accuracy", "val_f1_weighted", "images_per_s", "epoch_time_s"} <= set(log.columns)
    tensors, state = _ckpt(run)
    assert state["step"] == 4 and {"python", "numpy"} <= set(state["rng"][0]) and "0.torch" in tensors["rng"]
    manifest = json.loads((run / "checkpoint-last" / "checkpoint.json").read_text())
    assert manifest["format"] == "cytoclip-checkpoint" and set(manifest["files"]) == {"model", "optimizer", "rng"}
    # the directory holds the committed files only (the saves of earlier steps are gone)
    assert {p.name for p in (run / "checkpoint-last").iterdir()} == {"checkpoint.json"} | {
        e["file"] for e in manifest["files"].values()}
    from cytoclip.models import create_model

    reloaded = create_model(run)
    w = _weights(run)
    for name, p in reloaded.module.state_dict().items():
        if name in w:
            assert torch.equal(p, w[name])


def test_resume_equals_uninterrupted(dataset, tmp_path):
    """2 epochs straight == stop after 1 epoch + resume; also == stop mid-epoch (step 3) + resume."""
    torch.set_num_threads(1)
    straight = train(_cfg(dataset, tmp_path / "straight"))
    part = tmp_path / "parted"
    train(_cfg(dataset, part, max_steps=4))  # 4 steps = one epoch of 32 images at batch 8
    # a run stopped by max_steps saves its model like a finished one, and its config says where it stopped
    assert (part / "model").is_dir() and torch.equal(_weights(part)["logit_scale"], _ckpt(part)[0]["model"]["logit_scale"])
    stopped = json.loads((part / "config.json").read_text())
    assert stopped["max_steps"] == 4 and stopped["resolved"]["stops_at_step"] == 4
    assert _ckpt(part)[1]["step"] == 4
    train(_cfg(dataset, part, resume=True))
    mid = tmp_path / "mid"
    train(_cfg(dataset, mid, max_steps=3))
    train(_cfg(dataset, mid))  # resume="auto" picks the checkpoint up
    a, b, c = _weights(straight), _weights(part), _weights(mid)
    assert a.keys() == b.keys() == c.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
        assert torch.equal(a[k], c[k]), k
    hist = [json.loads(x) for x in (part / "metrics.jsonl").read_text().splitlines()]
    ref = [json.loads(x) for x in (straight / "metrics.jsonl").read_text().splitlines()]
    assert [h["train_loss"] for h in hist] == [r["train_loss"] for r in ref]


def test_loader_workers_and_precision_paths(dataset, tmp_path):
    """Item order and augmentation do not depend on the number of loader workers, also across an epoch boundary
    (persistent workers get the epoch with each item key); bf16 autocast runs on CPU."""
    torch.set_num_threads(1)
    # 4 micro-batches per epoch, 2 per step: step 3 is in the second epoch
    w0 = train(_cfg(dataset, tmp_path / "w0", max_steps=3, grad_accum_steps=2, augment=True))
    w2 = train(_cfg(dataset, tmp_path / "w2", max_steps=3, grad_accum_steps=2, num_workers=2, augment=True))
    a = _ckpt(w0)[0]["model"]
    b = _ckpt(w2)[0]["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    bf = train(_cfg(dataset, tmp_path / "bf16", max_steps=2, precision="bf16"))
    assert json.loads((bf / "config.json").read_text())["resolved"]["precision"] == "bf16"
    c = _ckpt(bf)[0]["model"]
    assert all(torch.isfinite(v).all() for v in c.values())
    with pytest.raises(ValueError, match="fp16"):
        train(_cfg(dataset, tmp_path / "fp16", precision="fp16"))


def test_epoch_keys_reseed_augmentation(dataset):
    """An item's augmentation is a function of (seed, epoch, index): the same key gives the same tensor, another
    epoch another one; the key sampler reshuffles per epoch and skips the items already done."""
    from cytoclip.data import ImageTextDataset
    from cytoclip.models import create_model
    from cytoclip.train import EpochKeySampler, EpochSeededItems

    model = create_model("tiny", image_size=64, seed=0)
    items = EpochSeededItems(ImageTextDataset(dataset, split="train", transform=model.train_transform), seed=0)
    assert torch.equal(items[(1, 3)][0], items[(1, 3)][0])
    assert not torch.equal(items[(0, 3)][0], items[(1, 3)][0])
    items.epoch = 1
    assert torch.equal(items[3][0], items[(1, 3)][0])
    keys = EpochKeySampler(torch.utils.data.DistributedSampler(items, num_replicas=1, rank=0, seed=0))
    keys.set_epoch(0)
    e0 = list(keys)
    keys.set_epoch(1)
    e1 = list(keys)
    assert {k[0] for k in e0} == {0} and {k[0] for k in e1} == {1}
    assert sorted(i for _, i in e0) == sorted(i for _, i in e1) and e0 != e1
    keys.set_epoch(1, skip=5)
    assert list(keys) == e1[5:] and len(keys) == len(e1) - 5


def test_resume_true_without_checkpoint_fails(dataset, tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint"):
        train(_cfg(dataset, tmp_path / "none", resume=True))


def test_resume_with_changed_config_refused(dataset, tmp_path):
    torch.set_num_threads(1)
    train(_cfg(dataset, tmp_path / "r", max_steps=1))
    with pytest.raises(ValueError, match="lr"):
        train(_cfg(dataset, tmp_path / "r", lr=1e-3, resume=True))


class _NanLoss(torch.nn.Module):
    """Stands in for ContrastiveLoss: NaN on the calls listed in ``bad`` (0-based), else a real loss."""

    calls = 0
    bad: set | None = None

    def __init__(self, *a, **kw):
        super().__init__()
        from cytoclip.loss import ContrastiveLoss

        self.inner = ContrastiveLoss(*a, **kw)

    def forward(self, img, txt, scale, labels=None):
        loss = self.inner(img, txt, scale, labels)
        i = type(self).calls
        type(self).calls += 1
        return loss * float("nan") if (self.bad is None or i in self.bad) else loss


def test_nonfinite_steps_are_skipped_and_counted(dataset, tmp_path, monkeypatch):
    torch.set_num_threads(1)
    import cytoclip.train as T

    class Some(_NanLoss):
        calls, bad = 0, {1, 2}

    monkeypatch.setattr(T, "ContrastiveLoss", Some)
    run = train(_cfg(dataset, tmp_path / "some", epochs=1))
    rec = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert rec["nonfinite_steps"] == 2 and math.isfinite(rec["train_loss"])
    assert all(torch.isfinite(v).all() for v in _weights(run).values())


def test_persistent_nonfinite_loss_stops_with_message(dataset, tmp_path, monkeypatch):
    torch.set_num_threads(1)
    import cytoclip.train as T

    class Always(_NanLoss):
        calls, bad = 0, None

    monkeypatch.setattr(T, "ContrastiveLoss", Always)
    with pytest.raises(FloatingPointError, match="3 consecutive"):
        train(_cfg(dataset, tmp_path / "nan", epochs=3, max_nonfinite=3))
    assert Always.calls == 3


def test_bad_config_raises_naming_field(dataset, tmp_path):
    with pytest.raises(ValueError, match="targets"):
        train(_cfg(dataset, tmp_path / "x", targets="nope"))
    # a split smaller than one batch trains with one batch per epoch, says so, and records the batch it used
    with pytest.warns(UserWarning, match="fewer than one batch"):
        run = train(_cfg(dataset, tmp_path / "small", batch_size=64, max_steps=1))
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["batch_size"] == 64 and 2 <= cfg["resolved"]["batch_size"] < 64
    with pytest.raises(FileNotFoundError, match="manifest.parquet"):
        train(_cfg(tmp_path / "missing", tmp_path / "x"))
    with pytest.raises(ValueError, match="unknown training option"):
        TrainConfig.from_dict({"learning_rate": 1.0}, source="cfg.yaml")


def test_lr_schedule_warmup_then_cosine():
    f = lr_lambda(2, 10, "cosine")
    assert f(0) == 0.5 and f(1) == 1.0 and f(2) == 1.0
    assert 0 < f(6) < 1.0 and f(10) == pytest.approx(0.0)
    assert lr_lambda(0, 10, "constant")(9) == 1.0


def test_cli_parses_into_config(tmp_path):
    import argparse

    import yaml

    (tmp_path / "c.yaml").write_text(yaml.safe_dump({"epochs": 7, "lr": 1e-3, "warmup_steps": 5}))
    p = argparse.ArgumentParser()
    configure_parser(p)
    args = p.parse_args(["--dataset", "d", "--model", "tiny", "--image-type", "square224", "--split", "sections",
                         "--epochs", "3", "--batch-size", "16", "--targets", "labels", "--run-dir", "runs/x",
                         "--resume", "--config", str(tmp_path / "c.yaml")])
    cfg = config_from_args(args)
    assert (cfg.dataset, cfg.epochs, cfg.batch_size, cfg.lr, cfg.warmup_steps) == ("d", 3, 16, 1e-3, 5)
    assert (cfg.split, cfg.targets, cfg.run_dir, cfg.resume) == ("sections", "labels", "runs/x", True)
    assert cfg.augment is False  # the paper's recipe: no augmentation unless asked for
    assert config_from_args(p.parse_args(["--dataset", "d", "--augment"])).augment is True


def test_ontology_targets_use_tree_distances(dataset, tmp_path):
    from cytoclip.ontology import Ontology
    from cytoclip.train import _ontology_distance

    names = sorted(CLASSES[:4])
    dist = _ontology_distance(dataset, names, None)
    onto = Ontology.load()
    ids = {c: ONTOLOGY_IDS[CLASSES.index(c)] for c in names}
    assert dist.shape == (4, 4) and (np.diag(dist) == 0).all()
    assert dist[0, 1] == onto.distance(ids[names[0]], ids[names[1]]) > 0
    torch.set_num_threads(1)
    run = train(_cfg(dataset, tmp_path / "onto", targets="ontology", sigma=0.5, epochs=1))
    rec = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert math.isfinite(rec["train_loss"])


def test_cli_train_runs(dataset, tmp_path, capsys):
    from cytoclip.cli import main

    torch.set_num_threads(1)
    out = tmp_path / "cli-run"
    rc = main(["train", "--dataset", str(dataset), "--model", "tiny", "--image-type", "square224", "--image-size",
               "64", "--epochs", "1", "--batch-size", "16", "--lr", "5e-4", "--targets", "labels", "--num-workers",
               "0", "--device", "cpu", "--run-dir", str(out)])
    assert rc == 0 and (out / "model").is_dir() and str(out) in capsys.readouterr().out
    assert json.loads((out / "config.json").read_text())["targets"] == "labels"


def test_tiny_model_overfits_texture_classes(tmp_path):
    """The tiny model learns 4 synthetic texture classes to >= 0.9 zero-shot accuracy (train images)."""
    torch.set_num_threads(2)
    ds = make_dataset(tmp_path / "ds", n_train=16, n_val=4, n_classes=4, seed=1)
    run = train(_cfg(ds, tmp_path / "fit", epochs=12, batch_size=16, lr=1e-3, targets="labels", augment=False,
                     val_split="train", warmup_steps=4))
    recs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert recs[-1]["train_loss"] < recs[0]["train_loss"]
    assert recs[-1]["val_accuracy"] >= 0.9, [r["val_accuracy"] for r in recs]


def _ddp_train_worker(rank, world_size, port, cfg_dict):
    import os

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world_size),
                      LOCAL_RANK=str(rank))
    train(TrainConfig.from_dict(cfg_dict))


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.parametrize("model", ["tiny-vit"])
def test_two_process_ddp_training_matches_one_process(dataset, tmp_path, model):
    """torchrun-style env, gloo on CPU: 2 processes x batch 4 give the losses and weights of 1 process x batch 8,
    for a model that does not normalise over the batch (``tiny-vit``; the default ``tiny`` has BatchNorm, whose
    statistics are per process under DDP, as in open_clip without --use-bn-sync). Tolerance: float32 summation
    order (the gradient all-reduce): losses 1e-5, weights 5e-5 + 1e-4 rel."""
    import torch.multiprocessing as mp

    torch.set_num_threads(1)
    kw = dict(model=model, epochs=1, max_steps=3, augment=True, warmup_steps=1, log_every_steps=1)
    one = _cfg(dataset, tmp_path / "one", batch_size=8, **kw)
    train(one)
    two = _cfg(dataset, tmp_path / "two", batch_size=4, **kw)
    mp.spawn(_ddp_train_worker, args=(2, _free_port(), two.to_dict()), nprocs=2, join=True)
    (a, sa), (b, sb) = _ckpt(tmp_path / "one"), _ckpt(tmp_path / "two")
    assert sb["step"] == sa["step"] == 3 and len(sb["rng"]) == 2
    cfg = json.loads((tmp_path / "two" / "config.json").read_text())
    assert cfg["resolved"]["world_size"] == 2
    losses = [[r["train_loss"] for r in s["history"] if r["kind"] == "step"] for s in (sa, sb)]
    assert len(losses[0]) == 3 and losses[0] == pytest.approx(losses[1], abs=1e-5)
    for k, v in a["model"].items():
        assert torch.allclose(v, b["model"][k], atol=5e-5, rtol=1e-4), k


def test_warmup_longer_than_run_warns(dataset, tmp_path):
    """A warm-up that outlasts the run (the rate would never reach TrainConfig.lr) is reported."""
    with pytest.warns(UserWarning, match="warmup_steps=100"):
        train(_cfg(dataset, tmp_path / "w", warmup_steps=100, max_steps=1))


# ============================================================================ issue 13: safety and reliability
class _Boom:
    """Unpickling this creates the file ``marker`` (as a crafted checkpoint would run any code)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_planted_pickle_checkpoints_never_run(dataset, tmp_path):
    """A pickle in the old checkpoint name, or in place of the new format's files, is refused with a message
    naming the file, and nothing of it runs."""
    import hashlib

    torch.set_num_threads(1)
    marker = tmp_path / "PWNED"
    # the old name, checkpoint-last.pt
    old = tmp_path / "old"
    old.mkdir()
    torch.save({"model": _Boom(marker), "config": {}}, old / "checkpoint-last.pt")
    with pytest.raises(ckpt_io.CheckpointError, match="checkpoint-last.pt: a pickle checkpoint"):
        train(_cfg(dataset, old, max_steps=1))
    with pytest.warns(UserWarning, match="checkpoint-last.pt: ignored"):
        train(_cfg(dataset, old, max_steps=1, resume=False))
    assert not marker.exists()
    # the new location: a pickle as checkpoint.json, then as a tensor file that the JSON names (with the right
    # size and hash, so it reaches the safetensors parser)
    new = tmp_path / "new"
    (new / "checkpoint-last").mkdir(parents=True)
    torch.save(_Boom(marker), new / "checkpoint-last" / "checkpoint.json")
    with pytest.raises(ckpt_io.CheckpointError, match=r"checkpoint-last/checkpoint.json: not a cytoclip checkpoint"):
        train(_cfg(dataset, new, max_steps=1))
    evil = new / "checkpoint-last" / "model-0123456789ab.safetensors"
    torch.save(_Boom(marker), evil)
    data = evil.read_bytes()
    entry = {"file": evil.name, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (new / "checkpoint-last" / "checkpoint.json").write_text(json.dumps(
        {"format": "cytoclip-checkpoint", "version": 1, "files": {"model": entry}, "state": {}}))
    with pytest.raises(ckpt_io.CheckpointError, match="model-0123456789ab.safetensors: not a readable safetensors"):
        train(_cfg(dataset, new, max_steps=1))
    assert not marker.exists()


def test_truncated_or_corrupt_checkpoint_refused_naming_file(dataset, tmp_path):
    torch.set_num_threads(1)
    run = train(_cfg(dataset, tmp_path / "r", max_steps=1))
    directory = run / "checkpoint-last"
    manifest = json.loads((directory / "checkpoint.json").read_text())
    model_file = directory / manifest["files"]["model"]["file"]
    good = model_file.read_bytes()
    model_file.write_bytes(good[: len(good) // 2])
    with pytest.raises(ckpt_io.CheckpointError, match=f"{model_file.name}: truncated or corrupt"):
        train(_cfg(dataset, run))
    flipped = bytearray(good)
    flipped[-3] ^= 0xFF
    model_file.write_bytes(bytes(flipped))
    with pytest.raises(ckpt_io.CheckpointError, match=f"{model_file.name}: corrupt"):
        train(_cfg(dataset, run))
    model_file.write_bytes(good)
    (directory / "checkpoint.json").write_text(json.dumps({**manifest, "format": "something-else"}))
    with pytest.raises(ckpt_io.CheckpointError, match="checkpoint.json: not a cytoclip checkpoint"):
        train(_cfg(dataset, run))
    (directory / "checkpoint.json").write_text(json.dumps(manifest))
    train(_cfg(dataset, run, max_steps=2))  # intact again: resumes
    assert _ckpt(run)[1]["step"] == 2


_KILLED_SAVE = """
import os, sys, torch
import safetensors.torch as st
from cytoclip import checkpoint as ckpt_io
real = st.save_file
def dying(tensors, filename, metadata=None):
    if sys.argv[2] in os.path.basename(filename):
        # killed inside safetensors' write: its temporary file (beside the target) is half written
        with open(os.path.join(os.path.dirname(filename), ".tmpab12cd"), "wb") as f:
            f.write(b"x" * 1000)
        os._exit(9)  # killed: no finally, no clean-up
    real(tensors, filename, metadata=metadata)
st.save_file = dying
ckpt_io.save(sys.argv[1], {"model": {"w": torch.full((3,), 2.0)}, "optimizer": {"m": torch.ones(2)}}, {"step": 2})
"""


def test_killed_checkpoint_save_keeps_previous_and_is_swept(tmp_path):
    """A process killed while writing a checkpoint leaves the previous one loadable and unchanged; what it left
    behind (temp files, files of the uncommitted save) is removed by the next save or a sweep."""
    import subprocess
    import sys

    directory = tmp_path / "checkpoint-last"
    ckpt_io.save(directory, {"model": {"w": torch.ones(3)}, "optimizer": {"m": torch.zeros(2)}}, {"step": 1})
    before = {p.name for p in directory.iterdir()}
    for dies_in in ("model-", "optimizer-"):  # killed while writing the first, then the second tensor file
        rc = subprocess.run([sys.executable, "-c", _KILLED_SAVE, str(directory), dies_in], cwd=tmp_path).returncode
        assert rc == 9
        assert {p.name for p in directory.iterdir()} > before  # debris of the killed save
        groups, state = ckpt_io.load(directory)
        assert state == {"step": 1} and torch.equal(groups["model"]["w"], torch.ones(3))
        removed = ckpt_io.sweep(directory)
        assert removed and {p.name for p in directory.iterdir()} == before
    ckpt_io.save(directory, {"model": {"w": torch.full((3,), 3.0)}}, {"step": 3})
    assert ckpt_io.load(directory)[1] == {"step": 3} and len(list(directory.iterdir())) == 2


def test_rerun_sweeps_debris_of_a_killed_run(dataset, tmp_path):
    torch.set_num_threads(1)
    run = train(_cfg(dataset, tmp_path / "r", max_steps=1))
    debris = [run / ".checkpoint-last.pt.k2j3h4.pt", run / ".metrics.jsonl.ab12.jsonl", run / ".config.json.x.json",
              run / "checkpoint-last" / "optimizer-ba9876543210.safetensors",
              run / "checkpoint-last" / ".checkpoint.json.zz.json"]
    for p in debris:
        p.write_bytes(b"x" * 100)
    (run / "model" / ".save-abc").mkdir()
    (run / "checkpoint-last" / ".pending-0123456789ab").mkdir()
    (run / "checkpoint-last" / ".pending-0123456789ab" / ".tmpXyZ123").write_bytes(b"x" * 100)
    train(_cfg(dataset, run, max_steps=2))
    assert not [p for p in debris if p.exists()] and not (run / "model" / ".save-abc").exists()
    assert not (run / "checkpoint-last" / ".pending-0123456789ab").exists()
    assert _ckpt(run)[1]["step"] == 2


def _register_bn_tiny(monkeypatch, tmp_path):
    """Make ``tiny`` a model with BatchNorm (open_clip's ModifiedResNet, cytoclip's former tiny tower)."""
    import open_clip

    from cytoclip.models import openclip_backend as ob

    cfg = {"embed_dim": 64, "vision_cfg": {"image_size": 64, "layers": [1, 1, 1, 1], "width": 16, "head_width": 32,
                                           "patch_size": None},
           "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 1}}
    (tmp_path / "cfgs").mkdir()
    (tmp_path / "cfgs" / "test-tiny-bn.json").write_text(json.dumps(cfg))
    ob.register_configs()
    open_clip.add_model_config(tmp_path / "cfgs")
    monkeypatch.setitem(ob.TINY_CONFIGS, "tiny", "test-tiny-bn")


def test_skipped_step_leaves_batchnorm_buffers_untouched(dataset, tmp_path, monkeypatch):
    """A step skipped for a non-finite loss leaves every tensor (BatchNorm running statistics included) as the
    previous step left it: 2 steps with the second skipped == 1 step."""
    torch.set_num_threads(1)
    import cytoclip.train as T

    _register_bn_tiny(monkeypatch, tmp_path)
    one = train(_cfg(dataset, tmp_path / "one", max_steps=1, warmup_steps=0))

    class Second(_NanLoss):
        calls, bad = 0, {1}

    monkeypatch.setattr(T, "ContrastiveLoss", Second)
    skipped = train(_cfg(dataset, tmp_path / "skipped", max_steps=2, warmup_steps=0))
    a, b = _ckpt(one)[0]["model"], _ckpt(skipped)[0]["model"]
    assert any("running_var" in k for k in a)
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_huge_lr_never_saves_nonfinite_tensors(dataset, tmp_path, monkeypatch):
    """lr 1e9 on a BatchNorm model (the issue's probe): the run ends with every saved tensor finite; a rate that
    overflows float32 (1e39) makes the weights inf, and the run refuses to save, naming them."""
    torch.set_num_threads(1)
    _register_bn_tiny(monkeypatch, tmp_path)
    run = train(_cfg(dataset, tmp_path / "big", max_steps=3, lr=1e9, weight_decay=0.0, warmup_steps=0))
    for name, tensors in [("model/", _weights(run)), ("checkpoint", _ckpt(run)[0]["model"])]:
        bad = [k for k, v in tensors.items() if v.is_floating_point() and not torch.isfinite(v).all()]
        assert not bad, (name, bad)
    with pytest.raises(FloatingPointError, match=r"refusing to save the checkpoint: \d+ tensor\(s\) hold NaN or inf: "):
        train(_cfg(dataset, tmp_path / "inf", max_steps=1, lr=1e39, weight_decay=0.0, warmup_steps=0))
    assert not (tmp_path / "inf" / "checkpoint-last").exists() and not (tmp_path / "inf" / "model").exists()


@pytest.mark.parametrize("field,value", [
    ("lr", float("inf")), ("lr", float("nan")), ("lr", 0.0), ("lr", -1e-3), ("weight_decay", -0.1),
    ("weight_decay", float("inf")), ("weight_decay", 5e4), ("image_size", 0), ("image_size", 8), ("image_size", 64.5),
    ("betas", (0.9, 1.0)), ("betas", (0.9,)), ("eps", 0.0), ("sigma", float("inf")), ("epochs", 1.5),
    ("batch_size", True), ("seed", -1), ("device", "gpu"), ("prompt", "a photo"), ("grad_clip", float("nan")),
    ("max_steps", 0), ("augment", "yes"), ("resume", 1), ("dataset", ""), ("split", ""),
])
def test_validate_refuses_out_of_range_values(tmp_path, field, value):
    import dataclasses

    cfg = dataclasses.replace(_cfg(tmp_path, tmp_path / "x"), **{field: value})
    with pytest.raises(ValueError, match=f"TrainConfig.{field}: expected"):
        cfg.validate()


def test_image_size_is_used_and_recorded(dataset, tmp_path):
    torch.set_num_threads(1)
    run = train(_cfg(dataset, tmp_path / "r", image_size=80, max_steps=1))
    cfg = json.loads((run / "config.json").read_text())
    meta = json.loads((run / "model" / "cytoclip_model.json").read_text())
    assert cfg["image_size"] == cfg["resolved"]["image_size"] == meta["image_size"] == 80


def test_renamed_fields_and_defaults():
    with pytest.raises(ValueError, match="'dataset_dir' is now 'dataset'.*'split_scheme' is now 'split'"):
        TrainConfig.from_dict({"dataset_dir": "d", "split_scheme": "sections"})
    c = TrainConfig.from_dict({"dataset": "d", "split": "sections", "lr": "5e-4"})  # YAML 1.1 reads 5e-4 as text
    assert (c.dataset, c.split, c.lr, c.augment, c.weight_decay) == ("d", "sections", 5e-4, False, 0.2)


def test_checkpoint_round_trip_is_bit_exact_and_row_sparse(tmp_path):
    """Mostly-zero matrices (Adam's moments of an embedding whose rows are barely used) are stored as their
    non-zero rows and come back bit for bit (a -0.0 row is not dropped); everything else as is."""
    emb = torch.zeros(1000, 16)
    emb[[3, 500, 999]] = torch.randn(3, 16)
    emb[7, 2] = -0.0
    dense = torch.randn(64, 64)
    groups = {"optimizer": {"state.0.exp_avg": emb, "state.1.exp_avg": dense, "state.0.step": torch.tensor(3.0),
                            "ids": torch.arange(5000).reshape(1000, 5) * 0}}
    ckpt_io.save(tmp_path / "c", groups, {"step": 3, "lr": [5e-4]})
    back, state = ckpt_io.load(tmp_path / "c")
    assert state == {"step": 3, "lr": [5e-4]}
    for k, v in groups["optimizer"].items():
        got = back["optimizer"][k]
        assert got.dtype == v.dtype and got.shape == v.shape and torch.equal(got.reshape(-1).view(torch.uint8), v.reshape(-1).view(torch.uint8)), k
    manifest = json.loads((tmp_path / "c" / "checkpoint.json").read_text())
    assert set(manifest["files"]["optimizer"]["row_sparse"]) == {"state.0.exp_avg", "ids"}
    assert manifest["files"]["optimizer"]["bytes"] < (emb.numel() + dense.numel()) * 4


# ------------------------------------------------------------------------------------------- sharded datasets

@pytest.fixture(scope="module")
def smoke_tiles(smoke_atlas, tmp_path_factory):
    """The smoke atlas's tiles (8 a section) in both layouts: (files dataset, WebDataset shards of 4 samples)."""
    from cytoclip.tiles import prepare_tiles

    root = tmp_path_factory.mktemp("smoke-tiles")
    kw = dict(workers=2, max_tiles_per_section=8)
    return (prepare_tiles(smoke_atlas, root / "files", **kw),
            prepare_tiles(smoke_atlas, root / "shards", format="shards", shard_size=4, **kw))


def _losses(run_dir):
    return [r["train_loss"] for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
            if r["kind"] == "epoch"]


def test_shards_train_like_files(smoke_tiles, tmp_path):
    """`cytoclip train` on shards = on files for the same seed, bit for bit, when the order is the manifest's
    (--no-shuffle): the same JPEG bytes, one decoder, the same transforms seeded per item, the same batches."""
    from cytoclip.cli import main

    torch.set_num_threads(1)
    files, shards = smoke_tiles
    runs = {}
    for name, ds, workers in (("files", files, "0"), ("shards", shards, "1")):
        runs[name] = tmp_path / name
        assert main(["train", "--dataset", str(ds), "--run-dir", str(runs[name]), "--model", "tiny",
                     "--image-size", "64", "--epochs", "2", "--batch-size", "8", "--lr", "5e-4",
                     "--num-workers", workers, "--device", "cpu", "--no-shuffle", "--augment"]) == 0
    cfg = {k: json.loads((runs[k] / "config.json").read_text())["resolved"] for k in runs}
    assert cfg["shards"]["layout"] == "shards" and cfg["files"]["layout"] == "files"
    assert cfg["shards"]["n_train"] == cfg["files"]["n_train"] > 16
    assert _losses(runs["shards"]) == _losses(runs["files"]) and all(map(math.isfinite, _losses(runs["files"])))
    wf, ws = _weights(runs["files"]), _weights(runs["shards"])
    assert all(torch.equal(wf[k], ws[k]) for k in wf)
    last = {k: json.loads((runs[k] / "metrics.jsonl").read_text().splitlines()[-1]) for k in runs}
    assert last["shards"]["val_accuracy"] == last["files"]["val_accuracy"]  # validation reads the tars


def test_shards_shuffled_stream_resumes_exactly(smoke_tiles, tmp_path):
    _, shards = smoke_tiles
    torch.set_num_threads(1)
    kw = dict(num_workers=2, shuffle_buffer=16, val_every_epochs=0, warmup_steps=0)
    full = train(_cfg(shards, tmp_path / "full", **kw))
    steps = json.loads((full / "config.json").read_text())["resolved"]["steps_per_epoch"]
    part = tmp_path / "part"
    train(_cfg(shards, part, max_steps=steps + 2, **kw))  # stopped inside the second epoch
    train(_cfg(shards, part, **kw))
    assert _losses(part) == _losses(full)
    wf, wp = _weights(full), _weights(part)
    assert all(torch.equal(wf[k], wp[k]) for k in wf)


def test_open_clip_train_reads_the_shards(smoke_tiles, tmp_path):
    """open_clip's own script trains on the shards unchanged (--dataset-type webdataset)."""
    from cytoclip.data import ImageTextDataset

    _, shards = smoke_tiles
    train_ds = ImageTextDataset(shards, split="train")
    tars = train_ds.shards()
    # open_clip_train.main with the tiny config registered and webdataset's end-of-shard marker off for its
    # reader (an open_clip/webdataset incompatibility: cytoclip.prepare.shards.open_clip_reads_shards)
    code = ("import sys; from cytoclip.models.openclip_backend import register_configs; register_configs(); "
            "from cytoclip.prepare.shards import open_clip_reads_shards; open_clip_reads_shards(); "
            "from open_clip_train.main import main; sys.exit(main(sys.argv[1:]))")
    argv = ["--dataset-type", "webdataset", "--train-data", "::".join(tars), "--train-num-samples",
            str(len(train_ds)), "--model", "cytoclip-tiny", "--batch-size", "8", "--epochs", "1", "--workers", "1",
            "--lr", "5e-4", "--warmup", "1", "--precision", "fp32", "--seed", "0", "--logs", str(tmp_path),
            "--name", "wds", "--log-every-n-steps", "1", "--report-to", "", "--save-frequency", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", code, *argv], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    log = (tmp_path / "wds" / "out.log").read_text()
    losses = [float(x) for x in re.findall(r"Contrastive_loss: ([0-9.]+)", log)]
    assert losses and all(map(math.isfinite, losses))
    assert (tmp_path / "wds" / "checkpoints" / "epoch_1.pt").is_file()
