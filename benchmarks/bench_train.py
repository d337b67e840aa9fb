"""Training throughput of ``cytoclip train`` against open_clip's own training script, measured in one run.

Both trainers get the same tiny model (the packaged ``cytoclip-tiny`` open_clip config, registered with
``open_clip.add_model_config``), the same images (a prepared dataset's ``openclip_<type>_train.csv`` view for
open_clip, its manifest for cytoclip), the same batch size, loader workers, threads, precision and epochs.
Steady-state rates are taken from the last epoch of each (images per second of wall time, data loading
included), and the whole call (start-up included) is timed too. Also measured: the data loader alone
(images/s it can deliver) against what the model consumes (forward + backward + AdamW step on a batch held in
memory), which tells whether training is input-bound.

Without ``--dataset`` a small prepared-like dataset of synthetic texture PNGs (labelled synthetic) is built.

With ``--layout shards`` both read the same WebDataset shards (synthetic 224-px JPEG tiles, written by the
preparation's packer): cytoclip through its streaming reader, open_clip with ``--dataset-type webdataset``.
The target (printed with PASS/MISS): cytoclip / open_clip >= 1.0 steady.

CPU (this machine):  python benchmarks/bench_train.py --threads 1 --workers 1 [--layout shards]
GPU:                 python benchmarks/bench_train.py --device cuda --batch-size 64 --workers 8 --images 4096 \
                         --dataset data/prepared/<atlas>/regions --image-type square224
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from tqdm.auto import tqdm

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from cytoclip.io import atomic_path, write_json  # noqa: E402


def build_dataset(root: Path, n_images: int, n_classes: int = 8, size: int = 224, seed: int = 0) -> Path:
    """A prepared-like dataset: square PNG textures, manifest.parquet and the open_clip CSV view (synthetic)."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    yy, xx = np.mgrid[0:size, 0:size]
    for i in tqdm(range(n_images), desc="building synthetic benchmark images"):
        c = i % n_classes
        base = rng.uniform(60, 230, 3)
        img = base * (0.7 + 0.3 * np.sin(xx * 0.05 * (c + 1) + yy * 0.03 * c))[..., None]
        img += rng.normal(0, 12, img.shape)
        rel = f"images/{i:06d}.png"
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(root / rel)
        rows.append({"path": rel, "image_type": "square224", "label": f"region {c}", "label_id": c,
                     "caption": f"region {c}", "split": "train"})
    manifest = pd.DataFrame(rows)
    manifest.to_parquet(root / "manifest.parquet")
    (root / "SYNTHETIC.md").write_text("synthetic benchmark images, not DHARANI\n")
    write_csv_view(root, manifest, "square224")
    return root


def write_csv_view(root: Path, manifest: pd.DataFrame, image_type: str) -> Path:
    """``openclip_<type>_train.csv`` (absolute ``filepath``, ``title``), written when a dataset lacks it."""
    path = root / f"openclip_{image_type}_train.csv"
    if not path.exists():
        rows = manifest[(manifest["image_type"] == image_type) & (manifest["split"] == "train")]
        view = pd.DataFrame({"filepath": [str((root / p).resolve()) for p in rows["path"]],
                             "title": rows["caption"].astype(str)})
        with atomic_path(path) as tmp:
            view.to_csv(tmp, index=False)
    return path


def subset(dataset: Path, image_type: str, n: int, work: Path) -> Path:
    """A dataset dir holding the first ``n`` training images of ``dataset`` (manifest + CSV view, same files)."""
    manifest = pd.read_parquet(dataset / "manifest.parquet")
    rows = manifest[(manifest["image_type"] == image_type) & (manifest["split"] == "train")].head(n).copy()
    if len(rows) < n:
        print(f"note: {dataset} has {len(rows)} training images of type {image_type}; using all of them")
    rows["path"] = [str((dataset / p).resolve()) for p in rows["path"]]  # absolute: the subset dir has no images
    out = work / "subset"
    out.mkdir(parents=True, exist_ok=True)
    rows.to_parquet(out / "manifest.parquet")
    for marker in ("SYNTHETIC.md", "report.json"):
        if (dataset / marker).exists():
            (out / marker).write_bytes((dataset / marker).read_bytes())
    view = pd.DataFrame({"filepath": rows["path"], "title": rows["caption"].astype(str)})
    view.to_csv(out / f"openclip_{image_type}_train.csv", index=False)
    return out


