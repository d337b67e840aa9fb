"""cytoclip.metrics against references: scikit-learn, brute-force Recall@K, hand-computed cases."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import f1_score, precision_score, recall_score

from cytoclip import metrics as M


def _brute_recall(sim, ql, gl, k, exclude_self, definition):
    """Reference: a plain loop, ranking by (-similarity, index)."""
    vals = []
    for i in range(sim.shape[0]):
        cand = [j for j in range(sim.shape[1]) if not (exclude_self and j == i)]
        rel = {j for j in cand if gl[j] == ql[i]}
        if not rel:
            continue
        ranked = sorted(cand, key=lambda j: (-sim[i, j], j))[:k]
        found = sum(j in rel for j in ranked)
        vals.append(found / len(rel) if definition == "paper" else float(found > 0))
    return float(np.mean(vals)), len(vals)


# -------------------------------------------------------------------------------------------- classification
def test_classification_report_matches_sklearn():
    rng = np.random.default_rng(0)
    names = np.array(["Amygdala", "Thalamus", "Pons", "Medulla", "Tectum"])
    y = names[rng.integers(0, 5, 200)]
    p = np.where(rng.random(200) < 0.6, y, names[rng.integers(0, 4, 200)])
    rep = M.classification_report(y, p)
    for avg in ("weighted", "macro"):
        assert rep[f"f1_{avg}"] == pytest.approx(f1_score(y, p, average=avg, zero_division=0))
        assert rep[f"precision_{avg}"] == pytest.approx(precision_score(y, p, average=avg, zero_division=0))
        assert rep[f"recall_{avg}"] == pytest.approx(recall_score(y, p, average=avg, zero_division=0))
    assert rep["accuracy"] == pytest.approx(np.mean(y == p))
    pc = rep["per_class"]
    assert list(pc.columns) == ["label", "precision", "recall", "f1", "support"]
    assert pc["support"].sum() == 200 and sorted(pc["label"]) == sorted(names)
    # weighted F1 is the support-weighted mean of the per-class F1
    assert np.average(pc["f1"], weights=pc["support"]) == pytest.approx(rep["f1_weighted"])


def test_classification_report_zero_division_and_labels():
    rep = M.classification_report(["a", "a", "b"], ["c", "a", "a"])
    pc = rep["per_class"].set_index("label")
    assert pc.loc["c", "precision"] == 0 and pc.loc["c", "support"] == 0  # predicted-only class
    assert pc.loc["b", "recall"] == 0 and pc.loc["b", "precision"] == 0   # never predicted: zero_division=0
    rep2 = M.classification_report(["a", "a", "b"], ["c", "a", "a"], labels=["a", "b"])
    assert list(rep2["per_class"]["label"]) == ["a", "b"]
    with pytest.raises(ValueError, match="same length"):
        M.classification_report(["a"], ["a", "b"])


def test_multi_region_rule_is_the_papers():
    """Hit = the primary label is among the regions of the predicted multi-region label (paper IV-B)."""
    from cytoclip.evaluate import multi_region_summary

    primary = ["Hippocampus", "Hippocampus", "Thalamus", "Pons"]
    sets = [["Subiculum", "Hippocampus"], ["Subiculum"], ["Thalamus"], ["Medulla", "Tectum"]]
    assert M.multi_region_hits(primary, sets).tolist() == [True, False, True, False]
    s = multi_region_summary(primary, sets, n_boot=50)
    assert s["hit_rate"] == 0.5 and s["label_type"] == "multi" and s["accuracy"] == 0.5
    # a miss is scored as the predicted label's primary region
    ref = M.classification_report(primary, ["Hippocampus", "Subiculum", "Thalamus", "Medulla"])
    assert s["f1_weighted"] == pytest.approx(ref["f1_weighted"])
    with pytest.raises(ValueError, match="list of regions"):
        M.multi_region_hits(primary, ["Subiculum"] * 4)


def test_metrics_take_any_label_type():
    """Integer labels work (scikit-learn refuses an object array of ints: 'unknown is not supported')."""
    rep = M.classification_report([0, 1, 2, 1], [0, 1, 1, 1])
    assert rep["accuracy"] == 0.75 and list(rep["per_class"]["label"]) == [0, 1, 2]
    assert M.classification_report(np.array([0, 1, 2, 1]), np.array([0, 1, 1, 1]))["f1_macro"] == rep["f1_macro"]
    assert M.classification_report(pd.Series(["a", "b"]), pd.Series(["a", "a"]))["accuracy"] == 0.5
    assert M.confused_pairs([0, 1, 1], [0, 0, 0])["count"].tolist() == [2]


# ------------------------------------------------------------------------------------------------- retrieval
@pytest.mark.parametrize("definition", ["paper", "hit"])
@pytest.mark.parametrize("exclude_self", [False, True])
def test_recall_at_k_matches_brute_force(definition, exclude_self):
    rng = np.random.default_rng(1)
    n = 60
    labels = rng.integers(0, 7, n)
    # rounded similarities create many ties, which must be broken by index like the reference
    sim = np.round(rng.normal(size=(n, n)), 1)
    out = M.recall_at_k(sim, labels, labels, ks=(1, 5, 10), exclude_self=exclude_self, definition=definition)
    for k in (1, 5, 10):
        ref, n_used = _brute_recall(sim, labels, labels, k, exclude_self, definition)
        assert out[f"recall_at_{k}"] == pytest.approx(ref)
        assert out["n_queries"] == n_used


def test_recall_at_k_rectangular_brute_force():
    rng = np.random.default_rng(2)
    ql, gl = rng.integers(0, 9, 25), rng.integers(0, 6, 80)  # some query labels absent from the gallery
    sim = rng.normal(size=(25, 80))
    for definition in ("paper", "hit"):
        out = M.recall_at_k(sim, ql, gl, ks=(3,), definition=definition)
        ref, n_used = _brute_recall(sim, ql, gl, 3, False, definition)
        assert out["recall_at_3"] == pytest.approx(ref)
        assert out["n_queries"] == n_used and out["n_no_relevant"] == 25 - n_used > 0
    per_q = M.recall_at_k(sim, ql, gl, ks=(3,), return_per_query=True)["per_query"][3]
    assert len(per_q) == 25 and np.isnan(per_q).sum() == 25 - n_used
    assert np.nanmean(per_q) == pytest.approx(M.recall_at_k(sim, ql, gl, ks=(3,))["recall_at_3"])


def test_recall_at_k_hand_cases():
    # one query, gallery labels a b a a; similarities tie at 0.5 for items 1 and 2
    sim = np.array([[0.9, 0.5, 0.5, 0.1]])
    out = M.recall_at_k(sim, ["a"], ["a", "b", "a", "a"], ks=(1, 2, 3, 4))
    # ranking 0,1,2,3 (tie 1 before 2): relevant found 1,1,2,3 of 3
    assert [out[f"recall_at_{k}"] for k in (1, 2, 3, 4)] == pytest.approx([1 / 3, 1 / 3, 2 / 3, 1.0])
    hit = M.recall_at_k(sim, ["a"], ["a", "b", "a", "a"], ks=(1, 2), definition="hit")
    assert hit["recall_at_1"] == 1.0 and hit["recall_at_2"] == 1.0
    # the paper's definition cannot exceed K / n_relevant even for a perfect ranking
    perfect = M.recall_at_k(np.array([[1.0, 0.9, 0.8, 0.0]]), ["a"], ["a", "a", "a", "b"], ks=(1,))
    assert perfect["recall_at_1"] == pytest.approx(1 / 3)


def test_recall_at_k_exclude_self_and_no_relevant():
    # image-to-image: 3 images, labels x x y; self similarity is the largest and must be ignored
    sim = np.array([[1.0, 0.2, 0.9],
                    [0.2, 1.0, 0.3],
                    [0.9, 0.3, 1.0]])
    out = M.recall_at_k(sim, ["x", "x", "y"], ["x", "x", "y"], ks=(1, 2), exclude_self=True)
    # query 0: others ranked 2 (y), 1 (x) -> R@1 0, R@2 1; query 1: 2 (y), 0 (x) -> same; query 2 has no other y
    assert out["n_queries"] == 2 and out["n_no_relevant"] == 1
    assert out["recall_at_1"] == 0.0 and out["recall_at_2"] == 1.0
    no_ex = M.recall_at_k(sim, ["x", "x", "y"], ["x", "x", "y"], ks=(1,))
    assert no_ex["recall_at_1"] == pytest.approx(np.mean([1 / 2, 1 / 2, 1.0]))  # self counts when not excluded
    with pytest.raises(ValueError, match="square"):
        M.recall_at_k(np.zeros((2, 3)), [0, 1], [0, 1, 2], exclude_self=True)
    with pytest.raises(ValueError, match="definition"):
        M.recall_at_k(sim, [0, 0, 1], [0, 0, 1], definition="mean")


# ----------------------------------------------------------------------------------------------- uncertainty
def test_bootstrap_ci_contains_estimate_and_narrows():
    rng = np.random.default_rng(3)
    small = M.bootstrap_ci(rng.random(30) < 0.7, n=500, seed=0)
    large = M.bootstrap_ci(rng.random(3000) < 0.7, n=500, seed=0)
    for ci in (small, large):
        assert ci["low"] <= ci["estimate"] <= ci["high"]
        assert ci["high"] > ci["low"]
    assert (large["high"] - large["low"]) < (small["high"] - small["low"]) / 3
    const = M.bootstrap_ci(np.ones(30), n=200, seed=5)
    assert const["low"] == const["high"] == const["estimate"] == 1.0
    v = rng.random(40)
    assert M.bootstrap_ci(v, n=200, seed=5) == M.bootstrap_ci(v, n=200, seed=5)


def test_bootstrap_ci_of_a_function_resamples_items():
    rng = np.random.default_rng(4)
    y = rng.integers(0, 4, 300)
    p = np.where(rng.random(300) < 0.8, y, rng.integers(0, 4, 300))
    ci = M.bootstrap_ci(lambda i: f1_score(y[i], p[i], average="weighted"), n=200, seed=0, n_items=len(y))
    assert ci["estimate"] == pytest.approx(f1_score(y, p, average="weighted"))
    assert ci["low"] < ci["estimate"] < ci["high"] and ci["high"] - ci["low"] < 0.2
    with pytest.raises(ValueError, match="n_items"):
        M.bootstrap_ci(lambda i: 0.0)


def test_mean_std_over_seeds():
    assert M.mean_std([1.0, 2.0, 3.0]) == {"mean": 2.0, "std": 1.0, "n": 3}
    agg = M.mean_std([{"f1": 0.5, "acc": 0.6, "name": "x"}, {"f1": 0.7, "acc": 0.6}])
    assert set(agg) == {"f1", "acc"} and agg["f1"]["mean"] == pytest.approx(0.6) and agg["acc"]["std"] == 0
    assert M.mean_std([0.4])["std"] == 0.0


# ------------------------------------------------------------------------------------------- error analysis
# hand-made tree: root -> {A -> {a1, a2}, B -> {b1}}
_PARENT = {"root": None, "A": "root", "B": "root", "a1": "A", "a2": "A", "b1": "B"}


def _tree_distance(x, y):
    def chain(n):
        out = [n]
        while _PARENT[out[-1]] is not None:
            out.append(_PARENT[out[-1]])
        return out
    cx, cy = chain(x), chain(y)
    lca = next(n for n in cx if n in cy)
    return cx.index(lca) + cy.index(lca)


def test_errors_by_tree_distance_hand_tree():
    y_true = ["a1", "a1", "a2", "b1", "b1", "a1"]
    y_pred = ["a1", "a2", "a1", "a1", "b1", "b1"]
    df = M.errors_by_tree_distance(y_true, y_pred, _tree_distance)
    # errors: a1->a2 (2, siblings), a2->a1 (2), b1->a1 (4), a1->b1 (4)
    assert df["distance"].tolist() == [2.0, 4.0] and df["n_errors"].tolist() == [2, 2]
    assert df["fraction_of_errors"].sum() == pytest.approx(1.0)
    assert df["fraction_of_all"].tolist() == pytest.approx([2 / 6, 2 / 6])
    assert df.attrs["n_errors"] == 4 and df.attrs["mean_distance"] == pytest.approx(3.0)
    empty = M.errors_by_tree_distance(["a1"], ["a1"], _tree_distance)
    assert len(empty) == 0 and np.isnan(empty.attrs["mean_distance"])


def test_errors_by_tree_distance_with_ontology():
    from cytoclip.ontology import Ontology

    def node(i, name, kids=()):
        return {"id": i, "acronym": name, "name": name, "children": list(kids)}

    onto = Ontology.from_dict({"msg": [node(1, "root", [node(2, "A", [node(4, "a1"), node(5, "a2")]),
                                                       node(3, "B", [node(6, "b1")])])]})
    ids = {"root": 1, "A": 2, "B": 3, "a1": 4, "a2": 5, "b1": 6}
    y_true = ["a1", "a1", "a2", "b1", "b1", "a1", "A"]
    y_pred = ["a1", "a2", "a1", "a1", "b1", "b1", "a1"]
    df = M.errors_by_tree_distance(y_true, y_pred, lambda a, b: onto.distance(ids[a], ids[b]))
    ref = M.errors_by_tree_distance(y_true, y_pred, _tree_distance)
    pd.testing.assert_frame_equal(df, ref)
    assert df.set_index("distance")["n_errors"].to_dict() == {1.0: 1, 2.0: 2, 4.0: 2}  # parent->child is 1 hop


def test_errors_by_adjacency_and_confused_pairs():
    y_true = ["H", "H", "H", "S", "T", "T"]
    y_pred = ["S", "S", "C", "H", "T", "P"]
    adj = {frozenset({"H", "S"}), frozenset({"H", "C"})}
    out = M.errors_by_adjacency(y_true, y_pred, adj)
    assert out == {"n_errors": 5, "n_adjacent": 4, "n_not_adjacent": 1, "fraction_adjacent": 0.8}
    assert M.errors_by_adjacency(y_true, y_pred, lambda a, b: False)["n_adjacent"] == 0
    cp = M.confused_pairs(y_true, y_pred, top=2)
    assert list(cp.columns) == ["true", "pred", "count", "fraction_of_true"]
    assert cp.iloc[0].tolist() == ["H", "S", 2, pytest.approx(2 / 3)]
    assert len(cp) == 2 and cp.iloc[1]["count"] == 1
    assert isinstance(M.confused_pairs(["a"], ["a"]), pd.DataFrame) and M.confused_pairs(["a"], ["a"]).empty


def test_prf_resampled_matches_sklearn_per_resample():
    """The vectorised resampled P/R/F1 equal sklearn's on each resample, weighted and macro (absent classes,
    classes only predicted, and zero divisions included)."""
    from sklearn.metrics import precision_recall_fscore_support

    rng = np.random.default_rng(0)
    y = rng.integers(0, 7, 80)
    p = np.where(rng.random(80) < 0.6, y, rng.integers(0, 9, 80))  # classes 7, 8 only ever predicted
    idx = rng.integers(0, 80, size=(25, 80))
    for avg in ("weighted", "macro"):
        got = M.prf_resampled(y, p, idx, 9, average=avg)
        want = np.array([precision_recall_fscore_support(y[r], p[r], average=avg, zero_division=0)[:3]
                         for r in idx])
        np.testing.assert_allclose(got, want, atol=1e-12)
    with pytest.raises(ValueError, match="average"):
        M.prf_resampled(y, p, idx, 9, average="micro")


def test_vectorized_bootstrap_equals_loop():
    """A vectorised statistic gives the same interval as the per-resample callable (same resamples)."""
    from sklearn.metrics import f1_score

    rng = np.random.default_rng(1)
    y = rng.integers(0, 5, 120)
    p = np.where(rng.random(120) < 0.7, y, rng.integers(0, 5, 120))
    loop = M.bootstrap_ci(lambda i: f1_score(y[i], p[i], average="weighted", zero_division=0), n=300, seed=3,
                          n_items=120)
    vec = M.bootstrap_ci(lambda i: M.prf_resampled(y, p, i, 5)[:, 2], n=300, seed=3, n_items=120, vectorized=True)
    for k in ("estimate", "low", "high"):
        assert vec[k] == pytest.approx(loop[k], abs=1e-12), k
