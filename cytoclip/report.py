"""Headline results: the schema every notebook writes (``headline.csv``) and the table beside the paper.

Each experiment notebook writes ``results.json`` (all its numbers) and ``headline.csv`` (the few numbers that
stand for a row of the paper's Tables I-IV). The first ten columns of a headline row use the vocabulary of
``cytoclip/resources/paper_tables.csv`` -- they name the paper row the number stands beside -- so that
:func:`beside_paper` can join on them. What *we* ran is said by ``ours_model`` and ``data``; the two sources stay
in separate columns and are never mixed.
"""

from __future__ import annotations

import html
import math
import os
import re
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from cytoclip.io import atomic_path, write_json

#: the columns that identify a paper row (the join key), in the order of paper_tables.csv
KEY_COLUMNS = ["table", "image_type", "model", "image_size", "labels", "label_type", "training_data",
               "validation_data", "task", "metric"]
#: every column of a headline.csv
HEADLINE_COLUMNS = KEY_COLUMNS + ["value", "ci_low", "ci_high", "seed_mean", "seed_std", "n_seeds", "ours_model",
                                  "data", "departures"]
DATA_VALUES = ("synthetic atlas", "DHARANI")
TABLES = ("I", "II", "III", "IV")
PAPER_DATA = "paper (DHARANI)"
#: the metrics the paper reports for classification (Tables I-III)
CLASSIFICATION_METRICS = ("precision_weighted", "recall_weighted", "f1_weighted")


class HeadlineError(ValueError):
    """A headline row or file does not follow the schema: the message names the file/field."""


# ------------------------------------------------------------------------------------------------ paper rows
def paper_tables(path: str | os.PathLike | None = None) -> pd.DataFrame:
    """The paper's Tables I-IV in long form (``cytoclip/resources/paper_tables.csv`` by default): columns
    :data:`KEY_COLUMNS` + ``value``; all keys are strings, ``value`` is a float."""
    from importlib import resources

    if path is None:
        with resources.as_file(resources.files("cytoclip") / "resources" / "paper_tables.csv") as p:
            df = pd.read_csv(p, dtype=str, keep_default_na=False)
        path = "cytoclip/resources/paper_tables.csv"
    else:
        if not Path(path).is_file():
            raise FileNotFoundError(f"{path}: paper tables CSV not found")
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [c for c in KEY_COLUMNS + ["value"] if c not in df.columns]
    if missing:
        raise HeadlineError(f"{path}: missing column(s) {missing}")
    try:
        df["value"] = df["value"].astype(float)
    except ValueError as exc:
        raise HeadlineError(f"{path}: column 'value' must be numeric ({exc})") from None
    return df


def paper_key(table: str, paper: pd.DataFrame | None = None, **filters: str) -> dict[str, str]:
    """The key columns (without ``metric``) of the paper row(s) matching ``table`` and ``filters``.

    ``filters`` are exact column values, e.g. ``paper_key("I", model="CytoCLIP (CLIP)", image_size="336",
    label_type="single")``. Raises :class:`HeadlineError` when nothing matches or the match is ambiguous (several
    rows that differ in a key column), so a notebook cannot silently place a number beside the wrong row.
    """
    paper = paper_tables() if paper is None else paper
    unknown = set(filters) - set(KEY_COLUMNS)
    if unknown:
        raise HeadlineError(f"paper_key: unknown column(s) {sorted(unknown)}; expected some of {KEY_COLUMNS}")
    rows = paper[paper["table"] == str(table)]
    for col, val in filters.items():
        rows = rows[rows[col] == str(val)]
    if rows.empty:
        raise HeadlineError(f"paper_key: no row of Table {table} in paper_tables.csv matches {filters}")
    key_cols = [c for c in KEY_COLUMNS if c != "metric"]
    distinct = rows[key_cols].drop_duplicates()
    if len(distinct) > 1:
        varying = [c for c in key_cols if distinct[c].nunique() > 1]
        raise HeadlineError(f"paper_key: Table {table} rows matching {filters} differ in {varying}; "
                            "add those columns to the filter")
    return {c: str(distinct.iloc[0][c]) for c in key_cols}


