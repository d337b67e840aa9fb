"""WebDataset tar shards of a prepared dataset (``format="shards"`` of the preparation engine).

One section's images become ``webdataset/<key>-<n>.tar`` (at most ``shard_size`` samples each, in manifest
order). Per sample: ``<sample>.jpg|png`` (the image bytes the per-file layout would hold), ``<sample>.txt``
(caption), ``<sample>.json`` (the manifest row) and ``<sample>.mask.png`` for masks. Tar metadata is fixed
(mtime 0, mode 0644, no owner), so the same inputs give the same bytes on any machine; each tar is written
atomically. ``shards.json`` beside the manifest indexes them (section, sample count, split counts).
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path
from typing import Any

import pandas as pd

from cytoclip.io import _json_default, atomic_path, write_json

WDS = "webdataset"  # folder of the tars, relative to the dataset dir
#: extra manifest columns of the shards format: the tar (relative path) and the sample key in it
SHARD_COLUMNS = ["shard", "key"]
DEFAULT_SHARD_SIZE = 5000


def _sample_name(key: str, path: str) -> str:
    """A WebDataset sample key for a row: the file stem, prefixed with the section key, without dots
    (WebDataset splits a member name at its first dot: key, then extension)."""
    stem = Path(path).stem.replace(".", "_")
    return stem if stem.startswith(key + "_") else f"{key}_{stem}"


def _tar_add(tar: Any, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644  # fixed metadata: the same inputs give the same bytes
    tar.addfile(info, io.BytesIO(data))


def pack_shards(rows: pd.DataFrame, stage: Path, output_dir: Path, key: str, shard_size: int) -> pd.DataFrame:
    """Pack one section's staged images into ``webdataset/<key>-<n>.tar`` shards; return its rows pointing
    into them (``path`` = ``<tar>#<member>``, ``shard``, ``key``). Each tar is written atomically."""
    rows = rows.reset_index(drop=True).copy()
    if not len(rows):
        for c in SHARD_COLUMNS:
            rows[c] = pd.Series(dtype=object)
        return rows
    sources = rows["path"].tolist()
    masks = rows["mask_path"].tolist() if "mask_path" in rows.columns else [""] * len(rows)
    samples = [_sample_name(key, p) for p in sources]
    if len(set(samples)) != len(samples):
        raise ValueError(f"{key}: two images would share a WebDataset key; expected unique file stems")
    shards = [f"{WDS}/{key}-{i // shard_size:06d}.tar" for i in range(len(rows))]
    exts = [Path(p).suffix.lstrip(".").lower() for p in sources]
    rows["path"] = [f"{t}#{s}.{e}" for t, s, e in zip(shards, samples, exts)]
    if "mask_path" in rows.columns:
        rows["mask_path"] = [f"{t}#{s}.mask.png" if m else "" for t, s, m in zip(shards, samples, masks)]
    rows["shard"], rows["key"] = shards, samples
    records = rows.to_dict(orient="records")
    for tar_rel in sorted(set(shards)):
        with atomic_path(output_dir / tar_rel) as tmp:
            with tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar:
                for i in (k for k, t in enumerate(shards) if t == tar_rel):
                    s = samples[i]
                    _tar_add(tar, f"{s}.{exts[i]}", (stage / sources[i]).read_bytes())
                    _tar_add(tar, f"{s}.txt", str(records[i]["caption"]).encode())
                    _tar_add(tar, f"{s}.json", json.dumps(records[i], default=_json_default, sort_keys=True).encode())
                    if masks[i]:
                        _tar_add(tar, f"{s}.mask.png", (stage / masks[i]).read_bytes())
    return rows


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
