"""Loader throughput: images/s delivered from WebDataset shards vs from per-file JPEGs, measured in one run.

Both layouts hold the same synthetic 224-px JPEG tiles (labelled synthetic; a tile-sized Nissl-like texture)
and go through the trainer's own readers and the model's transform (pad, bicubic resize, normalise):
``cytoclip.data.ImageTextDataset`` + the trainer's sampler for files, ``ImageTextDataset.stream`` (the
``webdataset`` reader with its shuffle buffer) for shards. Measured at 1 and 2 loader workers; the printed
projection to 16 workers assumes one free core per worker and linear scaling from the 1-worker rate, printed
with the measured cost per image per worker and the 1 -> 2 worker scaling (on a small shared machine the only
check of that assumption). The model's consumption beside it: the tiny model's measured fwd + bwd + AdamW rate
on this CPU, and the GPU target of ViT-B/16 (3,000 img/s per GPU, the issue's target; the paper's rate was
~290 img/s per GPU).

    python benchmarks/bench_loader.py [--images 2000] [--batch-size 64]
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

#: ViT-B/16 at 224 px: the issue's per-GPU target on an H100/H200 (10x the paper's ~290 img/s per A100)
VIT_B_TARGET = 3000.0
PROJECTED_WORKERS = 16


def tile_image(i: int, rng: np.random.Generator, size: int = 224) -> np.ndarray:
    """A Nissl-like synthetic tile: tinted background, dark dots (cells) of a class-dependent density."""
    c = i % 8
    img = np.empty((size, size, 3), dtype=np.float32)
    img[:] = (235 - 8 * c, 215 - 5 * c, 235)
    cells = rng.random((size, size)) < 0.01 * (c + 1)
    img[cells] = (90, 50, 140)
    img += rng.normal(0, 10, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def build_tile_layouts(root: Path, n_images: int, shard_size: int = 1000, seed: int = 0) -> tuple[Path, Path]:
    """The same synthetic JPEG tiles as a per-file dataset and as WebDataset shards (written by the
    preparation's own packer, :func:`cytoclip.prepare.shards.pack_shards`). Returns (files dir, shards dir)."""
    from cytoclip.prepare.shards import pack_shards, write_shard_index

    rng = np.random.default_rng(seed)
    files, shards = root / "files", root / "shards"
    rows = []
    n_sections = max(1, n_images // shard_size)
    for i in range(n_images):
        sec = i % n_sections
        rel = f"tiles/specimen_1/{sec}/{i // n_sections}_0.jpg"
        (files / rel).parent.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        Image.fromarray(tile_image(i, rng)).save(buf, format="JPEG", quality=90)
        (files / rel).write_bytes(buf.getvalue())
        rows.append({"path": rel, "image_type": "tile", "label": f"region {i % 8}", "label_id": i % 8,
                     "caption": f"region {i % 8}", "specimen": 1, "section": sec, "split": "train"})
    manifest = pd.DataFrame(rows).sort_values(["section", "path"], kind="stable").reset_index(drop=True)
    manifest.to_parquet(files / "manifest.parquet")
    parts = [pack_shards(group, files, shards, f"S1_{sec}", shard_size)
             for sec, group in manifest.groupby("section", sort=True)]
    sharded = pd.concat(parts, ignore_index=True)
    sharded.to_parquet(shards / "manifest.parquet")
    write_shard_index(sharded, shards)
    for d in (files, shards):
        (d / "SYNTHETIC.md").write_text("synthetic benchmark tiles, not DHARANI\n")
    return files, shards


def _collate(batch):
    from cytoclip.train import _collate as trainer_collate

    return trainer_collate(batch)


def loader_rate(dataset_dir: Path, workers: int, batch_size: int, transform, seconds: float = 20.0,
                shuffle_buffer: int = 2000, clock=time.perf_counter) -> float:
    """Images/s the trainer's loader delivers for ``dataset_dir`` (files or shards, chosen from its manifest)
    with ``workers`` processes; the first batch (worker start-up) is not counted. ``clock=time.process_time``
    with ``workers=0``: images per CPU-second of the whole per-image path (read, decode, transform, collate) in
    this process, which other load on the machine barely changes (wall-clock rates it does)."""
    from cytoclip.data import ImageTextDataset
    from cytoclip.train import EpochKeySampler, EpochSeededItems, seed_worker

    ds = ImageTextDataset(dataset_dir, split="train", transform=transform)
    batches = len(ds) // batch_size
    kw = dict(batch_size=batch_size, num_workers=workers, collate_fn=_collate, drop_last=True,
              worker_init_fn=seed_worker)
    if ds.sharded:
        stream = ds.stream(0, batch_size, batches, shuffle_buffer=shuffle_buffer)
        stream.set_epoch(0)
        loader = torch.utils.data.DataLoader(stream, **kw)
    else:
        sampler = EpochKeySampler(torch.utils.data.DistributedSampler(ds, num_replicas=1, rank=0, seed=0))
        sampler.set_epoch(0)
        loader = torch.utils.data.DataLoader(EpochSeededItems(ds, 0), sampler=sampler, **kw)
    n, t0, c0 = 0, None, None
    for i, (images, _, _) in enumerate(loader):
        if i == 0:
            t0, c0 = time.perf_counter(), clock()
            continue
        n += images.shape[0]
        if time.perf_counter() - t0 > seconds:
            break
    return n / max(1e-9, clock() - c0)


def tiny_model_rate(batch_size: int, steps: int = 6) -> float:
    """Images/s of the tiny model's training step on this CPU (fwd + bwd + fused AdamW, batch in memory)."""
    from cytoclip.loss import ContrastiveLoss
    from cytoclip.models import create_model
    from cytoclip.train import _fused_kw

    model = create_model("tiny", device="cpu")
    model.module.to(memory_format=torch.channels_last)
    size = int(model.image_size)
    images = torch.randn(batch_size, 3, size, size).contiguous(memory_format=torch.channels_last)
    tokens = model.tokenize(["region 0"] * batch_size)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4,
                            **_fused_kw(model.module, torch.device("cpu")))
    loss_fn, times = ContrastiveLoss(), []
    model.train()
    for i in range(steps + 2):
        t = time.perf_counter()
        loss = loss_fn(model.encode_image(images), model.encode_text(tokens), model.logit_scale)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i >= 2:
            times.append(time.perf_counter() - t)
    return batch_size / statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=2000)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--shard-size", type=int, default=500)
    p.add_argument("--seconds", type=float, default=20.0, help="time limit of each loader measurement")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    from cytoclip.data import model_transform

    work = Path(tempfile.mkdtemp(prefix="cytoclip-bench-loader-"))
    t = time.perf_counter()
    files, shards = build_tile_layouts(work, args.images, args.shard_size)
    print(f"[synthetic tiles] {args.images} 224-px JPEGs in both layouts ({time.perf_counter() - t:.0f} s to build)")
    transform = model_transform(224, (0.5,) * 3, (0.5,) * 3)
    rates: dict[tuple[str, int], float] = {}
    for w in args.workers:  # alternate the layouts at each worker count: background load hits both alike
        for name, d in (("files", files), ("shards", shards)):
            rates[name, w] = loader_rate(d, w, args.batch_size, transform, args.seconds)
            print(f"{name:>6}, {w} worker(s): {rates[name, w]:8.1f} img/s")
    cpu: dict[str, float] = {}
    for name, d in (("files", files), ("shards", shards)):
        cpu[name] = loader_rate(d, 0, args.batch_size, transform, args.seconds / 2, clock=time.process_time)
        print(f"{name:>6}, in-process: {cpu[name]:8.1f} img/s per CPU-second ({1e3 / cpu[name]:.2f} ms CPU per image)")
    tiny = tiny_model_rate(args.batch_size)
    print(f"tiny model consumes {tiny:.1f} img/s on this CPU (1 thread; fwd + bwd + AdamW)")
    for w in args.workers:
        print(f"shards / files at {w} worker(s): {rates['shards', w] / rates['files', w]:.2f}x")
    w1 = min(args.workers)
    cores = os.cpu_count() or 1
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"projection: assumes one free core per worker and linear scaling, from the {w1}-worker rate; this "
          f"machine has {cores} core(s) (load average {load:.1f} during the run), so it measures at most "
          f"{min(cores, max(args.workers))} worker(s) in parallel and cannot confirm the scaling to "
          f"{PROJECTED_WORKERS}")
    for name in ("files", "shards"):
        per_img = ", ".join(f"{w} w: {1e3 * w / rates[name, w]:.2f} ms" for w in args.workers)
        print(f"{name:>6} per image per worker-core: {per_img}")
        for w in args.workers:
            if w > w1:
                print(f"{name:>6} scaling {w1} -> {w} workers: {rates[name, w] / rates[name, w1]:.2f}x "
                      f"(linear: {w / w1:.2f}x; efficiency {rates[name, w] / rates[name, w1] * w1 / w:.0%})")
    for name in ("files", "shards"):
        proj = rates[name, w1] / w1 * PROJECTED_WORKERS
        verdict = "PASS" if proj >= VIT_B_TARGET else "MISS"
        print(f"{name:>6} projected to {PROJECTED_WORKERS} workers (1 core each, linear): {proj:8.0f} img/s; target "
              f">= ViT-B/16 consumption {VIT_B_TARGET:.0f} img/s/GPU: {verdict} ({proj / VIT_B_TARGET:.2f}x)")
    for name in ("files", "shards"):
        proj = cpu[name] * PROJECTED_WORKERS
        print(f"{name:>6} projected to {PROJECTED_WORKERS} workers from CPU time (1 core each, linear, no IPC): "
              f"{proj:8.0f} img/s: {'PASS' if proj >= VIT_B_TARGET else 'MISS'} ({proj / VIT_B_TARGET:.2f}x)")
    mb = VIT_B_TARGET * 3 * 224 * 224 * 4 / 1e6
    print(f"not measured by the projection: the main process receiving {VIT_B_TARGET:.0f} float32 224-px images/s "
          f"({mb:.0f} MB/s through shared memory, then pinned and copied to the GPU)")
    proj = rates["shards", w1] / w1
    print(f"shards at 1 worker vs the tiny model on this CPU: {proj / tiny:.2f}x "
          f"({'PASS' if proj >= tiny else 'MISS'}: loader >= model consumption)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
