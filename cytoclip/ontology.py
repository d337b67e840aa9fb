"""The DHARANI nomenclature tree and the merge specs that turn its structures into training labels.

`Ontology` reads the atlas's own ``ontology.json`` layout (``{"msg": [{"children": [tree]}]}``), answers
tree questions (ancestors, depth, lowest common ancestor, tree distance) and writes the same layout back.
Merge specs are YAML data under ``cytoclip/resources/merge_specs/``: `load_merge_spec` reads one,
`merge_map` maps every ontology id to its merged label id (``None`` = excluded) and `merge_table` lists the
resulting labels. The CLI verb ``cytoclip ontology`` (``show``, ``merge-table``) is configured here too.
"""

from __future__ import annotations

import argparse
import colorsys
import difflib
import functools
import hashlib
import numbers
import os
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

import numpy as np
import pandas as pd
import yaml

from cytoclip.io import atomic_path, read_json, write_json

__all__ = [
    "Node",
    "Ontology",
    "OntologyError",
    "UnknownIdError",
    "MergeSpec",
    "MergeSpecError",
    "load_merge_spec",
    "available_merge_specs",
    "merge_map",
    "merge_table",
    "configure_parser",
]

PACKAGED_ONTOLOGY = "dharani_ontology.json"
_HEX = re.compile(r"^#?([0-9a-fA-F]{6})$")
# keys the parser interprets; every other key of a node is kept verbatim for the round trip
_NODE_KEYS = ("id", "acronym", "name", "parent_structure_id", "children")


class OntologyError(ValueError):
    """A malformed ontology file or tree (bad field, duplicate id, cycle, bad parent reference)."""


class UnknownIdError(OntologyError, KeyError):
    """An id, acronym or name that the ontology does not hold."""

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return str(self.args[0]) if self.args else ""


class MergeSpecError(OntologyError):
    """A malformed merge spec (unknown key, wrong type, bad level count)."""


@dataclass(frozen=True)
class Node:
    """One structure of the nomenclature. ``children`` are ids; ``depth`` is 0 for a top category."""

    id: int
    acronym: str
    name: str
    parent_id: int | None
    children: tuple[int, ...]
    depth: int
    color: str


def _stable_color(node_id: int) -> str:
    """A colour derived from the id through SHA-256, so it is the same on every run and machine.

    Python's ``hash()`` is salted per process, hence a cryptographic digest. Saturation and value are kept
    in a mid band so labels stay readable on white and black.
    """
    digest = hashlib.sha256(f"dharani-structure:{node_id}".encode()).digest()
    hue = int.from_bytes(digest[:2], "big") / 65536.0
    sat = 0.45 + 0.4 * digest[2] / 255.0
    val = 0.65 + 0.3 * digest[3] / 255.0
    r, g, b = colorsys.hsv_to_rgb(hue, sat, val)
    return "#{:02x}{:02x}{:02x}".format(round(r * 255), round(g * 255), round(b * 255))


def _is_int(value: Any) -> bool:
    # numpy integers (ids read from DataFrames) count; booleans do not
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


