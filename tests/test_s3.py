"""An atlas read over a real S3 API: a local moto server holding a small synthetic atlas in the DHARANI bucket
layout, read anonymously with s3fs as a user reads ``s3://dharani-fetal-brain-atlas``, through the three verbs
``cytoclip atlas``, ``prepare regions`` and ``prepare tiles``; their outputs equal the same atlas read from disk."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

pytest.importorskip("s3fs")
moto_server = pytest.importorskip("moto.server")
boto3 = pytest.importorskip("boto3")

BUCKET = "dharani-fetal-brain-atlas"
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def small_atlas(smoke_atlas, tmp_path_factory) -> Path:
    """Three sections of the smoke synthetic atlas (two specimens), with its ontology and specimens table."""
    root = tmp_path_factory.mktemp("s3src") / "atlas"
    for name in ("ontology", "specimens.csv", "SYNTHETIC.md"):
        src = smoke_atlas / name
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, root / name)
    for sp, secs in ((1, (1001, 1009)), (5, (1001,))):
        d = root / "data2d" / f"specimen_{sp}"
        d.mkdir(parents=True)
        for sec in secs:
            for ext in ("tif", "json"):
                shutil.copy2(smoke_atlas / "data2d" / f"specimen_{sp}" / f"Specimen_{sp}_{sec}.{ext}", d)
    return root


@pytest.fixture(scope="module")
def s3_endpoint(small_atlas):
    """A moto S3 server on 127.0.0.1 (a free port), holding ``small_atlas`` at the root of the public bucket."""
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    try:
        s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="testing",
                          aws_secret_access_key="testing")
        s3.create_bucket(Bucket=BUCKET, ACL="public-read")  # public, as the DHARANI bucket (CC BY 4.0)
        for f in sorted(p for p in small_atlas.rglob("*") if p.is_file()):
            s3.upload_file(str(f), BUCKET, f.relative_to(small_atlas).as_posix(), ExtraArgs={"ACL": "public-read"})
        yield endpoint
    finally:
        server.stop()


def _env(endpoint: str) -> dict:
    """The user's environment: no credentials; the endpoint through fsspec's config (FSSPEC_S3)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(FSSPEC_S3=json.dumps({"client_kwargs": {"endpoint_url": endpoint}}),
               PYTHONPATH=str(REPO), TQDM_DISABLE="1")
    return env


def _cli(args: list[str], env: dict) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "cytoclip", *args], env=env, capture_output=True, text=True,
                          timeout=600, cwd=REPO)
    assert proc.returncode == 0, f"cytoclip {' '.join(args)}: rc {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


def manifest_hash(dataset: Path) -> str:
    """sha256 of the manifest's rows (every column is relative or plain data: no absolute paths in it)."""
    m = pd.read_parquet(dataset / "manifest.parquet")
    return hashlib.sha256(m.to_json(orient="records").encode()).hexdigest()


def test_anonymous_s3fs_reads_the_bucket(s3_endpoint):
    """s3fs with anon=True and client_kwargs endpoint_url: exactly how a user reads the public bucket."""
    import s3fs

    fs = s3fs.S3FileSystem(anon=True, client_kwargs={"endpoint_url": s3_endpoint})
    assert f"{BUCKET}/data2d/specimen_1/Specimen_1_1001.tif" in fs.find(f"{BUCKET}/data2d")


def test_three_verbs_over_s3_equal_disk(s3_endpoint, small_atlas, tmp_path):
    env = _env(s3_endpoint)
    url = f"s3://{BUCKET}"
    listed_s3 = _cli(["atlas", url], env).stdout
    listed_disk = _cli(["atlas", str(small_atlas)], env).stdout
    assert "Specimen_5_1001.tif" in listed_s3 and listed_s3 == listed_disk

    tiles_opts = ["--workers", "2", "--max-tiles-per-section", "12"]
    for verb, opts in (("regions", ["--workers", "2"]), ("tiles", tiles_opts)):
        _cli(["prepare", verb, "--atlas", url, "--output-dir", str(tmp_path / f"s3-{verb}"), *opts], env)
        _cli(["prepare", verb, "--atlas", str(small_atlas), "--output-dir", str(tmp_path / f"disk-{verb}"), *opts],
             env)
        s3_out, disk_out = tmp_path / f"s3-{verb}", tmp_path / f"disk-{verb}"
        m = pd.read_parquet(s3_out / "manifest.parquet")
        assert len(m) > 0 and set(zip(m["specimen"], m["section"])) == {(1, 1001), (1, 1009), (5, 1001)}
        assert manifest_hash(s3_out) == manifest_hash(disk_out)
        report = json.loads((s3_out / "report.json").read_text())
        assert report["atlas"] == url and report["synthetic"] is True and report["skipped"] == {}
        # the images are the same bytes
        for p in m["path"].iloc[:: max(1, len(m) // 10)]:
            assert (s3_out / p).read_bytes() == (disk_out / p).read_bytes()
