"""Notebook parameters: what a notebook declares, and a check that nothing else is passed to it.

Papermill injects the parameters it is given in a cell of its own ("# Parameters", tagged
``injected-parameters``) right after the cell tagged ``parameters``; a name the notebook does not declare is
only warned about, so ``papermill train.ipynb out.ipynb -p epoch 1`` (for ``epochs``) trains the defaults and
exits 0. Two guards close that:

- :func:`check_parameters` for a runner, before it executes a notebook (``declared`` from
  :func:`declared_parameters`);
- :func:`reject_undeclared`, called by the notebook itself at the top of its first cell after the parameters,
  which reads the parameters cell and papermill's injected cell from IPython's input history (``In``), so it
  also catches a hand-typed ``papermill -p``.

Both raise a one-line ``ValueError`` that names each unknown parameter and the closest declared one.
"""

from __future__ import annotations

import ast
import difflib
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

#: tag of the cell that declares a notebook's parameters (papermill's convention)
PARAMETERS_TAG = "parameters"
#: first line of the cell papermill injects (``execute_notebook(..., parameters=...)``; its comment argument
#: defaults to "Parameters")
INJECTED_HEADER = "# Parameters"


def assigned_names(source: str, where: str = "cell") -> dict[str, Any]:
    """Names assigned at top level in Python ``source``, each with its value when it is a literal.

    A value that is not a literal (``Path("x")``, ``2 * lr``) is given as its source text. ``a = b = 1`` and
    ``a, b = 1, 2`` declare both names; anything else at top level (imports, calls, comments) is ignored.
    """
    try:
        tree = ast.parse(source)
    except SyntaxError as exc:
        raise ValueError(f"{where}: not valid Python (line {exc.lineno}: {exc.msg})") from None
    names: dict[str, Any] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign):
            targets, value = node.targets, node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            targets, value = [node.target], node.value
        else:
            continue
        for target in targets:
            if isinstance(target, ast.Name):
                names[target.id] = _value(value)
            elif isinstance(target, (ast.Tuple, ast.List)):
                values = value.elts if isinstance(value, (ast.Tuple, ast.List)) and len(value.elts) == len(
                    target.elts) else [None] * len(target.elts)
                for elt, v in zip(target.elts, values):
                    if isinstance(elt, ast.Name):
                        names[elt.id] = _value(v) if v is not None else None
    return names


def _value(node: ast.expr) -> Any:
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return ast.unparse(node)


def declared_parameters(notebook_path: str | os.PathLike) -> dict[str, Any]:
    """The parameters a notebook declares: ``{name: default}`` from its cell tagged ``parameters``.

    Defaults are Python values (the source text of a non-literal expression). A notebook without such a
    cell declares nothing (``{}``); an unreadable notebook raises with its path.
    """
    import nbformat

    path = Path(notebook_path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: notebook not found")
    try:
        nb = nbformat.read(str(path), as_version=4)
    except Exception as exc:  # nbformat raises several types for a damaged file (JSON, validation)
        raise ValueError(f"{path}: not a readable notebook ({type(exc).__name__}: {exc})") from None
    for index, cell in enumerate(nb.cells):
        if cell.cell_type == "code" and PARAMETERS_TAG in cell.get("metadata", {}).get("tags", []):
            return assigned_names(cell.source, where=f"{path}: cell {index} (tagged {PARAMETERS_TAG!r})")
    return {}


def closest(name: str, candidates: Iterable[str]) -> str | None:
    """The candidate most like ``name`` (difflib), or None when none is reasonably close."""
    matches = difflib.get_close_matches(name, sorted(candidates), n=1, cutoff=0.6)
    return matches[0] if matches else None


def check_parameters(given: Mapping[str, Any] | Iterable[str], declared: Mapping[str, Any] | Iterable[str],
                     where: str) -> None:
    """Raise ``ValueError`` when ``given`` holds a name that ``declared`` does not; pass silently otherwise.

    The one-line message starts with ``where`` (e.g. the notebook's path) and names each unknown parameter
    with the closest declared one, or lists the declared names when none is close.
    """
    declared_names = set(declared)
    unknown = sorted(set(given) - declared_names)
    if not unknown:
        return
    parts = []
    for name in unknown:
        near = closest(name, declared_names)
        parts.append(f"{name!r} (did you mean {near!r}?)" if near else f"{name!r}")
    noun = "parameter" if len(unknown) == 1 else "parameters"
    message = f"{where}: unknown {noun} " + ", ".join(parts)
    if any(closest(name, declared_names) is None for name in unknown):
        message += f"; declared: {', '.join(sorted(declared_names)) or 'none'}"
    raise ValueError(message)


def _history(namespace: Mapping[str, Any]) -> Sequence[str] | None:
    """IPython's input history (``In``) from ``namespace``, or from the running shell; None outside IPython."""
    hist = namespace.get("In", namespace.get("_ih"))
    if isinstance(hist, list):
        return hist
    try:
        from IPython import get_ipython
    except ImportError:  # IPython is a dependency (ipykernel); without it there is no kernel to check
        return None
    shell = get_ipython()
    return getattr(getattr(shell, "history_manager", None), "input_hist_parsed", None) if shell else None


def _is_injected(source: str) -> bool:
    lines = source.lstrip().splitlines()
    return bool(lines) and lines[0].strip() == INJECTED_HEADER


def declared_in_namespace(namespace: Mapping[str, Any]) -> list[str]:
    """The parameter names of the running notebook: the input run just before papermill's injected cell, or the
    first input when nothing was injected; [] outside IPython."""
    history = [src for src in (_history(namespace) or []) if src and src.strip()]
    if not history:
        return []
    at = next((i for i in range(len(history) - 1, -1, -1) if _is_injected(history[i])), None)
    source = history[at - 1] if at else history[0]
    return list(assigned_names(source, where="the parameters cell"))


def reject_undeclared(namespace: Mapping[str, Any], notebook: str | os.PathLike | None = None) -> None:
    """In a notebook: raise ``ValueError`` when papermill injected a parameter the parameters cell does not declare.

    Call as ``reject_undeclared(globals())`` at the top of the first cell after the parameters. The injected
    cell is the latest input that starts with ``# Parameters`` (papermill's header); the declared names come
    from ``notebook``'s cell tagged ``parameters`` when given, else from the input run just before the
    injected one (papermill places its cell right after the parameters cell). Without an injected cell (the
    notebook run by hand, or by papermill with no parameters) there is nothing to check.
    """
    history = _history(namespace)
    if not history:
        return
    at = next((i for i in range(len(history) - 1, -1, -1) if _is_injected(history[i])), None)
    if at is None:
        return
    given = assigned_names(history[at], where="papermill's injected parameters")
    if notebook is not None:
        declared = declared_parameters(notebook)
        where = str(notebook)
    else:
        before = [src for src in history[:at] if src.strip()]
        declared = assigned_names(before[-1], where="the parameters cell") if before else {}
        where = "the notebook's parameters cell"
    if not declared:
        raise ValueError(f"{where}: papermill injected {sorted(given)} but no parameters are declared "
                         f"(expected a cell tagged {PARAMETERS_TAG!r} before the injected one)")
    check_parameters(given, declared, where=f"{where} (papermill -p)")


__all__ = ["PARAMETERS_TAG", "INJECTED_HEADER", "assigned_names", "declared_parameters", "closest",
           "check_parameters", "declared_in_namespace", "reject_undeclared"]
