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
image_size = 64
image_type = "square224"
planes = ["sagittal"]
split = "sections"
prompt = "{}"
base_models = {"CLIP (base)": "hf:openai/clip-vit-large-patch14",
               "CLIP 336 (base)": "hf:openai/clip-vit-large-patch14-336",
               "BiomedCLIP (base)": "open_clip:hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224",
               "UNI": "uni:hf-hub:MahmoodLab/UNI", "CONCH": "conch:hf-hub:MahmoodLab/CONCH"}
embedding_method = "umap"
n_boot = 500
device = None
profile = "demo"
experiment = "zero_shot"
output_dir = "book/results/zero_shot"

# %% [markdown]
# # Zero-shot baselines (Table I, base rows)
#
# The paper's base rows score CLIP ViT-L/14-336 and BiomedCLIP *without training*, naming each validation image by
# the most similar region name. Those models need pretrained weights on disk (`base_models`: a hub id in an
# offline cache or a local path); a model whose weights are absent is listed as **not run** with the loader's own
# message. On the CPU default an **untrained tiny CLIP** stands in: it knows nothing about images or names, so it
# measures the chance level of this evaluation, not what pretrained CLIP would do.

# %% tags=["hide-input"]
import pandas as pd
from IPython.display import Markdown, display

from cytoclip import report
from cytoclip import workflow as wf
from cytoclip.evaluate import evaluate
from cytoclip.models import create_model
from cytoclip.models.zoo import describe_model
from cytoclip.page import Page

page = Page.open(globals())
device = page.device
data = page.study_data(["regions"])
BASES = [("CLIP (base, zero-shot)", base_models["CLIP 336 (base)"], "336", "square336"),
         ("BiomedCLIP (base, zero-shot)", base_models["BiomedCLIP (base)"], "224", "square224")]
rows, not_run = [], []
for paper_name, spec, size, itype in BASES:
    exp_data = wf.experiment_dataset(data["regions"], itype, planes=planes, split=split, split_seed=split_seed)
    info = describe_model(spec)
    net, reason = wf.try_model(spec, device=device) if info["available"] else (None, info["reason"])
    if net is None:
        not_run.append({"model": paper_name, "spec": spec, "reason": reason})
        continue
    res = evaluate(net, exp_data, page.output_dir / paper_name.split()[0], seed=seed, prompt=prompt, n_boot=n_boot,
                   embedding_method=embedding_method)
    rows.append({"model": paper_name, "spec": spec, **{m: res["classification"][m]
                                                       for m in report.CLASSIFICATION_METRICS}})
    page.headline += report.classification_rows(report.paper_key("I", model=paper_name, image_size=size),
                                                res["classification"], ours_model=f"{spec} (pretrained, zero-shot)",
                                                data=page.data)
display(Markdown("**Not run** (weights absent; the reason is the loader's message):"))
display(pd.DataFrame(not_run, columns=["model", "spec", "reason"]))
page.results["not_run"] = not_run; page.results["pretrained"] = rows

# %% [markdown]
# ## The untrained stand-in and the chance level
#
# The next number is **not** a measurement of CLIP or BiomedCLIP: it is an untrained tiny CLIP of the CPU default,
# scored the same way. It stands beside the paper's base rows only to show the chance level of this task.

# %% tags=["hide-input"]
exp_data = wf.experiment_dataset(data["regions"], image_type, planes=planes, split=split, split_seed=split_seed)
stand_in = create_model("tiny", device=device, pretrained=False, image_size=image_size, seed=seed)
res = evaluate(stand_in, exp_data, page.output_dir / "stand_in", seed=seed, prompt=prompt, n_boot=n_boot,
               embedding_method=embedding_method)
c = res["classification"]
chance = 1.0 / c["n_classes"]
display(pd.DataFrame([{"model": "untrained tiny CLIP (chance-level stand-in)", "accuracy": c["accuracy"],
                       "f1_weighted": c["f1_weighted"], "chance 1/n_labels": chance, "n_labels": c["n_classes"],
                       "n_images": c["n"]}]).round(4))
display(Markdown(f"The stand-in's accuracy ({c['accuracy']:.3f}) is to be read against the chance level "
                 f"1/{c['n_classes']} = {chance:.3f}; it says nothing about pretrained CLIP or BiomedCLIP."))
for paper_name, spec, size, itype in BASES:
    if any(r["model"] == paper_name for r in not_run):
        page.headline += report.classification_rows(
            report.paper_key("I", model=paper_name, image_size=size), c,
            ours_model=f"untrained tiny CLIP, {image_size} px (chance-level stand-in: {paper_name} not run)",
            data=page.data, departures="model: untrained tiny CLIP stands in for the pretrained model")
page.results["stand_in"] = c; page.results["chance"] = chance

# %% tags=["remove-input"]
paths = page.finish()