class Ontology:
    """The DHARANI nomenclature tree (ids, acronyms, names, parents, depths, colours).

    Build it with `Ontology.load` (packaged copy, a json path, or a data root) or `Ontology.from_dict`.
    Lookups by id raise `UnknownIdError`; ``onto[id]`` gives the frozen `Node`.
    """

    def __init__(self, records: list[dict[str, Any]], source: str = "<dict>",
                 wrapper: dict[str, Any] | None = None):
        """Build from flat records ``{"id", "acronym", "name", "parent_id", "raw"}`` in file order.

        Prefer `from_dict` / `load`; this constructor validates ids, parents and acyclicity.
        """
        self.source = source
        self._wrapper = dict(wrapper) if wrapper is not None else {"id": 0, "name": "root"}
        self._raw: dict[int, dict[str, Any]] = {}
        order: list[int] = []
        info: dict[int, dict[str, Any]] = {}
        for rec in records:
            nid = rec["id"]
            if nid in info:
                raise OntologyError(f"{source}: duplicate id {nid} ({info[nid]['name']!r} and {rec['name']!r})")
            info[nid] = rec
            order.append(nid)
            self._raw[nid] = rec.get("raw") or {}
        children: dict[int, list[int]] = {nid: [] for nid in order}
        roots: list[int] = []
        for nid in order:
            pid = info[nid]["parent_id"]
            if pid is None:
                roots.append(nid)
            elif pid not in info:
                raise OntologyError(f"{source}: id {nid} ({info[nid]['name']!r}) has parent_structure_id {pid}, "
                                    "which is not an id of this ontology")
            elif pid == nid:
                raise OntologyError(f"{source}: cycle: id {nid} is its own parent")
            else:
                children[pid].append(nid)
        # depths by walking down from the roots; anything not reached sits on a parent cycle
        depth: dict[int, int] = {}
        stack = [(r, 0) for r in reversed(roots)]
        while stack:
            nid, d = stack.pop()
            depth[nid] = d
            stack.extend((c, d + 1) for c in reversed(children[nid]))
        if len(depth) != len(order):
            stuck = sorted(set(order) - set(depth))
            raise OntologyError(f"{source}: cycle in parent references among ids {stuck[:10]}"
                                f"{' ...' if len(stuck) > 10 else ''}")
        if not roots:
            raise OntologyError(f"{source}: no structures found (field 'msg' holds no nodes)")
        self._nodes: dict[int, Node] = {}
        for nid in order:
            raw_color = self._raw[nid].get("color_hex_triplet")
            if raw_color in (None, ""):
                color = _stable_color(nid)
            else:
                m = _HEX.match(str(raw_color))
                if not m:
                    raise OntologyError(f"{source}: id {nid}: field 'color_hex_triplet' is {raw_color!r}; "
                                        "expected six hex digits such as 'FF8800'")
                color = "#" + m.group(1).lower()
            self._nodes[nid] = Node(id=nid, acronym=info[nid]["acronym"], name=info[nid]["name"],
                                    parent_id=info[nid]["parent_id"], children=tuple(children[nid]),
                                    depth=depth[nid], color=color)
        self._roots = tuple(roots)
        # pre-order position, so listings follow the printed tree
        self._order: dict[int, int] = {}
        for i, nid in enumerate(self._preorder(self._roots)):
            self._order[nid] = i
        self._by_acronym: dict[str, list[int]] = {}
        self._by_name: dict[str, list[int]] = {}
        for nid, node in self._nodes.items():
            self._by_acronym.setdefault(node.acronym, []).append(nid)
            self._by_name.setdefault(node.name.casefold(), []).append(nid)
        self._ancestors: dict[int, tuple[int, ...]] = {}
        for nid in self._order:
            pid = self._nodes[nid].parent_id
            self._ancestors[nid] = () if pid is None else self._ancestors[pid] + (pid,)

    # ------------------------------------------------------------------ construction
    @classmethod
    def load(cls, source: str | os.PathLike | None = None) -> "Ontology":
        """Load the packaged copy (``None``), an ``ontology.json`` path, or a data root with ``ontology/ontology.json``."""
        if source is None:
            return _packaged_ontology()
        path = Path(source)
        if path.is_dir():
            candidate = path / "ontology" / "ontology.json"
            if not candidate.is_file():
                raise OntologyError(f"{path}: a data root must hold ontology/ontology.json; {candidate} not found")
            path = candidate
        elif not path.is_file():
            raise OntologyError(f"{path}: ontology file not found (expected an ontology.json or a data root)")
        try:
            data = read_json(path)
        except ValueError as exc:
            raise OntologyError(str(exc)) from None
        return cls.from_dict(data, source=str(path))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "<dict>") -> "Ontology":
        """Build from the DHARANI layout ``{"msg": [{"children": [...]}]}``.

        Also accepted: ``msg`` as a list of top categories, or a flat list of nodes carrying
        ``parent_structure_id`` (then parents come from that field). A node's ``parent_structure_id``
        must agree with where it is nested.
        """
        if not isinstance(data, Mapping) or not isinstance(data.get("msg"), list):
            raise OntologyError(f"{source}: expected a JSON object with a list in field 'msg' "
                                f"(got {type(data).__name__}{' without msg' if isinstance(data, Mapping) else ''})")
        msg = data["msg"]
        wrapper = None
        tops = msg
        # the DHARANI file wraps its top categories in one nameless-acronym 'root' element
        if len(msg) == 1 and isinstance(msg[0], Mapping) and "acronym" not in msg[0]:
            wrapper = {k: v for k, v in msg[0].items() if k != "children"}
            tops = msg[0].get("children")
            if not isinstance(tops, list):
                raise OntologyError(f"{source}: field 'msg[0].children' must be a list of structures")
        wrapper_id = wrapper.get("id") if wrapper else None
        records: list[dict[str, Any]] = []

        def visit(node: Any, where: str, nest_parent: int | None) -> None:
            if not isinstance(node, Mapping):
                raise OntologyError(f"{source}: {where} must be an object, got {type(node).__name__}")
            nid = node.get("id")
            if not _is_int(nid):
                raise OntologyError(f"{source}: {where}: field 'id' must be an integer, got {nid!r}")
            for key in ("acronym", "name"):
                if not isinstance(node.get(key), str):
                    raise OntologyError(f"{source}: id {nid}: field {key!r} must be a string, got {node.get(key)!r}")
            if "parent_structure_id" in node:
                pid = node["parent_structure_id"]
                if pid is not None and not _is_int(pid):
                    raise OntologyError(f"{source}: id {nid}: field 'parent_structure_id' must be an integer or "
                                        f"null, got {pid!r}")
                if pid is not None and pid == wrapper_id:
                    pid = None
                if nest_parent is not None and pid != nest_parent:
                    raise OntologyError(f"{source}: id {nid}: bad parent reference: parent_structure_id is {pid} "
                                        f"but the node is nested under id {nest_parent}")
            else:
                pid = nest_parent
            kids = node.get("children", [])
            if not isinstance(kids, list):
                raise OntologyError(f"{source}: id {nid}: field 'children' must be a list, got {type(kids).__name__}")
            raw = {k: v for k, v in node.items() if k != "children"}
            records.append({"id": nid, "acronym": node["acronym"], "name": node["name"], "parent_id": pid,
                            "raw": raw})
            for i, child in enumerate(kids):
                visit(child, f"id {nid}: children[{i}]", nid)

        for i, top in enumerate(tops):
            visit(top, f"msg[{i}]" if wrapper is None else f"msg[0].children[{i}]", None)
        return cls(records, source=source, wrapper=wrapper)

    def to_dict(self) -> dict[str, Any]:
        """The DHARANI layout ``{"msg": [{..., "children": [tree]}]}``; fields read from the file are kept."""

        def emit(nid: int) -> dict[str, Any]:
            node = self._nodes[nid]
            out = dict(self._raw.get(nid) or {"id": node.id, "acronym": node.acronym, "name": node.name,
                                                "parent_structure_id": node.parent_id, "st_level": node.depth})
            out["children"] = [emit(c) for c in node.children]
            return out

        return {"msg": [{**self._wrapper, "children": [emit(r) for r in self._roots]}]}

    def save(self, path: str | os.PathLike) -> Path:
        """Write `to_dict` to ``path`` atomically."""
        return write_json(path, self.to_dict(), indent=1)

    # ------------------------------------------------------------------ container protocol
    def __len__(self) -> int:
        return len(self._nodes)

    def __contains__(self, nid: object) -> bool:
        return nid in self._nodes

    def __iter__(self) -> Iterator[int]:
        """Ids in pre-order (the order of the printed tree)."""
        return iter(self._order)

    def __getitem__(self, nid: int) -> Node:
        try:
            return self._nodes[nid]
        except (KeyError, TypeError):
            raise UnknownIdError(f"{self.source}: unknown ontology id {nid!r}") from None

    def __repr__(self) -> str:
        return f"Ontology({len(self)} structures, {len(self._roots)} roots, source={self.source!r})"

    @property
    def roots(self) -> tuple[int, ...]:
        """Ids of the top categories, in file order."""
        return self._roots

    @property
    def ids(self) -> list[int]:
        """All ids in pre-order."""
        return list(self._order)

    # ------------------------------------------------------------------ lookups
    def get(self, nid: int, default: Node | None = None) -> Node | None:
        """The node for ``nid``, or ``default`` when absent."""
        return self._nodes.get(nid, default)

    def by_acronym(self, acronym: str) -> Node:
        """The node with this acronym (exact, case-sensitive: DHARANI uses 'cc' and 'CC' for different things)."""
        ids = self._by_acronym.get(acronym, [])
        if len(ids) == 1:
            return self._nodes[ids[0]]
        if len(ids) > 1:
            raise OntologyError(f"{self.source}: acronym {acronym!r} is ambiguous (ids {ids}); use the id")
        folded = [a for a in self._by_acronym if a.casefold() == str(acronym).casefold()]
        hint = f"; same letters in other case: {folded}" if folded else ""
        raise UnknownIdError(f"{self.source}: unknown acronym {acronym!r}{hint}")

    def find(self, name: str) -> Node:
        """The node whose name equals ``name`` (case-insensitive); the error suggests close names."""
        ids = self._by_name.get(str(name).casefold(), [])
        if len(ids) == 1:
            return self._nodes[ids[0]]
        if len(ids) > 1:
            raise OntologyError(f"{self.source}: name {name!r} is ambiguous (ids {ids}); use the id")
        close = difflib.get_close_matches(str(name).casefold(), list(self._by_name), n=3)
        hint = f"; did you mean {close}?" if close else ""
        raise UnknownIdError(f"{self.source}: no structure named {name!r}{hint}")

    def resolve(self, ref: int | str) -> int:
        """An id from an id, a numeric string, an acronym or a name (tried in that order)."""
        if _is_int(ref):
            return self[int(ref)].id
        if not isinstance(ref, str):
            raise UnknownIdError(f"{self.source}: expected an id, acronym or name, got {ref!r}")
        text = ref.strip()
        if re.fullmatch(r"-?\d+", text):
            return self[int(text)].id
        if text in self._by_acronym:
            return self.by_acronym(text).id
        try:
            return self.find(text).id
        except UnknownIdError:
            raise UnknownIdError(f"{self.source}: {ref!r} is neither an id, an acronym nor a structure name") from None

    def name(self, nid: int) -> str:
        """The structure's name."""
        return self[nid].name

    def acronym(self, nid: int) -> str:
        """The structure's acronym."""
        return self[nid].acronym

    def color(self, nid: int) -> str:
        """``"#rrggbb"``: the file's colour, else a stable hash-derived one."""
        return self[nid].color

    # ------------------------------------------------------------------ tree questions
    def parent(self, nid: int) -> int | None:
        """Parent id (``None`` for a top category)."""
        return self[nid].parent_id

    def children(self, nid: int) -> tuple[int, ...]:
        """Child ids in file order."""
        return self[nid].children

    def ancestors(self, nid: int) -> tuple[int, ...]:
        """Ancestor ids, root first, not including ``nid``."""
        self[nid]
        return self._ancestors[nid]

    def descendants(self, nid: int) -> list[int]:
        """All ids below ``nid`` in pre-order, not including ``nid``."""
        return list(self._preorder(self[nid].children))

    def depth(self, nid: int) -> int:
        """0 for a top category (equals DHARANI's ``st_level``)."""
        return self[nid].depth

    def is_leaf(self, nid: int) -> bool:
        """True when the structure has no children."""
        return not self[nid].children

    def leaves(self, nid: int | None = None) -> list[int]:
        """Leaf ids of the whole tree, or of the subtree rooted at ``nid`` (``[nid]`` if it is a leaf)."""
        start = self._roots if nid is None else (self[nid].id,)
        return [i for i in self._preorder(start) if not self._nodes[i].children]

    def root_of(self, nid: int) -> int:
        """The top category that holds ``nid``."""
        anc = self.ancestors(nid)
        return anc[0] if anc else nid

    def path(self, nid: int) -> tuple[int, ...]:
        """Ids from the root down to and including ``nid``."""
        return self.ancestors(nid) + (nid,)

    def path_name(self, nid: int, sep: str = " / ") -> str:
        """``"Brain / Forebrain / ... / <name>"``."""
        return sep.join(self._nodes[i].name for i in self.path(nid))

    def lca(self, a: int, b: int) -> int | None:
        """Lowest common ancestor (a node counts as its own ancestor); ``None`` across top categories."""
        pa, pb = self.path(a), self.path(b)
        common = None
        for x, y in zip(pa, pb):
            if x != y:
                break
            common = x
        return common

    def distance(self, a: int, b: int) -> int:
        """Tree hops from ``a`` to ``b`` through their lowest common ancestor.

        Across top categories the tree has no common node, so the five roots are treated as children of
        one virtual root: ``depth(a) + depth(b) + 2``, larger than any within-category distance from the
        same nodes.
        """
        common = self.lca(a, b)
        da, db = self.depth(a), self.depth(b)
        if common is None:
            return da + db + 2
        return da + db - 2 * self._nodes[common].depth

    def to_frame(self) -> pd.DataFrame:
        """One row per structure in pre-order: id, acronym, name, parent_id, depth, root_id, n_children,
        is_leaf, color, path."""
        rows = []
        for nid in self._order:
            n = self._nodes[nid]
            rows.append({"id": n.id, "acronym": n.acronym, "name": n.name,
                         "parent_id": pd.NA if n.parent_id is None else n.parent_id, "depth": n.depth,
                         "root_id": self.root_of(nid), "n_children": len(n.children),
                         "is_leaf": not n.children, "color": n.color, "path": self.path_name(nid)})
        frame = pd.DataFrame(rows)
        frame["parent_id"] = frame["parent_id"].astype("Int64")
        return frame

    def _preorder(self, start: Iterable[int]) -> Iterator[int]:
        stack = list(reversed(tuple(start)))
        while stack:
            nid = stack.pop()
            yield nid
            stack.extend(reversed(self._nodes[nid].children))


