"""The preparation engine (cytoclip.prepare.engine) under faults: the resume rule, temporaries of killed runs,
signals with a process pool (real subprocesses), clear errors, and one report shape for regions and tiles."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest

from cytoclip import regions as R
from cytoclip import tiles as T
from cytoclip.atlas import AtlasError
from cytoclip.io import is_reusable, read_json, work_fingerprint, write_json

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def mini_atlas(tmp_path_factory):
    from tests.test_regions import _write_mini_atlas

    return _write_mini_atlas(tmp_path_factory.mktemp("atlas"))


@pytest.fixture
def atlas_copy(mini_atlas, tmp_path):
    root = tmp_path / "atlas"
    shutil.copytree(mini_atlas, root)
    return root


# ------------------------------------------------------------------------------------------- resume rule

def test_resume_rule_ignores_run_only_settings(tmp_path):
    base = {"mpp": 16.0, "spec": "lowres"}
    fp = work_fingerprint(base, {"file": "1:2"})
    assert fp == work_fingerprint({**base, "workers": 8, "device": "cuda", "num_workers": 3}, {"file": "1:2"})
    assert fp != work_fingerprint({**base, "mpp": 8.0}, {"file": "1:2"})
    assert fp != work_fingerprint(base, {"file": "1:3"})  # an input file rewritten
    record = tmp_path / "r.json"
    assert not is_reusable(record, fp)
    write_json(record, {"fingerprint": fp})
    assert is_reusable(record, fp) and not is_reusable(record, "other")
    assert not is_reusable(record, fp, outputs=[tmp_path / "missing.parquet"])
    record.write_text("{broken")
    assert not is_reusable(record, fp)  # a damaged record is work to redo


def test_regions_redo_a_section_whose_input_file_changed(atlas_copy, tmp_path):
    out = R.prepare_regions(atlas_copy, tmp_path / "out", workers=1)
    shard = out / "shards" / "S1_10.parquet"
    before = {k: (out / "shards" / f"{k}.parquet").stat().st_mtime_ns for k in ("S1_10", "S1_20")}
    from cytoclip import layout

    js = layout.section_paths(atlas_copy, 1, 10)[1]
    js.write_text(js.read_text())  # rewritten (new mtime): another input
    os.utime(js, ns=(time.time_ns() + 10**9, time.time_ns() + 10**9))
    R.prepare_regions(atlas_copy, out, workers=2)
    assert shard.stat().st_mtime_ns != before["S1_10"]
    assert (out / "shards" / "S1_20.parquet").stat().st_mtime_ns == before["S1_20"]
    assert read_json(out / "report.json")["resumed_sections"] == 4


def test_regions_redo_with_other_parameters_leaves_no_stale_images(atlas_copy, tmp_path):
    out = R.prepare_regions(atlas_copy, tmp_path / "out", workers=1)
    assert any((out / "images" / "square336").iterdir())
    R.prepare_regions(atlas_copy, out, workers=1, square_sides=(224,))
    m = pd.read_parquet(out / "manifest.parquet")
    assert set(m["image_type"]) == {"exact", "exact_mask", "square224"}
    on_disk = {p.relative_to(out).as_posix() for p in (out / "images").rglob("*.png")}
    assert on_disk == set(m["path"]) | set(m["mask_path"][m["mask_path"] != ""])


# ------------------------------------------------------------------------------------------- debris

def test_rerun_sweeps_temporaries_of_a_killed_regions_run(atlas_copy, tmp_path):
    out = R.prepare_regions(atlas_copy, tmp_path / "out", workers=1)
    exact = out / "images" / "exact"
    # what SIGKILL leaves mid-section: the record is gone (deleted first), empty temp PNGs remain
    (out / "shards" / "S1_10.json").unlink()
    planted = [exact / ".S1_10_L160_p1_exact.png.tmp-k2j3h4.png", exact / ".S1_10_L177_p1_exact.png.ab12cd34.png",
               out / "shards" / ".S1_10.parquet.tmp-zz.parquet"]
    for p in planted:
        p.write_bytes(b"")
    other = exact / ".S1_100_L1_p1_exact.png.tmp-x.png"  # another section's: not this run's to sweep
    other.write_bytes(b"")
    R.prepare_regions(atlas_copy, out, workers=1)
    assert not any(p.exists() for p in planted) and other.exists()
    assert (out / "shards" / "S1_10.json").exists()


def test_rerun_sweeps_the_temp_folder_of_a_killed_tiles_run(atlas_copy, tmp_path):
    out = T.prepare_tiles(atlas_copy, tmp_path / "out", workers=1, sections=[(1, 10)])
    (out / "shards" / "S1_10.json").unlink()
    debris = out / "tiles" / "specimen_1" / ".10.tmp-abcd1234"
    debris.mkdir()
    for k in range(20):
        (debris / f"{k}_0.jpg").write_bytes(b"x")
    legacy = out / "tiles" / "specimen_1" / ".10.q1w2e3r4"  # earlier versions' name
    legacy.mkdir()
    T.prepare_tiles(atlas_copy, out, workers=1, sections=[(1, 10)])
    assert not debris.exists() and not legacy.exists()
    assert sorted(p.name for p in (out / "tiles" / "specimen_1").iterdir()) == ["10"]


# ------------------------------------------------------------------------------------------- signals

SLOW_KIND = textwrap.dedent('''
    """A dataset kind whose sections wait: a controlled work unit for the engine's signal handling."""
    import os, sys, time
    from pathlib import Path
    import pandas as pd
    from cytoclip.io import atomic_path
    from cytoclip.prepare import engine

    def process(section, key, params, context, output_dir):
        marks = Path(context["marks"])
        (marks / f"started-{key}-{os.getpid()}").write_text("")
        if key != context["fast"] and not os.environ.get("SLOW_KIND_QUICK"):  # not in the fingerprint
            with atomic_path(Path(output_dir) / "images" / "slow" / f"{key}_a.png") as tmp:
                tmp.write_bytes(b"half")
                time.sleep(300)  # killed here: the temporary stays behind
        return pd.DataFrame({c: pd.Series(dtype=object) for c in engine.MANIFEST_COLUMNS}), {}

    def debris(output_dir, specimen, section):
        return [(Path(output_dir) / "images" / "slow", engine.section_key(specimen, section) + "_")]

    KIND = engine.Kind("slow", engine.MANIFEST_COLUMNS, process, debris, lambda m, r, p, c: {})
    if __name__ == "__main__":
        atlas, out, marks, fast = sys.argv[1:5]
        engine.run(KIND, atlas, out, {"mpp": 16.0}, {"marks": marks, "fast": fast},
                   section_params=["mpp"], workers=2)
