"""Training checkpoints without pickle: tensors in safetensors files, everything else as plain JSON.

A checkpoint is a directory (``<run_dir>/checkpoint-last/``) holding

- ``checkpoint.json``: the format marker and version, the plain state (step, scheduler, RNG of Python and
  numpy, history, config, ...) and, for each tensor group, its file name, byte size and SHA-256;
- ``<group>-<token>.safetensors``: one file per tensor group (model, optimizer, rng), named with a token
  fresh at each save. A matrix most of whose rows are all zero (Adam's moments of a token embedding whose
  vocabulary the captions barely use) is stored as its non-zero rows and their indices, and rebuilt exactly.

Writing is atomic without replacing a directory: the tensor files of a new save get new names (written in a
staging directory ``.pending-<token>/``, where safetensors also puts its own temporary file, and renamed in),
then ``checkpoint.json`` is replaced in one rename (the commit), then the files the new JSON does not name are
removed. A process killed at any point leaves the previous checkpoint
complete (its JSON still names its own files); what a killed save left behind is swept by the next save or
:func:`sweep`. Loading never unpickles: a file that is not this format, or whose size or hash differs from
what the JSON records (truncated, corrupt), is refused with a :class:`CheckpointError` naming it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
from pathlib import Path
from typing import Any

import torch

from cytoclip.io import _UMASK, write_json

FORMAT = "cytoclip-checkpoint"
VERSION = 1
STATE_FILE = "checkpoint.json"
#: names of the tensor files this module writes (and may therefore sweep): <group>-<token>.safetensors
_TENSOR_FILE = re.compile(r"^[a-z][a-z0-9_]*-[0-9a-f]{12}\.safetensors$")


class CheckpointError(ValueError):
    """A checkpoint that is not cytoclip's own format, or is truncated or corrupt; the message names the file."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _plain_tensors(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CPU, contiguous, one storage per name (safetensors refuses shared or strided tensors); values unchanged."""
    out, seen = {}, set()
    for name, t in tensors.items():
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"checkpoint tensor {name!r}: expected a tensor, got {type(t).__name__}")
        t = t.detach().to("cpu").contiguous()
        if t.numel() and t.untyped_storage().data_ptr() in seen:
            t = t.clone()  # shares memory with an earlier entry (tied weights, slices): store its own copy
        seen.add(t.untyped_storage().data_ptr())
        out[name] = t
    return out


#: prefix of the staging directory of a save in progress
_PENDING = ".pending-"
#: suffix of the row indices of a row-sparse matrix (its values are stored under the matrix's own name)
_ROWS = "@rows"


def _row_sparse(tensors: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, list[int]]]:
    """Matrices with at least half of their rows all-zero bits -> (their non-zero rows, ``name@rows``); returns
    the tensors to write and ``{name: full shape}`` of the ones so stored. Lossless (bit patterns compared)."""
    out, shapes = {}, {}
    for name, t in tensors.items():
        if _ROWS in name:
            raise ValueError(f"checkpoint tensor {name!r}: names may not contain {_ROWS!r}")
        if t.ndim >= 2 and t.numel() >= 4096 and t.element_size() in (1, 2, 4, 8):
            bits = t.reshape(t.shape[0], -1).view({1: torch.uint8, 2: torch.int16, 4: torch.int32,
                                                     8: torch.int64}[t.element_size()])
            rows = bits.ne(0).any(dim=1).nonzero().flatten()
            if rows.numel() * 2 <= t.shape[0]:
                out[name], out[name + _ROWS] = t[rows].contiguous(), rows
                shapes[name] = list(t.shape)
                continue
        out[name] = t
    return out, shapes


def _dense(tensors: dict[str, torch.Tensor], shapes: dict[str, list[int]], path: Path) -> dict[str, torch.Tensor]:
    """Inverse of :func:`_row_sparse`."""
    out = {k: v for k, v in tensors.items() if not k.endswith(_ROWS)}
    for name, shape in shapes.items():
        values, rows = out.get(name), tensors.get(name + _ROWS)
        if values is None or rows is None or values.shape[1:] != tuple(shape[1:]) or len(rows) != len(values) \
                or (len(rows) and int(rows.max()) >= shape[0]):
            raise CheckpointError(f"{path}: row-sparse tensor {name!r} does not match its recorded shape {shape}")
        full = torch.zeros(shape, dtype=values.dtype)
        full[rows] = values
        out[name] = full
    return out


