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
planes = ["sagittal"]
prompt = "{}"
base_models = {"CLIP (base)": "hf:openai/clip-vit-large-patch14",
               "CLIP 336 (base)": "hf:openai/clip-vit-large-patch14-336",
               "BiomedCLIP (base)": "open_clip:hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224",
               "UNI": "uni:hf-hub:MahmoodLab/UNI", "CONCH": "conch:hf-hub:MahmoodLab/CONCH"}
embedding_method = "umap"
n_boot = 500
device = None
runs_dir = "runs"
model = "tiny"
max_tiles_per_section = 60
profile = "demo"
experiment = "retrieval"
output_dir = "book/results/retrieval"

# %% [markdown]
# # Retrieval against CLIP, BiomedCLIP, CONCH and UNI (Table IV)
#
# As in the paper (after CONCH), the retrieval set is a seeded random sample of the validation images — 925
# whole-region images and 1237 tiles, or all of them when the validation split is smaller — and every image comes
# with its own caption. Three tasks: image-to-image (each image queries the others), text-to-image (each caption
# queries the images) and image-to-text (each image queries the captions). **Recall@K** is the paper's: the
# fraction of *all* relevant items found in the top K (it cannot exceed K / number of relevant items); the usual
# **hit@K** (at least one relevant item in the top K) stands beside it. UNI is image-only: its text tasks are "—".
# Base models whose weights are absent are listed as **not run**; the trained models are the study's own runs.
#
# The base models are the parameter `base_models` (name -> model spec; defaults in `_config.yml`). With the weights
# on disk, pass their paths, e.g. `papermill notebooks/retrieval.ipynb out.ipynb -y "base_models: {'CLIP (base)':
# 'hf:/models/clip-vit-large-patch14', 'BiomedCLIP (base)': 'open_clip:/models/biomedclip', UNI:
# 'uni:/models/uni/pytorch_model.bin', CONCH: 'conch:/models/conch/pytorch_model.bin'}"`; a name left out is
# listed as not run.

# %% tags=["hide-input"]
import pandas as pd
from IPython.display import Image, Markdown, display

from cytoclip import report
from cytoclip import workflow as wf
from cytoclip.evaluate import evaluate
from cytoclip.models.zoo import describe_model
from cytoclip.page import Page

page = Page.open(globals())
device = page.device
data = page.study_data(["regions", "tiles"])
# the same experiment datasets the training pages derived, so the validation images are the same
SETS = {"Complete region": wf.experiment_dataset(data["regions"], "square224", planes=planes, split="sections",
                                                 split_seed=split_seed),
        "High-res tiles": wf.experiment_dataset(data["tiles"], "tile", planes=planes, split="tiles",
                                                split_seed=split_seed)}
TRAINED = {"Complete region": {"CytoCLIP (CLIP)": "train_clip224", "CytoCLIP (BiomedCLIP)": "train_biomedclip224"},
           "High-res tiles": {"CytoCLIP (BiomedCLIP)": "train_tiles"}}
BASE_NAMES = ("CLIP (base)", "BiomedCLIP (base)", "UNI", "CONCH")
BASES = {name: base_models.get(name) for name in BASE_NAMES}  # a name not given: listed as not run

# %% tags=["hide-input"]
rows, not_run, example = [], [], None
for set_name, exp_data in SETS.items():
    candidates = [(name, spec, "pretrained, not trained") for name, spec in BASES.items()]
    candidates += [(name, wf.run_dir_for(runs_dir, profile, e, seed), f"run {e}") for name, e in TRAINED[set_name].items()]
    for paper_name, spec, what in candidates:
        if spec is None:
            not_run.append({"set": set_name, "model": paper_name, "spec": "", "reason": "not given in base_models"})
            continue
        info = describe_model(spec) if what.startswith("pretrained") else {"available": True}
        net, reason = wf.try_model(spec, device=device) if info["available"] else (None, info["reason"])
        if net is None:
            not_run.append({"set": set_name, "model": paper_name, "spec": str(spec), "reason": reason})
            continue
        target = spec if not what.startswith("pretrained") else net  # a run dir brings its own image type and seed
        out = page.output_dir / f"{set_name.split()[0].lower()}-{paper_name.replace(' ', '_')}"
        res = evaluate(target, exp_data, out, seed=seed, prompt=prompt, n_boot=n_boot, device=device,
                       embedding_method=embedding_method, errors=False)
        r = res["retrieval"]
        for task in ("image_to_image", "text_to_image", "image_to_text"):
            for k in r["ks"]:
                rows.append({"set": set_name, "model": paper_name, "task": task.replace("_", "-"), "K": k,
                             "recall (paper)": r[task][f"recall_at_{k}"] if r[task] else None,
                             "hit rate": r[task][f"hit_at_{k}"] if r[task] else None})
        page.headline += report.retrieval_rows(report.paper_key("IV", image_type=set_name, model=paper_name,
                                                                task="image-to-image") | {"task": ""}, r,
                                               ours_model=f"{model}, {what}" if not what.startswith("pretrained")
                                               else f"{spec} (pretrained)", data=page.data,
                                               departures=page.departure_note)
        if example is None and "retrieval_examples" in res["figures"]:
            example = out / res["figures"]["retrieval_examples"]
        page.results[f"{set_name}/{paper_name}"] = {"n_images": r["n_images"], "n_regions": r["n_regions"], **r}
page.results["not_run"] = not_run
display(Markdown("**Not run** (the reason is the loader's message; on the CPU default these pretrained models "
                 "are absent, so their rows stay empty; `cytoclip study run --profile paper --stand-ins` runs "
                 "random-weight stand-ins of them):"))
display(pd.DataFrame(not_run, columns=["set", "model", "spec", "reason"]))

# %% tags=["hide-input"]
table = pd.DataFrame(rows)
if len(table):
    for col in ("recall (paper)", "hit rate"):
        wide = table.pivot_table(index=["set", "model"], columns=["task", "K"], values=col, dropna=False)
        display(Markdown(f"**{col} ({page.data}); '—' = image-only model, no text tasks**"))
        display(wide.round(3).astype(object).where(wide.notna(), "—"))
if example is not None:
    display(Image(filename=str(example)))

# %% tags=["remove-input"]
paths = page.finish()
