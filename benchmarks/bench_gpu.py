"""GPU training throughput of the paper's architectures (random weights), ready for when a GPU is lent.

ViT-B/16 at 224 px (BiomedCLIP's image architecture, open_clip ``ViT-B-16``) and ViT-L/14 at 336 px (the CLIP
architecture, open_clip ``ViT-L-14-336``), both with random weights (nothing is downloaded); the trainer's
step: bf16 autocast, channels_last inputs, fused AdamW, the symmetric contrastive loss
(:class:`cytoclip.loss.ContrastiveLoss`); ``torch.compile`` off and on. Printed per configuration: img/s, step
time, peak memory, and model FLOP utilisation (MFU: FLOPs of one training step counted by
``torch.utils.flop_counter`` / step time / the device's dense bf16 peak from the table below), with the
loader's rate from WebDataset shards (``cytoclip.data.ShardStream``, synthetic tiles) beside it, and the target:
ViT-B/16 >= 3,000 img/s per GPU on an H100/H200 (10x the paper's ~290 img/s per A100).

From a fresh clone:   python benchmarks/bench_gpu.py
On a CPU-only machine it says so and exits 0.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

#: dense bf16 peak, TFLOP/s, by a substring of torch.cuda.get_device_name() (first match wins)
BF16_PEAK_TFLOPS = [("H200", 989.0), ("H100 SXM", 989.0), ("H100 NVL", 835.0), ("H100 PCIe", 756.0),
                    ("H100", 989.0), ("A100", 312.0), ("L40S", 362.0), ("A10", 125.0), ("V100", 125.0)]
TARGET_VIT_B = 3000.0
MODELS = {"ViT-B/16": ("ViT-B-16", 224), "ViT-L/14-336": ("ViT-L-14-336", 336)}


def device_peak(name: str) -> float | None:
    """The dense bf16 peak (TFLOP/s) of a device name, or None when the table does not know it."""
    for key, tflops in BF16_PEAK_TFLOPS:
        if key.lower() in name.lower():
            return tflops
    return None


def step_flops(model, loss_fn, images, tokens) -> float:
    """FLOPs of one forward + backward pass (counted by torch, on the real shapes)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = loss_fn(model.encode_image(images, normalize=True), model.encode_text(tokens, normalize=True),
                           model.logit_scale)
        loss.backward()
    model.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def bench_model(name: str, batch: int, steps: int, compile_: bool, peak: float | None) -> dict:
    import open_clip
    import torch

    from cytoclip.loss import ContrastiveLoss

    arch, size = MODELS[name]
    torch.manual_seed(0)
    model = open_clip.create_model(arch, pretrained=None).cuda().train()
    model = model.to(memory_format=torch.channels_last)
    images = torch.randn(batch, 3, size, size, device="cuda").contiguous(memory_format=torch.channels_last)
    tokens = torch.randint(0, 49408, (batch, 77), device="cuda")
    loss_fn = ContrastiveLoss()
    flops = step_flops(model, loss_fn, images[:8], tokens[:8]) * batch / 8
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = loss_fn(model.encode_image(images, normalize=True), model.encode_text(tokens, normalize=True),
                           model.logit_scale)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    fn = torch.compile(step) if compile_ else step
    torch.cuda.reset_peak_memory_stats()
    for _ in range(3):  # warm-up (and compilation)
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    dt = statistics.median(times)
    out = {"model": name, "compile": compile_, "batch": batch, "img_s": batch / dt, "step_ms": dt * 1e3,
           "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30, "tflops_step": flops / 1e12}
    out["mfu"] = flops / dt / (peak * 1e12) if peak else float("nan")
    del model, opt
    torch.cuda.empty_cache()
    return out


def loader(batch: int, workers: int, images: int) -> float:
    from benchmarks.bench_loader import build_tile_layouts, loader_rate
    from cytoclip.data import model_transform

    work = Path(tempfile.mkdtemp(prefix="cytoclip-bench-gpu-"))
    _, shards = build_tile_layouts(work, images, shard_size=max(1, images // max(1, workers)))
    return loader_rate(shards, workers, batch, model_transform(224, (0.5,) * 3, (0.5,) * 3), seconds=20)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch-size", type=int, default=256, help="ViT-B/16 batch (ViT-L/14-336 uses a quarter)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--loader-workers", type=int, default=min(16, os.cpu_count() or 1))
    p.add_argument("--loader-images", type=int, default=4000)
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile runs")
    args = p.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print("bench_gpu: no CUDA device visible on this machine; the GPU benchmark needs one (nothing run)")
        return 0
    name = torch.cuda.get_device_name()
    peak = device_peak(name)
    print(f"device: {name}; dense bf16 peak {peak if peak else 'unknown'} TFLOP/s; torch {torch.__version__}")
    torch.backends.cuda.matmul.allow_tf32 = True
    rows = []
    for model in args.models:
        batch = args.batch_size if model == "ViT-B/16" else max(8, args.batch_size // 4)
        for compile_ in ([False] if args.no_compile else [False, True]):
            try:
                r = bench_model(model, batch, args.steps, compile_, peak)
            except torch.cuda.OutOfMemoryError:
                print(f"{model} compile={compile_} batch {batch}: out of memory; lower --batch-size")
                torch.cuda.empty_cache()
                continue
            rows.append(r)
            print(f"{model:>13} compile={str(compile_):5} batch {batch:4}: {r['img_s']:8.1f} img/s, step "
                  f"{r['step_ms']:7.1f} ms, peak {r['peak_mem_gib']:5.1f} GiB, {r['tflops_step']:.2f} TFLOP/step, "
                  f"MFU {100 * r['mfu']:.1f}%")
    rate = loader(args.batch_size, args.loader_workers, args.loader_images)
    print(f"loader from shards, {args.loader_workers} workers: {rate:.0f} img/s (224 px, pad + resize + normalise)")
    best_b = max((r["img_s"] for r in rows if r["model"] == "ViT-B/16"), default=float("nan"))
    hopper = any(k in name for k in ("H100", "H200"))
    verdict = ("PASS" if best_b >= TARGET_VIT_B else "MISS") if hopper else "n/a (target is for H100/H200)"
    print(f"target ViT-B/16 >= {TARGET_VIT_B:.0f} img/s/GPU on H100/H200: {best_b:.0f} img/s: {verdict}")
    print(f"loader {rate:.0f} img/s vs ViT-B/16 {best_b:.0f} img/s: {'PASS' if rate >= best_b else 'MISS'} "
          "(loader >= model consumption)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
