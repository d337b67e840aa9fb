"""CLI glue: ``cytoclip prepare regions`` (whole-region images) and ``cytoclip prepare tiles`` (2 µm/px tiles).

``regions`` calls :func:`cytoclip.regions.prepare_regions`; ``tiles`` calls :func:`cytoclip.tiles.prepare_tiles`,
whose keyword parameters become options automatically (``max_tiles_per_section`` -> ``--max-tiles-per-section``),
so the command follows that function's signature without a second list to keep in step.
"""

from __future__ import annotations

import argparse
import inspect
import json
from pathlib import Path
from typing import Any, Callable


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--atlas", required=True, type=Path, help="atlas root in the DHARANI layout")
    p.add_argument("--out", required=True, type=Path, help="output dataset directory")


def _run_regions(args: argparse.Namespace) -> int:
    from cytoclip.regions import prepare_regions

    out = prepare_regions(args.atlas, args.out, spec=args.spec, min_area=args.min_area,
                          min_area_perimeter_ratio=args.min_area_perimeter_ratio,
                          part_distance=args.part_distance, square_sides=tuple(args.square_sides),
                          mpp=args.mpp, workers=args.workers, seed=args.seed, split_scheme=args.split_scheme,
                          val_fraction=args.val_fraction)
    return _summary(out)


def _summary(out: Path) -> int:
    """Print where the dataset is and what was skipped; non-zero exit when nothing was produced."""
    report = json.loads((Path(out) / "report.json").read_text())
    n = report.get("n_images", report.get("n_tiles", 0))
    print(f"{out}: {n} images; report.json lists counts per rule, label and split")
    skipped = report.get("skipped") or {}
    for key, reason in (skipped.items() if isinstance(skipped, dict) else
                        ((f"{s.get('specimen')}_{s.get('section')}", s.get("reason")) for s in skipped)):
        print(f"  skipped {key}: {reason}")
    return 0 if n else 1


def _tiles_options(p: argparse.ArgumentParser, func: Callable) -> list[str]:
    """Add one option per plain keyword parameter of ``func``; return the parameter names added."""
    names = []
    for name, param in inspect.signature(func).parameters.items():
        if name in ("atlas_root", "out_dir") or param.default is inspect.Parameter.empty:
            continue
        default = param.default
        flag = "--" + name.replace("_", "-")
        if isinstance(default, bool):
            p.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=default)
        elif isinstance(default, (int, float, str)):
            # `mpp: float = 2` has an int default: the annotation says what the option accepts
            kind = float if isinstance(default, int) and "float" in str(param.annotation) else type(default)
            p.add_argument(flag, dest=name, type=kind, default=default, help=f"default {default}")
        elif default is None and name in ("workers", "max_tiles_per_section"):
            p.add_argument(flag, dest=name, type=int, default=None)
        else:
            continue  # structured parameters (e.g. a sections table) are for Python callers
        names.append(name)
    return names


def _run_tiles(args: argparse.Namespace) -> int:
    from cytoclip.tiles import prepare_tiles

    params: dict[str, Any] = {k: getattr(args, k) for k in args.tile_params}
    return _summary(prepare_tiles(args.atlas, args.out, **params))


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Add the ``regions`` and ``tiles`` sub-verbs to ``cytoclip prepare``."""
    from cytoclip import regions as R

    sub = parser.add_subparsers(dest="what", metavar="regions|tiles", required=True)
    r = sub.add_parser("regions", help="16 um/px whole-region images (paper III-B)",
                       description=R.prepare_regions.__doc__.split("\n")[0])
    _common(r)
    r.add_argument("--spec", default="lowres", help="merge spec name or YAML path (default lowres)")
    r.add_argument("--min-area", type=float, default=R.DEFAULT_MIN_AREA,
                   help=f"discard regions smaller than this many px at --mpp (default {R.DEFAULT_MIN_AREA})")
    r.add_argument("--min-area-perimeter-ratio", type=float, default=R.DEFAULT_MIN_AREA_PERIMETER_RATIO,
                   help="discard narrow regions: area / perimeter below this, px "
                        f"(default {R.DEFAULT_MIN_AREA_PERIMETER_RATIO})")
    r.add_argument("--part-distance", type=float, default=R.DEFAULT_PART_DISTANCE,
                   help=f"parts closer than this (px) form one image (default {R.DEFAULT_PART_DISTANCE})")
    r.add_argument("--square-sides", type=int, nargs="+", default=[224, 336],
                   help="minimum sides of the square crops (default 224 336)")
    r.add_argument("--mpp", type=float, default=16.0, help="working resolution in um/px (default 16)")
    r.add_argument("--workers", type=int, default=None, help="processes (default: CPU count; 1 = in-process)")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--split-scheme", default="sections", help="split of the manifest's split column")
    r.add_argument("--val-fraction", type=float, default=0.2)
    r.set_defaults(func=_run_regions)

    t = sub.add_parser("tiles", help="2 um/px tiles labelled by leaf structure (paper III-C)")
    _common(t)
    try:
        from cytoclip.tiles import prepare_tiles
    except ImportError as exc:  # keep `prepare regions` usable if the tiles module is broken
        t.set_defaults(func=lambda args, exc=exc: _fail(f"cytoclip.tiles cannot be imported: {exc}"))
        return
    t.set_defaults(func=_run_tiles, tile_params=_tiles_options(t, prepare_tiles))


def _fail(message: str) -> int:
    import sys

    print(message, file=sys.stderr)
    return 2
