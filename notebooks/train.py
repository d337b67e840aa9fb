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
seeds = None
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
dataset_kind = "regions"
label_type = "single"
planes = ["sagittal"]
split = "sections"
targets = "pairs"
augment = True
epochs = 10
max_steps = None
batch_size = 64
lr = 5.0e-4
weight_decay = 0.2
warmup_steps = 20
num_workers = 2
max_tiles_per_section = 60
prompt = "{}"
embedding_method = "umap"
n_boot = 500
device = None
profile = "demo"
experiment = "train_clip224"
output_dir = "book/results/train_clip224"
paper_model = "CytoCLIP (CLIP)"
paper_image_size = 224

# %% [markdown]
# # Training one CytoCLIP model
#
# This page trains one row of the paper's Table I with the parameters the study gives it, then evaluates it on the
# validation sections with `cytoclip.evaluate.evaluate` — the function behind `cytoclip evaluate`, so the command
# gives the same numbers for the same run: zero-shot classification with the region names (weighted and macro
# precision / recall / F1 with 95 % bootstrap intervals), the multi-region rule for the multi-region row, retrieval
# Recall@K, the confusion matrix, per-region F1, an embedding map, training curves and an error analysis. A finished
# run with the same configuration is reused; an interrupted one resumes from its last checkpoint.

# %% tags=["hide-input"]
from IPython.display import Image, Markdown, display

from cytoclip import plots, report
from cytoclip import workflow as wf
from cytoclip.evaluate import evaluate
from cytoclip.metrics import mean_std
from cytoclip.page import Page

page = Page.open(globals())
data = page.study_data([dataset_kind])

# %% [markdown]
# ## The experiment's data and training

# %% tags=["hide-input"]
exp_data = wf.experiment_dataset(data[dataset_kind], image_type, planes=planes, split=split, split_seed=split_seed,
                                 label_type=label_type)
seed_list = wf.run_seeds(seed, seeds)
runs = {s: page.train(exp_data, experiment, image_type, seed=s) for s in seed_list}
display(Markdown(f"Experiment dataset `{exp_data}`; run(s): " + ", ".join(f"`{r}`" for r in runs.values())))
first = runs[seed_list[0]]
if not wf.training_log(first).empty:
    fig = plots.training_curves_figure(first, synthetic=page.synthetic, title=f"Training curves: {experiment}")
    plots.save_figure(fig, page.output_dir / "training_curves.png"); plots.show(fig)

# %% [markdown]
# ## Validation

# %% tags=["hide-input"]
evaluations = {s: evaluate(r, exp_data, page.output_dir / f"seed{s}", prompt=prompt, n_boot=n_boot, device=page.device,
                           atlas=data["atlas"], batch_size=batch_size, embedding_method=embedding_method)
               for s, r in runs.items()}
res = evaluations[seed_list[0]]
c = res["classification"]
over_seeds = mean_std([e["classification"] for e in evaluations.values()])
display(Markdown(
    f"**{experiment}** ({page.data}, {label_type}-region labels, {res['validation_data']['n_images']} validation "
    f"images of {res['validation_data']['n_labels']} regions from specimens "
    f"{res['validation_data']['specimens']} ({', '.join(res['validation_data']['planes'])})): weighted F1 "
    f"**{c['f1_weighted']:.3f}** [{c['ci']['f1_weighted']['low']:.3f}, {c['ci']['f1_weighted']['high']:.3f}], "
    f"macro F1 {c['f1_macro']:.3f}" + (f"; over {len(runs)} seeds weighted F1 {over_seeds['f1_weighted']['mean']:.3f}"
                                        f" ± {over_seeds['f1_weighted']['std']:.3f}" if len(runs) > 1 else "")))
display(report.summary_frame(c, over_seeds if len(runs) > 1 else None))
key = report.paper_key("I", image_type="High-res tiles" if dataset_kind == "tiles" else "Complete region",
                       model=paper_model, image_size=str(paper_image_size), label_type=label_type)
page.headline += report.classification_rows(
    key, c, ours_model=f"{model} ({'trained from scratch' if str(model).startswith('tiny') else 'fine-tuned'}), "
    f"{image_size} px, {c['n_classes']} labels", data=page.data, departures=page.departure_note,
    seeds=over_seeds if len(runs) > 1 else None)
page.results.update(runs={s: str(r) for s, r in runs.items()}, dataset=str(exp_data),
                    evaluations={s: str(page.output_dir / f"seed{s}" / "results.json") for s in runs},
                    validation=c, over_seeds=over_seeds, training_data=res["training_data"],
                    validation_data=res["validation_data"], retrieval=res["retrieval"])
for name in ("confusion_matrix", "per_region_f1", "embeddings"):
    if name in res["figures"]:
        display(Image(filename=str(page.output_dir / f"seed{seed_list[0]}" / res["figures"][name])))

# %% [markdown]
# ## Error analysis
#
# How far apart in the nomenclature tree are the confused regions (2 hops = siblings), do the errors fall between
# regions that touch in the section, and which pairs are confused most?

# %% tags=["hide-input"]
errors = res["errors"]
if errors is None:
    display(Markdown("The error analysis is given for single-label runs."))
else:
    display(Markdown(f"Mean tree distance of an error: {errors['mean_tree_distance']}; errors between touching "
                     f"regions: {errors['by_adjacency']}"))
    display(report.records_frame(errors["confused_pairs"]).round(3))

# %% tags=["remove-input"]
paths = page.finish()
display(Markdown(f"Results: `{paths[0]}`, `{paths[1]}`."))
