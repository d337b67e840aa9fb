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

from cytoclip import plots, protocol, report
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
        display(HTML(report.table_html(report.paper_layout(sub, t))))
        pages = [results_root / e / "results.json" for e in sorted(set(sub["experiment"].dropna()))]
        notes = protocol.departure_summary(d for p in pages if p.is_file() for d in read_json(p).get("departures") or [])
        if notes:
            display(Markdown("Departs from the paper:\n" + "\n".join(f"- {n}" for n in notes)))

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

# %% [markdown]
# ## Beyond the paper: loss targets and prompts
#
# The paper trains with pair targets and bare region names only; the `objectives` page tries the alternatives
# over several seeds. Its table (mean ± std over seeds; no paper column: the paper has no such number):

# %% tags=["hide-input"]
objectives = results_root / "objectives" / "results.json"
if objectives.is_file():
    res = read_json(objectives)
    fn = res.get("batch_false_negatives") or {}
    if fn:
        display(Markdown(f"{fn['share_of_batches']:.0%} of training batches hold some region twice "
                         f"({fn['per_batch']:.1f} same-region pairs per batch of {fn['batch_size']})."))
    display(HTML(pd.DataFrame(res.get("summary") or []).to_html(index=False)))
else:
    display(Markdown("The `objectives` experiment has not run."))

# %% [markdown]
# ## What each experiment cost
#
# Wall time of each experiment in the last run of this profile (`book/results/study_log.json`), on the machine
# named in the reproducibility appendix.

# %% tags=["hide-input"]
log_path = results_root / "study_log.json"
log = read_json(log_path) if log_path.is_file() else {}
times = pd.DataFrame([{"experiment": e, "status": r["status"], "minutes": round(r["seconds"] / 60, 1)}
                      for e, r in (log.get("runtimes") or {}).items()])
display(HTML(times.to_html(index=False)) if len(times) else Markdown("No study log yet (run `cytoclip study run`)."))
if len(times):
    display(Markdown(f"Total: **{times['minutes'].sum():.1f} min** ({log.get('cpus')} CPU cores"
                     + (f", GPU {log['cuda']}" if log.get("cuda") else ", no GPU") + ")."))

# %% tags=["remove-input"]
page.headline = []
paths = page.finish()
