"""Tests of cytoclip.ontology against the real DHARANI tree (hand-checked cases) and small synthetic trees."""

from __future__ import annotations

import copy
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from cytoclip import cli
from cytoclip.ontology import (MergeSpec, MergeSpecError, Node, Ontology, OntologyError, UnknownIdError,
                               available_merge_specs, load_merge_spec, merge_map, merge_table)

PACKAGED = Path(__file__).resolve().parents[1] / "cytoclip" / "resources" / "dharani_ontology.json"
PAPER_LOWRES_LABELS = 86  # labels present in the paper's annotated sections (not the full tree)


@pytest.fixture(scope="module")
def onto() -> Ontology:
    return Ontology.load()


@pytest.fixture(scope="module")
def lowres(onto) -> dict[int, int | None]:
    return merge_map(onto, "lowres")


def _tiny(extra: dict | None = None) -> dict:
    """A 6-node tree: A(1) -> B(2) -> C(3), D(4); A -> E(5); F(6) a second root."""
    def n(i, acr, name, parent, kids=()):
        return {"id": i, "acronym": acr, "name": name, "parent_structure_id": parent, "children": list(kids),
                **(extra or {}).get(i, {})}
    b = n(2, "B", "Bee", 1, [n(3, "C", "Cee", 2), n(4, "D", "Dee", 2)])
    a = n(1, "A", "Ay", None, [b, n(5, "E", "Ee", 1)])
    return {"msg": [{"id": 0, "name": "root", "children": [a, n(6, "F", "Ef", None)]}]}


# ---------------------------------------------------------------------------------------- the real tree
def test_size_and_roots(onto):
    assert len(onto) == 496
    assert onto.roots == (1, 231, 5000, 3000, 6000)
    assert [onto.name(r) for r in onto.roots] == ["Brain", "Spinal cord", "Developmental (transient) structures",
                                                  "Fiber tracts", "Ventricles"]
    assert 0 not in onto  # the file's wrapper element is not a structure
    assert len(onto.leaves()) == 414


def test_hand_checked_subiculum(onto):
    # Brain / Forebrain / Telencephalon / Cerebral cortex / Allocortex / Hippocampal formation / Subiculum
    assert onto.ancestors(85) == (1, 2, 3, 4, 64, 66)
    assert onto.depth(85) == 6
    assert onto.parent(85) == 66
    assert onto.children(85) == tuple(range(86, 93))
    assert onto.distance(74, 85) == 2  # Hippocampus and Subiculum are siblings under Hippocampal formation
    assert onto.lca(74, 85) == 66
    assert onto.distance(85, 85) == 0
    assert onto.lca(82, 74) == 74 and onto.distance(82, 74) == 1  # Dentate gyrus under Hippocampus


def test_leaf_counts_and_descendants(onto):
    assert len(onto.leaves(160)) == 38  # Thalamus: counted by hand from the printout
    assert len(onto.descendants(160)) == 46
    assert onto.leaves(82) == [82] and onto.is_leaf(82) and not onto.is_leaf(83)
    assert onto.descendants(83) == [386, 420, 421, 387, 422, 423, 388, 424, 425, 389, 426, 427]  # pre-order


def test_path_name_of_deep_node(onto):
    assert onto.depth(420) == 9
    assert onto.path_name(420) == ("Brain / Forebrain / Telencephalon / Cerebral cortex / Allocortex / "
                                   "Hippocampal formation / Hippocampus / Ammon's horn / CA1 field of hippocampus / "
                                   "Subplate zone, CA1 field")
    assert onto.path_name(240) == "Fiber tracts / Corpus callosum / Corpus callosum, body"


def test_cross_root_distance_uses_virtual_root(onto):
    assert onto.lca(85, 230) is None
    assert onto.distance(85, 230) == 6 + 1 + 2
    assert onto.distance(1, 231) == 2  # two roots are siblings under the virtual root


