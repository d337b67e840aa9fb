"""Benchmark the synthetic atlas: generate a profile and print what it costs and what it holds.

    .venv/bin/python benchmarks/bench_synth.py --profile demo --out /tmp/synth-demo [--workers N]

Prints wall time, sections, annotated ids and lowres-merged regions per section (mean/min/max), distinct merged
labels over the atlas, disk size and peak memory (this process and its workers). Numbers describe the synthetic
atlas only. An existing complete atlas at --out is reused (generation resumes), so pass a fresh directory to time it.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import time
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="smoke")
    parser.add_argument("--out", default=None, help="atlas directory (default: a fresh /tmp/bench-synth-<profile>)")
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sections-per-specimen", type=int, default=None)
    args = parser.parse_args()

    from cytoclip.atlas import Atlas
    from cytoclip.ontology import load_merge_spec, merge_map
    from cytoclip.synth import generate

    out = Path(args.out or f"/tmp/bench-synth-{args.profile}")
    if args.out is None and out.exists():
        shutil.rmtree(out)
    t0 = time.perf_counter()
    generate(out, profile=args.profile, seed=args.seed, workers=args.workers,
             sections_per_specimen=args.sections_per_specimen)
    wall = time.perf_counter() - t0

    atlas = Atlas(out)
    mapping = merge_map(atlas.ontology, load_merge_spec("lowres"))
    n_ids, n_merged, all_merged = [], [], set()
    for rec in atlas.sections().itertuples():
        ids = atlas.section(rec.specimen, rec.section).annotations().keys()
        merged = {mapping[i] for i in ids if mapping.get(i) is not None}
        n_ids.append(len(ids))
        n_merged.append(len(merged))
        all_merged |= merged
    disk = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    # ru_maxrss is KiB on Linux; children = the largest worker process
    self_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    child_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024

    def stats(v: list[int]) -> str:
        return f"mean {np.mean(v):.1f}  min {min(v)}  max {max(v)}"

    print(f"synthetic atlas benchmark (SYNTHETIC data) profile={args.profile} seed={args.seed} at {out}")
    print(f"wall time            {wall:.1f} s")
    print(f"sections             {len(n_ids)}")
    print(f"annotated ids/sec    {stats(n_ids)}")
    print(f"lowres regions/sec   {stats(n_merged)}")
    print(f"distinct lowres      {len(all_merged)}")
    print(f"disk size            {disk / 2**20:.1f} MiB")
    print(f"peak RSS             main {self_mb:.0f} MiB, largest worker {child_mb:.0f} MiB")


if __name__ == "__main__":
    main()
