"""The study runner: dependency order, parameters, skipping unchanged work, failures that stop only dependants."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest
import yaml

from cytoclip import study as st


def _notebook(path: Path, body: str) -> None:
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell("value = 1\noutput_dir = None")
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell(body)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)


@pytest.fixture()
def mini_study(tmp_path: Path) -> Path:
    nbs = tmp_path / "notebooks"
    nbs.mkdir()
    _notebook(nbs / "ok.ipynb", "import json, pathlib\n"
              "pathlib.Path(output_dir).mkdir(parents=True, exist_ok=True)\n"
              "pathlib.Path(output_dir, 'out.json').write_text(json.dumps({'value': value}))")
    _notebook(nbs / "broken.ipynb", "raise RuntimeError('this notebook is broken on purpose')")
    (tmp_path / "book").mkdir()
    (tmp_path / "book" / "intro.md").write_text("# Intro\n")
    config = {
        "title": "mini", "paths": {"book": "book"}, "defaults": {"value": 1},
        "profiles": {"smoke": {"params": {"value": 2}}, "demo": {}},
        "experiments": {
            "first": {"notebook": "notebooks/ok.ipynb", "params": {"value": 3}},
            "broken": {"notebook": "notebooks/broken.ipynb"},
            "after_broken": {"notebook": "notebooks/ok.ipynb", "depends_on": ["broken"]},
            "after_first": {"notebook": "notebooks/ok.ipynb", "depends_on": ["first"],
                            "profiles": {"smoke": {"value": 7}}},
        },
    }
    (tmp_path / "_config.yml").write_text(yaml.safe_dump(config))
    return tmp_path / "_config.yml"


def test_params_resolution_order(mini_study: Path):
    study = st.load_study(mini_study)
    assert st.resolve_params(study, "first", "smoke")["value"] == 3  # experiment beats profile
    assert st.resolve_params(study, "after_first", "smoke")["value"] == 7  # per-profile beats experiment
    assert st.resolve_params(study, "broken", "smoke")["value"] == 2  # profile beats defaults
    assert st.resolve_params(study, "broken", "demo")["value"] == 1


def test_execution_order_and_only(mini_study: Path):
    study = st.load_study(mini_study)
    order = st.execution_order(study)
    assert order.index("first") < order.index("after_first")
    assert st.execution_order(study, ["after_first"]) == ["first", "after_first"]
    with pytest.raises(st.StudyConfigError, match="unknown experiment"):
        st.execution_order(study, ["nope"])


def test_cycle_and_unknown_dependency_are_reported(tmp_path: Path):
    cfg = {"profiles": {"smoke": {}}, "experiments": {
        "a": {"notebook": "a.ipynb", "depends_on": ["b"]}, "b": {"notebook": "b.ipynb", "depends_on": ["a"]}}}
    (tmp_path / "_config.yml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(st.StudyConfigError, match="cycle"):
        st.load_study(tmp_path / "_config.yml")
    cfg["experiments"]["b"]["depends_on"] = ["zzz"]
    (tmp_path / "_config.yml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(st.StudyConfigError, match="zzz"):
        st.load_study(tmp_path / "_config.yml")


@pytest.mark.slow
def test_broken_notebook_fails_run_and_unchanged_rerun_skips(mini_study: Path, capsys):
    import argparse

    args = argparse.Namespace(profile="smoke", only=None, config=str(mini_study), force=False, kernel=None)
    assert st._cmd_run(args) == 1  # a broken notebook makes the runner exit non-zero ...
    err = capsys.readouterr().err
    assert "broken" in err and "RuntimeError" in err  # ... naming it
    book = mini_study.parent / "book"
    record = json.loads((book / "results" / "broken" / "study.json").read_text())
    assert record["status"] == "failed"
    executed = nbformat.read(book / "experiments" / "broken.ipynb", as_version=4)
    assert any(o.get("ename") == "RuntimeError" for c in executed.cells for o in c.get("outputs", []))
    assert all("hide-cell" in c.metadata["tags"] for c in executed.cells
               if {"parameters", "injected-parameters"} & set(c.metadata.get("tags", [])))
    assert json.loads((book / "results" / "after_first" / "out.json").read_text()) == {"value": 7}
    assert not (book / "experiments" / "after_broken.ipynb").exists()  # blocked, not run
    toc = yaml.safe_load((book / "_toc.yml").read_text())
    listed = [c["file"] for p in toc["parts"] for c in p["chapters"]]
    assert "experiments/first" in listed and "experiments/after_broken" not in listed

    # unchanged rerun of the good experiments: nothing executes
    outcomes = st.run_study("smoke", ["after_first"], mini_study, log=lambda *_: None)
    assert [o.status for o in outcomes] == ["skipped", "skipped"]
    # a changed parameter reruns that experiment and what depends on it
    cfg = yaml.safe_load(mini_study.read_text())
    cfg["experiments"]["first"]["params"]["value"] = 4
    mini_study.write_text(yaml.safe_dump(cfg))
    outcomes = st.run_study("smoke", ["after_first"], mini_study, log=lambda *_: None)
    assert [o.status for o in outcomes] == ["ok", "ok"]
    assert json.loads((book / "results" / "first" / "out.json").read_text()) == {"value": 4}


def test_project_study_file_is_valid():
    root = Path(__file__).resolve().parents[1]
    study = st.load_study(root / "_config.yml")
    assert {"smoke", "demo", "paper"} <= set(study.profiles)
    for exp in study.experiments.values():
        assert (root / exp.notebook).is_file(), f"{exp.id}: {exp.notebook} missing"
        for profile in study.profiles:
            params = st.resolve_params(study, exp.id, profile)
            assert params["output_dir"].startswith("book/results/")
    assert st.execution_order(study)[-1] == "summary"


def test_runner_rejects_a_parameter_the_notebook_does_not_declare(mini_study: Path):
    """A typo in the study file is an error naming the closest declared name, not a silent run of the defaults."""
    cfg = yaml.safe_load(mini_study.read_text())
    cfg["experiments"]["first"]["params"] = {"valeu": 3}
    mini_study.write_text(yaml.safe_dump(cfg))
    study = st.load_study(mini_study)
    with pytest.raises(st.StudyConfigError, match="valeu.*value"):
        st.notebook_parameters(study, "first", st.resolve_params(study, "first", "smoke"))
    # study-wide defaults a notebook does not use are simply not passed
    assert st.notebook_parameters(study, "broken", {"value": 1, "unused": 2}) == {"value": 1}


def test_the_running_notebook_knows_its_declared_parameters():
    from cytoclip.params import declared_in_namespace

    params = "seed = 0\nepochs: int = 10\nlr = wd = 0.1\n"
    assert declared_in_namespace({"In": ["", params, "# Parameters\nepochs = 1\n", "page = ..."]}) == \
        ["seed", "epochs", "lr", "wd"]
    assert declared_in_namespace({"In": ["", params, "page = ..."]}) == ["seed", "epochs", "lr", "wd"]
    assert declared_in_namespace({}) == []


def test_a_page_opens_with_what_ran_and_what_it_found_and_publishes_no_machine_details(mini_study: Path):
    """The executed page: an at-a-glance cell after the title (data, departures, the key numbers beside the
    paper's), no stderr (warnings go to results/<id>/stderr.txt), no absolute path of the study root."""
    from cytoclip import report

    study = st.load_study(mini_study)
    exp_id = next(iter(study.experiments))
    results = study.results_dir(exp_id)
    results.mkdir(parents=True)
    key = report.paper_key("II", image_type="ExactBBox")
    rows = [report.headline_row(key, m, v, (v - 0.05, v + 0.05), "tiny", "synthetic atlas")
            for m, v in (("precision_weighted", 0.4), ("recall_weighted", 0.3), ("f1_weighted", 0.31))]
    report.write_results(results, {"profile": "demo", "data": "synthetic atlas",
                                   "departures": [{"key": "epochs", "paper": 50, "ours": 10, "reason": "CPU"}]}, rows)
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("seed = 0", metadata={"tags": ["parameters"]}),
                nbformat.v4.new_code_cell("seed = 1", metadata={"tags": ["injected-parameters"]}),
                nbformat.v4.new_markdown_cell("# Old title\nwhat the page does"),
                nbformat.v4.new_code_cell("x")]
    root = str(study.root)
    nb.cells[3].outputs = [
        nbformat.v4.new_output("stream", name="stderr", text=f"{root}/cytoclip/x.py:3: UserWarning: noise\n"),
        nbformat.v4.new_output("stream", name="stdout", text=f"wrote {root}/book/results/a.json\n"),
        nbformat.v4.new_output("display_data", data={"text/markdown": f"run `{root}/runs/demo/x`"})]
    path = study.root / "page.ipynb"
    nbformat.write(nb, path)
    st._dress_for_book(path, "New title", study, exp_id, "ok", 75.0)
    out = nbformat.read(path, as_version=4)
    assert out.cells[0].source.startswith("# New title")
    glance = out.cells[1]
    assert glance.cell_type == "markdown" and glance.source.startswith("**At a glance.**")
    assert "synthetic atlas" in glance.source and "1 departure(s)" in glance.source and "1:15" in glance.source
    assert "weighted F1 **0.310** [0.260, 0.360]" in glance.source and "paper, DHARANI:" in glance.source
    st._dress_for_book(path, "New title", study, exp_id, "ok", 75.0)  # dressing again changes nothing
    again = nbformat.read(path, as_version=4).cells
    assert [(c.cell_type, c.source, c.metadata) for c in again] == [(c.cell_type, c.source, c.metadata) for c in out.cells]
    # the page opens with its title and what it found; the folded parameter cells follow, in their order
    assert [c.source for c in out.cells[2:4]] == ["seed = 0", "seed = 1"]
    assert all("hide-cell" in c.metadata["tags"] for c in out.cells[2:4])
    text = json.dumps(out.cells[4].outputs)
    assert root not in text and "UserWarning" not in text and "wrote book/results/a.json" in text
    assert "UserWarning: noise" in (results / "stderr.txt").read_text()