def test_acronym_name_lookup(onto):
    assert onto.by_acronym("SUB").id == 85
    assert onto.by_acronym("cc").name == "Corpus callosum"  # acronyms are case-sensitive
    assert onto.by_acronym("CC").name == "Central canal"
    with pytest.raises(OntologyError, match="ambiguous"):
        onto.by_acronym("III")  # Oculomotor nuclear complex and Oculomotor nerve
    with pytest.raises(UnknownIdError, match="'sub'"):
        onto.by_acronym("sub")
    assert onto.find("subiculum").id == 85
    assert onto.find("HIPPOCAMPUS").id == 74
    with pytest.raises(UnknownIdError, match="did you mean"):
        onto.find("Hipocampus")
    assert onto.resolve("85") == 85 and onto.resolve("HIP") == 74 and onto.resolve("Thalamus") == 160


def test_nodes_are_frozen(onto):
    node = onto[85]
    assert isinstance(node, Node) and node.acronym == "SUB" and node.parent_id == 66
    with pytest.raises(dataclasses.FrozenInstanceError):
        node.name = "x"


def test_unknown_id(onto):
    with pytest.raises(UnknownIdError, match="99999"):
        onto[99999]
    with pytest.raises(KeyError):  # also a KeyError, so dict-style callers can catch it
        onto.ancestors(99999)
    assert onto.get(99999) is None


def test_colours_are_stable_and_well_formed(onto):
    # pinned values: a SHA-256 of the id, identical on every run and machine
    assert (onto.color(1), onto.color(85), onto.color(6000)) == ("#ad7eeb", "#6581d4", "#d8b02f")
    colours = [onto.color(i) for i in onto]
    assert all(len(c) == 7 and c.startswith("#") and int(c[1:], 16) >= 0 for c in colours)
    assert len(set(colours)) > 480  # nearly all distinct
    # a fresh interpreter with another hash seed gives the same colours (Python's hash() would not)
    code = "from cytoclip.ontology import Ontology; print(Ontology.load().color(85))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONHASHSEED": "123", "PATH": ""}).stdout.strip()
    assert out == "#6581d4"


def test_colour_from_file_and_bad_colour():
    onto = Ontology.from_dict(_tiny({2: {"color_hex_triplet": "FF8800"}}))
    assert onto.color(2) == "#ff8800"
    with pytest.raises(OntologyError, match="color_hex_triplet"):
        Ontology.from_dict(_tiny({2: {"color_hex_triplet": "orange"}}))


def test_to_frame(onto):
    frame = onto.to_frame()
    assert len(frame) == 496 and frame["id"].is_unique
    assert list(frame.columns) == ["id", "acronym", "name", "parent_id", "depth", "root_id", "n_children",
                                   "is_leaf", "color", "path"]
    assert frame["parent_id"].isna().sum() == 5
    row = frame.set_index("id").loc[85]
    assert row["depth"] == 6 and row["root_id"] == 1 and row["n_children"] == 7


# ---------------------------------------------------------------------------------------- loading, round trip
def test_round_trip_is_exact(onto, tmp_path):
    original = json.loads(PACKAGED.read_text())
    assert onto.to_dict() == original
    again = Ontology.from_dict(copy.deepcopy(onto.to_dict()))
    assert again.to_dict() == original and len(again) == 496
    saved = onto.save(tmp_path / "o.json")
    assert Ontology.load(saved).to_dict() == original


def test_load_sources(tmp_path):
    (tmp_path / "ontology").mkdir()
    (tmp_path / "ontology" / "ontology.json").write_text(json.dumps(_tiny()))
    assert len(Ontology.load(tmp_path)) == 6
    assert len(Ontology.load(tmp_path / "ontology" / "ontology.json")) == 6
    with pytest.raises(OntologyError, match="ontology/ontology.json"):
        Ontology.load(tmp_path / "ontology")  # a dir that is not a data root
    with pytest.raises(OntologyError, match="not found"):
        Ontology.load(tmp_path / "missing.json")


def test_tiny_tree_queries():
    onto = Ontology.from_dict(_tiny())
    assert onto.roots == (1, 6) and onto.children(1) == (2, 5)
    assert onto.distance(3, 5) == 3 and onto.distance(3, 6) == 2 + 0 + 2
    assert onto.leaves() == [3, 4, 5, 6]


