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
# Parameters (papermill): what _config.yml resolves for `experiment` under `profile` (a test checks it); the
# runner passes the resolved values of each experiment.
seed = 0
atlas_seed = 0
split_seed = 0
source = "synthetic"
atlas = None
atlas_profile = "demo"
data_dir = "data"
runs_dir = "runs"
model = "tiny"
image_size = 64
image_type = "square224"
targets = "pairs"
augment = True
epochs = 30
max_steps = None
batch_size = 32
lr = 5.0e-4
weight_decay = 0.2
warmup_steps = 20
num_workers = 2
max_tiles_per_section = 60
prompt = "{}"
embedding_method = "umap"
n_boot = 500
device = None
planes = ["sagittal"]
split = "cross_age"
profile = "demo"
experiment = "cross_age"
output_dir = "book/results/cross_age"

# %% [markdown]
# # Across ages and across planes (Table III)
#
# **Across ages** (`split = "cross_age"`): a model trained on the 24 GW specimen is validated on the 21 GW specimen
# (both sagittal). **Across planes** (`split = "cross_plane"`): whole-region images and tiles are each trained on
# the sagittal specimens and validated on the coronal specimen. For contrast, the same run is also scored on
# held-out *sections* of its training distribution (20 %, never trained on): the within-distribution number
# beside the cross one.

# %% tags=["hide-input"]
import pandas as pd
from IPython.display import Markdown, display

from cytoclip import report
from cytoclip import workflow as wf
from cytoclip.evaluate import evaluate
from cytoclip.page import Page

page = Page.open(globals())
# what Table III reports for each scheme: (dataset kind, image type, paper's image type, paper's key)
SETS = {"cross_age": [("regions", image_type, "Complete region", {"training_data": "24 GW (sagittal)"})],
        "cross_plane": [("regions", image_type, "Complete region", {"validation_data": "22 GW (coronal)"}),
                        ("tiles", "tile", "High-res tiles", {"validation_data": "22 GW (coronal)"})]}[split]
data = page.study_data(sorted({k for k, *_ in SETS}))

# %% tags=["hide-input"]
table = []
for kind, itype, paper_type, key_filter in SETS:
    exp_data = wf.experiment_dataset(data[kind], itype, planes=planes, split=split, split_seed=split_seed)
    run = page.train(exp_data, f"{experiment}-{kind}", itype)
    for val_split, what in (("val", "cross"), ("val_within", "within")):
        res = evaluate(run, exp_data, page.output_dir / f"{kind}-{what}", val_split=val_split, prompt=prompt,
                       n_boot=n_boot, device=page.device, batch_size=batch_size, embedding_method=embedding_method,
                       figures=what == "cross")
        c = res["classification"]
        table.append({"image_type": paper_type, "validation": what,
                      "trained on": ", ".join(f"{a:g} GW" for a in res["training_data"]["ages_gw"]) + " ("
                      + ", ".join(res["training_data"]["planes"]) + ")",
                      "validated on": ", ".join(f"{a:g} GW" for a in res["validation_data"]["ages_gw"]) + " ("
                      + ", ".join(res["validation_data"]["planes"]) + ")",
                      "n_val": c["n"], **{m: round(c[m], 3) for m in report.CLASSIFICATION_METRICS}})
        page.results[f"{kind}_{what}"] = {**c, "training_data": res["training_data"],
                                          "validation_data": res["validation_data"]}
        if what == "cross":
            page.headline += report.classification_rows(
                report.paper_key("III", image_type=paper_type, **key_filter), c,
                ours_model=f"{model}, {image_size} px", data=page.data, departures=page.departure_note)
page.results["table"] = table
display(Markdown(f"**Cross- and within-distribution validation ({page.data})**"))
display(pd.DataFrame(table))
beside = report.beside_paper(report.headline_frame(page.headline), all_paper_rows=False)
display(Markdown(f"**Table III: ours ({page.data}, cross-distribution) beside the paper (DHARANI)**"))
display(beside[["image_type", "training_data", "validation_data", "metric", "ours", "ci_low", "ci_high", "paper"]]
        .round(3))

# %% tags=["remove-input"]
paths = page.finish()
