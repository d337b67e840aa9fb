"""The one preparation engine: every prepared dataset (whole-region images, tiles) is made by :func:`run`.

A dataset *kind* (:class:`Kind`, declared in :mod:`cytoclip.regions` and :mod:`cytoclip.tiles`) says how one
section becomes manifest rows and image files; the engine does everything else, once:

- opens the atlas (:func:`cytoclip.atlas.open_atlas`: a local path or an fsspec URL) before anything is written,
  so a missing root leaves no output directory;
- checks each section's provenance (``specimens.csv``) and files, and records every section it skips;
- runs sections as independent work units, in this process or in a pool of worker processes that ignore
  Ctrl-C, die with their parent and are stopped at the parent's first SIGINT/SIGTERM (finished sections kept);
- resumes per section with the one resume rule (:func:`cytoclip.io.is_reusable`): a section whose record holds
  the fingerprint of the same parameters and the same input files is reused, any other is redone;
- writes atomically: a section's rows (``shards/<key>.parquet``) and then its record (``shards/<key>.json``,
  written last: it marks the section finished); temporaries left by a killed run are swept by the next one;
- combines the finished sections into ``manifest.parquet``, ``labels.json``, ``report.json`` (one shape for
  every kind: per-section skips, repairs, unknown ids and empty geometries) and the open_clip CSV views;
- ``format="shards"``: instead of one file per image, each section's images go into WebDataset tar shards
  ``webdataset/<key>-<n>.tar`` (at most ``shard_size`` samples each; per sample ``<sample>.jpg|png``,
  ``<sample>.txt`` = caption, ``<sample>.json`` = its manifest row, ``<sample>.mask.png`` for masks), written
  deterministically and atomically inside the section's work unit, so a section and its shards resume
  together. The manifest stays the description (``path`` = ``<shard>#<member>``, plus ``shard`` and ``key``
  columns) and ``shards.json`` beside it indexes the shards;
- ``part="i/N"``: a share of the sections (every N-th), for several machines writing into one directory;
  :func:`merge` then combines them into exactly what one run writes.

The section key is ``S<specimen>_<section>`` everywhere (shard names, report keys).
"""

from __future__ import annotations

import contextlib
import math
import multiprocessing
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
import warnings
from collections import deque
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from cytoclip.atlas import Atlas, AtlasError, open_atlas
from cytoclip.io import (TEMP_MARK, atomic_path, fingerprint, is_reusable, read_json, sweep_temps,
                         work_fingerprint, write_json)
from cytoclip.prepare.shards import DEFAULT_SHARD_SIZE, SHARD_COLUMNS, WDS, pack_shards, write_shard_index
from cytoclip.progress import tqdm

SHARDS = "shards"  # per-section rows and records (the resume unit); not the WebDataset shards
FORMATS = ("files", "shards")

#: Manifest columns of docs/architecture.md (every kind has them; a kind may add its own after them).
MANIFEST_COLUMNS = [
    "path", "image_type", "label", "label_id", "caption", "acronym", "ontology_path",
    "multi_labels", "multi_label_ids", "mask_path", "specimen", "section", "age_gw", "plane",
    "x0", "y0", "x1", "y1", "mpp", "part", "n_parts", "area_px", "overlap", "split",
]


def section_key(specimen: Any, section: Any) -> str:
    """The key of a section in shard names and reports, e.g. ``S1_1009``."""
    return f"S{int(specimen)}_{int(section)}"


