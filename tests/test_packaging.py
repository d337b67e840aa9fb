"""The install story: pyproject.toml and environment.yml agree, the CLI lists its verbs."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
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


def test_every_verb_has_help(capsys):
    from cytoclip import cli

    # the installed entry point once (a process), then every verb in this process (a process each cost ~3 s)
    out = subprocess.run([sys.executable, "-m", "cytoclip", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "usage: cytoclip" in out.stdout, out.stderr
    for verb in cli.VERBS:
        with pytest.raises(SystemExit) as exit_:
            cli.main([verb, "--help"])
        captured = capsys.readouterr()
        assert exit_.value.code == 0, f"cytoclip {verb} --help failed:\n{captured.err}"
        assert "usage: cytoclip" in captured.out, verb


# --------------------------------------------------------------------------------------------- the lock

LOCK = ROOT / "requirements" / "lock-linux-x86_64-py311.txt"


def _locked() -> dict[str, tuple[str, list[str]]]:
    """The lock's entries: normalised name -> (version, sha256 hashes)."""
    entries: dict[str, tuple[str, list[str]]] = {}
    text = LOCK.read_text().replace("\\\n", " ")
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        req, *opts = line.split()
        name, sep, version = req.partition("==")
        assert sep, f"{LOCK.name}: {req!r} is not pinned with =="
        hashes = [o.split(":", 1)[1] for o in opts if o.startswith("--hash=sha256:")]
        entries[_name(name)] = (version, hashes)
    return entries


def test_lock_pins_every_package_with_a_hash():
    entries = _locked()
    assert len(entries) > 100
    unhashed = sorted(n for n, (_, hashes) in entries.items() if not hashes)
    assert not unhashed, f"{LOCK.name}: no --hash for {unhashed}"
    # the build tools of the editable install are locked too (make venv builds with --no-build-isolation)
    assert {"pip", "setuptools", "wheel"} <= set(entries)


def test_lock_satisfies_the_ranges_of_pyproject_and_the_pins():
    from packaging.requirements import Requirement

    entries = _locked()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = [r for r in (ROOT / "requirements" / "pins.in").read_text().splitlines()
            if r.strip() and not r.startswith("#")]
    for spec in [*project["dependencies"], *project["optional-dependencies"]["dev"], *pins]:
        req = Requirement(spec)
        name = _name(req.name)
        assert name in entries, f"{LOCK.name} lacks {req.name} (run `make lock`)"
        assert req.specifier.contains(entries[name][0], prereleases=True), (
            f"{LOCK.name}: {name}=={entries[name][0]} is outside {spec!r} (run `make lock`)")
    assert entries["torch"][0] == "2.14.1" and entries["torchvision"][0] == "0.29.1"


def test_lock_names_no_machine_paths():
    # indexes come from pip's configuration; a path of this machine in the lock breaks it elsewhere
    text = LOCK.read_text()
    for marker in ("file://", "/opt/", "/tmp/", "/work/", "--index-url", "--find-links"):
        assert marker not in text, f"{LOCK.name} contains {marker!r}"


def test_make_venv_installs_from_the_lock():
    makefile = (ROOT / "Makefile").read_text()
    assert f"LOCK      ?= {LOCK.relative_to(ROOT)}" in makefile
    recipe = makefile.split("$(VENV)/.installed:", 1)[1].split("\n\n", 1)[0]
    assert "pip install --quiet --require-hashes -r $(LOCK)" in recipe
    assert "--no-deps" in recipe.split("-e .")[0].splitlines()[-1]  # the project adds nothing unlocked
    for target in ("lock:", "lock-upgrade:", "test-latest:"):
        assert f"\n{target}" in makefile


# --------------------------------------------------------------------------------- package structure (models)

def _imported_modules(path: Path) -> set[str]:
    """Every module a source file imports, at top level or inside functions."""
    import ast

    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_models_base_does_not_import_the_factory():
    # base is imported by the factory; an import back (even a lazy one) is a cycle
    assert "cytoclip.models.factory" not in _imported_modules(ROOT / "cytoclip" / "models" / "base.py")


def test_saved_formats_registered_by_the_backends():
    from cytoclip.models import SAVED_FORMATS, factory
    from cytoclip.models.hf_backend import HFClipModel
    from cytoclip.models.openclip_backend import OpenClipModel
    from cytoclip.models.pathology import ConchModel, TimmImageModel

    assert SAVED_FORMATS == {"open_clip": OpenClipModel, "hf": HFClipModel, "timm": TimmImageModel,
                             "conch": ConchModel}
    assert factory.SAVED_FORMATS is SAVED_FORMATS


def test_one_pad_to_square():
    import cytoclip.data
    import cytoclip.models
    import cytoclip.models.base

    assert cytoclip.models.PadToSquare is cytoclip.data.PadToSquare
    for py in (ROOT / "cytoclip").rglob("*.py"):
        if py.name != "data.py":
            assert "class PadToSquare" not in py.read_text(), f"{py}: a second PadToSquare"


def test_models_base_imports_the_package_without_fallbacks():
    # `except ImportError` around cytoclip's own modules hides a broken module behind a silent fallback
    import ast

    tree = ast.parse((ROOT / "cytoclip" / "models" / "base.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Try):
            guarded = {n.module for n in ast.walk(ast.Module(body=node.body, type_ignores=[]))
                       if isinstance(n, ast.ImportFrom) and n.module}
            catches = {ast.unparse(h.type) for h in node.handlers if h.type is not None}
            assert not ({m for m in guarded if m.startswith("cytoclip")} and catches & {"ImportError",
                                                                                         "ModuleNotFoundError"})


def test_eval_transform_accepts_arrays_and_pads_with_zeros():
    import numpy as np
    import torch

    from cytoclip.models.base import eval_transform

    tf = eval_transform(8, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    out = tf(np.full((4, 8), 255, np.uint8))  # wide grey array -> padded top and bottom
    assert out.shape == (3, 8, 8)
    assert torch.all(out[:, 0] < 0.05) and torch.all(out[:, 4] > 0.95)