def test_malformed_json_names_the_file(tmp_path):
    bad = tmp_path / "ontology.json"
    bad.write_text("{ not json")
    with pytest.raises(OntologyError, match=str(bad)):
        Ontology.load(bad)
    bad.write_text(json.dumps({"children": []}))
    with pytest.raises(OntologyError, match="'msg'"):
        Ontology.load(bad)


@pytest.mark.parametrize("patch, pattern", [
    (lambda d: d["msg"][0]["children"][0].update(id="one"), "field 'id' must be an integer"),
    (lambda d: d["msg"][0]["children"][0].pop("name"), "field 'name'"),
    (lambda d: d["msg"][0]["children"][0].update(children="x"), "field 'children' must be a list"),
    (lambda d: d["msg"][0]["children"][1].update(id=3), "duplicate id 3"),
    (lambda d: d["msg"][0]["children"][0]["children"][0].update(parent_structure_id=5), "bad parent reference"),
])
def test_malformed_trees(patch, pattern):
    data = _tiny()
    patch(data)
    with pytest.raises(OntologyError, match=pattern):
        Ontology.from_dict(data, source="test.json")


def test_flat_layout_cycle_and_absent_parent():
    def n(i, parent):
        return {"id": i, "acronym": f"N{i}", "name": f"n{i}", "parent_structure_id": parent}
    assert Ontology.from_dict({"msg": [n(1, None), n(2, 1), n(3, 2)]}).ancestors(3) == (1, 2)
    with pytest.raises(OntologyError, match="cycle"):
        Ontology.from_dict({"msg": [n(1, None), n(2, 3), n(3, 2)]})
    with pytest.raises(OntologyError, match="parent_structure_id 7"):
        Ontology.from_dict({"msg": [n(1, None), n(2, 7)]})


# ---------------------------------------------------------------------------------------- merge specs
def test_packaged_specs():
    assert {"identity", "lowres"} <= set(available_merge_specs())
    assert load_merge_spec("lowres").name == "lowres"


def test_identity_maps_everything_to_itself(onto):
    mapping = merge_map(onto, "identity")
    assert mapping == {i: i for i in onto}
    table = merge_table(onto, "identity")
    assert len(table) == 496 and (table["n_absorbed"] == 0).all()


def test_lowres_label_count(onto, lowres):
    labels = {v for v in lowres.values() if v is not None}
    print(f"lowres labels over the full DHARANI tree: {len(labels)} (paper: {PAPER_LOWRES_LABELS} present in its "
          "annotated sections)")
    assert len(labels) == 116
    excluded = [k for k, v in lowres.items() if v is None]
    assert len(excluded) == 8 + 1  # Ventricles with its 7 children, White matter fibers
    table = merge_table(onto, "lowres")
    assert len(table) == 116 and table["n_absorbed"].sum() + len(table) + len(excluded) == 496


def test_lowres_major_regions_present(onto, lowres):
    names = {onto.name(v) for v in lowres.values() if v is not None}
    for expected in ["Amygdala", "Basal nuclei", "Lateral migratory stream", "Rostral migratory stream",
                     "Ganglionic eminence", "Thalamus", "Hypothalamus", "Hippocampus", "Subiculum", "Presubiculum",
                     "Parasubiculum", "Postsubiculum", "Pretectum", "Tectum", "Tegmentum", "Pons", "Medulla",
                     "Corticofugal tract", "Cerebellum", "Frontal cortex", "Parietal cortex", "Occipital cortex",
                     "Temporal cortex", "Insula", "Entorhinal cortex"]:
        assert expected in names, expected
    for gone in ["Striatum", "Caudate nucleus", "Dentate gyrus", "CA1 field of hippocampus", "Cortical plate, "
                 "frontal cortex", "Superior colliculus", "Internal capsule", "Lateral ventricle"]:
        assert gone not in names, gone


def test_lowres_c1_exclusions(onto, lowres):
    for root in (6000, 253):  # Ventricles, White matter fibers
        assert lowres[root] is None
        assert all(lowres[d] is None for d in onto.descendants(root))
    assert lowres[230] is None  # Central canal, under Ventricles


