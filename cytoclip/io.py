"""Small file helpers shared by every step: atomic writes, temp sweeping, fingerprints and the resume rule.

Every artefact of the study (prepared datasets, runs, results) is written to a temporary name in the
same directory and renamed into place, so an interrupted run never leaves a half-written file behind.
Temporary names carry one mark (``.<name>.tmp-<random>``): a run killed with SIGKILL leaves them, and
:func:`sweep_temps` lets the next run remove them without touching anything else.

The resume rule, written once (:func:`work_fingerprint`, :func:`is_reusable`): a finished piece of work
is reused when the fingerprint of its inputs and parameters is the one recorded beside it, and redone
otherwise. Settings that change how fast the work runs, not what it produces (worker counts, device,
progress bars), are never part of the fingerprint.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

import numpy as np


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()

#: The mark in every temporary name this module makes: ``.<target name>.tmp-<random>[suffix]``.
TEMP_MARK = ".tmp-"


def temp_prefix(path: str | os.PathLike) -> str:
    """The prefix of the temporary names made for ``path`` (``.<name>.tmp-``), beside it."""
    return f".{Path(path).name}{TEMP_MARK}"


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    ``suffix`` defaults to the target's own suffix, so writers that infer the format from the
    extension (PIL, pandas, tifffile) keep working.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path), suffix=suffix if suffix is not None else path.suffix,
                               dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o666 & ~_UMASK)  # mkstemp makes 0600; artefacts are meant to be shared
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary directory beside ``path``; it replaces ``path`` (a directory) only if the block succeeds.

    Readers see the old directory or the whole new one, never a partly written one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=temp_prefix(path), dir=path.parent))
    os.chmod(tmp, 0o777 & ~_UMASK)  # mkdtemp makes it private; datasets are meant to be browsed
    try:
        yield tmp
        if path.is_dir() and not path.is_symlink():
            # move the old one aside first, so the new one lands by one rename
            old = Path(tempfile.mkdtemp(prefix=temp_prefix(path), dir=path.parent))
            os.replace(path, old / path.name)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def sweep_temps(directory: str | os.PathLike, name_prefix: str = "", recursive: bool = False) -> list[Path]:
    """Remove the temporary files and directories (``.<name>.tmp-*``) left in ``directory`` by killed runs.

    ``name_prefix`` narrows the sweep to temporaries of targets whose name starts with it (e.g. one
    section's files), so a run sweeps only what it owns. Returns what was removed. Call it only where no
    other writer is working on the same targets at the same time.
    """
    directory = Path(directory)
    if not directory.is_dir():
        return []
    pattern = f".{name_prefix}*{TEMP_MARK}*"
    found = directory.rglob(pattern) if recursive else directory.glob(pattern)
    removed = []
    for entry in sorted(found, key=lambda p: len(p.parts), reverse=True):
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        elif entry.exists() or entry.is_symlink():
            entry.unlink(missing_ok=True)
        removed.append(entry)
    return removed


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (Path, os.PathLike)):
        return str(obj)
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> Path:
    """Write ``obj`` as JSON atomically (numpy scalars/arrays and paths are converted)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=indent, default=_json_default, sort_keys=False) + "\n")
    return path


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file; the error names the file when it is missing or malformed."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: file not found") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write bytes atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return path


def fingerprint(*parts: Any) -> str:
    """A short stable hash of JSON-serialisable parts and/or files (by size and mtime).

    Used to cache embeddings and to skip unchanged experiments. Files are keyed by path, size and
    modification time rather than content, which is cheap and correct for artefacts written once.
    """
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, Path):
            if part.is_dir():
                for f in sorted(p for p in part.rglob("*") if p.is_file()):
                    st = f.stat()
                    h.update(f"{f.relative_to(part)}:{st.st_size}:{st.st_mtime_ns}".encode())
            elif part.exists():
                h.update(part.read_bytes())
            else:
                h.update(f"missing:{part}".encode())
        else:
            h.update(json.dumps(part, sort_keys=True, default=_json_default).encode())
    return h.hexdigest()[:16]


#: Parameters that decide how fast work runs, never what it produces: left out of every fingerprint.
RUN_ONLY_PARAMS = frozenset({"workers", "num_workers", "device", "progress", "block", "part", "overwrite"})


def work_fingerprint(params: Mapping[str, Any], *inputs: Any) -> str:
    """The fingerprint of one piece of work: its parameters (minus :data:`RUN_ONLY_PARAMS`) and its inputs.

    ``inputs`` are JSON-serialisable descriptions of what the work reads (file identities, tables);
    the same parameters and inputs give the same fingerprint in every process and on every machine.
    """
    kept = {k: v for k, v in params.items() if k not in RUN_ONLY_PARAMS}
    return fingerprint(kept, *inputs)


def is_reusable(record: str | os.PathLike, fp: str, outputs: Iterable[str | os.PathLike] = ()) -> bool:
    """The resume rule: True when ``record`` (a JSON file written last, after the outputs) holds ``fp``
    under ``"fingerprint"`` and every path in ``outputs`` exists; False means redo the work."""
    record = Path(record)
    if not record.is_file() or not all(Path(p).exists() for p in outputs):
        return False
    try:
        data = read_json(record)
    except (ValueError, OSError):
        return False  # a damaged record is work to redo, not an error
    return isinstance(data, dict) and data.get("fingerprint") == fp
