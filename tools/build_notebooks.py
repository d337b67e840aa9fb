"""Write the study's notebooks (notebooks/*.ipynb) from the cell sources below, without outputs.

    python tools/build_notebooks.py          # rewrites notebooks/*.ipynb

Edit the cells here rather than in Jupyter, so the notebooks stay reviewable as code and are committed clean:
first cell tagged ``parameters`` (papermill), no outputs, kernelspec python3. The logic lives in ``cytoclip``
(``cytoclip.workflow``, ``cytoclip.report``, ``cytoclip.plots``); the notebooks orchestrate and explain.
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

ROOT = Path(__file__).resolve().parent.parent
NB_DIR = ROOT / "notebooks"

# Defaults of every notebook = the `defaults:` of _config.yml (the embedded default: the synthetic demo atlas).
COMMON_PARAMS = '''# Parameters (papermill). The runner (`cytoclip study run --profile P`) overrides them from _config.yml.
seed = 0
source = "synthetic"          # synthetic | dharani
atlas_root = None             # None: data/synthetic-<atlas_profile> (built if missing)
atlas_profile = "demo"
data_dir = "data"
runs_dir = "runs"
model = "tiny"
image_size = 96
image_type = "square224"
dataset = "regions"           # regions | tiles
split = "sections"            # sections | tiles | cross_age | cross_plane
targets = "pairs"             # pairs | labels | ontology
epochs = 10
batch_size = 64
lr = 5.0e-4
weight_decay = 0.1
warmup_steps = 20
num_workers = 2
max_tiles_per_section = 120
retrieval_size = 300
embedding_method = "umap"     # umap | pca (pca skips UMAP's compile time on the smoke profile)
n_boot = 500                  # bootstrap resamples behind every 95 % interval
device = None                 # None: cuda when available, else cpu
profile = "demo"
experiment = "{name}"
output_dir = "book/results/{name}"
'''

TRAIN_EXTRA = '''paper_model = "CytoCLIP (CLIP)"  # the paper's row this run stands beside (Table I)
paper_image_size = 224
multi_region = False          # True: the multi-region labels row (paper III-B)
reuse_run = None              # an experiment whose finished run is evaluated instead of training a new one
'''

SETUP = '''from pathlib import Path

import numpy as np
import pandas as pd
from IPython.display import Markdown, display

from cytoclip import plots, report
from cytoclip import workflow as wf
from cytoclip.atlas import Atlas
from cytoclip.models import create_model

out = Path(output_dir)
out.mkdir(parents=True, exist_ok=True)
device = device or wf.default_device()
data = wf.study_data(source, atlas_root, atlas_profile, data_dir, seed, kinds={kinds},
                     max_tiles_per_section=max_tiles_per_section)
LABEL = wf.data_label(data["atlas"])   # "synthetic atlas" or "DHARANI": every title and caption says which
SYN = LABEL == "synthetic atlas"
OURS = f"{{model}} ({{'trained from scratch' if str(model).startswith('tiny') else 'fine-tuned'}})"
results = {{"experiment": experiment, "profile": profile, "data": LABEL, "device": device}}
headline = []
print(LABEL, {{k: str(v) for k, v in data.items()}})
'''

TRAIN_FN = '''def train_run(dataset_dir, name, image_type, split_param=split):
    """Train (or reuse) one run of this notebook's configuration into runs_dir/<profile>/<name>."""
    cfg = wf.train_config(dataset_dir=dataset_dir, run_dir=wf.run_dir_for(runs_dir, profile, name), model=model,
                          image_type=image_type, split=split_param, image_size=image_size, targets=targets,
                          epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
                          warmup_steps=warmup_steps, num_workers=num_workers, seed=seed, device=device)
    return wf.ensure_run(cfg)


def classify(run_dir, dataset_dir, image_type, split_name="val"):
    """Zero-shot classification with region names on one split; returns (zero-shot dict, summary dict)."""
    net = create_model(run_dir, device=device)
    ds = wf.make_dataset(net, dataset_dir, image_type=image_type, split=split_name)
    zs = wf.zero_shot_eval(net, ds, batch_size=batch_size)
    return zs, wf.classification_summary(zs["y_true"], zs["y_pred"], seed=seed, n_boot=n_boot)


def show_summary(summary, caption):
    """The headline metrics with their 95 % bootstrap intervals as a small table."""
    rows = [{"metric": m, "value": summary[m], "ci_low": summary["ci"][m]["low"], "ci_high": summary["ci"][m]["high"]}
            for m in ("precision_weighted", "recall_weighted", "f1_weighted", "precision_macro", "recall_macro",
                      "f1_macro") if m in summary["ci"]]
    display(Markdown(f"**{caption}**"))
    display(pd.DataFrame(rows).round(3))
