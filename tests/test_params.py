"""cytoclip.params: declared notebook parameters, and undeclared ones rejected (in a runner and in a real kernel)."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest

from cytoclip.params import (
    assigned_names,
    check_parameters,
    closest,
    declared_parameters,
    reject_undeclared,
)

ROOT = Path(__file__).resolve().parents[1]

PARAMS_SOURCE = """# Parameters (papermill): the defaults of a run
epochs = 3
lr = 5.0e-4
model = "tiny"
atlas_root = None
image_size: int = 96
"""


def _notebook(path: Path, check_cell: str | None = "from cytoclip.params import reject_undeclared\n"
                                                       "reject_undeclared(globals())\n") -> Path:
    cells = [nbformat.v4.new_markdown_cell("# A throwaway notebook"),
             nbformat.v4.new_code_cell(PARAMS_SOURCE, metadata={"tags": ["parameters"]})]
    if check_cell:
        cells.append(nbformat.v4.new_code_cell(check_cell))
    cells.append(nbformat.v4.new_code_cell("result = (epochs, lr, model)\nprint(result)"))
    nb = nbformat.v4.new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, str(path))
    return path


# ------------------------------------------------------------------------------------- declared / check


def test_declared_parameters_reads_the_tagged_cell(tmp_path):
    nb = _notebook(tmp_path / "nb.ipynb")
    assert declared_parameters(nb) == {"epochs": 3, "lr": 5.0e-4, "model": "tiny", "atlas_root": None,
                                       "image_size": 96}


def test_declared_parameters_agrees_with_papermill_on_the_study_notebooks():
    import papermill as pm

    notebooks = sorted((ROOT / "notebooks").glob("*.ipynb"))
    assert notebooks
    for nb in notebooks:
        assert set(declared_parameters(nb)) == set(pm.inspect_notebook(str(nb))), nb.name


def test_declared_parameters_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.ipynb: notebook not found"):
        declared_parameters(tmp_path / "missing.ipynb")
    bad = tmp_path / "bad.ipynb"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="bad.ipynb: not a readable notebook"):
        declared_parameters(bad)


def test_assigned_names_multiple_targets_and_non_literals():
    names = assigned_names("a = b = 1\nc, d = 2, 'x'\nfrom pathlib import Path\np = Path('r')\nprint(a)\n")
    assert names == {"a": 1, "b": 1, "c": 2, "d": "x", "p": "Path('r')"}
    with pytest.raises(ValueError, match="cell 3.*not valid Python"):
        assigned_names("a = (", where="cell 3")


def test_check_parameters_names_the_closest_declared_one():
    declared = {"epochs": 3, "lr": 1e-4, "batch_size": 64}
    check_parameters({"epochs": 1, "lr": 0.1}, declared, where="nb.ipynb")  # passes
    with pytest.raises(ValueError) as err:
        check_parameters({"epoch": 1, "batchsize": 2}, declared, where="nb.ipynb")
    assert str(err.value) == ("nb.ipynb: unknown parameters 'batchsize' (did you mean 'batch_size'?), "
                              "'epoch' (did you mean 'epochs'?)")
    with pytest.raises(ValueError, match=r"nb.ipynb: unknown parameter 'zzz'; declared: batch_size, epochs, lr"):
        check_parameters(["zzz"], declared, where="nb.ipynb")
    assert closest("modle", ["model", "lr"]) == "model" and closest("q", ["model"]) is None


# ------------------------------------------------------------------------------------- in-notebook guard


def test_reject_undeclared_reads_the_input_history():
    injected = "# Parameters\nepoch = 1\n"
    with pytest.raises(ValueError, match=r"unknown parameter 'epoch' \(did you mean 'epochs'\?\)"):
        reject_undeclared({"In": ["", PARAMS_SOURCE, injected, "reject_undeclared(globals())"]})
    reject_undeclared({"In": ["", PARAMS_SOURCE, "# Parameters\nepochs = 1\n", "..."]})  # declared: passes
    reject_undeclared({"In": ["", PARAMS_SOURCE, "reject_undeclared(globals())"]})  # nothing injected
    reject_undeclared({})  # not in IPython: nothing to check
    # the study notebooks' own parameters cells start with '# Parameters (papermill)...': not mistaken for
    # papermill's injected cell
    reject_undeclared({"In": ["", "# Parameters (papermill). The runner overrides them.\nepoch = 1\n", "..."]})


def test_reject_undeclared_with_the_notebook_path(tmp_path):
    nb = _notebook(tmp_path / "nb.ipynb")
    with pytest.raises(ValueError, match=r"nb.ipynb \(papermill -p\): unknown parameter 'modl' "
                                         r"\(did you mean 'model'\?\)"):
        reject_undeclared({"In": ["", "x = 1", "# Parameters\nmodl = 'hf'\n"]}, notebook=nb)


def test_papermill_run_fails_on_a_misspelled_parameter_and_passes_declared_ones(tmp_path):
    import papermill as pm

    src = _notebook(tmp_path / "nb.ipynb")
    with pytest.raises(pm.PapermillExecutionError) as err:
        pm.execute_notebook(str(src), str(tmp_path / "bad.ipynb"), parameters={"epoch": 1, "lr": 0.1},
                            cwd=str(tmp_path), progress_bar=False, kernel_name="python3")
    assert err.value.ename == "ValueError"
    assert "unknown parameter 'epoch' (did you mean 'epochs'?)" in err.value.evalue

    out = tmp_path / "good.ipynb"
    pm.execute_notebook(str(src), str(out), parameters={"epochs": 1, "lr": 0.1}, cwd=str(tmp_path),
                        progress_bar=False, kernel_name="python3")
    printed = nbformat.read(str(out), as_version=4).cells[-1].outputs[0]["text"]
    assert printed.strip() == "(1, 0.1, 'tiny')"


def test_without_the_guard_papermill_only_warns(tmp_path):
    # why the guard exists: papermill itself runs the defaults when a parameter is misspelled
    import papermill as pm

    src = _notebook(tmp_path / "nb.ipynb", check_cell=None)
    out = tmp_path / "out.ipynb"
    pm.execute_notebook(str(src), str(out), parameters={"epoch": 1}, cwd=str(tmp_path), progress_bar=False,
                        kernel_name="python3")
    printed = nbformat.read(str(out), as_version=4).cells[-1].outputs[0]["text"]
    assert printed.strip() == "(3, 0.0005, 'tiny')"