@dataclass(frozen=True)
class Kind:
    """What a dataset kind plugs into the engine (all callables are module-level, so workers can run them).

    - ``process(section, key, params, context, output_dir) -> (rows DataFrame, stats dict)``: one section's
      images (written under ``output_dir``) and manifest rows; ``stats`` is JSON data for the report (an
      ``unknown_ids`` list in it joins the reader's).
    - ``debris(output_dir, specimen, section) -> [(directory, name prefix)]``: where the section's files live
      and the prefix of their names, so a rerun sweeps the temporaries that section's killed run left.
    - ``summary(manifest, records, params, context) -> dict``: the kind's own report entries.
    - ``columns``: manifest columns (``MANIFEST_COLUMNS`` plus the kind's extras), ``empty()`` a 0-row frame.
    - ``writes_shards``: with ``format="shards"``, ``process`` itself streams the section's images into its
      tars (:class:`cytoclip.prepare.shards.ShardWriter`, rows from ``plan_shards``) and returns those rows;
      otherwise the engine stages the images as files in a temporary folder and packs them afterwards.
    """

    name: str
    columns: Sequence[str]
    process: Callable[..., tuple[pd.DataFrame, dict]]
    debris: Callable[[Path, int, int], list[tuple[Path, str]]]
    summary: Callable[..., dict]
    writes_shards: bool = False


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM reached the preparation: workers were stopped, finished sections are kept."""

    def __init__(self, signum: int):
        self.signum = signum
        super().__init__(f"interrupted by {signal.Signals(signum).name}; finished sections are kept and a "
                         f"rerun resumes")


# ------------------------------------------------------------------------------------------- sections

def select_sections(table: pd.DataFrame, sections: Any = None) -> pd.DataFrame:
    """Rows of the atlas's sections table chosen by ``sections``: None (all), a DataFrame with
    ``specimen, section`` columns, or (specimen, section) pairs. Unknown pairs raise ValueError."""
    if sections is None:
        return table
    if isinstance(sections, pd.DataFrame):
        missing = {"specimen", "section"} - set(sections.columns)
        if missing:
            raise ValueError(f"sections: expected a DataFrame with columns specimen, section; missing {sorted(missing)}")
        pairs = list(zip(sections["specimen"], sections["section"]))
    else:
        pairs = []
        for item in sections:
            try:
                sp, sec = item
            except (TypeError, ValueError):
                raise ValueError(f"sections: expected (specimen, section) pairs, got {item!r}") from None
            pairs.append((sp, sec))
    index = {(int(r.specimen), int(r.section)): i for i, r in enumerate(table.itertuples(index=False))}
    rows = []
    for sp, sec in pairs:
        k = (int(sp), int(sec))
        if k not in index:
            raise ValueError(f"sections: specimen {sp} section {sec} is not in the atlas")
        rows.append(index[k])
    return table.iloc[sorted(set(rows))].reset_index(drop=True)


def output_params(format: str, shard_size: int) -> dict:
    """The validated output layout parameters: ``format`` files|shards (and ``shard_size`` for shards)."""
    if format not in FORMATS:
        raise ValueError(f"format: expected one of {list(FORMATS)}, got {format!r}")
    if format == "files":
        return {"format": "files"}
    if int(shard_size) < 1:
        raise ValueError(f"shard_size: expected a positive number of samples per tar, got {shard_size!r}")
    return {"format": "shards", "shard_size": int(shard_size)}


def parse_part(part: Any) -> tuple[int, int] | None:
    """``"i/N"`` (or a pair) -> (i, N) with 0 <= i < N; None stays None."""
    if part is None or part == "":
        return None
    try:
        i, n = (int(v) for v in (part.split("/") if isinstance(part, str) else part))
    except (TypeError, ValueError):
        raise ValueError(f"part: expected 'i/N' with integers, e.g. '0/4', got {part!r}") from None
    if n < 1 or not 0 <= i < n:
        raise ValueError(f"part: expected 0 <= i < N, got {part!r}")
    return i, n


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or value == ""


def _specimens_file(atlas: Any) -> str:
    files = getattr(atlas, "files", None)
    if files is None:
        return "specimens.csv"
    return files.display(files.join("specimens.csv"))


def plan_sections(atlas: Any, sections: Any = None) -> tuple[pd.DataFrame, dict[str, str]]:
    """The chosen sections of an atlas, and the ones that cannot be prepared (key -> reason).

    ``specimens.csv`` must exist (age and plane are not in the DHARANI files): without it the reader's
    ``AtlasError`` naming the file is raised. A specimen with no row in it, a section without its TIFF or
    its GeoJSON, is skipped with a reason naming the file and a warning.
    """
    if hasattr(atlas, "specimens"):
        atlas.specimens()  # raises AtlasError naming specimens.csv when it is missing or malformed
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the table's absence was checked above
        table = atlas.sections()
    table = select_sections(table, sections)
    skipped: dict[str, str] = {}
    for rec in table.itertuples(index=False):
        key = section_key(rec.specimen, rec.section)
        stem = f"Specimen_{int(rec.specimen)}_{int(rec.section)}"
        if _missing(getattr(rec, "age_gw", None)) or _missing(getattr(rec, "plane", None)):
            skipped[key] = (f"{_specimens_file(atlas)}: no row for specimen {int(rec.specimen)} (expected columns "
                            f"specimen, age_gw, plane with one row per specimen)")
        elif "image" in table.columns and _missing(rec.image):
            skipped[key] = f"image: no pyramidal TIFF for this section (expected {stem}.tif beside its .json)"
        elif "annotation" in table.columns and _missing(rec.annotation):
            skipped[key] = f"annotation: no annotation file for this section (expected {stem}.json beside its TIFF)"
    for key, reason in skipped.items():
        warnings.warn(f"{key} skipped: {reason}", stacklevel=3)
    return table, skipped


def check_resolution(section: Any, mpp: float) -> None:
    """Refuse a section whose finest level is coarser than ``mpp`` (it would be upsampled, not read)."""
    levels = getattr(section, "levels", None)
    if not levels:
        return
    finest = levels[0].mpp
    if finest > float(mpp) * (1 + 1e-6):
        name = getattr(section, "_name", lambda p: str(p))(getattr(section, "image_path", None))
        raise AtlasError(f"{name}: finest pyramid level is {finest:g} µm/px, coarser than the {float(mpp):g} µm/px "
                         f"this dataset is read at (expected a level at {float(mpp):g} µm/px or finer; levels lost?)")


# ------------------------------------------------------------------------------------------- one section

_STATE: dict[str, Any] = {}


def _set_state(kind: Kind, atlas: Any, params: dict, context: dict, output_dir: str) -> None:
    _STATE.update(kind=kind, atlas=atlas, params=params, context=context, output_dir=Path(output_dir))


def _shard_paths(output_dir: Path, key: str) -> tuple[Path, Path]:
    return output_dir / SHARDS / f"{key}.parquet", output_dir / SHARDS / f"{key}.json"


def run_section(task: dict) -> dict:
    """Prepare one section (in a worker or in this process); never raises for the section's own faults.

    The old record goes first and the new one is written last, so a section interrupted anywhere in
    between is redone by the next run.
    """
    kind, atlas, params, context, out = (_STATE[k] for k in ("kind", "atlas", "params", "context", "output_dir"))
    key, sp, sec = task["key"], task["specimen"], task["section"]
    rows_path, record_path = _shard_paths(out, key)
    record_path.unlink(missing_ok=True)
    old_files = _files_of(rows_path)  # a redo with other parameters must not leave the old images behind
    staged = params.get("format", "files") == "shards" and not kind.writes_shards
    t0 = time.perf_counter()
    section = stage = None
    try:
        if staged:  # images are staged in a temporary folder, then packed into the section's tars
            (out / WDS).mkdir(parents=True, exist_ok=True)
            stage = Path(tempfile.mkdtemp(prefix=f".{key}{TEMP_MARK}stage-", dir=out / WDS))
        section = atlas.section(sp, sec)
        check_resolution(section, params["mpp"])
        rows, stats = kind.process(section, key, params, context, stage if staged else out)
        ann = dict(getattr(section, "annotation_report", None) or {})
        if staged:
            rows = pack_shards(rows, stage, out, key, int(params.get("shard_size", DEFAULT_SHARD_SIZE)))
    except Exception as exc:  # a corrupt TIFF or a bad annotation costs this section only
        return {"key": key, "ok": False, "reason": f"{type(exc).__name__}: {exc}"}
    finally:
        if section is not None and hasattr(section, "close"):
            section.close()
        if stage is not None:
            shutil.rmtree(stage, ignore_errors=True)
    unknown = sorted({int(i) for i in list(ann.get("unknown_ids", [])) + list(stats.pop("unknown_ids", []))})
    record = {
        "key": key, "specimen": int(sp), "section": int(sec), "fingerprint": task["fingerprint"],
        "n_rows": int(len(rows)), "seconds": round(time.perf_counter() - t0, 3),
        "repaired": [int(i) for i in ann.get("repaired", [])], "unknown_ids": unknown,
        "empty": [int(i) for i in ann.get("empty", [])], "n_features": ann.get("n_features"),
        "stats": stats,
    }
    with atomic_path(rows_path) as tmp:
        rows.to_parquet(tmp, index=False)
    for rel in old_files - _files_of(rows_path):
        (out / rel).unlink(missing_ok=True)
    write_json(record_path, record)
    return {"key": key, "ok": True}


def _files_of(rows_path: Path) -> set[str]:
    """The image and mask files (relative paths) a section's rows name; empty when there are none."""
    if not rows_path.is_file():
        return set()
    try:
        frame = pd.read_parquet(rows_path)
    except Exception:  # a damaged shard names nothing we can trust; the redo overwrites what it writes
        return set()
    cols = [c for c in ("path", "mask_path", "shard") if c in frame.columns]
    # a shards-format path is "<tar>#<member>": the file is the tar
    return {str(p).split("#", 1)[0] for col in cols for p in frame[col] if isinstance(p, str) and p}


