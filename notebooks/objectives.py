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
seeds = [0, 1]
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
prompt = "{}"
variants = [
    {"name": "pairs (the paper)"},
    {"name": "label-aware", "targets": "labels"},
    {"name": "ontology-weighted", "targets": "ontology"},
    {"name": "prompt: ontology path", "prompt": "ontology_path"},
    {"name": "prompt: sentence", "prompt": "a Nissl-stained section of the developing human brain showing the {}"},
]
embedding_method = "umap"
n_boot = 500
device = None
profile = "demo"
experiment = "objectives"
output_dir = "book/results/objectives"

# %% [markdown]
# # What the paper left open: the loss targets and the prompts
#
# The paper trains with CLIP's pair targets: image *i* matches caption *i* and every other caption of the batch
# is a negative. With region captions that are just the region's name, a batch of 64 images drawn from some 60
# regions often holds the same region twice, and the pair targets push those two images (and their identical
# captions) apart. This page trains the Table I setting (complete regions, SquareBBox) with the alternatives the
# paper did not test, each over several seeds, and reports mean ± std beside every seed's number:
#
# - **targets**: the paper's `pairs`; `labels` (every same-region pair of the batch is a positive, the
#   supervised-contrastive idea); `ontology` (soft positives weighted by the distance between regions in the
#   nomenclature tree, after CytoNet's distance-weighted contrastive loss) — see `cytoclip.loss`;
# - **prompts**: the bare region name (the paper), the name with its parent in the ontology ("Subiculum, part of
#   the hippocampal formation"), and a descriptive sentence. The training captions and the zero-shot class
#   texts follow the same prompt (`cytoclip.workflow.experiment_dataset(prompt=...)`).
#
# Each variant changes one thing from the paper's setting (the first row); everything else is the page's
# parameters.

# %% tags=["hide-input"]
import pandas as pd
from IPython.display import Image, Markdown, display

from cytoclip import plots
from cytoclip import workflow as wf
from cytoclip.evaluate import evaluate
from cytoclip.io import fingerprint
from cytoclip.loss import batch_false_negatives
from cytoclip.metrics import mean_std
from cytoclip.page import Page

page = Page.open(globals())
data = page.study_data(["regions"])

# %% [markdown]
# ## How often the paper's targets contradict the labels

# %% tags=["hide-input"]
base = wf.experiment_dataset(data["regions"], image_type, planes=planes, split=split, split_seed=split_seed)
train_labels = pd.read_parquet(base / "manifest.parquet").query("split == 'train'")["label"]
fn = batch_false_negatives(train_labels, min(batch_size, len(train_labels)), seed=seed)
display(Markdown(
    f"{len(train_labels)} training images of {fn['n_labels']} regions, batches of {fn['batch_size']}: "
    f"**{fn['share_of_batches']:.0%}** of batches hold some region twice, with {fn['per_batch']:.1f} same-region "
    "pairs per batch on average — each a negative under the paper's pair targets."))
page.results["batch_false_negatives"] = fn

# %% [markdown]
# ## Training every variant over the seeds

# %% tags=["hide-input"]
rows = []
for v in variants:
    v_targets, v_prompt = v.get("targets", targets), v.get("prompt", prompt)
    exp_data = wf.experiment_dataset(data["regions"], image_type, planes=planes, split=split, split_seed=split_seed,
                                     prompt=v_prompt)
    slug = f"{experiment}-{v_targets}-prompt{fingerprint(v_prompt)[:6]}"
    for s in wf.run_seeds(seed, seeds):
        run = page.train(exp_data, slug, image_type, seed=s, targets=v_targets, prompt=v_prompt)
        res = evaluate(run, exp_data, page.output_dir / slug / f"seed{s}", prompt=v_prompt, n_boot=n_boot,
                       device=page.device, atlas=data["atlas"], batch_size=batch_size,
                       embedding_method=embedding_method, figures=False)
        c = res["classification"]
        i2t = (res["retrieval"] or {}).get("image_to_text") or {}
        rows.append({"variant": v["name"], "targets": v_targets, "prompt": v_prompt, "seed": s, "run": str(run),
                     "f1_weighted": c["f1_weighted"], "f1_weighted_low": c["ci"]["f1_weighted"]["low"],
                     "f1_weighted_high": c["ci"]["f1_weighted"]["high"], "f1_macro": c["f1_macro"],
                     "accuracy": c["accuracy"], "i2t_recall_at_5": i2t.get("recall_at_5")})
per_seed = pd.DataFrame(rows)
page.results["per_seed"] = per_seed

# %% [markdown]
# ## Results

# %% tags=["hide-input"]
summary = []
for name, sub in per_seed.groupby("variant", sort=False):
    stats = mean_std(sub[["f1_weighted", "f1_macro", "accuracy"]].to_dict("records"))
    summary.append({"variant": name, "targets": sub["targets"].iloc[0], "prompt": sub["prompt"].iloc[0],
                    "seeds": len(sub),
                    **{f"{m} (mean ± std)": f"{stats[m]['mean']:.3f} ± {stats[m]['std']:.3f}"
                       for m in ("f1_weighted", "f1_macro", "accuracy")}})
    page.glance.append(f"{name}: weighted F1 **{stats['f1_weighted']['mean']:.3f} ± {stats['f1_weighted']['std']:.3f}**"
                       f" over {len(sub)} seeds")
summary = pd.DataFrame(summary)
page.results["summary"] = summary
display(summary)
fig = plots.seeds_figure(per_seed, "variant", "f1_weighted", "weighted F1 (zero-shot, validation sections)",
                         title="Loss targets and prompts over seeds", synthetic=page.synthetic)
plots.save_figure(fig, page.output_dir / "objectives.png")
display(Image(filename=str(page.output_dir / "objectives.png")))
display(Markdown("Each dot is one seed's run; the square is the mean ± std over seeds. A difference smaller than "
                 "the spread between seeds is not a difference this budget can show."))
per_seed.drop(columns=["run"]).round(3)

# %% tags=["remove-input"]
paths = page.finish()
display(Markdown(f"Results: `{paths[0]}`, `{paths[1]}`."))
