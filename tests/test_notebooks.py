"""The study's notebooks: papermill-ready and clean, and (slow) the whole study on the smoke profile plus the book."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"


def _study_notebooks() -> list[str]:
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    return sorted({exp["notebook"] for exp in config["experiments"].values()})


@pytest.mark.parametrize("rel", _study_notebooks())
def test_notebook_is_clean_and_parameterised(rel: str):
    path = ROOT / rel
    assert path.is_file(), f"{rel}: named in _config.yml but missing"
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    first = nb.cells[0]
    assert first.cell_type == "code" and "parameters" in first.metadata.get("tags", []), \
        f"{rel}: the first cell must be a code cell tagged 'parameters'"
    assert sum("parameters" in c.metadata.get("tags", []) for c in nb.cells) == 1
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None, f"{rel}: committed with outputs"
            compile(cell.source, rel, "exec")  # no syntax errors


@pytest.mark.parametrize("rel", _study_notebooks())
def test_parameters_cover_what_the_runner_passes(rel: str):
    """Every parameter the runner resolves for an experiment of this notebook has a default in the notebook
    (so `papermill <notebook>` with no -p runs, and a typo in _config.yml is caught)."""
    from cytoclip import study as st

    study = st.load_study(ROOT / "_config.yml")
    nb = nbformat.read(ROOT / rel, as_version=4)
    defined = set(re.findall(r"^(\w+)\s*=", nb.cells[0].source, flags=re.M))
    if rel.endswith("summary.ipynb"):
        assert {"output_dir", "profile", "experiment"} <= defined
        return
    for exp_id, exp in study.experiments.items():
        if exp.notebook != rel:
            continue
        for profile in study.profiles:
            missing = set(st.resolve_params(study, exp_id, profile)) - defined
            assert not missing, f"{rel}: parameters {sorted(missing)} of {exp_id}/{profile} have no default"


def test_builder_reproduces_the_committed_notebooks(tmp_path: Path, monkeypatch):
    """tools/build_notebooks.py is the source of the notebooks: building again changes nothing."""
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        import build_notebooks
    finally:
        sys.path.pop(0)
    monkeypatch.setattr(build_notebooks, "NB_DIR", tmp_path)
    for path in build_notebooks.build():
        built = nbformat.read(path, as_version=4)
        committed = nbformat.read(NOTEBOOKS / path.name, as_version=4)
        assert [c.source for c in built.cells] == [c.source for c in committed.cells], path.name


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_whole_study_smoke_and_book(tmp_path: Path):
    """Run every experiment on the smoke profile through the runner, then build the book without warnings about
    missing files or references."""
    from cytoclip import study as st

    shutil.copytree(NOTEBOOKS, tmp_path / "notebooks")
    shutil.copytree(ROOT / "book", tmp_path / "book",
                    ignore=shutil.ignore_patterns("_build", "experiments", "results", "_toc.yml"))
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    config["paths"] = {"data": "data", "runs": "runs", "book": "book"}
    config["defaults"].update(data_dir="data", runs_dir="runs")
    (tmp_path / "_config.yml").write_text(yaml.safe_dump(config, sort_keys=False))

    outcomes = st.run_study("smoke", config=tmp_path / "_config.yml", log=lambda *a: None)
    bad = {o.id: o.message for o in outcomes if o.status != "ok"}
    assert not bad, f"experiments not ok: {bad}"
    for exp in config["experiments"]:
        res = tmp_path / "book" / "results" / exp
        assert (res / "results.json").is_file() and (res / "headline.csv").is_file(), exp
        assert (tmp_path / "book" / "experiments" / f"{exp}.ipynb").is_file()
    # every figure a page saves is also shown on it, and no progress bars or widgets leak into the pages
    for exp in config["experiments"]:
        nb = json.loads((tmp_path / "book" / "experiments" / f"{exp}.ipynb").read_text())
        outputs = [o for c in nb["cells"] for o in c.get("outputs", [])]
        n_png = sum("image/png" in o.get("data", {}) for o in outputs)
        n_saved = len(list((tmp_path / "book" / "results" / exp).glob("*.png")))
        assert n_png >= n_saved, f"{exp}: {n_saved} figures saved, {n_png} shown"
        assert not any("application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in outputs), exp
    from cytoclip import report

    ours = report.collect_headlines(tmp_path / "book" / "results")
    assert set(ours["data"]) == {"synthetic atlas"}
    assert {"I", "II", "III"} <= set(ours["table"])

    jb = Path(sys.executable).parent / "jupyter-book"
    proc = subprocess.run([str(jb), "build", str(tmp_path / "book"), "--path-output", str(tmp_path / "build")],
                          capture_output=True, text=True, timeout=600)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-3000:]
    problems = [line for line in log.splitlines() if "WARNING" in line and re.search(
        r"not found|missing|nonexisting|unknown document|undefined label|failed to import|reference", line, re.I)]
    assert not problems, "\n".join(problems)