@functools.lru_cache(maxsize=1)
def _packaged_ontology() -> Ontology:
    # parsed once per process: the packaged file never changes and an Ontology is not mutated after build
    ref = resources.files("cytoclip").joinpath("resources", PACKAGED_ONTOLOGY)
    with resources.as_file(ref) as path:
        return Ontology.from_dict(read_json(path), source=str(path))


# ====================================================================== merge specs

_SPEC_KEYS = {"name", "description", "exclude", "absorb", "absorb_levels", "except", "transient_layers"}


@dataclass(frozen=True)
class MergeSpec:
    """A declarative rule set that maps ontology structures to merged labels (see `merge_map`).

    Structures are named by id, acronym or exact name. Rules, in order of precedence:

    - ``exclude``: these structures and all their descendants map to ``None``.
    - ``absorb``: each listed structure is a label that takes in all its descendants.
    - ``absorb_levels``: ``{node, levels}``: every structure exactly ``levels`` below ``node`` becomes a label
      that takes in its descendants (the paper's "merge the regions two levels below X with their parents"
      is ``levels: 1``).
    - ``except``: these subtrees are shielded from the absorbing of their ancestors and from
      ``absorb_levels``; rules that name structures inside them still apply.
    - ``transient_layers``: ``{within: [...], names: [...]}``: inside the ``within`` subtrees a structure
      whose name starts with one of ``names`` followed by a comma (``"Cortical plate, frontal cortex"``)
      takes its parent's label.

    A nearer absorbing structure wins over a farther one, so nested ``absorb`` entries give separate labels.
    Everything else maps to itself; an empty spec is the identity.
    """

    name: str
    description: str = ""
    exclude: tuple[int | str, ...] = ()
    absorb: tuple[int | str, ...] = ()
    absorb_levels: tuple[tuple[int | str, int], ...] = ()
    except_: tuple[int | str, ...] = ()
    transient_within: tuple[int | str, ...] = ()
    transient_names: tuple[str, ...] = ()
    source: str = field(default="<MergeSpec>", compare=False)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "<dict>") -> "MergeSpec":
        """Validate and build from the YAML mapping; errors name ``source`` and the field."""
        if data is None:
            data = {}
        if not isinstance(data, Mapping):
            raise MergeSpecError(f"{source}: a merge spec must be a mapping, got {type(data).__name__}")
        unknown = set(data) - _SPEC_KEYS
        if unknown:
            raise MergeSpecError(f"{source}: unknown field(s) {sorted(unknown)}; expected some of {sorted(_SPEC_KEYS)}")

        def refs(key: str, value: Any) -> tuple[int | str, ...]:
            if value is None:
                return ()
            if not isinstance(value, list) or not all(_is_int(v) or isinstance(v, str) for v in value):
                raise MergeSpecError(f"{source}: field {key!r} must be a list of ids, acronyms or names, got {value!r}")
            return tuple(value)

        levels = []
        if not isinstance(data.get("absorb_levels") or [], list):
            raise MergeSpecError(f"{source}: field 'absorb_levels' must be a list of {{node, levels}} mappings")
        for i, item in enumerate(data.get("absorb_levels") or []):
            if not isinstance(item, Mapping) or set(item) != {"node", "levels"}:
                raise MergeSpecError(f"{source}: absorb_levels[{i}] must be a mapping with keys 'node' and "
                                     f"'levels', got {item!r}")
            if not _is_int(item["levels"]) or item["levels"] < 1:
                raise MergeSpecError(f"{source}: absorb_levels[{i}].levels must be an integer >= 1, "
                                     f"got {item['levels']!r}")
            if not (_is_int(item["node"]) or isinstance(item["node"], str)):
                raise MergeSpecError(f"{source}: absorb_levels[{i}].node must be an id, acronym or name")
            levels.append((item["node"], item["levels"]))
        tl = data.get("transient_layers") or {}
        if not isinstance(tl, Mapping) or set(tl) - {"within", "names"}:
            raise MergeSpecError(f"{source}: field 'transient_layers' must be a mapping with keys 'within' and "
                                 f"'names', got {tl!r}")
        names = tl.get("names") or []
        if not isinstance(names, list) or not all(isinstance(n, str) and n.strip() for n in names):
            raise MergeSpecError(f"{source}: transient_layers.names must be a list of layer names, got {names!r}")
        within = refs("transient_layers.within", tl.get("within"))
        if bool(names) != bool(within):
            raise MergeSpecError(f"{source}: transient_layers needs both 'within' and 'names'")
        spec_name = data.get("name", Path(source).stem if source.endswith((".yaml", ".yml")) else "custom")
        if not isinstance(spec_name, str):
            raise MergeSpecError(f"{source}: field 'name' must be a string")
        return cls(name=spec_name, description=str(data.get("description") or "").strip(),
                   exclude=refs("exclude", data.get("exclude")), absorb=refs("absorb", data.get("absorb")),
                   absorb_levels=tuple(levels), except_=refs("except", data.get("except")),
                   transient_within=within, transient_names=tuple(n.strip() for n in names), source=source)

    def to_dict(self) -> dict[str, Any]:
        """The YAML mapping this spec was read from (normalised)."""
        out: dict[str, Any] = {"name": self.name, "description": self.description, "exclude": list(self.exclude),
                               "absorb": list(self.absorb),
                               "absorb_levels": [{"node": n, "levels": k} for n, k in self.absorb_levels],
                               "except": list(self.except_)}
        if self.transient_names:
            out["transient_layers"] = {"within": list(self.transient_within), "names": list(self.transient_names)}
        return out


