"""Preparation throughput on one synthetic section of real DHARANI size, and the projection to the full atlas.

One section is written in the DHARANI layout by :mod:`cytoclip.layout` (a pyramidal JPEG TIFF at 2 µm/px,
``--width`` x ``--height`` px, default 28,000 x 20,000 — a 5.6 x 4 cm section — and a GeoJSON of five leaf
structures tiling an elliptic tissue; a procedural Nissl-like texture, labelled synthetic). Then
``cytoclip.tiles.prepare_tiles`` (the engine, ``format="shards"``, one worker) prepares all its tiles, timed.
Printed: sections/s and tiles/s on one core, and the projection to the full atlas (466 sections, ~4.3 M tiles)
on 16 cores: wall time (tiles / (16 x tiles/s per core)), shard count (per section, ``ceil(tiles / shard
size)``) and disk (the measured bytes per tile), against the target of <= 10 min. With one worker the process's
CPU time is printed too: on shared cores it is the steadier figure (wall/CPU > 1 says the cores were shared).

    python benchmarks/bench_prepare.py [--width 28000 --height 20000] [--workers 1]
"""

from __future__ import annotations

import argparse
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

ATLAS_SECTIONS, ATLAS_TILES, CORES, TARGET_S = 466, 4.3e6, 16, 600.0
LEAVES = [5, 6, 50, 181, 346]  # leaf structures of the packaged DHARANI ontology


def write_section(root: Path, width: int, height: int, seed: int = 0) -> None:
    """One section (specimen 1, section 1) in the DHARANI layout: texture, tissue ellipse, five bands."""
    import shapely.affinity
    from shapely.geometry import Point, box

    from cytoclip import layout
    from cytoclip.ontology import Ontology

    onto = Ontology.load()
    layout.ontology_path(root).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "cytoclip" / "resources" / "dharani_ontology.json", layout.ontology_path(root))
    layout.write_specimens_table(root, [{"specimen": 1, "age_gw": 21, "plane": "sagittal", "source": "bench"}])
    rng = np.random.default_rng(seed)
    image = np.full((height, width, 3), 245, dtype=np.uint8)
    tissue = shapely.affinity.scale(Point(width / 2, height / 2).buffer(1.0, 64), width * 0.48, height * 0.48)
    yy = np.arange(height, dtype=np.float32)[:, None]
    for y0 in range(0, height, 2048):  # in strips: a 28k x 20k float image would not fit in memory
        y1 = min(height, y0 + 2048)
        xx = np.arange(width, dtype=np.float32)[None, :]
        inside = (((xx - width / 2) / (width * 0.48)) ** 2 + ((yy[y0:y1] - height / 2) / (height * 0.48)) ** 2) <= 1
        strip = image[y0:y1]
        cells = rng.random(inside.shape, dtype=np.float32) < 0.03
        strip[inside] = (200, 170, 215)
        strip[inside & cells] = (90, 50, 140)
    bands = {}
    for k, leaf in enumerate(LEAVES):
        band = box(width * k / len(LEAVES), 0, width * (k + 1) / len(LEAVES), height)
        bands[leaf] = tissue.intersection(band)
    tif, js = layout.section_paths(root, 1, 1)
    tif.parent.mkdir(parents=True, exist_ok=True)
    layout.write_pyramid_tiff(tif, image, mpp0=2.0, tile=1024)
    layout.write_annotation(js, bands, ontology=onto)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--width", type=int, default=28000)
    p.add_argument("--height", type=int, default=20000)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--shard-size", type=int, default=5000)
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    args = p.parse_args(argv)
    from cytoclip.tiles import prepare_tiles

    work = Path(tempfile.mkdtemp(prefix="cytoclip-bench-prepare-"))
    try:
        t = time.perf_counter()
        write_section(work / "atlas", args.width, args.height)
        print(f"[synthetic section] {args.width} x {args.height} px at 2 um/px written in "
              f"{time.perf_counter() - t:.0f} s")
        t, cpu = time.perf_counter(), time.process_time()
        out = prepare_tiles(work / "atlas", work / "tiles", workers=args.workers, format="shards",
                            shard_size=args.shard_size)
        wall, cpu = time.perf_counter() - t, time.process_time() - cpu
        import pandas as pd

        n = len(pd.read_parquet(out / "manifest.parquet"))
        disk = sum(f.stat().st_size for f in (out / "webdataset").glob("*.tar"))
        per_core = n / wall / args.workers
        print(f"prepare tiles ({args.workers} worker(s)): 1 section, {n} tiles in {wall:.1f} s: "
              f"{1 / wall:.4f} sections/s, {n / wall:.1f} tiles/s ({per_core:.1f} tiles/s per core); "
              f"{disk / max(1, n) / 1024:.1f} KiB per tile in the shards")
        if args.workers <= 1:  # in this process: its CPU time is the work, whatever else shares the cores
            print(f"  CPU time {cpu:.1f} s: {n / cpu:.1f} tiles per CPU second (wall/CPU {wall / cpu:.2f}; "
                  f"> 1 = the cores were shared)")
        proj_wall = ATLAS_TILES / (CORES * per_core)
        tiles_per_section = ATLAS_TILES / ATLAS_SECTIONS
        shards = ATLAS_SECTIONS * math.ceil(tiles_per_section / args.shard_size)
        print(f"projection to the atlas ({ATLAS_SECTIONS} sections, {ATLAS_TILES / 1e6:.1f} M tiles) on {CORES} "
              f"cores: {proj_wall / 60:.1f} min, {shards} shards of <= {args.shard_size}, "
              f"{ATLAS_TILES * disk / max(1, n) / 2**30:.1f} GiB; target <= {TARGET_S / 60:.0f} min: "
              f"{'PASS' if proj_wall <= TARGET_S else 'MISS'}")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