def test_lowres_c2_two_levels_below(lowres):
    assert lowres[136] == 135 and lowres[433] == 135  # amygdala complexes and their parts -> Amygdala
    assert lowres[142] == 140 and lowres[439] == 140  # Caudate, Islands of Calleja -> Basal nuclei
    assert lowres[161] == 160 and lowres[254] == 160 and lowres[381] == 160  # Thalamus absorbs its nuclei
    assert lowres[185] == 177 and lowres[407] == 177  # Mammillary body -> Hypothalamus
    assert lowres[198] == 196 and lowres[194] == 193 and lowres[322] == 203  # SNc, SC, APT
    assert lowres[464] == 205 and lowres[315] == 211  # PBl -> Pons; Gracile -> Medulla
    assert lowres[242] == 232 and lowres[236] == 232 and lowres[247] == 235  # tracts -> their parents
    for container in (1, 2, 3, 159, 440, 192, 204, 3000, 5000):  # X itself keeps its id
        assert lowres[container] == container


def test_lowres_c3_c4_cortex_and_transient_layers(onto, lowres):
    assert lowres[4] == 4 and lowres[12] == 12 and lowres[118] == 118  # cortices keep identity
    assert lowres[15] == 12  # Cortical plate, frontal cortex -> Frontal cortex
    assert [lowres[i] for i in range(13, 20)] == [12] * 7  # SGL ... VZ of frontal cortex
    assert [lowres[i] for i in range(5, 12)] == [4] * 7  # layers of Cerebral cortex itself
    assert lowres[59] == 56 and lowres[69] == 66 and lowres[502] == 118 and lowres[123] == 120
    # every layer-named node under Cerebral cortex lands on a label that is not a layer
    layer_words = ("Subpial", "Marginal", "Cortical plate", "Subplate", "Intermediate zone", "Subventricular",
                   "Ventricular zone")
    for nid in onto.descendants(4):
        if onto.name(nid).startswith(layer_words):
            assert not onto.name(lowres[nid]).startswith(layer_words)


def test_lowres_c5_hippocampal_regions_absorb(onto, lowres):
    assert all(lowres[d] == 74 for d in onto.descendants(74))  # children of Hippocampus -> Hippocampus
    assert lowres[82] == 74 and lowres[386] == 74 and lowres[420] == 74
    for region in (85, 93, 101, 109):
        assert all(lowres[d] == region for d in onto.descendants(region))
    table = merge_table(onto, "lowres").set_index("label_id")
    assert table.loc[74, "n_absorbed"] == 22 and sorted(table.loc[74, "absorbed_ids"]) == sorted(onto.descendants(74))
    assert table.loc[74, "path"].endswith("Hippocampal formation / Hippocampus")


def test_lowres_c6_non_layer_cortical_children_stay(lowres):
    for nid in (20, 37, 46, 117, 128, 129, 130, 131, 132, 133, 134, 55, 64, 65):
        assert lowres[nid] == nid


def test_lowres_c7_migratory_streams(lowres):
    assert lowres[156] == 156 and lowres[157] == 157 and lowres[441] == 441 and lowres[442] == 442
    assert lowres[158] == 158  # Ganglionic eminence


def test_lowres_c8_cerebellum_and_spinal_cord(onto, lowres):
    assert lowres[216] == 215 and lowres[349] == 215 and lowres[361] == 215  # cerebellar cortex -> Cerebellum
    assert [lowres[i] for i in (220, 221, 222)] == [217] * 3  # nuclei -> Cerebellar nuclei
    assert lowres[223] == 223
    assert all(lowres[d] == 231 for d in onto.descendants(231))


def test_lowres_c9_c10(lowres):
    assert all(lowres[i] == 210 for i in (448, 445, 446, 447, 460, 461, 462, 463))  # raphe nuclei
    assert lowres[1023] == 1023 and lowres[1009] == 1009  # developmental leaves stay
    assert lowres[239] == 238 and lowres[249] == 251 and lowres[340] == 237