def _spec_dir() -> Path:
    return Path(str(resources.files("cytoclip").joinpath("resources", "merge_specs")))


def available_merge_specs() -> list[str]:
    """Names of the packaged merge specs."""
    return sorted(p.stem for p in _spec_dir().glob("*.yaml"))


def load_merge_spec(name_or_path: str | os.PathLike | MergeSpec) -> MergeSpec:
    """A packaged spec by name (``"lowres"``, ``"identity"``) or a YAML file by path."""
    if isinstance(name_or_path, MergeSpec):
        return name_or_path
    text = str(name_or_path)
    path = Path(text)
    if not (path.suffix in (".yaml", ".yml") or path.exists()):
        path = _spec_dir() / f"{text}.yaml"
        if not path.is_file():
            raise MergeSpecError(f"unknown merge spec {text!r}: not a file and not one of the packaged specs "
                                 f"{available_merge_specs()}")
    if not path.is_file():
        raise MergeSpecError(f"{path}: merge spec file not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise MergeSpecError(f"{path}: not valid YAML ({exc})") from None
    return MergeSpec.from_dict(data, source=str(path))


def _resolve_all(onto: Ontology, spec: MergeSpec, key: str, refs: Iterable[int | str]) -> list[int]:
    out = []
    for ref in refs:
        try:
            out.append(onto.resolve(ref))
        except OntologyError as exc:
            raise UnknownIdError(f"{spec.source}: field {key!r} names {ref!r}, which is not in the ontology "
                                 f"({onto.source}): {exc}") from None
    return out


def merge_map(onto: Ontology, spec: MergeSpec | str | os.PathLike) -> dict[int, int | None]:
    """Every ontology id -> its merged label id under ``spec`` (``None`` = excluded). See `MergeSpec`."""
    spec = load_merge_spec(spec)
    excluded = set(_resolve_all(onto, spec, "exclude", spec.exclude))
    absorbing = set(_resolve_all(onto, spec, "absorb", spec.absorb))
    shielded = set(_resolve_all(onto, spec, "except", spec.except_))
    for i, (ref, levels) in enumerate(spec.absorb_levels):
        (top,) = _resolve_all(onto, spec, f"absorb_levels[{i}].node", [ref])
        target = onto.depth(top) + levels
        for d in onto.descendants(top):
            # a shielded subtree (or one below a shielded node) keeps its own rules
            if onto.depth(d) == target and not (shielded & set(onto.path(d)[onto.depth(top) + 1:])):
                absorbing.add(d)
    within = set(_resolve_all(onto, spec, "transient_layers.within", spec.transient_within))
    prefixes = tuple(n.casefold() + "," for n in spec.transient_names)
    matched: set[str] = set()

    result: dict[int, int | None] = {}
    swallowed: dict[int, bool] = {}  # True when an absorbing ancestor-or-self takes in this node
    for nid in onto:  # pre-order: parents are decided before their children
        node = onto[nid]
        pid = node.parent_id
        if nid in excluded or (pid is not None and result[pid] is None):
            result[nid], swallowed[nid] = None, False
            continue
        parent_swallows = pid is not None and swallowed[pid] and nid not in shielded
        if nid in absorbing:
            result[nid], swallowed[nid] = nid, True
        elif parent_swallows:
            result[nid], swallowed[nid] = result[pid], True
        else:
            layer = next((p for p in prefixes if node.name.casefold().startswith(p)), None)
            if layer is not None and pid is not None and within & set(onto.ancestors(nid)):
                matched.add(layer)
                result[nid] = result[pid]
            else:
                result[nid] = nid
            swallowed[nid] = False
    unmatched = [n for n in spec.transient_names if n.casefold() + "," not in matched]
    if unmatched:
        raise MergeSpecError(f"{spec.source}: transient_layers.names {unmatched} match no structure inside "
                             f"{spec.transient_within} (names are matched as '<layer>, <region>')")
    return result


def merge_table(onto: Ontology, spec: MergeSpec | str | os.PathLike) -> pd.DataFrame:
    """One row per merged label in tree order: label_id, label, acronym, path, absorbed_ids, n_absorbed.

    ``absorbed_ids`` lists the other structures (not the label itself) whose annotations take this label.
    """
    mapping = merge_map(onto, spec)
    absorbed: dict[int, list[int]] = {}
    for nid in onto:
        target = mapping[nid]
        if target is not None:
            absorbed.setdefault(target, [])
            if target != nid:
                absorbed[target].append(nid)
    rows = [{"label_id": lid, "label": onto.name(lid), "acronym": onto.acronym(lid), "path": onto.path_name(lid),
             "absorbed_ids": ids, "n_absorbed": len(ids)}
            for lid, ids in sorted(absorbed.items(), key=lambda kv: onto._order[kv[0]])]
    return pd.DataFrame(rows, columns=["label_id", "label", "acronym", "path", "absorbed_ids", "n_absorbed"])


# ====================================================================== CLI


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """``cytoclip ontology show ID_OR_ACRONYM`` and ``cytoclip ontology merge-table [--spec] [--out]``."""
    parser.add_argument("--source", default=None,
                        help="ontology.json or data root holding ontology/ontology.json (default: packaged DHARANI copy)")
    sub = parser.add_subparsers(dest="action", metavar="ACTION")
    show = sub.add_parser("show", help="a structure's path, depth, parent and children")
    show.add_argument("ref", metavar="ID_OR_ACRONYM", help="ontology id, acronym or exact name")
    show.set_defaults(func=_cmd_show)
    table = sub.add_parser("merge-table", help="the labels a merge spec produces")
    table.add_argument("--spec", default="lowres", help="packaged spec name or YAML path (default: lowres)")
    table.add_argument("--out", default=None, help="write CSV (absorbed_ids joined by ';') instead of printing")
    table.set_defaults(func=_cmd_merge_table)
    parser.set_defaults(func=lambda args: (parser.print_help(), 2)[1])


def _cmd_show(args: argparse.Namespace) -> int:
    import sys

    try:
        onto = Ontology.load(args.source)
        node = onto[onto.resolve(args.ref)]
    except OntologyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{node.id} ({node.acronym}) {node.name}")
    print(f"path:     {onto.path_name(node.id)}")
    print(f"depth:    {node.depth}")
    parent = "-" if node.parent_id is None else f"{node.parent_id} ({onto.acronym(node.parent_id)}) {onto.name(node.parent_id)}"
    print(f"parent:   {parent}")
    print(f"color:    {node.color}")
    print(f"children: {len(node.children)}; descendants: {len(onto.descendants(node.id))}; "
          f"leaves: {len(onto.leaves(node.id))}")
    for c in node.children:
        print(f"  {c} ({onto.acronym(c)}) {onto.name(c)}")
    return 0


def _cmd_merge_table(args: argparse.Namespace) -> int:
    import sys

    try:
        onto = Ontology.load(args.source)
        table = merge_table(onto, args.spec)
    except OntologyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    flat = table.assign(absorbed_ids=table["absorbed_ids"].map(lambda ids: ";".join(map(str, ids))))
    if args.out:
        with atomic_path(args.out) as tmp:
            flat.to_csv(tmp, index=False)
        print(f"{len(table)} labels -> {args.out}")
    else:
        with pd.option_context("display.max_rows", None, "display.width", 200, "display.max_colwidth", 60):
            print(flat.drop(columns=["absorbed_ids"]).to_string(index=False))
        print(f"{len(table)} labels (spec {Path(str(args.spec)).stem})")
    return 0
