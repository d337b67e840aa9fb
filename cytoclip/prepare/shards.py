"""WebDataset tar shards of a prepared dataset (``format="shards"`` of the preparation engine).

One section's images become ``webdataset/<key>-<n>.tar`` (at most ``shard_size`` samples each, in manifest
order). Per sample: ``<sample>.jpg|png`` (the image bytes the per-file layout would hold), ``<sample>.txt``
(caption), ``<sample>.json`` (the manifest row) and ``<sample>.mask.png`` for masks. Tar metadata is fixed
(mtime 0, mode 0644, no owner), so the same inputs give the same bytes on any machine; each tar is written
atomically. ``shards.json`` beside the manifest indexes them (section, sample count, split counts).
"""

from __future__ import annotations

import contextlib
import json
import tarfile
from pathlib import Path

import pandas as pd

from cytoclip.io import _json_default, atomic_path, write_json

WDS = "webdataset"  # folder of the tars, relative to the dataset dir
#: extra manifest columns of the shards format: the tar (relative path) and the sample key in it
SHARD_COLUMNS = ["shard", "key"]
DEFAULT_SHARD_SIZE = 5000


def _name_parts(path: str) -> tuple[str, str]:
    """``(stem, suffix)`` of a relative path's file name, as ``pathlib`` splits it (without building a Path:
    this runs once per tile)."""
    name = path.rsplit("/", 1)[-1]
    i = name.rfind(".")
    return (name[:i], name[i:]) if 0 < i < len(name) - 1 else (name, "")


def _sample_name(key: str, path: str) -> str:
    """A WebDataset sample key for a row: the file stem, prefixed with the section key, without dots
    (WebDataset splits a member name at its first dot: key, then extension)."""
    stem = _name_parts(path)[0].replace(".", "_")
    return stem if stem.startswith(key + "_") else f"{key}_{stem}"


def _records(rows: pd.DataFrame) -> list[dict]:
    """``rows.to_dict(orient="records")`` (Python scalars, lists as they are), built column-wise: the same
    dicts, hence the same ``.json`` members, at a fraction of the cost for thousands of rows."""
    cols = list(rows.columns)
    values = [rows[c].tolist() for c in cols]
    return [dict(zip(cols, vals)) for vals in zip(*values)]


_BLOCK, _RECORD = tarfile.BLOCKSIZE, tarfile.RECORDSIZE
# the fixed fields of a member header (mode 0644, uid/gid 0, mtime 0, regular file, ustar, no owner names)
_MODE_IDS = b"0000644\x00" + b"0000000\x00" * 2
_TAIL = b"0" + b"\x00" * 100 + b"ustar\x0000" + b"\x00" * (32 + 32 + 8 + 8 + 155 + 12)


def _tar_header(name: str, size: int) -> bytes:
    """The 512-byte USTAR header tarfile writes for a member of fixed metadata (mode 0644, mtime 0: the same
    inputs give the same bytes).

    Built directly (tarfile's ``TarInfo.tobuf`` costs more than a tile's JPEG encode); names over 100 bytes,
    which USTAR splits into a prefix, go through tarfile itself. Tested equal to tarfile's bytes.
    """
    raw = name.encode("utf-8")
    if len(raw) > 100 or size >= 8**11:
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = size, 0, 0o644
        return info.tobuf(tarfile.USTAR_FORMAT, "utf-8", "surrogateescape")
    head = raw.ljust(100, b"\x00") + _MODE_IDS + b"%011o\x00" % size + b"00000000000\x00"
    chksum = sum(head) + 8 * 32 + sum(_TAIL)  # the checksum field counts as eight spaces
    return head + b"%06o\x00 " % chksum + _TAIL


