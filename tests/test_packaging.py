"""The install story: pyproject.toml and environment.yml agree, the CLI lists its verbs."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _name(req: str) -> str:
    return re.split(r"[<>=!~\[ ;]", req.strip(), maxsplit=1)[0].lower().replace("_", "-")


def test_environment_yml_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    env_reqs = [r for r in pip_section if not r.startswith("-e")]
    assert sorted(map(_name, env_reqs)) == sorted(map(_name, project["dependencies"]))
    # same version constraints, not only the same names
    assert {_name(r): r.replace(" ", "") for r in env_reqs} == {
        _name(r): r.replace(" ", "") for r in project["dependencies"]}
    assert any(r.startswith("-e .") for r in pip_section), "environment.yml must install this package"
    assert "python=3.11" in env["dependencies"]


def test_torch_not_hard_pinned_in_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    torch_req = next(r for r in project["dependencies"] if _name(r) == "torch")
    assert "==" not in torch_req


def test_dharani_ontology_shipped_with_attribution():
    res = ROOT / "cytoclip" / "resources"
    assert (res / "dharani_ontology.json").is_file()
    assert "CC BY 4.0" in (res / "ATTRIBUTION.md").read_text()


def test_cli_lists_verbs():
    for cmd in ([sys.executable, "-m", "cytoclip", "--help"], [str(Path(sys.executable).parent / "cytoclip"), "--help"]):
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        for verb in ("synth", "prepare", "train", "evaluate", "study"):
            assert verb in out, f"{verb} missing from {' '.join(cmd)}"


def test_every_verb_has_help():
    from cytoclip.cli import VERBS

    for verb in VERBS:
        out = subprocess.run([sys.executable, "-m", "cytoclip", verb, "--help"], capture_output=True, text=True)
        assert out.returncode == 0, f"cytoclip {verb} --help failed:\n{out.stderr}"
        assert "usage: cytoclip" in out.stdout
