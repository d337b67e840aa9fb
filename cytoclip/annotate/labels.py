"""The candidate region names a prediction chooses among: the model's training labels, a text file, or an
ontology subtree. Every candidate is an ontology structure (its id is what the GeoJSON records, its colour what
the overlay and QuPath show), so an unknown name is refused up front, naming the file and line."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cytoclip.ontology import Ontology, OntologyError

__all__ = ["Candidates", "candidates", "from_names", "read_labels_file", "subtree_names"]


@dataclass(frozen=True)
class Candidates:
    """Names (in the order of the classifier's classes), their ontology ids and "#rrggbb" colours, and where
    the list came from (shown with every result)."""

    names: tuple[str, ...]
    ids: tuple[int, ...]
    colors: tuple[str, ...]
    source: str

    def __len__(self) -> int:
        return len(self.names)


def from_names(names: list[str], ontology: Ontology, source: str, known_ids: dict[str, int] | None = None,
               where: list[str] | None = None) -> Candidates:
    """Candidates from names (or acronyms / ids): each resolved through ``known_ids`` (the training manifest's
    label -> id) first, then ``ontology.resolve``. ``where[i]`` says where name i came from, for the error."""
    if not names:
        raise ValueError(f"{source}: no candidate names")
    out_names, ids = [], []
    for i, ref in enumerate(names):
        if known_ids and ref in known_ids and int(known_ids[ref]) in ontology:
            nid = int(known_ids[ref])
            out_names.append(ref)
        else:
            try:
                nid = ontology.resolve(ref)
            except OntologyError:
                at = where[i] if where else source
                raise ValueError(f"{at}: unknown label {ref!r}: not a structure of the ontology "
                                 f"({ontology.source}); expected a name, acronym or id "
                                 f"(`cytoclip ontology show` lists them)") from None
            # an id or acronym is shown by its name; a name keeps the spelling the model was trained with
            out_names.append(ref if ontology.name(nid).casefold() == str(ref).strip().casefold()
                             else ontology.name(nid))
        ids.append(nid)
    dup = sorted({n for n in out_names if out_names.count(n) > 1})
    if dup:
        raise ValueError(f"{source}: candidate names given twice: {dup}")
    same = sorted({ontology.name(i) for i in ids if ids.count(i) > 1})
    if same:
        raise ValueError(f"{source}: several candidates name the same structure: {same}")
    return Candidates(tuple(out_names), tuple(ids), tuple(ontology.color(i) for i in ids), source)


def read_labels_file(path: str | os.PathLike) -> tuple[list[str], list[str]]:
    """Names from a text file, one a line (blank lines and ``#`` comments skipped); also ``path:line`` of each."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: labels file not found (expected a text file, one region name a line)")
    names, where = [], []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        text = line.split("#", 1)[0].strip()
        if text:
            names.append(text)
            where.append(f"{path}:{n}")
    return names, where


def subtree_names(ontology: Ontology, ref: int | str) -> list[str]:
    """The leaf structures under ``ref`` (a name, acronym or id; itself when a leaf): the finest regions of a
    subtree, which do not contain one another, so exactly one of them is the right answer."""
    try:
        nid = ontology.resolve(ref)
    except OntologyError:
        raise ValueError(f"--ontology-subtree: {ref!r} is not a structure of the ontology ({ontology.source}); "
                         f"expected a name, acronym or id") from None
    return [ontology.name(i) for i in ontology.leaves(nid)]


def candidates(trained: Any, ontology: Ontology, labels: str | os.PathLike | list[str] | None = None,
               subtree: int | str | None = None) -> Candidates:
    """The candidates for ``trained`` (:class:`~cytoclip.annotate.trained.TrainedModel`): ``labels`` (a text
    file or a list of names), else the leaves of ``subtree``, else the model's training labels."""
    if labels is not None and subtree is not None:
        raise ValueError("give either a labels list (--labels) or an ontology subtree (--ontology-subtree), not both")
    if labels is not None:
        if isinstance(labels, (str, os.PathLike)):
            names, where = read_labels_file(labels)
            return from_names(names, ontology, str(labels), known_ids=trained.label_ids, where=where)
        return from_names(list(labels), ontology, "labels", known_ids=trained.label_ids)
    if subtree is not None:
        return from_names(subtree_names(ontology, subtree), ontology, f"ontology subtree {subtree!r}")
    if not trained.class_names:
        raise ValueError(f"{trained.spec}: records no training labels (not a training run); pass the candidate "
                         f"names with --labels FILE or --ontology-subtree NAME")
    where = f"training labels of {trained.run_dir or trained.spec}"
    return from_names(list(trained.class_names), ontology, where, known_ids=trained.label_ids)
