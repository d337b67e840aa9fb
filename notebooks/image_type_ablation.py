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
planes = ["sagittal"]
targets = "pairs"
augment = True
epochs = 10
max_steps = None
batch_size = 64
lr = 5.0e-4
weight_decay = 0.2
warmup_steps = 20
num_workers = 2
prompt = "{}"
embedding_method = "umap"
n_boot = 500
device = None
split = "sections"
profile = "demo"
experiment = "image_type_ablation"
output_dir = "book/results/image_type_ablation"

# %% [markdown]
# # Image types: ExactBBox, ExactBBox + mask, SquareBBox (Table II)
#
# The paper compares three ways of cutting a region out of a section on a subset of about 60 regions: the tight
# box (ExactBBox), the tight box with everything outside the region blanked (ExactBBox + mask), and a square box
# that keeps the surrounding tissue (SquareBBox). Each image type is trained here with the same budget on the same
# regions and the same sections, then scored on the validation sections by `cytoclip.evaluate.evaluate`.

# %% tags=["hide-input"]
from IPython.display import Markdown, display

from cytoclip import plots, report
from cytoclip import workflow as wf
from cytoclip.evaluate import evaluate
from cytoclip.page import Page

page = Page.open(globals())
data = page.study_data(["regions"])

# %% tags=["hide-input"]
TYPES = {"exact": "ExactBBox", "exact_mask": "ExactBBox with mask", "square224": "SquareBBox"}
exp_data = wf.experiment_dataset(data["regions"], list(TYPES), planes=planes, split=split, split_seed=split_seed)
subset = wf.subset_dataset(exp_data, n_regions=60, image_types=list(TYPES))
table = []
for itype, paper_name in TYPES.items():
    run = page.train(subset, f"{experiment}-{itype}", itype)
    res = evaluate(run, subset, page.output_dir / itype, prompt=prompt, n_boot=n_boot, device=page.device,
                   batch_size=batch_size, embedding_method=embedding_method, figures=False)
    c = res["classification"]
    page.headline += report.classification_rows(report.paper_key("II", image_type=paper_name), c,
                                                ours_model=f"{model}, {image_size} px, {c['n_classes']} regions",
                                                data=page.data, departures=page.departure_note)
    table.append({"image_type": paper_name, **{m: c[m] for m in report.CLASSIFICATION_METRICS}, "n_val": c["n"]})
    page.results[itype] = c
page.results["table"] = table
beside = report.beside_paper(report.headline_frame(page.headline), all_paper_rows=False)
display(Markdown(f"**Table II: ours ({page.data}) beside the paper (DHARANI)**"))
display(beside[["image_type", "metric", "ours", "ci_low", "ci_high", "paper"]].round(3))
fig = plots.beside_paper_figure(beside, "image_type", ours_label=f"ours ({page.data})",
                                title="Image types (Table II)", synthetic=page.synthetic)
plots.save_figure(fig, page.output_dir / "image_types_f1.png"); plots.show(fig)

# %% tags=["remove-input"]
paths = page.finish()