def loader_vs_model(dataset: Path, image_type: str, args, device: torch.device) -> dict:
    """Images/s of the data loader alone and of the model alone (fwd + bwd + AdamW step, batch in memory)."""
    from cytoclip.data import ImageTextDataset
    from cytoclip.loss import ContrastiveLoss
    from cytoclip.models import create_model
    from cytoclip.train import EpochSeededItems, _collate, _fused_kw, seed_worker

    model = create_model(args.model, device=device)
    ds = EpochSeededItems(ImageTextDataset(dataset, image_type=image_type, split="train",
                                           transform=model.train_transform), seed=0)
    loader = torch.utils.data.DataLoader(ds, batch_size=args.batch_size, shuffle=True, num_workers=args.workers,
                                         collate_fn=_collate, drop_last=True, worker_init_fn=seed_worker,
                                         pin_memory=device.type == "cuda")
    n, t0 = 0, None
    batch = None
    for i, b in enumerate(tqdm(loader, desc="data loader alone")):
        if i == 0:  # the first batch pays for worker start-up
            t0, batch = time.perf_counter(), b
            continue
        n += b[0].shape[0]
    loader_rate = n / max(1e-9, time.perf_counter() - t0) if n else float("nan")

    # the step as the trainer takes it (its default channels_last and fused AdamW), the batch held in memory
    model.module.to(memory_format=torch.channels_last)
    images = batch[0].to(device).contiguous(memory_format=torch.channels_last)
    tokens = model.tokenize(["region 0"] * images.shape[0]).to(device)
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4,
                            **_fused_kw(model.module, device))
    loss_fn = ContrastiveLoss()
    dtype = torch.bfloat16 if device.type == "cuda" else None
    times = []
    for i in tqdm(range(args.model_steps + 2), desc="model alone"):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = loss_fn(model.encode_image(images), model.encode_text(tokens), model.logit_scale)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= 2:  # warm-up steps excluded
            times.append(time.perf_counter() - t)
    model_rate = images.shape[0] / statistics.median(times)
    return {"loader_images_per_s": loader_rate, "model_images_per_s": model_rate,
            "loader_over_model": loader_rate / model_rate}


def run_cytoclip(dataset: Path, image_type: str, args, work: Path) -> dict:
    """``cytoclip.train.train`` for ``args.epochs`` epochs; steady rate = last epoch's images_per_s."""
    from cytoclip.train import TrainConfig, train

    cfg = TrainConfig(dataset=str(dataset), run_dir=str(work / "cytoclip-run"), model=args.model,
                      image_type=image_type, epochs=args.epochs, batch_size=args.batch_size, lr=5e-4,
                      warmup_steps=10, num_workers=args.workers, seed=0, device=args.device,
                      precision="auto", val_every_epochs=0, resume=False, augment=not args.no_augment)
    t = time.perf_counter()
    run = train(cfg)
    wall = time.perf_counter() - t
    recs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in recs if r["kind"] == "epoch"]
    n = epochs[-1]["step"] * args.batch_size  # images seen over all epochs (one process)
    return {"wall_s": wall, "images_per_s_total": n / wall, "images_per_s_steady": epochs[-1]["images_per_s"],
            "images_trained": n,
            # the trainer's own split of its last epoch: time in the model step vs the whole epoch (data waits)
            "model_images_per_s_in_run": epochs[-1]["model_images_per_s"],
            "data_wait_fraction": 1 - epochs[-1]["images_per_s"] / epochs[-1]["model_images_per_s"]}


