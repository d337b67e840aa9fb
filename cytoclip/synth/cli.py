"""``cytoclip synth``: write the synthetic atlas of a profile in the DHARANI layout."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--profile", default="smoke", help="smoke | demo | full (resources/synth_profiles.yaml)")
    parser.add_argument("--out", default=None, help="atlas directory (default: data/synthetic-<profile>-seed<seed>)")
    parser.add_argument("--seed", type=int, default=0, help="one seed drives anatomy, cuts and rendering")
    parser.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    parser.add_argument("--sections-per-specimen", type=int, default=None, help="override the profile")
    parser.add_argument("--size-scale", type=float, default=None, help="override the profile's brain size factor")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from cytoclip.synth import generate

    from cytoclip.workflow import atlas_dir

    out = Path(args.out) if args.out else atlas_dir("data", args.profile, args.seed)
    t0 = time.perf_counter()
    try:
        generate(out, profile=args.profile, seed=args.seed, workers=args.workers,
                 sections_per_specimen=args.sections_per_specimen, size_scale=args.size_scale)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"synthetic atlas ({args.profile}, seed {args.seed}) at {out} in {time.perf_counter() - t0:.0f} s "
          "— synthetic data, not DHARANI")
    return 0
