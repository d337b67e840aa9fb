"""Notebook parameters: what a notebook declares (its cell tagged ``parameters``), and a refusal of anything
else, so that ``papermill notebooks/train.ipynb out.ipynb -p epoch 1`` (a typo) fails naming ``epochs`` instead of
training the defaults.

Two doors, one rule: the study runner checks the parameters it sets against :func:`declared_parameters` of the
notebook file; inside a running notebook, :func:`reject_undeclared` checks what papermill injected against the
parameters cell, read from IPython's input history (``In``: the parameters cell runs first, papermill's injected
``# Parameters`` cell right after it).
"""

from __future__ import annotations

import ast
import difflib
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

__all__ = ["assigned_names", "declared_parameters", "check_parameters", "declared_in_namespace",
           "reject_undeclared"]

#: how papermill's injected cell begins (papermill.translators: the comment line of the parameters block)
INJECTED_HEADER = "# Parameters"


def assigned_names(source: str) -> list[str]:
    """The names a cell's top-level assignments bind, in order (``a = 1``, ``a: int = 1``, ``a = b = 2``)."""
    names: list[str] = []
    for node in ast.parse(source).body:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(
            node, ast.AnnAssign) else []
        for t in targets:
            if isinstance(t, ast.Name) and t.id not in names:
                names.append(t.id)
    return names


def declared_parameters(notebook: str | os.PathLike) -> list[str]:
    """The parameters a notebook declares: the names assigned in its cell tagged ``parameters``."""
    import nbformat

    path = Path(notebook)
    nb = nbformat.read(path, as_version=4)
    cells = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    if len(cells) != 1:
        raise ValueError(f"{path}: expected one cell tagged 'parameters', found {len(cells)}")
    return assigned_names(cells[0].source)


def check_parameters(given: Iterable[str], declared: Iterable[str], where: str = "notebook") -> None:
    """Raise ValueError naming every name of ``given`` that ``declared`` lacks, with the closest declared one."""
    declared = list(declared)
    unknown = [g for g in given if g not in declared]
    if not unknown:
        return
    hints = []
    for name in unknown:
        close = difflib.get_close_matches(name, declared, n=1)
        hints.append(f"{name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    raise ValueError(f"{where}: unknown parameter(s) {', '.join(hints)}; it declares {sorted(declared)}")


def _history(namespace: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """(parameters cell, injected cell or None) from IPython's input history; (None, None) outside IPython."""
    history = [h for h in namespace.get("In", []) or [] if h and h.strip()]
    if not history:
        return None, None
    injected = history[1] if len(history) > 1 and history[1].lstrip().startswith(INJECTED_HEADER) else None
    return history[0], injected


def declared_in_namespace(namespace: Mapping[str, Any]) -> list[str]:
    """The parameter names of the running notebook (its first executed cell), or [] outside IPython."""
    params, _ = _history(namespace)
    return assigned_names(params) if params else []


def reject_undeclared(namespace: Mapping[str, Any]) -> None:
    """Raise ValueError when papermill injected a parameter the notebook's parameters cell does not declare."""
    params, injected = _history(namespace)
    if params is None or injected is None:
        return
    check_parameters(assigned_names(injected), assigned_names(params), where="papermill -p")