'''

FINISH = '''paths = report.write_results(out, results, headline)
display(report.headline_frame(headline))
print("wrote", *paths)
'''


def md(text: str):
    return new_markdown_cell(text.strip())


def code(text: str):
    return new_code_cell(text.strip())


def params_cell(name: str, extra: str = "") -> nbformat.NotebookNode:
    cell = code(COMMON_PARAMS.format(name=name) + extra)
    cell.metadata["tags"] = ["parameters", "hide-cell"]  # hide-cell: folded away in the book
    return cell


def notebook(name: str, cells: list, extra_params: str = "") -> nbformat.NotebookNode:
    nb = new_notebook(cells=[params_cell(name, extra_params)] + cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    return nb


# ------------------------------------------------------------------------------------------------- data
DATA = [
    md("""
# Data: the atlas, the merge rules and the prepared datasets

This chapter shows the atlas the study runs on, the nomenclature and the paper's low-resolution merge rules
(Section III-B), and the two prepared datasets: whole-region images at 16 µm/px and 224 px tiles at 2 µm/px
(Section III-C). When the atlas is the **synthetic atlas**, every table and figure says so: it is a procedural
stand-in written in the DHARANI layout, not DHARANI tissue.
"""),
    code(SETUP.format(kinds='("regions", "tiles")')),
    md("## Specimens and sections"),
    code('''atlas = Atlas(data["atlas"])
specimens, sections = atlas.specimens(), atlas.sections()
display(Markdown(f"**Specimens ({LABEL})**")); display(specimens)
display(Markdown(f"**Sections per specimen ({LABEL})**"))
display(sections.groupby(["specimen", "age_gw", "plane"]).size().rename("sections").reset_index())
results["atlas"] = {"specimens": specimens, "n_sections": len(sections)}'''),
    md("## An example section with its annotation outlines, and a close-up at full resolution"),
    code('''import matplotlib.pyplot as plt

regions_dir, tiles_dir = data["regions"], data["tiles"]
spec_id, sec_id = wf.validation_section(regions_dir, seed)
section = atlas.section(spec_id, sec_id)
thumb_mpp = 32
thumb = section.read_level(thumb_mpp)
fig, axes = plt.subplots(1, 2, figsize=(12, 5))
axes[0].imshow(thumb)
for oid, geom in section.annotations(mpp=thumb_mpp).items():
    for poly in getattr(geom, "geoms", [geom]):
        if hasattr(poly, "exterior"):
            axes[0].plot(*poly.exterior.xy, lw=0.6, color=atlas.ontology.color(oid))
