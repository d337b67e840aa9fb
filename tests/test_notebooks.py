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


def _parameters(nb) -> dict:
    """The parameters cell's assignments, evaluated (they are literals)."""
    import ast

    tree = ast.parse(nb.cells[0].source)
    return {t.id: ast.literal_eval(node.value) for node in tree.body if isinstance(node, ast.Assign)
            for t in node.targets if isinstance(t, ast.Name)}


@pytest.mark.parametrize("rel", _study_notebooks())
def test_parameters_agree_with_the_study_file(rel: str):
    """_config.yml is the one source of the defaults: a notebook's parameters cell holds exactly what the study
    resolves for the experiment and profile it names by default (so a bare `papermill <notebook>` runs that
    experiment as `cytoclip study run` would), and every parameter the study sets for an experiment of this
    notebook is declared by it."""
    from cytoclip import study as st

    study = st.load_study(ROOT / "_config.yml")
    params = _parameters(nbformat.read(ROOT / rel, as_version=4))
    resolved = st.resolve_params(study, params["experiment"], params["profile"])
    assert study.experiments[params["experiment"]].notebook == rel
    differ = {k: (v, resolved[k]) for k, v in params.items() if k in resolved and resolved[k] != v}
    assert not differ, f"{rel}: parameters (notebook, _config.yml) differ: {differ}"
    for exp_id, exp in study.experiments.items():
        if exp.notebook == rel:
            st.notebook_parameters(study, exp_id, st.resolve_params(study, exp_id, "demo"))  # raises on a typo
            assert {"profile", "experiment", "output_dir"} <= set(params)


@pytest.mark.parametrize("rel", _study_notebooks())
def test_text_source_is_the_truth(rel: str):
    """Each notebook is paired with a py:percent source (jupytext); the .ipynb holds exactly its cells."""
    import jupytext

    source = ROOT / rel.replace(".ipynb", ".py")
    assert source.is_file(), f"{source}: the text source of {rel} is missing"
    text = jupytext.read(source)
    committed = nbformat.read(ROOT / rel, as_version=4)
    assert [(c.cell_type, c.source.strip()) for c in text.cells] == \
        [(c.cell_type, c.source.strip()) for c in committed.cells], \
        f"{rel} differs from {source.name}: run `jupytext --sync {source.relative_to(ROOT)}`"
    assert [c.metadata.get("tags", []) for c in text.cells] == [c.metadata.get("tags", []) for c in committed.cells]


def test_no_pyplot_in_notebooks():
    """Figures come from cytoclip.plots; the notebooks draw nothing by hand."""
    for rel in _study_notebooks():
        src = (ROOT / rel.replace(".ipynb", ".py")).read_text()
        assert "pyplot" not in src and "plt." not in src, rel


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_whole_study_smoke_and_book(tmp_path: Path, capfd):
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
    # the kernels' own chatter stays out of the terminal (IPC sockets: no "TCP without encryption" warning)
    assert "without encryption" not in capfd.readouterr().err
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
    assert {"I", "II", "III", "IV"} <= set(ours["table"])
    assert ours.loc[ours["table"] != "IV", "departures"].str.contains("epochs").any()  # the smoke budget is declared
    # the protocol as the paper ran it: Table I on sagittal specimens only; the multi-region row has its own run
    results = {e: json.loads((tmp_path / "book" / "results" / e / "results.json").read_text())
               for e in config["experiments"]}
    for exp in ("train_clip336", "train_clip224", "train_biomedclip224", "train_multiregion336", "train_tiles"):
        r = results[exp]
        assert r["training_data"]["planes"] == ["sagittal"] == r["validation_data"]["planes"], exp
        assert r["profile"] == "smoke" and r["params"]["seed"] == 0
    assert results["train_multiregion336"]["runs"] != results["train_clip336"]["runs"]
    assert results["train_multiregion336"]["validation"]["label_type"] == "multi"
    assert results["cross_plane"]["regions_cross"]["validation_data"]["planes"] == ["coronal"]
    # the same run and dataset through `cytoclip evaluate`: the same numbers as the page
    page = results["train_clip224"]
    run_dir = tmp_path / page["runs"]["0"]
    proc = subprocess.run([str(Path(sys.executable).parent / "cytoclip"), "evaluate", "--model", str(run_dir),
                           "--dataset", page["dataset"], "--output-dir", str(tmp_path / "cli"), "--no-figures",
                           "--n-boot", "0"], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    cli = json.loads((tmp_path / "cli" / "results.json").read_text())
    for m in ("f1_weighted", "f1_macro", "precision_weighted", "recall_weighted"):
        assert cli["classification"][m] == page["validation"][m], m
    for task in ("image_to_image", "text_to_image", "image_to_text"):
        for k in (1, 5, 10):
            assert cli["retrieval"][task][f"recall_at_{k}"] == page["retrieval"][task][f"recall_at_{k}"]

    jb = Path(sys.executable).parent / "jupyter-book"
    proc = subprocess.run([str(jb), "build", str(tmp_path / "book"), "--path-output", str(tmp_path / "build")],
                          capture_output=True, text=True, timeout=600)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-3000:]
    problems = [line for line in log.splitlines() if "WARNING" in line and re.search(
        r"not found|missing|nonexisting|unknown document|undefined label|failed to import|reference", line, re.I)]
    assert not problems, "\n".join(problems)
