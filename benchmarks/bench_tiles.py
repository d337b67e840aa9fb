"""Benchmark of cytoclip.tiles: vectorised vs naive tile labelling, and end-to-end prepare_tiles throughput.

Everything is measured in one run on the same sections, so the printed ratios compare like with like:

    .venv/bin/python benchmarks/bench_tiles.py                    # smoke synthetic atlas (generated if missing)
    .venv/bin/python benchmarks/bench_tiles.py --atlas data/synthetic-demo --sections 3 --workers 2

The extrapolation to the real DHARANI atlas (466 sections, ~4.3 M labelled tiles, 16 cores) scales the
measured per-tile times linearly; real annotations have more vertices and real pyramids decode 2048 px JPEG
tiles, so read it as an order of magnitude, and note that results here come from a SYNTHETIC atlas.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import shapely

REAL_SECTIONS = 466
REAL_TILES = 4.3e6
REAL_CORES = 16


def _atlas_root(arg: str | None, seed: int) -> Path:
    if arg:
        return Path(arg)
    root = Path(__file__).resolve().parents[1] / "data" / "synthetic-smoke"
    if not (root / "data2d").is_dir():
        from cytoclip.synth import generate

        print(f"generating the smoke synthetic atlas in {root} ...", flush=True)
        generate(root, "smoke", seed=seed)
    return root


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the figures; returns 0 (1 if the two labelling methods disagree)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--atlas", help="atlas root (default: data/synthetic-smoke, generated if missing)")
    ap.add_argument("--sections", type=int, default=2, help="number of sections to use (the first N)")
    ap.add_argument("--naive-max", type=int, default=1500,
                    help="tissue tiles per section given to the naive loop (and to the vectorised one for the ratio)")
    ap.add_argument("--workers", type=int, default=1, help="worker processes for the end-to-end run")
    ap.add_argument("--max-tiles", type=int, default=None, help="max_tiles_per_section for the end-to-end run")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(1)  # the machine is shared; nothing here uses torch, but keep imports quiet
    from cytoclip.atlas import Atlas
    from cytoclip.tiles import (label_tiles, label_tiles_naive, leaf_label_map, leaf_regions, prepare_tiles,
                                tile_grid, tissue_fraction, tissue_mask)

    root = _atlas_root(args.atlas, args.seed)
    atlas = Atlas(root)
    synthetic = (root / "SYNTHETIC.md").exists()
    table = atlas.sections().iloc[: args.sections]
    label_map = leaf_label_map(atlas.ontology, "identity")
    print(f"atlas: {root} ({'SYNTHETIC' if synthetic else 'not marked synthetic'}), "
          f"{len(table)} section(s)")

    n_all = t_vec_all = 0.0
    n_sub = t_vec_sub = t_overlay = t_naive = 0.0
    n_vertices = []
    agree = True
    for row in table.itertuples(index=False):
        sec = atlas.section(row.specimen, row.section)
        w, h = sec.size(2)
        boxes = tile_grid(w, h, 224)
        thumb = sec.read_level(32)
        frac = tissue_fraction(tissue_mask(thumb), boxes, (thumb.shape[1] / w, thumb.shape[0] / h))
        tissue = boxes[frac >= 0.5]
        regions = leaf_regions(sec.annotations(mpp=2), label_map)
        n_vertices += [int(shapely.get_num_coordinates(g)) for g in regions.values()]

        t0 = time.perf_counter()
        label_tiles(tissue, regions)
        t_vec_all += time.perf_counter() - t0
        n_all += len(tissue)

        sub = tissue[: args.naive_max]
        t0 = time.perf_counter()
        lv, ov = label_tiles(sub, regions)
        t1 = time.perf_counter()
        lo, oo = label_tiles(sub, regions, method="overlay")
        t2 = time.perf_counter()
        ln, on = label_tiles_naive(sub, regions)
        t3 = time.perf_counter()
        t_vec_sub += t1 - t0
        t_overlay += t2 - t1
        t_naive += t3 - t2
        n_sub += len(sub)
        agree &= bool(np.array_equal(lv, ln) and np.allclose(ov, on, atol=1e-9))
        agree &= bool(np.array_equal(lo, ln) and np.allclose(oo, on, atol=1e-9))
        print(f"  specimen {row.specimen} section {row.section}: {w}x{h} px at 2 um/px, {len(boxes)} grid tiles, "
              f"{len(tissue)} tissue tiles, {len(regions)} leaf regions, labelled {(lv >= 0).sum()}/{len(sub)} "
              f"of the compared subset")

    print("\ntile labelling (tissue tiles, 1 process):")
    print(f"  vectorised (STRtree + rectangle clipping), all tissue tiles: {n_all / t_vec_all:,.0f} tiles/s "
          f"({n_all:.0f} tiles in {t_vec_all:.2f} s)")
    print(f"  same {n_sub:.0f} tiles: vectorised clip {n_sub / t_vec_sub:,.0f} tiles/s, vectorised overlay "
          f"{n_sub / t_overlay:,.0f} tiles/s, naive loop {n_sub / t_naive:,.0f} tiles/s")
    print(f"  speed-up over the naive loop (measured in this run): clip x{t_naive / t_vec_sub:.1f}, "
          f"overlay x{t_naive / t_overlay:.1f}")
    print(f"  identical labels and overlaps: {agree}; leaf polygons have median "
          f"{int(np.median(n_vertices)) if n_vertices else 0} vertices")

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        out = prepare_tiles(root, Path(tmp) / "tiles", workers=args.workers, seed=args.seed,
                            sections=table[["specimen", "section"]], max_tiles_per_section=args.max_tiles)
        t_e2e = time.perf_counter() - t0
        from cytoclip.io import read_json

        rep = read_json(out / "report.json")
        t0 = time.perf_counter()
        prepare_tiles(root, Path(tmp) / "tiles", workers=args.workers, seed=args.seed,
                      sections=table[["specimen", "section"]], max_tiles_per_section=args.max_tiles)
        t_resume = time.perf_counter() - t0
    written, grid = rep["totals"]["written"], rep["totals"]["grid_tiles"]
    print(f"\nprepare_tiles end to end ({args.workers} worker(s), {len(table)} sections): {t_e2e:.2f} s = "
          f"{len(table) / t_e2e:.3f} sections/s, {written / t_e2e:,.0f} written tiles/s, "
          f"{grid / t_e2e:,.0f} grid tiles/s; rerun (all resumed) {t_resume:.2f} s")

    per_tile_label = t_vec_all / max(n_all, 1)
    per_tile_e2e = t_e2e * max(args.workers, 1) / max(written, 1)  # process-seconds per written tile
    print(f"\nextrapolation to the real atlas ({REAL_SECTIONS} sections, {REAL_TILES / 1e6:.1f} M tiles, "
          f"{REAL_CORES} cores, linear in tiles):")
    print(f"  labelling only: {REAL_TILES * per_tile_label / REAL_CORES:,.0f} s")
    print(f"  end to end (read + label + JPEG write): {REAL_TILES * per_tile_e2e / REAL_CORES / 3600:,.2f} h")
    if synthetic:
        print("  (measured on a SYNTHETIC atlas)")
    return 0 if agree else 1


if __name__ == "__main__":
    sys.exit(main())
