# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% tags=["parameters", "hide-cell"]
# Parameters (papermill). The summary reads book/results/*/headline.csv only.
profile = "demo"
experiment = "summary"
output_dir = "book/results/summary"

# %% [markdown]
# # Summary: this study beside the paper
#
# Every headline number the experiments wrote (`book/results/*/headline.csv`) is placed beside the paper's number
# for the same row of Tables I-IV. Ours carry their 95 % bootstrap interval (and mean ± std when several run seeds
# were trained), say what ran and on which data, and where the run **departs from the paper's protocol**; the
# paper's column is the DHARANI number from the paper. A row *agrees* when the paper's value lies inside our
# interval. The statements below are computed from the table, not written by hand.

# %% tags=["hide-input"]
import pandas as pd
from IPython.display import HTML, Markdown, display

from cytoclip import plots, report
from cytoclip.io import read_json
from cytoclip.page import Page

page = Page.open(globals())
results_root = page.output_dir.parent
ours = report.collect_headlines(results_root)
table = report.add_verdicts(report.beside_paper(ours))
data_labels = sorted(set(ours["data"]) - {""})
display(Markdown(f"Our numbers come from: **{', '.join(data_labels) or 'no experiment yet'}**."))
for t in report.TABLES:
    sub = table[table["table"] == t]
    if len(sub):
        display(Markdown(f"**Table {t}: ours ({', '.join(data_labels)}) beside the paper (DHARANI)**"))
        display(HTML(report.paper_layout(sub, t).to_html(index=False, na_rep="")))
        notes = sorted(set(sub["departures"].dropna().astype(str)) - {""})
        if notes:
            display(Markdown("Departs from the paper: " + " | ".join(notes) + "."))

# %% [markdown]
# ## What agrees and what does not

# %% tags=["hide-input"]
statements = report.summary_statements(table)
display(Markdown("\n".join(f"- {s}" for s in statements) or "No comparable numbers yet."))
not_run = []
for path in sorted(results_root.glob("*/results.json")):
    for row in read_json(path).get("not_run", []) or []:
        not_run.append({"experiment": path.parent.name, **row})
display(Markdown("**Models not run** (weights absent), with the loader's reason:"))
display(HTML(pd.DataFrame(not_run).to_html(index=False)) if not_run else Markdown("none"))
fig = plots.ours_vs_paper_figure(table, ours_label=f"ours ({', '.join(data_labels)})",
                                 synthetic="synthetic atlas" in data_labels)
plots.save_figure(fig, page.output_dir / "ours_vs_paper.png"); plots.show(fig)
page.results.update(data=data_labels, statements=statements, table=table, not_run=not_run)
page.headline = []
paths = page.finish()