# ---------------------------------------------------------------------------------------- spec semantics & errors
def test_spec_semantics_on_tiny_tree():
    onto = Ontology.from_dict(_tiny())
    spec = MergeSpec.from_dict({"absorb": ["A", 2], "except": ["E"]})
    # nearer absorber wins (B keeps C, D); E is shielded from A
    assert merge_map(onto, spec) == {1: 1, 2: 2, 3: 2, 4: 2, 5: 5, 6: 6}
    spec = MergeSpec.from_dict({"absorb_levels": [{"node": "A", "levels": 1}], "exclude": ["Dee"]})
    assert merge_map(onto, spec) == {1: 1, 2: 2, 3: 2, 4: None, 5: 5, 6: 6}
    spec = MergeSpec.from_dict({"absorb_levels": [{"node": "A", "levels": 2}]})
    assert merge_map(onto, spec) == {i: i for i in range(1, 7)}  # level-2 nodes are leaves here
    assert MergeSpec.from_dict(spec.to_dict()) == spec


def test_spec_naming_absent_structure(tmp_path):
    onto = Ontology.load()
    path = tmp_path / "bad.yaml"
    path.write_text("absorb: [HIP, NOPE]\n")
    with pytest.raises(UnknownIdError, match=r"bad\.yaml.*'absorb'.*'NOPE'"):
        merge_map(onto, path)
    path.write_text("exclude: [123456]\n")
    with pytest.raises(UnknownIdError, match="123456"):
        merge_map(onto, str(path))


@pytest.mark.parametrize("text, pattern", [
    ("absorbs: [HIP]\n", "unknown field"),
    ("absorb: HIP\n", "'absorb' must be a list"),
    ("absorb_levels: [{node: Tel, levels: 0}]\n", "levels must be an integer >= 1"),
    ("absorb_levels: [{node: Tel}]\n", "keys 'node' and 'levels'"),
    ("absorb_levels: {node: Tel, levels: 1}\n", "'absorb_levels' must be a list"),
    ("transient_layers: {within: [Ctx], names: [Cortical plates]}\n", "match no structure"),
    ("transient_layers: {names: [Cortical plate]}\n", "both 'within' and 'names'"),
    ("absorb: [HIP\n", "not valid YAML"),
])
def test_malformed_specs(tmp_path, text, pattern):
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    with pytest.raises(MergeSpecError, match=pattern):
        merge_map(Ontology.load(), path)


def test_unknown_spec_name():
    with pytest.raises(MergeSpecError, match="lowres"):
        load_merge_spec("no-such-spec")


# ---------------------------------------------------------------------------------------- CLI
def test_cli_show(capsys):
    assert cli.main(["ontology", "show", "SUB"]) == 0
    out = capsys.readouterr().out
    assert "85 (SUB) Subiculum" in out and "Allocortex / Hippocampal formation / Subiculum" in out
    assert "depth:    6" in out and "92 (VZ-SUB)" in out
    assert cli.main(["ontology", "show", "no-such-thing"]) == 2
    assert "no-such-thing" in capsys.readouterr().err


def test_cli_merge_table(tmp_path, capsys):
    out = tmp_path / "labels.csv"
    assert cli.main(["ontology", "merge-table", "--spec", "lowres", "--out", str(out)]) == 0
    table = pd.read_csv(out)
    assert len(table) == 116 and list(table.columns) == ["label_id", "label", "acronym", "path", "absorbed_ids",
                                                         "n_absorbed"]
    hip = table.set_index("label_id").loc[74]
    assert hip["n_absorbed"] == 22 and "82" in hip["absorbed_ids"].split(";")
    assert cli.main(["ontology", "merge-table", "--spec", "identity"]) == 0
    assert "496 labels" in capsys.readouterr().out


def test_numpy_ids_and_packaged_cache(onto):
    import numpy as np

    assert onto[np.int64(85)].name == "Subiculum" and onto.resolve(np.int32(74)) == 74
    assert onto.ancestors(np.int64(85)) == (1, 2, 3, 4, 64, 66)
    with pytest.raises(UnknownIdError):
        onto.resolve(True)  # a boolean is not an id
    assert Ontology.load() is Ontology.load()  # the packaged copy is parsed once per process