axes[0].set_title(plots.titled(f"Specimen {spec_id}, section {sec_id}: annotations", SYN))
w0, h0 = section.size()
close = section.read_region(w0 // 2 - 256, h0 // 2 - 256, 512, 512, coords="level0")
axes[1].imshow(close); axes[1].set_title(plots.titled(f"Close-up at {section.mpp0:g} µm/px", SYN))
for ax in axes: ax.axis("off")
plots.save_figure(fig, out / "section.png"); plots.show(fig)'''),
    md("## The ontology and the low-resolution merge table (paper III-B)"),
    code('''from cytoclip.ontology import load_merge_spec, merge_table

onto = atlas.ontology
merged = merge_table(onto, load_merge_spec("lowres"))
display(Markdown(f"The ontology has **{len(onto)}** structures; the low-resolution merge rules keep **{len(merged)}** "
                 f"labels, absorbing {int(merged['n_absorbed'].sum())} structures into their ancestors."))
display(merged[["label_id", "label", "acronym", "n_absorbed", "absorbed_ids"]].head(30))
results["ontology"] = {"n_structures": len(onto), "n_lowres_labels": len(merged)}'''),
    md("## Crops of each image type for a few regions"),
    code('''manifest = pd.read_parquet(regions_dir / "manifest.parquet")
types = sorted(manifest["image_type"].unique())
some = manifest.groupby("label").size().sort_values(ascending=False).index[:4]
fig, axes = plt.subplots(len(some), len(types), figsize=(2.6 * len(types), 2.6 * len(some)), squeeze=False)
for r, lab in enumerate(some):
    for c, t in enumerate(types):
        rows = manifest[(manifest["label"] == lab) & (manifest["image_type"] == t)]
        ax = axes[r][c]; ax.axis("off")
        if len(rows):
            ax.imshow(plt.imread(regions_dir / rows.iloc[0]["path"]))
        ax.set_title(f"{lab[:22]}\\n{t}", fontsize=8)
fig.suptitle(plots.titled("Image types of the whole-region dataset", SYN))
plots.save_figure(fig, out / "image_types.png"); plots.show(fig)'''),
    md("## The tile grid (2 µm/px, 224 px) over the example section"),
    code('''import matplotlib.patches as mpatches

tiles = pd.read_parquet(tiles_dir / "manifest.parquet")
fig, ax = plt.subplots(figsize=(7, 5))
ax.imshow(thumb)
f = float(tiles["mpp"].iloc[0]) / thumb_mpp if len(tiles) else 1.0  # tile px -> thumbnail px
sel = tiles[(tiles["specimen"] == spec_id) & (tiles["section"].astype(str) == str(sec_id))]
for t in sel.itertuples():
    ax.add_patch(mpatches.Rectangle((t.x0 * f, t.y0 * f), (t.x1 - t.x0) * f, (t.y1 - t.y0) * f, fill=False, lw=0.5,
                                    ec=atlas.ontology.color(int(t.label_id)) if t.label_id >= 0 else "k"))
ax.set_title(plots.titled(f"{len(sel)} prepared tiles of this section (coloured by label)", SYN)); ax.axis("off")
plots.save_figure(fig, out / "tile_grid.png"); plots.show(fig)'''),
    md("""
## Dataset sizes beside the paper's

The paper's DHARANI numbers (13 618 sagittal and 5 080 coronal whole-region images over 86 labels; 3.34 M sagittal
and 0.96 M coronal tiles over 382 labels) stand in their own column; ours are computed from the manifests.
"""),
    code('''def plane_counts(m):
    return {p: int((m["plane"] == p).sum()) for p in ("sagittal", "coronal")}

reg_one = manifest[manifest["image_type"] == "square224"]
ours_sizes = pd.DataFrame([
    {"quantity": "region images, sagittal (one image type)", "ours": plane_counts(reg_one)["sagittal"], "paper": 13618},
    {"quantity": "region images, coronal (one image type)", "ours": plane_counts(reg_one)["coronal"], "paper": 5080},
    {"quantity": "region labels", "ours": reg_one["label"].nunique(), "paper": 86},
    {"quantity": "tiles, sagittal", "ours": plane_counts(tiles)["sagittal"], "paper": 3_340_000},
    {"quantity": "tiles, coronal", "ours": plane_counts(tiles)["coronal"], "paper": 960_000},
    {"quantity": "tile labels", "ours": tiles["label"].nunique(), "paper": 382},
]).assign(ours_data=LABEL, paper_data=report.PAPER_DATA)
display(Markdown(f"**Dataset sizes: ours ({LABEL}) beside the paper (DHARANI)**")); display(ours_sizes)
splits = pd.concat([wf.label_counts(regions_dir).assign(dataset="regions"),
                    wf.label_counts(tiles_dir).assign(dataset="tiles")])
display(Markdown(f"**Split sizes ({LABEL})**")); display(splits)
fig, ax = plt.subplots(figsize=(9, 3.5))
reg_one["label"].value_counts().plot.bar(ax=ax, color="#4a7ab5"); ax.set_xticklabels([])
ax.set_ylabel("images"); ax.set_xlabel("region (sorted by count)")
ax.set_title(plots.titled("Images per region (SquareBBox 224)", SYN))
plots.save_figure(fig, out / "label_counts.png"); plots.show(fig)
results["sizes"] = ours_sizes; results["splits"] = splits'''),
    md("## The prepare reports: what each rule removed"),
    code('''from cytoclip.io import read_json

for kind, d in (("regions", regions_dir), ("tiles", tiles_dir)):
    rep = read_json(d / "report.json")
    results[f"prepare_report_{kind}"] = rep
    display(Markdown(f"**{kind} ({LABEL})**"))
    display(pd.json_normalize({k: v for k, v in rep.items() if not isinstance(v, (list, dict)) or k == "removed"}).T)'''),
    code(FINISH),
]

# ------------------------------------------------------------------------------------------------- zero-shot
ZERO_SHOT = [
    md("""
# Zero-shot baselines (Table I, base rows)

The paper's base rows score CLIP ViT-L/14-336 and BiomedCLIP *without training*, naming each validation image by the
most similar region name. Those models need pretrained weights on disk; a model whose weights are absent is listed
below as **not run** with the loader's own message. On the CPU default, an **untrained tiny CLIP** stands in: it
knows nothing about either images or names, so it measures the chance level of this evaluation, not what pretrained
CLIP would do. The chance level 1/(number of labels) is shown beside it.
"""),
    code(SETUP.format(kinds='("regions",)')),
    code('''from cytoclip.models.zoo import describe_model

BASES = [("CLIP (base, zero-shot)", "hf:openai/clip-vit-large-patch14-336", "336", "square336"),
         ("BiomedCLIP (base, zero-shot)",
          "open_clip:hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224", "224", "square224")]
rows, not_run = [], []
for paper_name, spec, size, itype in BASES:
    key = report.paper_key("I", model=paper_name, image_size=size)
    info = describe_model(spec)
    net, reason = wf.try_model(spec, device=device) if info["available"] else (None, info["reason"])
    if net is None:
        not_run.append({"model": paper_name, "spec": spec, "reason": reason})
        continue
    ds = wf.make_dataset(net, data["regions"], image_type=itype, split="val")
    zs = wf.zero_shot_eval(net, ds, batch_size=batch_size)
    s = wf.classification_summary(zs["y_true"], zs["y_pred"], seed=seed, n_boot=n_boot)
    rows.append({"model": paper_name, "spec": spec, **{m: s[m] for m in report.CLASSIFICATION_METRICS}})
    headline += report.classification_rows(key, s, ours_model=f"{spec} (pretrained, zero-shot)", data=LABEL)
display(Markdown("**Not run** (weights absent; the reason is the loader's message):"))
display(pd.DataFrame(not_run, columns=["model", "spec", "reason"]))
results["not_run"] = not_run; results["pretrained"] = rows'''),
    md("""
## The untrained stand-in and the chance level

The next number is **not** a measurement of CLIP or BiomedCLIP: it is an untrained tiny CLIP of the CPU default,
scored the same way. It stands beside the paper's base rows only to show the chance level of this task on this data.
"""),
    code('''stand_in = create_model("tiny", device=device, pretrained=False, image_size=image_size, seed=seed)
ds = wf.make_dataset(stand_in, data["regions"], image_type=image_type, split="val")
zs = wf.zero_shot_eval(stand_in, ds, batch_size=batch_size)
s = wf.classification_summary(zs["y_true"], zs["y_pred"], seed=seed, n_boot=n_boot)
n_labels = len(ds.class_names)
chance = 1.0 / n_labels
table = pd.DataFrame([{"model": "untrained tiny CLIP (chance-level stand-in)", "accuracy": s["accuracy"],
                       "f1_weighted": s["f1_weighted"], "chance 1/n_labels": chance, "n_labels": n_labels,
                       "n_images": s["n"]}])
display(Markdown(f"**Zero-shot on the validation split ({LABEL})**")); display(table.round(4))
display(Markdown(f"The stand-in's accuracy ({s['accuracy']:.3f}) is to be read against the chance level "
                 f"1/{n_labels} = {chance:.3f}; it says nothing about pretrained CLIP or BiomedCLIP."))
for paper_name, spec, size, itype in BASES:
    if any(r["model"] == paper_name for r in not_run):
        key = report.paper_key("I", model=paper_name, image_size=size)
        headline += report.classification_rows(
            key, s, ours_model=f"untrained tiny CLIP, {image_size} px (chance-level stand-in: {paper_name} not run)",
            data=LABEL)
results["stand_in"] = {k: v for k, v in s.items() if k != "per_class"}
results["chance"] = chance; results["n_labels"] = n_labels'''),
    code(FINISH),
]

# ------------------------------------------------------------------------------------------------- train
TRAIN = [
    md("""
# Training one CytoCLIP model

This notebook trains one row of the paper's Table I with the parameters the study gives it (model, image type,
image size, targets, epochs, ...), then evaluates it on the validation split: zero-shot classification with the
region names (as in the paper), weighted and macro precision/recall/F1 with 95 % bootstrap intervals, the confusion
matrix, per-region F1, an embedding map, training curves and an error analysis. A finished run with the same
configuration is reused; an interrupted one resumes from its last checkpoint.
"""),
    code(SETUP.format(kinds="(dataset,)")),
    code(TRAIN_FN),
    md("## Training"),
    code('''ds_dir = data[dataset]
eval_dir = wf.multi_region_dataset(ds_dir, image_type) if multi_region else ds_dir
if reuse_run:
    # the multi-region row evaluates a finished run under the paper's multi-region rule
    run_dir = wf.run_dir_for(runs_dir, profile, reuse_run)
    if not (run_dir / "model").is_dir():
        raise FileNotFoundError(f"{run_dir}: no finished run of experiment {reuse_run!r}; run it first "
                                f"(cytoclip study run --only {reuse_run})")
else:
    run_dir = train_run(eval_dir, experiment, image_type)
results["run_dir"] = str(run_dir)
print("run:", run_dir)'''),
    code('''import matplotlib.pyplot as plt

if wf.training_log(run_dir).empty:
    display(Markdown("This run has no training log."))
else:
    fig = plots.training_curves_figure(run_dir, synthetic=SYN, title=f"Training curves: {experiment}")
    plots.save_figure(fig, out / "training_curves.png"); plots.show(fig)'''),
    md("## Validation: zero-shot classification with the region names"),
    code('''zs, summary = classify(run_dir, eval_dir, image_type)
label_type = "multi" if multi_region else "single"
if multi_region:
    # a prediction is a multi-region caption; the paper counts it correct when the primary label is among its regions
    frame = pd.read_parquet(eval_dir / "manifest.parquet")
    regions_of = {c: list(m) for c, m in zip(frame["caption"], frame["multi_labels"])}
    val = frame[(frame["image_type"] == image_type) & (frame["split"] == "val")].reset_index(drop=True)
    summary = wf.multi_region_summary(val["primary_label"], [regions_of[p] for p in zs["y_pred"]], seed=seed,
                                      n_boot=n_boot)
show_summary(summary, f"{experiment}: validation ({LABEL}, {label_type}-region labels)")
key = report.paper_key("I", image_type="High-res tiles" if dataset == "tiles" else "Complete region",
                       model=paper_model, image_size=str(paper_image_size), label_type=label_type)
headline += report.classification_rows(key, summary, ours_model=f"{OURS}, {image_size} px, "
                                       f"{summary['n_classes']} labels", data=LABEL)
results["validation"] = {k: v for k, v in summary.items() if k != "per_class"}
results["per_class"] = summary["per_class"]'''),
    code('''fig = plots.confusion_matrix_figure(zs["y_true"], zs["y_pred"], synthetic=SYN, title=f"Confusion matrix: {experiment}")
plots.save_figure(fig, out / "confusion_matrix.png"); plots.show(fig)
fig = plots.per_region_f1_figure(summary["per_class"], synthetic=SYN, title=f"Per-region F1: {experiment}", top=40)
plots.save_figure(fig, out / "per_region_f1.png"); plots.show(fig)
fig = plots.embedding_figure(zs["image_embeddings"], {"region": zs["y_true"]}, synthetic=SYN, seed=seed,
                             method=embedding_method, title=f"Validation image embeddings: {experiment}")
plots.save_figure(fig, out / "embeddings.png"); plots.show(fig)'''),
    md("""
## Error analysis

How far apart in the nomenclature tree are the confused regions (2 hops = siblings), do the errors fall between
regions that touch in the section, and which pairs are confused most?
"""),
    code('''if multi_region:
    display(Markdown("Error analysis is shown for the single-label runs."))
else:
    atlas = Atlas(data["atlas"])
    adjacent = wf.label_adjacency(data["atlas"], ds_dir)
    errors = wf.error_analysis(zs["y_true"], zs["y_pred"], atlas.ontology, wf.label_ids(ds_dir), adjacent)
    display(Markdown(f"**Errors by tree distance ({LABEL})**")); display(errors["by_tree_distance"])
    display(Markdown(f"**Errors between touching regions ({LABEL})**: {errors['by_adjacency']}"))
    display(Markdown(f"**Most-confused pairs ({LABEL})**")); display(errors["confused_pairs"])
    results["errors"] = errors'''),
    code(FINISH),
]

# ------------------------------------------------------------------------------------------------- ablation
ABLATION = [
    md("""
# Image types: ExactBBox, ExactBBox + mask, SquareBBox (Table II)

The paper compares three ways of cutting a region out of a section on a subset of about 60 regions: the tight box
(ExactBBox), the tight box with everything outside the region blanked (ExactBBox + mask), and a square box that keeps
the surrounding tissue (SquareBBox). Each image type is trained here with the same budget (epochs, batch size,
image size) on the same regions and the same sections, then scored on the validation sections.
"""),
    code(SETUP.format(kinds='("regions",)')),
    code(TRAIN_FN),
    code('''TYPES = {"exact": "ExactBBox", "exact_mask": "ExactBBox with mask", "square224": "SquareBBox"}
subset_dir = wf.subset_dataset(data["regions"], n_regions=60, image_types=tuple(TYPES), seed=seed)
table = []
for itype, paper_name in TYPES.items():
    run_dir = train_run(subset_dir, f"{experiment}-{itype}", itype)
    zs, s = classify(run_dir, subset_dir, itype)
    show_summary(s, f"{paper_name} ({LABEL})")
    headline += report.classification_rows(report.paper_key("II", image_type=paper_name), s,
                                           ours_model=f"{OURS}, {image_size} px, {s['n_classes']} regions", data=LABEL)
    table.append({"image_type": paper_name, **{m: s[m] for m in report.CLASSIFICATION_METRICS}, "n_val": s["n"]})
    results[itype] = {k: v for k, v in s.items() if k != "per_class"}
results["table"] = table'''),
    code('''import matplotlib.pyplot as plt

beside = report.beside_paper(report.headline_frame(headline), all_paper_rows=False)
display(Markdown(f"**Table II: ours ({LABEL}) beside the paper (DHARANI)**"))
display(beside[["image_type", "metric", "ours", "ci_low", "ci_high", "paper"]].round(3))
f1 = beside[beside["metric"] == "f1_weighted"]
fig, ax = plt.subplots(figsize=(6, 3.5))
x = np.arange(len(f1))
ax.bar(x - 0.2, f1["ours"], 0.4, yerr=[f1["ours"] - f1["ci_low"], f1["ci_high"] - f1["ours"]], label=f"ours ({LABEL})")
ax.bar(x + 0.2, f1["paper"], 0.4, label="paper (DHARANI)")
ax.set_xticks(x, f1["image_type"]); ax.set_ylabel("weighted F1"); ax.legend()
ax.set_title(plots.titled("Image types (Table II)", SYN))
plots.save_figure(fig, out / "image_types_f1.png"); plots.show(fig)'''),
    code(FINISH),
]


# ------------------------------------------------------------------------------------------------- cross
def cross_notebook(kind: str) -> list:
    if kind == "age":
        intro = """
# Across ages: train on 24 GW, validate on 21 GW (Table III)

The model is trained on the 24 GW specimen and validated on the 21 GW specimen (both sagittal). For contrast, the
same run is also scored on held-out *sections* of the training age (20 % of the 24 GW sections, never trained on):
the within-distribution number beside the cross-age one.
"""
        sets = '[("regions", image_type, "Complete region", dict(training_data="24 GW (sagittal)"))]'
        kinds = '("regions",)'
    else:
        intro = """
# Across planes: train on sagittal sections, validate on coronal ones (Table III)

Whole-region images and tiles are each trained on the sagittal specimens and validated on the coronal specimen.
For contrast, the same runs are also scored on held-out sagittal *sections* (20 %, never trained on): the
within-distribution number beside the cross-plane one.
"""
        sets = ('[("regions", image_type, "Complete region", dict(validation_data="22 GW (coronal)")),\n'
                '        ("tiles", "tile", "High-res tiles", dict(validation_data="22 GW (coronal)"))]')
        kinds = '("regions", "tiles")'
    body = f'''table = []
for kind, itype, paper_type, filt in {sets}:
    derived = wf.split_dataset(data[kind], split, seed=seed, image_type=itype)
    # the derived manifest carries the split (train / val_within / val), so the trainer is given no scheme
    run_dir = train_run(derived, f"{{experiment}}-{{kind}}", itype, split_param=None)
    for split_name, what in (("val", "cross"), ("val_within", "within")):
        zs, s = classify(run_dir, derived, itype, split_name)
        show_summary(s, f"{{paper_type}}, {{what}}-distribution validation ({{LABEL}})")
        table.append({{"image_type": paper_type, "validation": what, "n_val": s["n"],
                      **{{m: s[m] for m in report.CLASSIFICATION_METRICS}}}})
        results[f"{{kind}}_{{what}}"] = {{k: v for k, v in s.items() if k != "per_class"}}
        if what == "cross":
            key = report.paper_key("III", image_type=paper_type, **filt)
            headline += report.classification_rows(key, s, ours_model=f"{{OURS}}, {{image_size}} px", data=LABEL)
results["table"] = table
display(Markdown(f"**Cross- and within-distribution validation ({{LABEL}})**"))
display(pd.DataFrame(table).round(3))'''
    return [
        md(intro),
        code(SETUP.format(kinds=kinds)),
        code(TRAIN_FN),
        code(body),
        code('''beside = report.beside_paper(report.headline_frame(headline), all_paper_rows=False)
display(Markdown(f"**Table III: ours ({LABEL}, cross-distribution) beside the paper (DHARANI)**"))
display(beside[["image_type", "training_data", "validation_data", "metric", "ours", "ci_low", "ci_high", "paper"]]
        .round(3))'''),
        code(FINISH),
    ]


# ------------------------------------------------------------------------------------------------- retrieval
RETRIEVAL = [
    md("""
# Retrieval against CLIP, BiomedCLIP, CONCH and UNI (Table IV)

A retrieval set is sampled from the validation split (`retrieval_size` images, spread over the regions). Three
tasks: image-to-image (each image queries the others), text-to-image (each region name queries the images) and
image-to-text (each image queries the region names). Recall@K is given in the paper's definition (the fraction of
all relevant items found in the top K, which cannot exceed K / number of relevant items) and as the usual hit rate
(at least one relevant item in the top K). UNI is image-only: its text tasks are "—". Base models whose weights are
absent are listed as **not run** with the reason; the CPU default's tiny models cannot stand in for them.
"""),
    code(SETUP.format(kinds='("regions", "tiles")')),
    code('''from cytoclip.models.zoo import describe_model

SETS = {"Complete region": (data["regions"], "square224"), "High-res tiles": (data["tiles"], "tile")}
frames = {name: wf.retrieval_frame(d, retrieval_size, image_type=t, seed=seed) for name, (d, t) in SETS.items()}
display(Markdown(f"**Retrieval sets ({LABEL})**: " + "; ".join(
    f"{n}: {len(f)} images / {f['label'].nunique()} regions" for n, f in frames.items())))
BASE = {"CLIP (base)": "hf:openai/clip-vit-large-patch14", "BiomedCLIP (base)":
        "open_clip:hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224",
        "UNI": "uni:hf-hub:MahmoodLab/UNI", "CONCH": "conch:hf-hub:MahmoodLab/CONCH"}
TRAINED = {"Complete region": {"CytoCLIP (CLIP)": "train_clip224", "CytoCLIP (BiomedCLIP)": "train_biomedclip224"},
           "High-res tiles": {"CytoCLIP (BiomedCLIP)": "train_tiles"}}
rows, not_run, example = [], [], None
for set_name, frame in frames.items():
    dset = SETS[set_name][0]
    candidates = [(m, spec, "pretrained, not trained") for m, spec in BASE.items()]
    candidates += [(m, str(wf.run_dir_for(runs_dir, profile, e)), f"{OURS}, run {e}") for m, e in TRAINED[set_name].items()]
    for paper_name, spec, what in candidates:
        if spec in BASE.values():
            info = describe_model(spec)
            net, reason = wf.try_model(spec, device=device) if info["available"] else (None, info["reason"])
        else:
            net, reason = wf.try_model(spec, device=device)
        if net is None:
            not_run.append({"set": set_name, "model": paper_name, "spec": spec, "reason": reason})
            continue
        r = wf.retrieval_eval(net, dset, frame, seed=seed, n_boot=n_boot)
        rows.append(r["rows"].assign(set=set_name, model=paper_name, ours_model=what))
        if example is None and paper_name.startswith("CytoCLIP"):
            example = (set_name, paper_name, r)
        for row in r["rows"].itertuples():
            if row.definition != "paper" or np.isnan(row.value):
                continue
            key = report.paper_key("IV", image_type=set_name, model=paper_name, task=row.task)
            headline.append(report.headline_row(key, row.metric, row.value, (row.ci_low, row.ci_high),
                                                ours_model=what, data=LABEL))
results["not_run"] = not_run
display(Markdown("**Not run** (the reason is the loader's message; on the CPU default these pretrained models have no "
                 "stand-in, so their rows stay empty):"))
display(pd.DataFrame(not_run, columns=["set", "model", "spec", "reason"]))'''),
    code('''allrows = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(
    columns=["set", "model", "task", "definition", "metric", "value"])
results["retrieval"] = allrows
for definition in ("paper", "hit"):
    sub = allrows[allrows["definition"] == definition]
    if sub.empty:
        continue
    wide = sub.pivot_table(index=["set", "model"], columns=["task", "metric"], values="value")
    display(Markdown(f"**Recall@K, {definition} definition ({LABEL}); '—' = image-only model, no text tasks**"))
    display(wide.round(3).astype(object).where(wide.notna(), "—"))'''),
    code('''import matplotlib.pyplot as plt

if example is not None:
    set_name, name, r = example
    fig = plots.retrieval_examples_figure(r["paths"], r["labels"], r["paths"], r["labels"], r["similarity"],
                                          exclude_self=True, synthetic=SYN, seed=seed,
                                          title=f"Image-to-image retrieval, {name}, {set_name}")
    plots.save_figure(fig, out / "retrieval_examples.png"); plots.show(fig)'''),
    code(FINISH),
]

# ------------------------------------------------------------------------------------------------- segmentation
SEGMENTATION = [
    md("""
# Whole sections: a drawn area and a coarse segmentation (Figs 2-3)

First an arbitrary area is drawn on a validation section (a disc around a point inside a region) and named by the
whole-region model, with the score of each candidate (paper Fig. 2). Then a whole validation section is segmented
coarsely by naming each tissue tile with the tiles model (paper Fig. 3), and the tile labels are compared with the
annotation: pixel accuracy (one cell per tile) and the IoU of each region.
"""),
    code(SETUP.format(kinds='("regions", "tiles")')),
    code('''import matplotlib.pyplot as plt
from shapely.geometry import Point

atlas = Atlas(data["atlas"])
region_run = wf.run_dir_for(runs_dir, profile, "train_clip224")
tiles_run = wf.run_dir_for(runs_dir, profile, "train_tiles")
spec_id, sec_id = wf.validation_section(data["regions"], seed)
section = atlas.section(spec_id, sec_id)
net = create_model(region_run, device=device)
regions_manifest = pd.read_parquet(data["regions"] / "manifest.parquet")
class_names = sorted(regions_manifest["label"].unique())
ann = section.annotations()
oid, geom = max(ann.items(), key=lambda kv: kv[1].area)
centre = geom.representative_point()
area = Point(centre.x, centre.y).buffer(0.5 * (geom.area / np.pi) ** 0.5)
from shapely import affinity

from cytoclip import evaluate

to16 = section.mpp0 / 16  # the drawn area is in level-0 px; the whole-region model reads 16 µm/px
label, score, top = evaluate.predict_area(net, section, affinity.scale(area, to16, to16, origin=(0, 0)),
                                          class_names, mpp=16)
ranking = pd.DataFrame(top, columns=["label", "score"]).rename_axis("rank")
display(Markdown(f"**A drawn area on specimen {spec_id}, section {sec_id} ({LABEL})**: the disc lies mostly in "
                 f"*{atlas.ontology.name(oid)}*."))
display(ranking.round(4))
thumb_mpp = 32
thumb = section.read_level(thumb_mpp)
fig, ax = plt.subplots(figsize=(6, 4.5)); ax.imshow(thumb); ax.axis("off")
f = section.mpp0 / thumb_mpp
ax.plot(*np.asarray(area.exterior.coords).T * f, color="red", lw=1.5)
ax.set_title(plots.titled(f"Drawn area: {ranking.iloc[0]['label']} ({ranking.iloc[0]['score']:.2f})", SYN))
plots.save_figure(fig, out / "drawn_area.png"); plots.show(fig)
results["drawn_area"] = {"specimen": spec_id, "section": sec_id, "annotated": atlas.ontology.name(oid),
                         "ranking": ranking}'''),
    code('''from cytoclip.tiles import leaf_label_map

tnet = create_model(tiles_run, device=device)
tiles_manifest = pd.read_parquet(data["tiles"] / "manifest.parquet")
tile_px, tile_mpp = 224, float(tiles_manifest["mpp"].iloc[0])
tile_classes = sorted(tiles_manifest["label"].unique())
ids = wf.label_ids(data["tiles"])
colors = [atlas.ontology.color(ids[n]) for n in tile_classes]
seg = evaluate.segment_section(tnet, section, tile_classes, tile=tile_px, mpp=tile_mpp, colors=colors,
                               batch_size=batch_size)
# the annotation on the same tile grid: the leaf structure holding each tile's centre
index_of = {ids[n]: i for i, n in enumerate(tile_classes) if n in ids}
leaf = leaf_label_map(atlas.ontology)
by_class = {}
for oid, g in section.annotations(mpp=tile_mpp).items():
    c = index_of.get(leaf.get(int(oid)))
    if c is not None:
        by_class.setdefault(c, []).append(g)
from shapely import union_all

truth = evaluate.annotation_grid({c: union_all(gs) for c, gs in by_class.items()}, seg["labels"].shape, cell=tile_px)
scores = evaluate.segmentation_scores(seg["labels"], truth, class_names=tile_classes)
n_predicted = int((seg["labels"] >= 0).sum())
display(Markdown(f"**Coarse segmentation ({LABEL})**: {n_predicted} tissue tiles named; pixel accuracy "
                 f"{scores['pixel_accuracy']:.3f} over {scores['n_pixels']} annotated tile cells, mean IoU "
                 f"{scores['mean_iou']:.3f}."))
per_region = pd.DataFrame(sorted(scores["iou"].items(), key=lambda kv: -np.nan_to_num(kv[1])),
                          columns=["region", "iou"])
display(per_region.head(20).round(3))
fig = plots.segmentation_overlay_figure(thumb, seg["labels"], tile_classes, colors, synthetic=SYN,
                                        title=f"Coarse segmentation, specimen {spec_id} section {sec_id}")
plots.save_figure(fig, out / "segmentation.png"); plots.show(fig)
results["segmentation"] = {**scores, "n_predicted": n_predicted}'''),
    code(FINISH),
]

# ------------------------------------------------------------------------------------------------- summary
SUMMARY = [
    md("""
# Summary: this study beside the paper

Every headline number the experiments wrote (`book/results/*/headline.csv`) is placed beside the paper's number for
the same row of Tables I-IV. Ours carry their 95 % bootstrap interval and say what ran (`ours_model`) on which data;
the paper's column is the DHARANI number from the paper. A row *agrees* when the paper's value lies inside our
interval. The statements below are computed from the table, not written by hand.
"""),
    code('''from pathlib import Path

import pandas as pd
from IPython.display import HTML, Markdown, display

from cytoclip import plots, report
from cytoclip.io import read_json

out = Path(output_dir)
out.mkdir(parents=True, exist_ok=True)
results_root = out.parent
ours = report.collect_headlines(results_root)
table = report.add_verdicts(report.beside_paper(ours))
data_labels = sorted(set(ours["data"]) - {""})
display(Markdown(f"Our numbers come from: **{', '.join(data_labels) or 'no experiment yet'}**."))
for t in report.TABLES:
    sub = table[table["table"] == t]
    if len(sub):
        display(Markdown(f"**Table {t}: ours ({', '.join(data_labels)}) beside the paper (DHARANI)**"))
        # narrow enough to read without scrolling: ours with its interval in one cell, every row, no index;
        # what ran for "ours" (long text) is listed under the table
        view = sub.assign(ours_95ci=[f"{o:.3f} [{lo:.3f}, {hi:.3f}]" if pd.notna(o) else ""
                                     for o, lo, hi in zip(sub["ours"], sub["ci_low"], sub["ci_high"])],
                          paper=sub["paper"].round(3))
        # Table III's rows differ by what was trained and validated on; elsewhere those columns are constant
        data_cols = ["training_data", "validation_data"] if t == "III" else []
        view = view[["image_type", "model", "image_size", "label_type", *data_cols, "task", "metric", "ours_95ci",
                     "paper", "verdict"]].fillna("")
        view = view.loc[:, [(view[c].astype(str) != "").any() for c in view.columns]]  # no all-empty columns
        display(HTML(view.to_html(index=False)))
        display(Markdown("Ours: " + "; ".join(sorted(set(sub["ours_model"].dropna().astype(str)))) + "."))'''),
    md("## What agrees and what does not"),
    code('''statements = report.summary_statements(table)
display(Markdown("\\n".join(f"- {s}" for s in statements) or "No comparable numbers yet."))
not_run = []
for path in sorted(results_root.glob("*/results.json")):
    for row in read_json(path).get("not_run", []) or []:
        not_run.append({"experiment": path.parent.name, **row})
display(Markdown("**Models not run** (weights absent), with the loader's reason:"))
display(HTML(pd.DataFrame(not_run).to_html(index=False)) if not_run else Markdown("none"))'''),
    code('''import matplotlib.pyplot as plt
import numpy as np

both = table.dropna(subset=["ours", "paper"])
fig, ax = plt.subplots(figsize=(5, 5))
for t, sub in both.groupby("table"):
    ax.errorbar(sub["paper"], sub["ours"], yerr=[sub["ours"] - sub["ci_low"], sub["ci_high"] - sub["ours"]],
                fmt="o", ms=4, label=f"Table {t}")
ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
ax.set_xlabel("paper (DHARANI)"); ax.set_ylabel(f"ours ({', '.join(data_labels)})"); ax.legend()
ax.set_title(plots.titled("Ours against the paper, every headline number", "synthetic atlas" in data_labels))
plots.save_figure(fig, out / "ours_vs_paper.png"); plots.show(fig)
paths = report.write_results(out, {"experiment": experiment, "profile": profile, "data": data_labels,
                                   "statements": statements, "table": table, "not_run": not_run},
                             ours.drop(columns="experiment"))
print("wrote", *paths)'''),
]

SUMMARY_PARAMS = '''# Parameters (papermill). The summary only reads book/results/*/headline.csv.
profile = "demo"
experiment = "summary"
output_dir = "book/results/summary"
'''


def build() -> list[Path]:
    """Write every notebook; returns their paths."""
    NB_DIR.mkdir(exist_ok=True)
    books = {"data": notebook("data", DATA), "zero_shot": notebook("zero_shot", ZERO_SHOT),
             "train": notebook("train", TRAIN, TRAIN_EXTRA),
             "image_type_ablation": notebook("image_type_ablation", ABLATION),
             "cross_age": notebook("cross_age", cross_notebook("age")),
             "cross_plane": notebook("cross_plane", cross_notebook("plane")),
             "retrieval": notebook("retrieval", RETRIEVAL), "segmentation": notebook("segmentation", SEGMENTATION)}
    summary = new_notebook(cells=[code(SUMMARY_PARAMS)] + SUMMARY)
    summary.cells[0].metadata["tags"] = ["parameters", "hide-cell"]
    summary.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    summary.metadata["language_info"] = {"name": "python"}
    books["summary"] = summary
    books["cross_age"].cells[0].source = books["cross_age"].cells[0].source.replace(
        'split = "sections"  ', 'split = "cross_age" ')
    books["cross_plane"].cells[0].source = books["cross_plane"].cells[0].source.replace(
        'split = "sections"  ', 'split = "cross_plane"')
    paths = []
    for name, nb in books.items():
        for i, cell in enumerate(nb.cells):  # stable ids: a rebuild changes only what was edited
            cell.id = f"{name}-{i:02d}"[:64]
        nbformat.validate(nb)
        path = NB_DIR / f"{name}.ipynb"
        nbformat.write(nb, path)
        paths.append(path)
    return paths


if __name__ == "__main__":
    for p in build():
        print(p.relative_to(ROOT))
    sys.exit(0)