# ------------------------------------------------------------------------------------------- the pool

def _watch_parent(parent: int) -> None:
    """Exit this worker as soon as its parent is gone (SIGKILL leaves no chance to stop the pool)."""
    while True:
        time.sleep(0.2)
        if os.getppid() != parent:
            os._exit(1)


def _init_worker(kind: Kind, atlas_ref: Any, params: dict, context: dict, output_dir: str, parent: int) -> None:
    # Ctrl-C reaches the whole process group: the parent alone decides, and stops the workers itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()
    # a remote atlas's filesystem is not fork-safe: open it again in this process from its URL
    _set_state(kind, open_atlas(atlas_ref), params, context, output_dir)


@contextlib.contextmanager
def _stop_on_signals():
    """SIGINT and SIGTERM raise :class:`Interrupted` in the main thread (once; further ones are ignored
    while the pool is stopped), so the caller stops taking work and stops its workers."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise Interrupted(signum)

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _stop_pool(pool: ProcessPoolExecutor) -> None:
    """Cancel queued work and end the workers now (they hold no finished work: that is on disk)."""
    procs = list((getattr(pool, "_processes", None) or {}).values())  # the executor keeps no public list
    pool.shutdown(wait=False, cancel_futures=True)
    for p in procs:
        if p.is_alive():
            p.terminate()
    for p in procs:
        p.join(timeout=10)
        if p.is_alive():
            p.kill()
            p.join(timeout=5)


def _run_tasks(tasks: list[dict], n_workers: int, init_args: tuple, on_result: Callable[[dict], None]) -> None:
    """Run ``tasks`` with at most ``n_workers`` in flight (so a signal finds no queue to drain)."""
    if n_workers <= 1 or len(tasks) <= 1:
        kind, atlas, params, context, output_dir, _ = init_args
        _set_state(kind, atlas, params, context, output_dir)
        for t in tasks:
            on_result(run_section(t))
        return
    ref = init_args[1]
    ref = ref.url if isinstance(ref, Atlas) else ref  # other atlas objects (test doubles) travel as they are
    args = (init_args[0], ref, *init_args[2:5], os.getpid())
    # fork: workers start at once and see what the parent has (a memory:// atlas too); elsewhere the default
    context = multiprocessing.get_context("fork") if sys.platform.startswith("linux") else None
    pending = deque(tasks)
    while pending:
        pool = ProcessPoolExecutor(max_workers=min(n_workers, len(pending)), initializer=_init_worker,
                                   initargs=args, mp_context=context)
        running: dict = {}
        broken = False
        try:
            while pending or running:
                while pending and len(running) < n_workers and not broken:
                    t = pending.popleft()
                    running[pool.submit(run_section, t)] = t
                if not running:
                    break
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for fut in done:
                    t = running.pop(fut)
                    try:
                        res = fut.result()
                    except Exception as exc:  # a worker that died (e.g. out of memory) breaks this pool
                        broken = True
                        res = {"key": t["key"], "ok": False,
                               "reason": f"worker process failed while this section ran ({type(exc).__name__}: "
                                         f"{exc}); a rerun retries it"}
                    on_result(res)
        except BaseException:
            _stop_pool(pool)
            raise
        pool.shutdown(wait=True)


# ------------------------------------------------------------------------------------------- run

def run(kind: Kind, atlas: Any, output_dir: str | os.PathLike, params: dict, context: dict, *,
        section_params: Iterable[str], workers: int | None = None, sections: Any = None,
        split: str = "sections", seed: int = 0, val_fraction: float = 0.2, part: Any = None) -> Path:
    """Prepare the dataset ``kind`` of ``atlas`` into ``output_dir`` and return ``output_dir``.

    ``params`` are the validated parameters (recorded in the report); ``section_params`` names those that
    change a section's output (its fingerprint, with ``context`` and the section's input files); the
    split parameters only change the combined manifest. ``part="i/N"`` prepares every N-th section from
    the i-th only and leaves the combining to :func:`merge`.
    """
    atlas_obj = open_atlas(atlas)  # before anything is written: a missing root leaves no directory behind
    which = parse_part(part)
    table, skipped = plan_sections(atlas_obj, sections)
    output_dir = Path(output_dir)
    if which is not None:
        i, n = which
        table = table.iloc[i::n].reset_index(drop=True)
        skipped = {k: v for k, v in skipped.items()
                   if k in {section_key(r.specimen, r.section) for r in table.itertuples(index=False)}}
    base_fp = work_fingerprint({k: params[k] for k in section_params if k in params}, context)
    identity = getattr(atlas_obj, "section_identity", None)
    tasks, resumed = [], []
    for rec in table.itertuples(index=False):
        key = section_key(rec.specimen, rec.section)
        if key in skipped:
            continue
        inputs = identity(int(rec.specimen), int(rec.section)) if identity else None
        provenance = [None if _missing(rec.age_gw) else float(rec.age_gw), str(rec.plane)]
        fp = fingerprint(base_fp, inputs, provenance)
        rows_path, record_path = _shard_paths(output_dir, key)
        if is_reusable(record_path, fp, [rows_path]):
            resumed.append(key)
        else:
            tasks.append({"key": key, "specimen": int(rec.specimen), "section": int(rec.section), "fingerprint": fp})

    output_dir.mkdir(parents=True, exist_ok=True)
    _sweep(kind, output_dir, tasks)
    n_workers = (os.cpu_count() or 1) if workers is None else int(workers)
    bar = tqdm(total=len(tasks), desc=f"prepare {kind.name}", unit="section")

    def on_result(res: dict) -> None:
        if not res["ok"]:
            skipped[res["key"]] = res["reason"]
        bar.update()

    try:
        with _stop_on_signals():
            _run_tasks(tasks, n_workers, (kind, atlas_obj, params, context, str(output_dir), None), on_result)
    finally:
        bar.close()
    keys = [section_key(r.specimen, r.section) for r in table.itertuples(index=False)]
    info = {"dataset": kind.name, "atlas": getattr(atlas_obj, "url", str(atlas)),
            "synthetic": bool(getattr(atlas_obj, "is_synthetic", False)), "params": params,
            "fingerprint": base_fp, "split": split, "seed": int(seed),
            "val_fraction": float(val_fraction)}
    if which is not None:
        write_json(output_dir / "parts" / f"part-{which[0]}-of-{which[1]}.json",
                   {**info, "part": list(which), "sections": keys, "skipped": skipped, "resumed": resumed})
        return output_dir
    return combine(kind, output_dir, info, keys, skipped, resumed, context)


def _sweep(kind: Kind, output_dir: Path, tasks: list[dict]) -> list[Path]:
    """Remove the temporaries killed runs left for the sections about to be (re)done, and nothing else."""
    by_dir: dict[Path, set[str]] = {}
    for t in tasks:
        for directory, prefix in [(output_dir / SHARDS, t["key"] + "."), (output_dir / WDS, t["key"]),
                                  *kind.debris(output_dir, t["specimen"], t["section"])]:
            by_dir.setdefault(Path(directory), set()).add(prefix)
    removed = []
    for directory, prefixes in by_dir.items():
        if not directory.is_dir():
            continue
        # One listing per directory. A dataset never names its own files with a leading dot, so a hidden
        # entry named after one of these sections' files is a temporary (".<name>.tmp-<random>", or the
        # ".<name>.<random>" of earlier versions) that a killed run left.
        for entry in list(directory.glob(".*")):
            if any(entry.name.startswith("." + p) for p in prefixes):
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)
                removed.append(entry)
    return removed


# ------------------------------------------------------------------------------------------- combine

def label_table(onto: Any, label_ids: Iterable[int]) -> dict[int, dict[str, str]]:
    """label id -> ``{"label": name, "acronym", "ontology_path"}`` from the ontology."""
    out = {}
    for i in sorted(set(int(x) for x in label_ids)):
        node = onto[i]
        out[i] = {"label": onto.name(i), "acronym": getattr(node, "acronym", "") or "",
                  "ontology_path": onto.path_name(i)}
    return out


def write_openclip_csvs(manifest: pd.DataFrame, output_dir: str | os.PathLike) -> list[Path]:
    """Write ``openclip_<image_type>_<split>.csv`` views (``filepath`` absolute, ``title`` = caption).

    open_clip's training script reads them with ``--csv-img-key filepath --csv-caption-key title
    --csv-separator ,``. Rows without a split (unlabelled tiles, unused rows) are left out.
    """
    output_dir = Path(output_dir).resolve()
    written = []
    if not len(manifest):
        return written
    for (image_type, split), group in manifest.dropna(subset=["split"]).groupby(["image_type", "split"]):
        view = pd.DataFrame({"filepath": [str(output_dir / p) for p in group["path"]],
                             "title": group["caption"].to_numpy()})
        path = output_dir / f"openclip_{image_type}_{split}.csv"
        with atomic_path(path) as tmp:
            view.to_csv(tmp, index=False)
        written.append(path)
    return written


def _clean_lists(manifest: pd.DataFrame) -> pd.DataFrame:
    manifest["multi_label_ids"] = manifest["multi_label_ids"].map(lambda v: [int(x) for x in v])
    manifest["multi_labels"] = manifest["multi_labels"].map(lambda v: [str(x) for x in v])
    return manifest


def combine(kind: Kind, output_dir: Path, info: dict, keys: list[str], skipped: Mapping[str, str],
            resumed: Iterable[str], context: dict) -> Path:
    """Join the finished sections among ``keys`` into the manifest, labels, CSV views and the report."""
    from cytoclip.splits import assign_split

    output_dir = Path(output_dir)
    for name in ("manifest.parquet", "labels.json", "report.json"):
        sweep_temps(output_dir, name)
    sweep_temps(output_dir, "openclip_")
    resumed = set(resumed)
    frames, records = [], []
    for key in keys:
        rows_path, record_path = _shard_paths(output_dir, key)
        if key in skipped or not (record_path.is_file() and rows_path.is_file()):
            continue
        records.append(read_json(record_path))
        frames.append(pd.read_parquet(rows_path))
    frames = [f for f in frames if len(f)]
    sharded = info["params"].get("format", "files") == "shards"
    columns = [*kind.columns, *(SHARD_COLUMNS if sharded else [])]
    manifest = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(
        {c: pd.Series(dtype=object) for c in columns})
    manifest = manifest[columns]
    if len(manifest):
        manifest = _clean_lists(manifest)
        split = assign_split(manifest, info["split"], seed=info["seed"],
                             val_fraction=info["val_fraction"]).to_numpy(dtype=object)
        split[manifest["label_id"].to_numpy(dtype=np.int64) < 0] = None  # unlabelled rows train nothing
        manifest["split"] = split
    with atomic_path(output_dir / "manifest.parquet") as tmp:
        manifest.to_parquet(tmp, index=False)

    labelled = manifest[manifest["label_id"].astype(np.int64) >= 0] if len(manifest) else manifest
    table = (labelled.groupby(["label_id", "label", "acronym", "ontology_path"]).size().rename("n_images")
             .reset_index().sort_values("label") if len(labelled) else pd.DataFrame())
    write_json(output_dir / "labels.json", {
        "dataset": kind.name,
        "class_names": sorted(table["label"]) if len(table) else [],
        "n_labels": int(len(table)),
        "labels": [{"label_id": int(r.label_id), "label": r.label, "acronym": r.acronym,
                    "ontology_path": r.ontology_path, "n_images": int(r.n_images)} for r in table.itertuples()],
    })
    # open_clip's CSV views name image files; shards are read with --dataset-type webdataset instead
    if sharded:
        write_shard_index(manifest, output_dir)
        csvs: list[Path] = []
    else:
        csvs = write_openclip_csvs(manifest, output_dir)

    sections: dict[str, dict] = {}
    by_key = {r["key"]: r for r in records}
    for key in keys:
        if key in skipped:
            sections[key] = {"status": "skipped", "reason": skipped[key]}
        elif key in by_key:
            r = by_key[key]
            sections[key] = {"status": "done", "resumed": key in resumed, "n_images": r["n_rows"],
                             "repaired": r["repaired"], "unknown_ids": r["unknown_ids"], "empty": r["empty"],
                             "stats": r["stats"]}
        else:
            sections[key] = {"status": "missing", "reason": "not prepared (interrupted or another part's)"}
    split_counts = manifest["split"].value_counts(dropna=False) if len(manifest) else pd.Series(dtype=int)
    by_type = (manifest.assign(split=manifest["split"].fillna("none")).groupby(["image_type", "split"]).size()
               if len(manifest) else pd.Series(dtype=int))
    report = {
        **{k: v for k, v in info.items()},
        "n_sections": len(keys), "n_sections_used": len(records),
        "resumed_sections": len(resumed & set(by_key)), "n_images": int(len(manifest)),
        "n_labels": int(len(table)),
        "skipped": dict(sorted(skipped.items())),
        "repaired": {r["key"]: r["repaired"] for r in records if r["repaired"]},
        "unknown_ids": {r["key"]: r["unknown_ids"] for r in records if r["unknown_ids"]},
        "empty": {r["key"]: r["empty"] for r in records if r["empty"]},
        "splits": {str(k if isinstance(k, str) else "none"): int(v) for k, v in split_counts.items()},
        "images_per_type_split": {f"{t}/{s}": int(n) for (t, s), n in by_type.items()},
        "csv_views": [p.name for p in csvs],
        **kind.summary(manifest, records, info["params"], context),
        "sections": sections,
    }
    write_json(output_dir / "report.json", report)
    return output_dir


# ------------------------------------------------------------------------------------------- parts

#: dataset name -> module defining its ``KIND`` (imported when a merge needs it)
KIND_MODULES = {"regions": "cytoclip.regions", "tiles": "cytoclip.tiles"}


def _key_order(key: str) -> tuple[int, int]:
    sp, sec = key[1:].split("_")
    return int(sp), int(sec)


def merge(output_dir: str | os.PathLike) -> Path:
    """Combine the parts written by ``run(..., part="i/N")`` runs (on one machine or many, into one
    ``output_dir``) into the dataset a single run writes: the same manifest, labels, report and CSV views.

    Refuses (ValueError naming the part files) when a part is missing or the parts disagree on the dataset,
    its parameters or N.
    """
    import importlib

    output_dir = Path(output_dir)
    files = sorted((output_dir / "parts").glob("part-*-of-*.json"))
    if not files:
        raise FileNotFoundError(f"{output_dir / 'parts'}: no part records (expected part-<i>-of-<N>.json written "
                                f"by `cytoclip prepare regions|tiles --part i/N --output-dir {output_dir}`)")
    parts = [read_json(f) for f in files]
    first = parts[0]
    n = first["part"][1]
    for f, p in zip(files, parts):
        for field in ("dataset", "params", "fingerprint", "split", "seed", "val_fraction"):
            if p.get(field) != first.get(field):
                raise ValueError(f"{f}: {field} {p.get(field)!r} differs from {files[0].name}'s {first.get(field)!r}; "
                                 f"expected every part prepared with the same parameters")
        if p["part"][1] != n:
            raise ValueError(f"{f}: part of {p['part'][1]}, but {files[0].name} is a part of {n}")
    have = {p["part"][0] for p in parts}
    missing = [i for i in range(n) if i not in have]
    if missing:
        raise ValueError(f"{output_dir / 'parts'}: part(s) {missing} of {n} missing (expected part-<i>-of-{n}.json "
                         f"for every i in 0..{n - 1})")
    keys = sorted({k for p in parts for k in p["sections"]}, key=_key_order)
    skipped = {k: v for p in parts for k, v in p["skipped"].items()}
    resumed = {k for p in parts for k in p["resumed"]}
    kind = importlib.import_module(KIND_MODULES[first["dataset"]]).KIND
    info = {k: first[k] for k in ("dataset", "atlas", "synthetic", "params", "fingerprint", "split", "seed",
                                  "val_fraction")}
    return combine(kind, output_dir, info, keys, skipped, resumed, {})