# ------------------------------------------------------------------------------------------------ our rows
def _fmt_key(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def headline_row(key: Mapping[str, Any], metric: str, value: float, ci: Mapping[str, float] | Sequence | None = None,
                 ours_model: str = "", data: str = "synthetic atlas", departures: str = "",
                 seeds: Mapping[str, float] | None = None) -> dict[str, Any]:
    """One headline row: the paper key (``table`` ... ``task``), ``metric``, our ``value`` and its interval.

    ``ci`` is a :func:`cytoclip.metrics.bootstrap_ci` dict (``low``/``high``) or a ``(low, high)`` pair;
    ``departures`` the experiment's departures from the paper's protocol
    (:func:`cytoclip.protocol.departure_note`); ``seeds`` a ``{"mean", "std", "n"}`` over run seeds.
    """
    if "table" not in key or str(key["table"]) not in TABLES:
        raise HeadlineError(f"headline key: field 'table' must be one of {TABLES}, got {key.get('table')!r}")
    if data not in DATA_VALUES:
        raise HeadlineError(f"headline data: expected one of {DATA_VALUES}, got {data!r}")
    row = {c: _fmt_key(key.get(c, "")) for c in KEY_COLUMNS if c != "metric"}
    row["metric"] = str(metric)
    row["value"] = float(value) if value is not None else float("nan")
    if ci is None:
        low = high = float("nan")
    elif isinstance(ci, Mapping):
        low, high = float(ci["low"]), float(ci["high"])
    else:
        low, high = (float(x) for x in ci)
    seeds = seeds or {}
    row.update(ci_low=low, ci_high=high, seed_mean=float(seeds.get("mean", float("nan"))),
               seed_std=float(seeds.get("std", float("nan"))), n_seeds=int(seeds.get("n", 1)),
               ours_model=str(ours_model), data=data, departures=str(departures))
    return row


def classification_rows(key: Mapping[str, Any], summary: Mapping[str, Any], ours_model: str, data: str,
                        metrics: Iterable[str] = CLASSIFICATION_METRICS, departures: str = "",
                        seeds: Mapping[str, Mapping[str, float]] | None = None) -> list[dict[str, Any]]:
    """Headline rows for the weighted P/R/F1 of a classification summary (``results["classification"]`` of
    :func:`cytoclip.evaluate.evaluate`); ``seeds``: metric -> mean/std/n over run seeds."""
    rows = []
    for m in metrics:
        if m not in summary:
            raise HeadlineError(f"classification summary: missing metric {m!r}; has {sorted(summary)}")
        rows.append(headline_row(key, m, summary[m], summary.get("ci", {}).get(m), ours_model, data, departures,
                                 (seeds or {}).get(m)))
    return rows


def retrieval_rows(key: Mapping[str, Any], retrieval: Mapping[str, Any], ours_model: str, data: str,
                   departures: str = "") -> list[dict[str, Any]]:
    """Headline rows (Table IV) for the paper's Recall@K of every task of ``results["retrieval"]``; tasks an
    image-only model cannot do are left out."""
    rows = []
    for task in ("image_to_image", "text_to_image", "image_to_text"):
        res = retrieval.get(task)
        if not res:
            continue
        for k in retrieval.get("ks", (1, 5, 10)):
            m = f"recall_at_{k}"
            rows.append(headline_row({**key, "task": task.replace("_", "-")}, m, res[m], res.get("ci", {}).get(m),
                                     ours_model, data, departures))
    return rows


def headline_frame(rows: Iterable[Mapping[str, Any]] | pd.DataFrame, source: str = "headline") -> pd.DataFrame:
    """Rows as a DataFrame in the schema (:data:`HEADLINE_COLUMNS`), validated; ``source`` names it in errors."""
    frame = pd.DataFrame(list(rows) if not isinstance(rows, pd.DataFrame) else rows)
    if frame.empty:
        return pd.DataFrame(columns=HEADLINE_COLUMNS)
    missing = [c for c in HEADLINE_COLUMNS if c not in frame.columns]
    if missing:
        raise HeadlineError(f"{source}: missing column(s) {missing}; expected {HEADLINE_COLUMNS}")
    frame = frame[HEADLINE_COLUMNS].copy()
    for c in KEY_COLUMNS + ["ours_model", "data", "departures"]:
        frame[c] = frame[c].map(_fmt_key)
    frame["n_seeds"] = pd.to_numeric(frame["n_seeds"], errors="coerce").fillna(1).astype(int)
    for c in ("value", "ci_low", "ci_high", "seed_mean", "seed_std"):
        frame[c] = pd.to_numeric(frame[c], errors="coerce").astype(float)
    bad_table = sorted(set(frame["table"]) - set(TABLES))
    if bad_table:
        raise HeadlineError(f"{source}: column 'table' has {bad_table}; expected {TABLES}")
    bad_data = sorted(set(frame["data"]) - set(DATA_VALUES))
    if bad_data:
        raise HeadlineError(f"{source}: column 'data' has {bad_data}; expected {DATA_VALUES}")
    return frame.reset_index(drop=True)


def write_results(output_dir: str | os.PathLike, results: Mapping[str, Any],
                  headline: Iterable[Mapping[str, Any]] | pd.DataFrame) -> tuple[Path, Path]:
    """Write ``results.json`` (all numbers, JSON-safe) and ``headline.csv`` (validated) into ``output_dir``."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    frame = headline_frame(headline, source=str(out / "headline.csv"))
    write_json(out / "results.json", to_jsonable(results))
    with atomic_path(out / "headline.csv") as tmp:
        frame.to_csv(tmp, index=False)
    return out / "results.json", out / "headline.csv"


def summary_frame(summary: Mapping[str, Any], over_seeds: Mapping[str, Mapping[str, float]] | None = None,
                  metrics: Sequence[str] = ("precision_weighted", "recall_weighted", "f1_weighted",
                                            "precision_macro", "recall_macro", "f1_macro", "accuracy", "hit_rate")
                  ) -> pd.DataFrame:
    """A classification summary as a small table: one row per metric with its 95 % interval and, over several
    run seeds, mean ± std."""
    rows = []
    for m in metrics:
        if m not in summary:
            continue
        ci = summary.get("ci", {}).get(m, {})
        row = {"metric": m, "value": round(float(summary[m]), 3),
               "95% interval": f"[{ci.get('low', float('nan')):.3f}, {ci.get('high', float('nan')):.3f}]"}
        if over_seeds and m in over_seeds:
            row["over seeds"] = f"{over_seeds[m]['mean']:.3f} ± {over_seeds[m]['std']:.3f} (n={over_seeds[m]['n']})"
        rows.append(row)
    return pd.DataFrame(rows)


def records_frame(records: Sequence[Mapping[str, Any]] | None) -> pd.DataFrame:
    """A list of records (as stored in ``results.json``) as a DataFrame."""
    return pd.DataFrame(list(records or []))


def to_jsonable(obj: Any) -> Any:
    """Numbers, arrays and DataFrames as plain JSON values (NaN -> None; DataFrame -> list of records)."""
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, pd.DataFrame):
        return [to_jsonable(r) for r in obj.to_dict(orient="records")]
    if isinstance(obj, pd.Series):
        return to_jsonable(obj.to_dict())
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, (list, tuple, set)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating, float)):
        return None if math.isnan(float(obj)) else float(obj)
    if isinstance(obj, (np.bool_,)):
        return bool(obj)
    if isinstance(obj, Path):
        return str(obj)
    return obj


# ------------------------------------------------------------------------------------------------ the study
def read_headline(path: str | os.PathLike) -> pd.DataFrame:
    """One ``headline.csv``, validated (the error names the file)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: headline file not found")
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    return headline_frame(frame, source=str(path))


def collect_headlines(results_root: str | os.PathLike, exclude: Sequence[str] = ("summary",)) -> pd.DataFrame:
    """Every ``<results_root>/<experiment>/headline.csv`` stacked, with an ``experiment`` column first."""
    root = Path(results_root)
    frames = []
    for path in sorted(root.glob("*/headline.csv")):
        if path.parent.name in exclude:
            continue
        frame = read_headline(path)
        frame.insert(0, "experiment", path.parent.name)
        frames.append(frame)
    if not frames:
        return pd.DataFrame(columns=["experiment"] + HEADLINE_COLUMNS)
    return pd.concat(frames, ignore_index=True)


def beside_paper(ours: pd.DataFrame, paper: pd.DataFrame | None = None, all_paper_rows: bool = True) -> pd.DataFrame:
    """Our headline rows beside the paper's, joined on :data:`KEY_COLUMNS`.

    Columns: the key, ``experiment`` (when given), ``ours``, ``ci_low``, ``ci_high``, ``ours_model``, ``data``,
    then ``paper`` and ``paper_data``. A paper row nobody ran appears with empty ``ours`` (when
    ``all_paper_rows``); a number of ours without a paper counterpart appears with empty ``paper``.
    """
    paper = paper_tables() if paper is None else paper
    ours = ours.copy()
    if "value" in ours.columns:
        ours = ours.rename(columns={"value": "ours"})
    for c in KEY_COLUMNS:
        if c not in ours.columns:
            raise HeadlineError(f"ours: missing key column {c!r}")
        ours[c] = ours[c].map(_fmt_key)
    p = paper[KEY_COLUMNS + ["value"]].rename(columns={"value": "paper"}).copy()
    for c in KEY_COLUMNS:
        p[c] = p[c].map(_fmt_key)
    merged = pd.merge(ours, p, on=KEY_COLUMNS, how="outer" if all_paper_rows else "left")
    merged["paper_data"] = np.where(merged["paper"].notna(), PAPER_DATA, "")
    order = {t: i for i, t in enumerate(TABLES)}
    merged["_t"] = merged["table"].map(order).fillna(99)
    merged = merged.sort_values(["_t", "image_type", "model", "task", "metric"], kind="stable").drop(columns="_t")
    front = [c for c in ["experiment"] if c in merged.columns]
    cols = front + KEY_COLUMNS + ["ours", "ci_low", "ci_high", "seed_mean", "seed_std", "n_seeds", "ours_model",
                                  "data", "departures", "paper", "paper_data"]
    return merged[[c for c in cols if c in merged.columns]].reset_index(drop=True)


def paper_layout(table: pd.DataFrame, which: str, fold_shared: bool = True) -> pd.DataFrame:
    """One paper table laid out as the paper lays it out: one row per model (and task for Table IV), one column
    per metric with ours "0.842 [0.80, 0.88]" (± std over seeds when several) beside the paper's value.

    ``table`` is a :func:`beside_paper` table (rows of any tables; only ``which`` is kept). With ``fold_shared``,
    a row-key column that holds one value on every row (the validation data of Table IV, say) is dropped from
    the columns and kept in ``frame.attrs["shared"]`` ({column: value}) for the caption: the table then fits a
    page's width.
    """
    sub = table[table["table"] == which].copy()
    if sub.empty:
        return pd.DataFrame()

    def cell(row: pd.Series) -> str:
        if pd.isna(row["ours"]):
            return ""
        # the interval to two decimals: its width is what a reader compares, and the column stays narrow
        text = f"{row['ours']:.3f} [{row['ci_low']:.2f}, {row['ci_high']:.2f}]"
        if int(row.get("n_seeds", 1) or 1) > 1 and pd.notna(row.get("seed_std")):
            text += f" ({row['seed_mean']:.3f} ± {row['seed_std']:.3f}, {int(row['n_seeds'])} seeds)"
        return text

    sub["ours_cell"] = sub.apply(cell, axis=1)
    rows = ["image_type", "model", "image_size", "label_type", "training_data", "validation_data", "task"]
    rows = [c for c in rows if sub[c].astype(str).str.len().gt(0).any()]
    short = {"precision_weighted": "P", "recall_weighted": "R", "f1_weighted": "F1",
             "recall_at_1": "R@1", "recall_at_5": "R@5", "recall_at_10": "R@10"}
    sub = sub[sub["metric"].isin(short)]
    out = sub.pivot_table(index=rows, columns="metric", values=["ours_cell", "paper"], aggfunc="first", sort=False)
    cols = []
    for m in short:
        if ("ours_cell", m) in out.columns:
            cols += [("ours_cell", m), ("paper", m)]
    out = out[cols]
    out.columns = [f"{short[m]} ours" if kind == "ours_cell" else f"{short[m]} paper" for kind, m in cols]
    for c in out.columns:
        if c.endswith("paper"):
            out[c] = out[c].map(lambda v: "" if pd.isna(v) else f"{v:.3f}")
    out = out.reset_index().fillna("")
    shared = {}
    if fold_shared and len(out) > 1:
        for c in rows:
            if out[c].astype(str).nunique() == 1:
                shared[c] = str(out[c].iloc[0])
        out = out.drop(columns=list(shared))
    out.attrs["shared"] = shared
    return out


def table_html(frame: pd.DataFrame) -> str:
    """A table as the book shows it (a :func:`paper_layout` frame, or any other): each interval (and mean ± std) on its own smaller line
    under our value so the columns stay narrow, and the folded shared columns as the caption."""
    interval = re.compile(r"^(-?[0-9.]+) (\[.*)$")

    def cell(v: Any) -> str:
        text = html.escape(str(v))
        m = interval.match(text)
        return f"{m.group(1)}<br><small>{m.group(2)}</small>" if m else text

    shared = frame.attrs.get("shared") or {}
    caption = "; ".join(f"{k.replace('_', ' ')}: {html.escape(v)}" for k, v in shared.items())
    body = frame.copy()
    for c in body.columns:
        body[c] = body[c].map(cell)
    body.columns = [html.escape(str(c).replace("_", " ")) for c in body.columns]
    with pd.option_context("display.max_colwidth", None):  # a reason or a caption is shown whole
        table = body.to_html(index=False, escape=False, na_rep="")
    if caption:
        table = table.replace(">\n  <thead>", f">\n  <caption>All rows: {caption}</caption>\n  <thead>", 1)
    return table


#: the metric that says the most about a row, per paper table (the one a page's opening lines quote)
KEY_METRIC = {"I": "f1_weighted", "II": "f1_weighted", "III": "f1_weighted", "IV": "recall_at_5"}


def at_a_glance(headline: pd.DataFrame, paper: pd.DataFrame | None = None) -> list[str]:
    """What a page found, one markdown line per row of its headline: the row's key metric
    (:data:`KEY_METRIC`), ours with its interval (and mean ± std over seeds) beside the paper's value."""
    if headline is None or headline.empty:
        return []
    table = beside_paper(headline, paper, all_paper_rows=False)
    names = {"f1_weighted": "weighted F1", "recall_at_5": "R@5"}
    lines = []
    for _, r in table.iterrows():
        if r["metric"] != KEY_METRIC.get(str(r["table"])) or pd.isna(r["ours"]):
            continue
        what = ", ".join(str(r[c]) for c in ("model", "image_type", "label_type", "task") if str(r[c]).strip()
                         and str(r[c]) != "single")
        if str(r.get("training_data", "")).strip() and str(r["table"]) == "III":
            what += f", {r['training_data']} → {r['validation_data']}"
        text = f"Table {r['table']}, {what}: {names[r['metric']]} **{r['ours']:.3f}**"
        if pd.notna(r["ci_low"]):
            text += f" [{r['ci_low']:.3f}, {r['ci_high']:.3f}]"
        if int(r.get("n_seeds", 1) or 1) > 1 and pd.notna(r.get("seed_std")):
            text += f", {r['seed_mean']:.3f} ± {r['seed_std']:.3f} over {int(r['n_seeds'])} seeds"
        text += f" (paper, DHARANI: {r['paper']:.3f})" if pd.notna(r["paper"]) else ""
        lines.append(text)
    return lines


def verdict(ours: float, low: float, high: float, paper: float, tolerance: float = 0.05) -> str:
    """How our number relates to the paper's: ``"agrees"`` (the paper's value lies inside our interval, or
    within ``tolerance`` when we have no interval), ``"higher"``, ``"lower"``, or ``"no paper number"`` /
    ``"not run"`` when a side is missing."""
    if paper is None or pd.isna(paper):
        return "no paper number"
    if ours is None or pd.isna(ours):
        return "not run"
    if not (pd.isna(low) or pd.isna(high)):
        if low - 1e-12 <= paper <= high + 1e-12:
            return "agrees"
    elif abs(ours - paper) <= tolerance:
        return "agrees"
    return "higher" if ours > paper else "lower"


def add_verdicts(table: pd.DataFrame, tolerance: float = 0.05) -> pd.DataFrame:
    """:func:`beside_paper` output plus ``difference`` (ours - paper) and ``verdict`` (see :func:`verdict`)."""
    out = table.copy()
    out["difference"] = out["ours"] - out["paper"]
    out["verdict"] = [verdict(o, lo, hi, p, tolerance)
                      for o, lo, hi, p in zip(out["ours"], out["ci_low"], out["ci_high"], out["paper"])]
    return out


def summary_statements(table: pd.DataFrame) -> list[str]:
    """Plain-language statements computed from an :func:`add_verdicts` table (no hand-written numbers).

    One statement per paper table on how many comparable numbers agree / are higher / lower, and for Table I the
    ordering question the paper answers (do the trained CytoCLIP rows beat the zero-shot base rows?).
    """
    lines: list[str] = []
    for t in TABLES:
        sub = table[table["table"] == t]
        if sub.empty:
            continue
        comparable = sub[sub["verdict"].isin(["agrees", "higher", "lower"])]
        not_run = int((sub["verdict"] == "not run").sum())
        data = sorted(set(sub["data"].dropna()) - {""})
        label = f" ({', '.join(data)})" if data else ""
        if comparable.empty:
            lines.append(f"Table {t}: no number of ours{label} has a paper counterpart"
                         + (f"; {not_run} paper numbers were not run." if not_run else "."))
            continue
        counts = comparable["verdict"].value_counts()
        lines.append(f"Table {t}: of {len(comparable)} numbers of ours{label} with a paper counterpart, "
                     f"{counts.get('agrees', 0)} agree (the paper's value inside our 95 % interval), "
                     f"{counts.get('higher', 0)} are higher and {counts.get('lower', 0)} lower; median difference "
                     f"(ours - paper) {np.nanmedian(comparable['difference']):+.3f}"
                     + (f"; {not_run} paper numbers were not run." if not_run else "."))
    t1 = table[(table["table"] == "I") & (table["metric"] == "f1_weighted")]
    if not t1.empty:
        base = t1[t1["model"].str.contains("base", na=False)]
        trained = t1[t1["model"].str.startswith("CytoCLIP", na=False)]
        for side, col in (("ours", "ours"), ("the paper", "paper")):
            b, tr = base[col].dropna(), trained[col].dropna()
            if len(b) and len(tr):
                holds = tr.min() > b.max()
                lines.append(f"Table I, {side}: every trained CytoCLIP row {'beats' if holds else 'does not beat'} "
                             f"every zero-shot base row in weighted F1 (trained {tr.min():.3f}-{tr.max():.3f}, "
                             f"base {b.min():.3f}-{b.max():.3f}).")
    return lines


__all__ = ["KEY_COLUMNS", "HEADLINE_COLUMNS", "HeadlineError", "paper_tables", "paper_key", "headline_row",
           "classification_rows", "retrieval_rows", "headline_frame", "summary_frame", "records_frame", "paper_layout", "table_html", "write_results", "to_jsonable", "read_headline",
           "collect_headlines", "beside_paper", "at_a_glance", "KEY_METRIC", "verdict", "add_verdicts", "summary_statements"]