def run_open_clip(csv: Path | list[str], args, work: Path, device: torch.device) -> dict:
    """open_clip's ``open_clip_train.main.main`` on the CSV view (or on a list of WebDataset tars); steady rate
    from its per-batch times in the last epoch (its ``Batch (t)`` includes data loading, like ours)."""
    from open_clip_train.main import main as oc_main

    from cytoclip.models.openclip_backend import TINY_CONFIGS, register_configs

    register_configs()
    from cytoclip.prepare.shards import open_clip_reads_shards

    open_clip_reads_shards()  # webdataset >= 0.2.96 vs open_clip_train's reader (see its docstring)
    name = TINY_CONFIGS[args.model]
    logs = work / "open_clip-logs"
    precision = "amp_bf16" if device.type == "cuda" else "fp32"
    if isinstance(csv, list):  # WebDataset shards: the same tars cytoclip streams
        n_rows = args.n_samples
        data_args = ["--train-data", "::".join(csv), "--dataset-type", "webdataset", "--train-num-samples",
                     str(n_rows)]
    else:
        n_rows = len(pd.read_csv(csv))
        data_args = ["--train-data", str(csv), "--dataset-type", "csv", "--csv-separator", ",", "--csv-img-key",
                     "filepath", "--csv-caption-key", "title"]
    argv = [*data_args, "--model", name, "--batch-size", str(args.batch_size),
            "--epochs", str(args.epochs), "--workers", str(args.workers), "--lr", "5e-4", "--warmup", "10",
            "--wd", "0.2", "--precision", precision, "--seed", "0", "--logs", str(logs), "--name", "bench",
            "--log-every-n-steps", "1", "--save-frequency", "1", "--report-to", ""]
    # open_clip's setup_logging sets every existing logger (torch's included) to INFO; put them back after
    levels = {name: lg.level for name, lg in logging.root.manager.loggerDict.items()
              if isinstance(lg, logging.Logger)}
    root_level = logging.getLogger().level
    t = time.perf_counter()
    try:
        rc = oc_main(argv)
    finally:
        logging.getLogger().setLevel(root_level)
        for name, lg in logging.root.manager.loggerDict.items():
            if isinstance(lg, logging.Logger):
                lg.setLevel(levels.get(name, logging.NOTSET))
    wall = time.perf_counter() - t
    if rc not in (None, 0):
        raise RuntimeError(f"open_clip_train.main returned {rc}; see {logs / 'bench' / 'out.log'}")
    log = (logs / "bench" / "out.log").read_text()
    steps_per_epoch = n_rows // args.batch_size
    # "Train Epoch: E [...] ... Batch (t): 0.123, ..." one line per step with --log-every-n-steps 1
    per_epoch: dict[int, list[float]] = {}
    for m in re.finditer(r"Train Epoch: (\d+) .*?Batch \(t\): ([0-9.]+)", log):
        per_epoch.setdefault(int(m.group(1)), []).append(float(m.group(2)))
    last = per_epoch[max(per_epoch)]
    steady = args.batch_size * len(last) / sum(last)
    n = steps_per_epoch * args.batch_size * args.epochs
    return {"wall_s": wall, "images_per_s_total": n / wall, "images_per_s_steady": steady, "images_trained": n}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", help="prepared dataset dir (default: build a synthetic one)")
    p.add_argument("--image-type", default="square224")
    p.add_argument("--model", default="tiny", choices=["tiny", "tiny-vit"])
    p.add_argument("--images", type=int, default=640, help="training images used from the dataset")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads (both trainers)")
    p.add_argument("--model-steps", type=int, default=10, help="timed steps of the model-alone measurement")
    p.add_argument("--no-augment", action="store_true",
                   help="cytoclip without its flips/colour jitter (isolates the cost of the augmentation)")
    p.add_argument("--repeats", type=int, default=3, help="alternating runs of each trainer (best kept)")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default=None, help="write the figures as JSON here")
    p.add_argument("--layout", default="files", choices=["files", "shards"],
                   help="files: PNGs + open_clip's CSV view; shards: WebDataset tars read by both trainers")
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    from cytoclip.train import resolve_device

    device = resolve_device(args.device)
    work = Path(tempfile.mkdtemp(prefix="cytoclip-bench-"))
    if args.layout == "shards":
        from benchmarks.bench_loader import build_tile_layouts
        from cytoclip.data import ImageTextDataset

        _, data = build_tile_layouts(work / "tiles", args.images, shard_size=max(1, args.images // 8))
        label, args.image_type = "synthetic atlas", "tile"
        csv = ImageTextDataset(data, split="train").shards()  # open_clip reads the same tars
        args.n_samples = n_images = len(pd.read_parquet(data / "manifest.parquet"))
    else:
        if args.dataset:
            dataset, label = Path(args.dataset), None
        else:
            dataset, label = build_dataset(work / "data", args.images), "synthetic atlas"
        data = subset(dataset, args.image_type, args.images, work)
        from cytoclip.provenance import data_label

        label = label or data_label(dataset)
        csv = data / f"openclip_{args.image_type}_train.csv"
        n_images = len(pd.read_csv(csv))

    res = {"data": label, "device": str(device), "cytoclip_augment": not args.no_augment, "threads": args.threads,
           "workers": args.workers, "batch_size": args.batch_size, "epochs": args.epochs, "model": args.model,
           "layout": args.layout, "images": n_images, "torch": torch.__version__}
    res["loader_vs_model"] = loader_vs_model(data, args.image_type, args, device)
    # alternate the two trainers and keep each one's best repeat: the machine may be shared, and a single
    # back-to-back pair would charge any background load to whichever ran second
    runs: dict[str, list[dict]] = {"cytoclip": [], "open_clip": []}
    for r in range(args.repeats):
        runs["cytoclip"].append(run_cytoclip(data, args.image_type, args, work / f"rep{r}"))
        runs["open_clip"].append(run_open_clip(csv, args, work / f"rep{r}", device))
    for k, v in runs.items():
        res[k] = max(v, key=lambda x: x["images_per_s_steady"])
        res[k]["repeats_steady"] = [x["images_per_s_steady"] for x in v]
    res["ratio_steady"] = res["cytoclip"]["images_per_s_steady"] / res["open_clip"]["images_per_s_steady"]
    res["ratio_total"] = res["cytoclip"]["images_per_s_total"] / res["open_clip"]["images_per_s_total"]
    # the medians too: less flattering to either side than best-of on a shared machine
    res["ratio_steady_median"] = (statistics.median(res["cytoclip"]["repeats_steady"])
                                  / statistics.median(res["open_clip"]["repeats_steady"]))

    lm = res["loader_vs_model"]
    print(f"\n[{label} data, {args.layout}] {res['images']} images, batch {args.batch_size}, {args.epochs} epochs, "
          f"{args.workers} workers, {args.threads} threads, {device}, model {args.model}")
    print(f"data loader alone: {lm['loader_images_per_s']:.1f} img/s; model alone: {lm['model_images_per_s']:.1f} "
          f"img/s; loader/model = {lm['loader_over_model']:.2f}")
    for k in ("cytoclip", "open_clip"):
        r = res[k]
        print(f"{k:>9}: steady {r['images_per_s_steady']:.1f} img/s (repeats "
              f"{[round(x, 1) for x in r['repeats_steady']]}), with start-up "
              f"{r['images_per_s_total']:.1f} img/s ({r['wall_s']:.1f} s)")
    c = res["cytoclip"]
    print(f"cytoclip's last epoch: model step {c['model_images_per_s_in_run']:.1f} img/s; waiting for data "
          f"{100 * c['data_wait_fraction']:.1f}% of the epoch")
    print(f"cytoclip / open_clip: steady {res['ratio_steady']:.2f}x (medians of the repeats "
          f"{res['ratio_steady_median']:.2f}x), with start-up {res['ratio_total']:.2f}x; target >= 1.0 steady: "
          f"{'PASS' if res['ratio_steady'] >= 1.0 else 'MISS'}")
    if args.out:
        write_json(args.out, res)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