''')


def _alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return "\nState:\tZ" not in status  # a zombie has exited


def _wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL])
def test_pool_workers_die_with_their_parent_and_no_new_work_starts(mini_atlas, tmp_path, signum):
    script = tmp_path / "slow_kind.py"
    script.write_text(SLOW_KIND)
    marks, out = tmp_path / "marks", tmp_path / "out"
    marks.mkdir()
    env = {**os.environ, "PYTHONPATH": str(REPO), "TQDM_DISABLE": "1"}
    proc = subprocess.Popen([sys.executable, str(script), str(mini_atlas), str(out), str(marks), "S1_10"],
                            env=env, start_new_session=True, stderr=subprocess.PIPE, text=True)
    try:
        # S1_10 finishes at once; S1_20 and S1_30 then hold both workers
        _wait_for(lambda: len(list(marks.iterdir())) >= 3 and (out / "shards" / "S1_10.json").exists(), 60,
                  "two busy workers")
        workers = {int(p.name.rsplit("-", 1)[1]) for p in marks.iterdir()}
        assert len(workers) == 2 and all(_alive(p) for p in workers)
        os.kill(proc.pid, signum)  # the parent alone, not its process group
        proc.wait(timeout=30)
        _wait_for(lambda: not any(_alive(p) for p in workers), 10, "the workers to exit")
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0
    started = sorted(p.name.rsplit("-", 1)[0] for p in marks.iterdir())
    assert started == ["started-S1_10", "started-S1_20", "started-S1_30"]  # nothing taken after the signal
    assert (out / "shards" / "S1_10.json").exists() and not (out / "shards" / "S1_20.json").exists()
    # a rerun sweeps what the killed workers left, keeps S1_10 and does the rest
    leftovers = list((out / "images" / "slow").glob(".*"))
    assert leftovers, "the killed workers left their temporaries (the debris the rerun must sweep)"
    rerun = subprocess.run([sys.executable, str(script), str(mini_atlas), str(out), str(marks), "S1_10"],
                           env={**env, "SLOW_KIND_QUICK": "1"}, timeout=120, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    assert not list((out / "images" / "slow").glob(".*"))
    report = read_json(out / "report.json")
    assert report["resumed_sections"] == 1 and report["n_sections_used"] == 5


# ------------------------------------------------------------------------------------------- errors

@pytest.mark.parametrize("prepare", [R.prepare_regions, T.prepare_tiles])
def test_missing_atlas_root_is_one_error_and_leaves_no_output_dir(prepare, tmp_path):
    with pytest.raises(AtlasError, match="atlas root not found"):
        prepare(tmp_path / "no-such-atlas", tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("prepare", [R.prepare_regions, T.prepare_tiles])
def test_without_specimens_csv_the_error_names_it(prepare, atlas_copy, tmp_path):
    (atlas_copy / "specimens.csv").unlink()
    with pytest.raises(AtlasError, match=r"specimens\.csv: specimens table not found"):
        prepare(atlas_copy, tmp_path / "out", workers=1)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("prepare", [R.prepare_regions, T.prepare_tiles])
def test_specimen_missing_from_specimens_csv_is_a_recorded_warned_skip(prepare, atlas_copy, tmp_path):
    from cytoclip import layout

    layout.write_specimens_table(atlas_copy, [{"specimen": 1, "age_gw": 21, "plane": "sagittal", "source": "t"}])
    with pytest.warns(UserWarning, match="specimen 2"):
        out = prepare(atlas_copy, tmp_path / "out", workers=1)
    report = read_json(out / "report.json")
    assert set(report["skipped"]) == {"S2_5", "S2_15"}
    assert all("specimens.csv" in r and "specimen 2" in r for r in report["skipped"].values())
    m = pd.read_parquet(out / "manifest.parquet")
    assert set(m["specimen"]) == {1} and m["age_gw"].notna().all() and (m["plane"] == "sagittal").all()


def _lose_pyramid_level(tif: Path) -> None:
    """Damage the SubIFDs offset of the first reduced level (tifffile then drops that level, logging only)."""
    import tifffile

    with tifffile.TiffFile(tif) as t:
        offset = t.pages[0].tags["SubIFDs"].valueoffset
    data = bytearray(tif.read_bytes())
    data[offset:offset + 4] = b"\xff\xff\xff\x7f"
    tif.write_bytes(bytes(data))


def test_damaged_pyramid_is_refused_naming_the_file_and_level(atlas_copy, tmp_path):
    from cytoclip import layout

    tif = layout.section_paths(atlas_copy, 1, 10)[0]
    _lose_pyramid_level(tif)
    out = R.prepare_regions(atlas_copy, tmp_path / "out", workers=1)
    reason = read_json(out / "report.json")["skipped"]["S1_10"]
    assert "Specimen_1_10.tif" in reason and "lost: level 1" in reason
    assert set(pd.read_parquet(out / "manifest.parquet")["section"]) == {20, 30, 5, 15}


def _add_features(js: Path, features: list[dict]) -> None:
    doc = json.loads(js.read_text())
    doc["features"] += features
    js.write_text(json.dumps(doc))


def _feature(oid: int, ring: list | None) -> dict:
    geom = None if ring is None else {"type": "Polygon", "coordinates": [[[x, -y] for x, y in ring]]}
    return {"type": "Feature", "geometry": geom, "properties": {"data": {"id": oid}}}


def test_reports_record_repairs_unknown_ids_and_empty_geometries_in_one_shape(atlas_copy, tmp_path):
    from cytoclip import layout
    from cytoclip.ontology import Ontology

    onto = Ontology.load()
    used = {160, 254, 177, 211, 378, 74, 135, 226}
    free = [i for i in onto.leaves() if i not in used]
    bowtie, empty = free[0], free[1]
    js = layout.section_paths(atlas_copy, 1, 10)[1]
    # level-0 px; a bow-tie (self-crossing ring) is repaired by the reader, 999999 is no ontology id
    _add_features(js, [_feature(bowtie, [(200, 1100), (600, 1250), (600, 1100), (200, 1250), (200, 1100)]),
                       _feature(999999, [(10, 10), (50, 10), (50, 50), (10, 10)]),
                       _feature(empty, None)])
    reports = {}
    for name, prepare in (("regions", R.prepare_regions), ("tiles", T.prepare_tiles)):
        with pytest.warns(UserWarning, match="999999"):
            out = prepare(atlas_copy, tmp_path / name, workers=1)
        rep = reports[name] = read_json(out / "report.json")
        assert rep["repaired"] == {"S1_10": [bowtie]}
        assert 999999 in rep["unknown_ids"]["S1_10"]
        assert rep["empty"] == {"S1_10": [empty]}
        sec = rep["sections"]["S1_10"]
        assert sec["status"] == "done" and sec["repaired"] == [bowtie] and sec["empty"] == [empty]
    common = {"dataset", "atlas", "synthetic", "params", "fingerprint", "n_sections", "n_sections_used",
              "resumed_sections", "n_images", "skipped", "repaired", "unknown_ids", "empty", "sections", "splits"}
    assert common <= set(reports["regions"]) and common <= set(reports["tiles"])
    assert set(reports["regions"]["sections"]["S1_10"]) == set(reports["tiles"]["sections"]["S1_10"])


def test_cli_keeps_an_fsspec_url_intact(tmp_path, capsys):
    """`--atlas memory://...` reaches the engine as the URL (argparse type=Path made it 'memory:/...'); the CLI
    says so in one line."""
    from cytoclip.cli import main

    rc = main(["prepare", "regions", "--atlas", "memory://nowhere/atlas", "--output-dir", str(tmp_path / "o")])
    assert rc == 2
    assert "memory://nowhere/atlas: atlas root not found" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_memory_atlas_can_be_tiled(mini_atlas, tmp_path):
    """An fsspec memory:// atlas, which the reader opens, is prepared like the same atlas on disk."""
    import fsspec

    fs = fsspec.filesystem("memory")
    for f in sorted(p for p in Path(mini_atlas).rglob("*") if p.is_file()):
        if f.parent.name in ("specimen_2",):
            continue
        fs.pipe(f"/mini/{f.relative_to(mini_atlas).as_posix()}", f.read_bytes())
    try:
        disk = T.prepare_tiles(mini_atlas, tmp_path / "disk", workers=1, sections=[(1, 10), (1, 20)])
        mem = T.prepare_tiles("memory://mini", tmp_path / "mem", workers=2, sections=[(1, 10), (1, 20)])
        pd.testing.assert_frame_equal(pd.read_parquet(mem / "manifest.parquet"),
                                      pd.read_parquet(disk / "manifest.parquet"))
    finally:
        fs.rm("/mini", recursive=True)


# ------------------------------------------------------------------------------------------- parts, shards

def _hash(dataset: Path) -> str:
    import hashlib

    m = pd.read_parquet(dataset / "manifest.parquet")
    return hashlib.sha256(m.to_json(orient="records").encode()).hexdigest()


def _same_dataset(a: Path, b: Path) -> None:
    assert _hash(a) == _hash(b)
    assert read_json(a / "labels.json") == read_json(b / "labels.json")
    ra, rb = read_json(a / "report.json"), read_json(b / "report.json")
    for k in ("n_images", "n_sections", "n_sections_used", "skipped", "repaired", "unknown_ids", "empty", "splits",
              "params", "fingerprint"):
        assert ra[k] == rb[k], k
    assert {k: {f: v for f, v in s.items() if f != "resumed"} for k, s in ra["sections"].items()} == \
        {k: {f: v for f, v in s.items() if f != "resumed"} for k, s in rb["sections"].items()}


def test_parts_and_merge_equal_one_run(mini_atlas, tmp_path):
    from cytoclip.cli import main
    from cytoclip.prepare.engine import merge

    one = R.prepare_regions(mini_atlas, tmp_path / "one", workers=1)
    shared = tmp_path / "parts"  # the machines of a SLURM array write into one directory
    for i in (1, 0):
        assert main(["prepare", "regions", "--atlas", str(mini_atlas), "--output-dir", str(shared),
                     "--workers", "1", "--part", f"{i}/2"]) == 0
        assert not (shared / "manifest.parquet").exists()  # a part combines nothing
    assert main(["prepare", "merge", "--output-dir", str(shared)]) == 0
    _same_dataset(one, shared)
    for csv in sorted(p.name for p in one.glob("openclip_*.csv")):
        assert pd.read_csv(one / csv)["title"].tolist() == pd.read_csv(shared / csv)["title"].tolist()
    (shared / "parts" / "part-1-of-2.json").unlink()
    with pytest.raises(ValueError, match=r"part\(s\) \[1\] of 2 missing"):
        merge(shared)


def test_tiles_as_webdataset_shards(mini_atlas, tmp_path):
    import webdataset as wds

    out = T.prepare_tiles(mini_atlas, tmp_path / "wds", workers=2, format="shards", shard_size=16,
                          max_tiles_per_section=20, keep_unlabelled=True)
    m = pd.read_parquet(out / "manifest.parquet")
    files = T.prepare_tiles(mini_atlas, tmp_path / "files", workers=1, max_tiles_per_section=20,
                            keep_unlabelled=True)
    f = pd.read_parquet(files / "manifest.parquet")
    # the same rows as the per-file layout; only where the image lives differs
    pd.testing.assert_frame_equal(m.drop(columns=["path", "shard", "key"]), f.drop(columns=["path"]))
    assert not (out / "tiles").exists() and not list(out.glob("openclip_*.csv"))
    index = read_json(out / "shards.json")
    tars = [out / e["shard"] for e in index["shards"]]  # the index lists them in manifest order
    assert sorted(tars) == sorted((out / "webdataset").glob("*.tar"))
    assert len(tars) == 10 and sum(e["n_samples"] for e in index["shards"]) == len(m) == 100  # 20 = 16 + 4
    assert all(e["shard"].startswith(f"webdataset/{e['section']}-") for e in index["shards"])  # grouped by section
    samples = list(wds.WebDataset([str(t) for t in tars], shardshuffle=False).decode("pil"))
    assert [s["__key__"] for s in samples] == m["key"].tolist()
    by_key = m.set_index("key")
    for s in samples[::7]:
        row = by_key.loc[s["__key__"]]
        assert s["jpg"].size == (224, 224) and s["txt"] == row["caption"]
        assert s["json"]["label_id"] == row["label_id"] and s["json"]["path"] == row["path"]
    # files and shards carry the same JPEG bytes
    import tarfile

    with tarfile.open(tars[0]) as tar:
        member = tar.extractfile(f"{m['key'].iloc[0]}.jpg").read()
    assert member == (files / f["path"].iloc[0]).read_bytes()
    # resumable per section (a section's tars are its output), deterministic bytes
    before = {t.name: (t.stat().st_mtime_ns, t.read_bytes()) for t in tars}
    T.prepare_tiles(mini_atlas, out, workers=1, format="shards", shard_size=16, max_tiles_per_section=20,
                    keep_unlabelled=True)
    assert {t.name: (t.stat().st_mtime_ns, t.read_bytes()) for t in tars} == before
    again = T.prepare_tiles(mini_atlas, tmp_path / "wds2", workers=1, format="shards", shard_size=16,
                            max_tiles_per_section=20, keep_unlabelled=True)
    assert {t.name: t.read_bytes() for t in sorted((again / "webdataset").glob("*.tar"))} == \
        {k: v[1] for k, v in before.items()}
    # other shard size: the section is redone and its old tars removed
    T.prepare_tiles(mini_atlas, out, workers=1, format="shards", shard_size=50, max_tiles_per_section=20,
                    keep_unlabelled=True)
    assert len(list((out / "webdataset").glob("*.tar"))) == 5


def test_shards_in_parts_merge_equal_one_run(mini_atlas, tmp_path):
    from cytoclip.prepare.engine import merge

    kw = dict(format="shards", shard_size=8, max_tiles_per_section=12, workers=1)
    one = T.prepare_tiles(mini_atlas, tmp_path / "one", **kw)
    for i in range(3):
        T.prepare_tiles(mini_atlas, tmp_path / "parts", part=f"{i}/3", **kw)
    merged = merge(tmp_path / "parts")
    _same_dataset(one, merged)
    assert read_json(one / "shards.json") == read_json(merged / "shards.json")
    for t in (one / "webdataset").glob("*.tar"):
        assert t.read_bytes() == (merged / "webdataset" / t.name).read_bytes()


def test_tile_shards_hold_exactly_the_per_file_layout_bytes(mini_atlas, tmp_path):
    """The streamed tars equal what packing the per-file layout's JPEGs gives (the old staged path),
    member by member and byte for byte."""
    import tarfile

    from cytoclip.prepare.shards import pack_shards

    kw = dict(max_tiles_per_section=30, keep_unlabelled=True, workers=1)
    out = T.prepare_tiles(mini_atlas, tmp_path / "wds", format="shards", shard_size=7, **kw)
    files = T.prepare_tiles(mini_atlas, tmp_path / "files", **kw)
    m, f = pd.read_parquet(out / "manifest.parquet"), pd.read_parquet(files / "manifest.parquet")
    for t in sorted((out / "webdataset").glob("*.tar")):
        with tarfile.open(t) as tar:
            for member in tar.getmembers():
                if member.name.endswith(".jpg"):
                    row = f.iloc[m.index[m["path"] == f"webdataset/{t.name}#{member.name}"][0]]
                    assert tar.extractfile(member).read() == (files / row["path"]).read_bytes()
    # the whole tars equal the packer of staged files (tarfile headers, rows from to_dict)
    shards_dir = tmp_path / "packed"
    rows = pd.read_parquet(files / "shards" / "S1_10.parquet")
    packed = pack_shards(rows, files, shards_dir, "S1_10", 7)
    for tar_rel in sorted(set(packed["shard"])):
        assert (shards_dir / tar_rel).read_bytes() == (out / tar_rel).read_bytes()


def test_shard_writer_orders_samples_and_leaves_no_half_written_tar(tmp_path):
    import tarfile

    import webdataset as wds

    from cytoclip.prepare.shards import ShardWriter, _records, _tar_header, plan_shards

    rows = pd.DataFrame({"path": [f"tiles/specimen_1/5/{i}_0.jpg" for i in range(5)], "caption": list("abcde"),
                         "label_id": [1, 2, 3, -1, 2], "overlap": [0.5, 1.0, 0.75, 0.0, 0.25],
                         "multi_labels": [["a"], ["b"], ["c"], [], ["b"]], "split": None})
    planned = plan_shards(rows, "S1_5", 2)
    assert _records(planned) == planned.to_dict(orient="records")
    with ShardWriter(planned, tmp_path) as w:
        for i in (1, 0, 4, 2, 3):  # any order in; row order out
            w.add(i, f"jpeg-{i}".encode())
    tars = sorted((tmp_path / "webdataset").glob("*.tar"))
    assert [t.name for t in tars] == ["S1_5-000000.tar", "S1_5-000001.tar", "S1_5-000002.tar"]
    samples = list(wds.WebDataset([str(t) for t in tars], shardshuffle=False))
    assert [s["__key__"] for s in samples] == planned["key"].tolist()
    assert [s["jpg"] for s in samples] == [f"jpeg-{i}".encode() for i in range(5)]
    # headers as tarfile writes them, long names included (USTAR prefix)
    for name in ("S1_5_0_0.jpg", "x" * 100, "d" * 120 + "/S1_5_0_0.json"):
        import io

        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = 10, 0, 0o644
            tar.addfile(info, io.BytesIO(b"0123456789"))
        assert _tar_header(name, 10) == buf.getvalue()[:512]
    # a failure mid-section: finished tars stay, the open one leaves no temporary, nothing else appears
    before = {t.name: t.read_bytes() for t in tars}
    with pytest.raises(RuntimeError):
        with ShardWriter(planned, tmp_path) as w:
            w.add(0, b"new-0")
            w.add(1, b"new-1")
            w.add(2, b"new-2")  # opens the second tar
            raise RuntimeError("killed")
    assert sorted(p.name for p in (tmp_path / "webdataset").iterdir()) == sorted(before)
    assert (tmp_path / "webdataset" / "S1_5-000001.tar").read_bytes() == before["S1_5-000001.tar"]
    with pytest.raises(ValueError, match="not added"):
        with ShardWriter(planned, tmp_path) as w:
            w.add(0, b"x")
    with pytest.raises(ValueError, match="given twice"):
        ShardWriter(planned, tmp_path).add(7, b"x")