def plan_shards(rows: pd.DataFrame, key: str, shard_size: int) -> pd.DataFrame:
    """One section's rows pointing into its tars: ``path`` = ``<tar>#<member>``, ``shard``, ``key`` (the
    sample), and ``mask_path`` = ``<tar>#<sample>.mask.png`` where the row has a mask. Samples fill
    ``webdataset/<key>-<n>.tar`` in row order, ``shard_size`` at most each."""
    rows = rows.reset_index(drop=True).copy()
    if not len(rows):
        for c in SHARD_COLUMNS:
            rows[c] = pd.Series(dtype=object)
        return rows
    sources = rows["path"].tolist()
    samples = [_sample_name(key, p) for p in sources]
    if len(set(samples)) != len(samples):
        raise ValueError(f"{key}: two images would share a WebDataset key; expected unique file stems")
    shards = [f"{WDS}/{key}-{i // shard_size:06d}.tar" for i in range(len(rows))]
    exts = [_name_parts(p)[1].lstrip(".").lower() for p in sources]
    rows["path"] = [f"{t}#{s}.{e}" for t, s, e in zip(shards, samples, exts)]
    if "mask_path" in rows.columns:
        rows["mask_path"] = [f"{t}#{s}.mask.png" if m else "" for t, s, m in
                             zip(shards, samples, rows["mask_path"].tolist())]
    rows["shard"], rows["key"] = shards, samples
    return rows


class ShardWriter:
    """Stream one section's samples into its tars, from in-memory image bytes (no staged files).

    ``rows``: the section's rows as :func:`plan_shards` returns them (the manifest rows the ``.json``
    members hold). :meth:`add` takes sample ``i``'s image (and mask) bytes in any order; samples are written
    in row order as soon as all before them are in (the reader delivers tiles block by block, the manifest is
    row-major), so at most the out-of-order ones are held. Each tar is written to a temporary beside it and
    renamed into place when its last sample is in; :meth:`abort` (or leaving the ``with`` block with an
    exception) removes the temporary, so no half-written tar is ever visible. The bytes equal
    :func:`pack_shards`'s for the same rows and images.
    """

    def __init__(self, rows: pd.DataFrame, output_dir: Path):
        self.output_dir = Path(output_dir)
        n = len(rows)
        self._shards = rows["shard"].tolist() if n else []
        self._members = [p.split("#", 1)[1] for p in rows["path"].tolist()] if n else []
        self._samples = rows["key"].tolist() if n else []
        self._has_mask = ([bool(m) for m in rows["mask_path"].tolist()] if n and "mask_path" in rows.columns
                          else [False] * n)
        self._records = _records(rows) if n else []
        self._pending: dict[int, tuple[bytes, bytes | None]] = {}
        self._next = 0
        self._fh = None
        self._open_tar: contextlib.ExitStack | None = None  # the tar being written: its atomic_path and file
        self._tar: str | None = None
        self._offset = 0

    def __len__(self) -> int:
        return len(self._shards)

    def add(self, i: int, image: bytes, mask: bytes | None = None) -> None:
        """Sample ``i``'s image bytes (``mask``: its mask PNG bytes, for rows that have one)."""
        if not 0 <= i < len(self._shards) or i < self._next or i in self._pending:
            raise ValueError(f"ShardWriter.add: sample {i} out of range or given twice (expected 0..{len(self) - 1})")
        if self._has_mask[i] and mask is None:
            raise ValueError(f"ShardWriter.add: sample {self._samples[i]} has a mask_path but no mask bytes were given")
        self._pending[i] = (image, mask)
        while self._next in self._pending:
            self._write(self._next, *self._pending.pop(self._next))
            self._next += 1

    def close(self) -> None:
        """Finish the last tar; every sample must have been added."""
        if self._next != len(self._shards):
            raise ValueError(f"ShardWriter.close: {len(self._shards) - self._next} of {len(self._shards)} samples "
                             f"were not added (first missing: {self._samples[self._next]})")
        self._finish()

    def abort(self) -> None:
        """Drop the tar being written (its temporary); finished tars stay."""
        if self._open_tar is not None:
            aborted = RuntimeError("ShardWriter aborted")
            self._open_tar.__exit__(type(aborted), aborted, None)  # atomic_path removes the temporary
            self._open_tar = self._fh = self._tar = None

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type, *_) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    # -- internals
    def _write(self, i: int, image: bytes, mask: bytes | None) -> None:
        tar = self._shards[i]
        if tar != self._tar:
            self._finish()
            self._open(tar)
        s, rec = self._samples[i], self._records[i]
        self._member(self._members[i], image)
        self._member(f"{s}.txt", str(rec["caption"]).encode())
        self._member(f"{s}.json", json.dumps(rec, default=_json_default, sort_keys=True).encode())
        if self._has_mask[i]:
            self._member(f"{s}.mask.png", mask)

    def _member(self, name: str, data: bytes) -> None:
        pad = -len(data) % _BLOCK
        self._fh.write(_tar_header(name, len(data)) + data + b"\x00" * pad)
        self._offset += _BLOCK + len(data) + pad

    def _open(self, tar: str) -> None:
        # a tar outlives one call (samples arrive through add), so its atomic_path is held open on a stack
        self._open_tar = contextlib.ExitStack()
        tmp = self._open_tar.enter_context(atomic_path(self.output_dir / tar))
        self._fh = self._open_tar.enter_context(open(tmp, "wb", buffering=1 << 20))
        self._tar, self._offset = tar, 0

    def _finish(self) -> None:
        if self._fh is None:
            return
        # the end of a tar as tarfile writes it: two zero blocks, then zeros up to a whole record
        end = self._offset + 2 * _BLOCK
        self._fh.write(b"\x00" * (2 * _BLOCK + (-end % _RECORD)))
        self._open_tar.close()  # closes the file, then atomic_path renames it into place
        self._open_tar = self._fh = self._tar = None


