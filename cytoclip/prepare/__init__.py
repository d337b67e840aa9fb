"""``cytoclip prepare``: whole-region images (``regions``), 2 µm/px tiles (``tiles``), and ``merge`` of parts.

Both datasets are made by one engine (:mod:`cytoclip.prepare.engine`). ``regions`` calls
:func:`cytoclip.regions.prepare_regions`, ``tiles`` calls :func:`cytoclip.tiles.prepare_tiles`; each verb's options
are that function's plain keyword parameters (``max_tiles_per_section`` -> ``--max-tiles-per-section``), so the
command follows the signature without a second list to keep in step. ``--atlas`` is a local path or an fsspec URL
(``s3://...``), passed on as a string. Errors are raised (``AtlasError``, ``ValueError``) for the CLI layer to print.

Across machines (a SLURM array; every task writes its share into one shared directory, then one merge)::

    #SBATCH --array=0-15
    cytoclip prepare tiles --atlas s3://dharani-fetal-brain-atlas --output-dir /shared/tiles \\
        --format shards --workers $SLURM_CPUS_PER_TASK --part $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT
    # after the array (sbatch --dependency=afterok:<array job id>):
    cytoclip prepare merge --output-dir /shared/tiles
"""

from __future__ import annotations

import argparse
import inspect
import json
from pathlib import Path
from typing import Any, Callable

#: help of the options whose meaning the signature does not tell
_HELP = {
    "spec": "merge spec name or YAML path",
    "min_area": "discard regions smaller than this many px at --mpp",
    "min_area_perimeter_ratio": "discard narrow regions: area / perimeter below this, px",
    "part_distance": "parts closer than this (px) form one image",
    "square_sides": "minimum sides of the square crops (the paper's, px of real-size sections; they name the types)",
    "square_scale": "multiplies the square sides: the brains' size relative to real ones (synthetic atlases)",
    "mpp": "working resolution in um/px",
    "workers": "processes (default: CPU count; 1 = in this process)",
    "split": "split of the manifest's split column",
    "format": "files: one image file per row; shards: WebDataset tars (see --shard-size)",
    "shard_size": "samples per WebDataset tar at most (--format shards)",
    "part": "prepare only the share i of N (e.g. 0/4: every 4th section from the first); then `prepare merge`",
}


def _common(p: argparse.ArgumentParser) -> None:
    # a string, not a Path: Path("s3://bucket") would become "s3:/bucket"
    p.add_argument("--atlas", required=True, type=str, help="atlas root: a local path or an fsspec URL (s3://...)")
    p.add_argument("--output-dir", required=True, type=Path, help="output dataset directory")


def _options(p: argparse.ArgumentParser, func: Callable) -> list[str]:
    """Add one option per plain keyword parameter of ``func``; return the parameter names added."""
    names = []
    for name, param in inspect.signature(func).parameters.items():
        if name in ("atlas", "output_dir") or param.default is inspect.Parameter.empty:
            continue
        default = param.default
        flag = "--" + name.replace("_", "-")
        help_ = f"{_HELP[name]} (default {default})" if name in _HELP else f"default {default}"
        if isinstance(default, bool):
            p.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=default, help=help_)
        elif isinstance(default, (int, float, str)):
            # `mpp: float = 2` has an int default: the annotation says what the option accepts
            kind = float if isinstance(default, int) and "float" in str(param.annotation) else type(default)
            p.add_argument(flag, dest=name, type=kind, default=default, help=help_)
        elif isinstance(default, tuple) and all(isinstance(v, int) for v in default):
            p.add_argument(flag, dest=name, type=int, nargs="+", default=list(default), help=help_)
        elif default is None and name in ("workers", "max_tiles_per_section"):
            p.add_argument(flag, dest=name, type=int, default=None, help=help_)
        elif default is None and name == "part":
            p.add_argument(flag, dest=name, type=str, default=None, help=help_)
        else:
            continue  # structured parameters (e.g. a sections table) are for Python callers
        names.append(name)
    return names


def _summary(out: Path) -> int:
    """Print where the dataset is and what was skipped; non-zero exit when nothing was produced."""
    out = Path(out)
    if not (out / "report.json").is_file():  # a --part run: the merge writes the report
        print(f"{out}: part written; run `cytoclip prepare merge --output-dir {out}` once every part is done")
        return 0
    report = json.loads((out / "report.json").read_text())
    n = report.get("n_images", 0)
    print(f"{out}: {n} images from {report.get('n_sections_used')} of {report.get('n_sections')} sections; "
          "report.json lists counts per rule, label, split and section")
    for key, reason in (report.get("skipped") or {}).items():
        print(f"  skipped {key}: {reason}")
    return 0 if n else 1


def _run(args: argparse.Namespace) -> int:
    params: dict[str, Any] = {k: getattr(args, k) for k in args.params}
    return _summary(args.prepare(args.atlas, args.output_dir, **params))


def _run_merge(args: argparse.Namespace) -> int:
    from cytoclip.prepare.engine import merge

    return _summary(merge(args.output_dir))


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Add the ``regions``, ``tiles`` and ``merge`` sub-verbs to ``cytoclip prepare``."""
    from cytoclip.regions import prepare_regions
    from cytoclip.tiles import prepare_tiles

    sub = parser.add_subparsers(dest="what", metavar="regions|tiles|merge", required=True)
    for name, func, help_ in (("regions", prepare_regions, "16 um/px whole-region images (paper III-B)"),
                              ("tiles", prepare_tiles, "2 um/px tiles labelled by leaf structure (paper III-C)")):
        p = sub.add_parser(name, help=help_, description=(func.__doc__ or help_).split("\n")[0])
        _common(p)
        p.set_defaults(func=_run, prepare=func, params=_options(p, func))
    m = sub.add_parser("merge", help="combine the parts written with --part i/N into one dataset",
                       description="Combine the parts (--part i/N runs) in a dataset directory into its manifest, "
                                   "labels, report and CSV views.")
    m.add_argument("--output-dir", required=True, type=Path, help="the dataset directory the parts wrote into")
    m.set_defaults(func=_run_merge)