def save(directory: str | os.PathLike, groups: dict[str, dict[str, torch.Tensor]], state: dict) -> Path:
    """Write a checkpoint into ``directory``: each ``groups[name]`` (a flat dict of tensors) as a safetensors
    file, ``state`` (JSON-serialisable plain data) into ``checkpoint.json``; atomically, as described above.
    Returns the path of ``checkpoint.json``."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    token = secrets.token_hex(6)
    staging = directory / f"{_PENDING}{token}"
    staging.mkdir()
    files = {}
    for group, tensors in groups.items():
        if not re.fullmatch(r"[a-z][a-z0-9_]*", group):
            raise ValueError(f"checkpoint group {group!r}: expected a lower-case identifier")
        name = f"{group}-{token}.safetensors"
        stored, shapes = _row_sparse(_plain_tensors(tensors))
        save_file(stored, str(staging / name), metadata={"format": FORMAT, "version": str(VERSION), "group": group})
        os.chmod(staging / name, 0o666 & ~_UMASK)  # safetensors writes 0600; artefacts are meant to be shared
        files[group] = {"file": name, "bytes": (staging / name).stat().st_size, "sha256": _sha256(staging / name),
                        "row_sparse": shapes}
    for entry in files.values():
        os.replace(staging / entry["file"], directory / entry["file"])
    staging.rmdir()
    write_json(directory / STATE_FILE, {"format": FORMAT, "version": VERSION, "files": files, "state": state})
    sweep(directory)
    return directory / STATE_FILE


def _read_manifest(directory: Path) -> dict:
    path = directory / STATE_FILE
    try:
        meta = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise
    except (UnicodeDecodeError, json.JSONDecodeError, OSError) as exc:
        raise CheckpointError(f"{path}: not a cytoclip checkpoint (not readable JSON: "
                              f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a cytoclip checkpoint (expected \"format\": \"{FORMAT}\")")
    if meta.get("version") != VERSION:
        raise CheckpointError(f"{path}: checkpoint format version {meta.get('version')!r}; this cytoclip reads "
                              f"version {VERSION}")
    files = meta.get("files")
    if not isinstance(files, dict) or not isinstance(meta.get("state"), dict):
        raise CheckpointError(f"{path}: malformed cytoclip checkpoint (expected objects 'files' and 'state')")
    for group, entry in files.items():
        ok = (isinstance(entry, dict) and isinstance(entry.get("file"), str) and _TENSOR_FILE.match(entry["file"])
              and isinstance(entry.get("bytes"), int) and isinstance(entry.get("sha256"), str)
              and isinstance(entry.get("row_sparse", {}), dict)
              and all(isinstance(v, list) and all(isinstance(n, int) and n >= 0 for n in v)
                      for v in entry.get("row_sparse", {}).values()))
        if not ok:  # also keeps a crafted JSON from naming a file outside the checkpoint directory
            raise CheckpointError(f"{path}: malformed entry for tensor group {group!r}: {entry!r}")
    return meta


def exists(directory: str | os.PathLike) -> bool:
    """True when ``directory`` holds a committed checkpoint (its ``checkpoint.json``), valid or not."""
    return (Path(directory) / STATE_FILE).is_file()


def load(directory: str | os.PathLike) -> tuple[dict[str, dict[str, torch.Tensor]], dict]:
    """``(groups, state)`` of the checkpoint in ``directory`` (tensors on the CPU); raises
    :class:`CheckpointError` naming the file for anything but an intact checkpoint of this format, and
    FileNotFoundError when there is none."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file, safe_open

    directory = Path(directory)
    meta = _read_manifest(directory)
    groups = {}
    for group, entry in meta["files"].items():
        path = directory / entry["file"]
        if not path.is_file():
            raise CheckpointError(f"{path}: missing; {directory / STATE_FILE} names it (tensor group {group!r})")
        size = path.stat().st_size
        if size != entry["bytes"]:
            raise CheckpointError(f"{path}: truncated or corrupt ({size} bytes; the checkpoint recorded "
                                  f"{entry['bytes']})")
        if _sha256(path) != entry["sha256"]:
            raise CheckpointError(f"{path}: corrupt (its SHA-256 differs from the one the checkpoint recorded)")
        try:
            with safe_open(str(path), framework="pt") as f:
                file_meta = f.metadata() or {}
            tensors = load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from None
        if file_meta.get("format") != FORMAT or file_meta.get("group") != group:
            raise CheckpointError(f"{path}: not a cytoclip checkpoint file of group {group!r} (its metadata: "
                                  f"{file_meta})")
        groups[group] = _dense(tensors, entry.get("row_sparse", {}), path)
    return groups, meta["state"]


def sweep(directory: str | os.PathLike) -> list[Path]:
    """Remove what interrupted saves left in ``directory``: staging directories, temporary files (dot names)
    and tensor files that the committed ``checkpoint.json`` does not name (all of them when there is no
    committed checkpoint).
    Nothing is removed when ``checkpoint.json`` exists but cannot be read (it is left for inspection).
    Returns the removed paths."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    keep: set[str] = {STATE_FILE}
    if exists(directory):
        try:
            keep |= {e["file"] for e in _read_manifest(directory)["files"].values()}
        except CheckpointError:
            return []
    removed = []
    for entry in directory.iterdir():
        name = entry.name
        if name.startswith(_PENDING) and entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
        elif (name.startswith(f".{STATE_FILE}.") or _TENSOR_FILE.match(name)) and name not in keep \
                and entry.is_file():
            entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed


def to_plain(obj: Any) -> Any:
    """Plain JSON data of ``obj`` (tuples -> lists); raises TypeError naming a value that is not plain
    (a tensor, an array), so nothing silently becomes a string."""
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            if not isinstance(k, (str, int)):
                raise TypeError(f"checkpoint state: key {k!r} is not a string or integer")
            out[str(k)] = to_plain(v)
        return out
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if hasattr(obj, "item") and getattr(obj, "ndim", None) == 0 and not isinstance(obj, torch.Tensor):
        return obj.item()  # numpy scalars
    raise TypeError(f"checkpoint state: {type(obj).__name__} value is not plain data: {obj!r:.80}")


__all__ = ["CheckpointError", "FORMAT", "VERSION", "STATE_FILE", "save", "load", "exists", "sweep", "to_plain"]