def pack_shards(rows: pd.DataFrame, stage: Path, output_dir: Path, key: str, shard_size: int) -> pd.DataFrame:
    """Pack one section's staged images (files under ``stage`` named by ``rows``' paths) into
    ``webdataset/<key>-<n>.tar`` shards; return its rows pointing into them (:func:`plan_shards`).
    Kinds that hold their images in memory stream them into a :class:`ShardWriter` instead."""
    sources = rows["path"].tolist()
    masks = rows["mask_path"].tolist() if "mask_path" in rows.columns else [""] * len(rows)
    planned = plan_shards(rows, key, shard_size)
    with ShardWriter(planned, output_dir) as writer:
        for i, (src, mask) in enumerate(zip(sources, masks)):
            writer.add(i, (stage / src).read_bytes(), (stage / mask).read_bytes() if mask else None)
    return planned


def write_shard_index(manifest: pd.DataFrame, output_dir: Path) -> Path:
    """``shards.json`` beside the manifest: every tar with its section, sample count and split counts, so a
    split can pick whole shards or filter their samples by key."""
    entries = []
    if len(manifest):
        for shard, group in manifest.groupby("shard", sort=False):  # manifest order: section, then shard
            first = group.iloc[0]
            entries.append({"shard": shard, "section": f"S{int(first['specimen'])}_{int(first['section'])}",
                            "n_samples": int(len(group)),
                            "splits": {str(k if isinstance(k, str) else "none"): int(v)
                                       for k, v in group["split"].value_counts(dropna=False).items()}})
    return write_json(output_dir / "shards.json", {"format": "webdataset", "n_shards": len(entries),
                                                   "n_samples": int(len(manifest)), "shards": entries})


def open_clip_reads_shards() -> None:
    """Let ``open_clip_train``'s webdataset reader run with webdataset >= 0.2.96 (idempotent).

    webdataset 0.2.96 made ``tar_file_expander`` yield an end-of-shard marker ``{}`` by default, which
    open_clip_train's ``group_by_keys_nothrow`` (3.3.0 still) reads as a file and fails on (``KeyError:
    'fname'``; open_clip issue #935, webdataset issue #384). The fix named there is ``eof_value=None``: applied
    here to open_clip_train's reference to the expander, before ``open_clip_train.main.main`` runs. The shards
    themselves are plain WebDataset tars; nothing about them changes.
    """
    import functools
    import inspect

    import open_clip_train.data as oc_data

    expander = oc_data.tar_file_expander
    if getattr(expander, "_cytoclip_eof_none", False) or "eof_value" not in inspect.signature(expander).parameters:
        return
    patched = functools.partial(expander, eof_value=None)
    patched._cytoclip_eof_none = True  # type: ignore[attr-defined]
    oc_data.tar_file_expander = patched
