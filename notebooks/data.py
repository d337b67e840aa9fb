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
planes = ["sagittal"]
max_tiles_per_section = 60
profile = "demo"
experiment = "data"
output_dir = "book/results/data"

# %% [markdown]
# # Data: the atlas, the merge rules and the prepared datasets
#
# This chapter shows the atlas the study runs on, the nomenclature and the paper's low-resolution merge rules
# (Section III-B), and the two prepared datasets: whole-region images at 16 µm/px and 224 px tiles at 2 µm/px
# (Section III-C). When the atlas is the **synthetic atlas**, every table and figure says so: it is a procedural
# stand-in written in the DHARANI layout, not DHARANI tissue.

# %% tags=["hide-input"]
import pandas as pd
from IPython.display import Markdown, display

from cytoclip import plots, report
from cytoclip import workflow as wf
from cytoclip.atlas import Atlas
from cytoclip.io import read_json
from cytoclip.page import Page

page = Page.open(globals())
data = page.study_data(["regions", "tiles"])
LABEL = page.data

# %% [markdown]
# ## Specimens and sections

# %% tags=["hide-input"]
atlas_ = Atlas(data["atlas"])
specimens, sections = atlas_.specimens(), atlas_.sections()
display(Markdown(f"**Specimens ({LABEL})**")); display(specimens)
display(Markdown(f"**Sections per specimen ({LABEL})**"))
display(sections.groupby(["specimen", "age_gw", "plane"]).size().rename("sections").reset_index())
page.results["atlas"] = {"specimens": specimens, "n_sections": len(sections)}

# %% [markdown]
# ## An example section with its annotation outlines, and a close-up at full resolution

# %% tags=["hide-input"]
regions_dir, tiles_dir = data["regions"], data["tiles"]
spec_id, sec_id = wf.validation_section(regions_dir)
section = atlas_.section(spec_id, sec_id)
thumb_mpp = 32
thumb = section.read_level(thumb_mpp)
w0, h0 = section.size()
fig = plots.section_figure(thumb, section.annotations(mpp=thumb_mpp),
                           {i: atlas_.ontology.color(i) for i in section.annotations()},
                           close_up=section.read_region(w0 // 2 - 256, h0 // 2 - 256, 512, 512, coords="level0"),
                           title=f"Specimen {spec_id}, section {sec_id}: annotations",
                           close_up_title=f"Close-up at {section.mpp0:g} µm/px", synthetic=page.synthetic)
plots.save_figure(fig, page.output_dir / "section.png"); plots.show(fig)

# %% [markdown]
# ## The ontology and the low-resolution merge table (paper III-B)

# %% tags=["hide-input"]
from cytoclip.ontology import load_merge_spec, merge_table

onto = atlas_.ontology
merged = merge_table(onto, load_merge_spec("lowres"))
display(Markdown(f"The ontology has **{len(onto)}** structures; the low-resolution merge rules keep **{len(merged)}** "
                 f"labels, absorbing {int(merged['n_absorbed'].sum())} structures into their ancestors."))
display(merged[["label_id", "label", "acronym", "n_absorbed"]].head(30))
page.results["ontology"] = {"n_structures": len(onto), "n_lowres_labels": len(merged)}

# %% [markdown]
# ## Crops of each image type for a few regions

# %% tags=["hide-input"]
manifest = pd.read_parquet(regions_dir / "manifest.parquet")
types = sorted(manifest["image_type"].unique())
some = manifest.groupby("label").size().sort_values(ascending=False).index[:4]
grid = [[(regions_dir / rows.iloc[0]["path"]) if len(rows) else None
         for rows in (manifest[(manifest["label"] == lab) & (manifest["image_type"] == t)] for t in types)]
        for lab in some]
fig = plots.image_grid_figure(grid, list(some), types, title="Image types of the whole-region dataset",
                              synthetic=page.synthetic)
plots.save_figure(fig, page.output_dir / "image_types.png"); plots.show(fig)
scale = data["square_scale"]
if scale != 1.0:
    display(Markdown(
        f"The brains of this atlas are **{scale:.2f}×** the linear size of real fetal brains, so the SquareBBox "
        f"sides are scaled with them: `square224` and `square336` keep the paper's names but use minimum sides of "
        f"{round(224 * scale)} and {round(336 * scale)} px at 16 µm/px, covering the same share of the brain as the "
        "paper's 224 and 336 px do on a real section (`cytoclip.provenance.brain_scale`)."))
page.results["square_scale"] = scale

# %% [markdown]
# ## The tile grid (2 µm/px, 224 px) over the example section

# %% tags=["hide-input"]
tiles = pd.read_parquet(tiles_dir / "manifest.parquet")
f = float(tiles["mpp"].iloc[0]) / thumb_mpp if len(tiles) else 1.0  # tile px -> thumbnail px
sel = tiles[(tiles["specimen"] == spec_id) & (tiles["section"].astype(str) == str(sec_id))]
fig = plots.boxes_figure(thumb, (sel[["x0", "y0", "x1", "y1"]].to_numpy() * f).tolist(),
                         [atlas_.ontology.color(int(i)) if i >= 0 else "k" for i in sel["label_id"]],
                         title=f"{len(sel)} prepared tiles of this section (coloured by label)",
                         synthetic=page.synthetic)
plots.save_figure(fig, page.output_dir / "tile_grid.png"); plots.show(fig)

# %% [markdown]
# ## Dataset sizes beside the paper's
#
# The paper's DHARANI numbers (13 618 sagittal and 5 080 coronal whole-region images over 86 labels; 3.34 M
# sagittal and 0.96 M coronal tiles over 382 labels) stand in their own column; ours are computed from the manifests.

# %% tags=["hide-input"]
def plane_counts(m):
    return {p: int((m["plane"] == p).sum()) for p in ("sagittal", "coronal")}


reg_one = manifest[manifest["image_type"] == "square224"]
sizes = pd.DataFrame([
    {"quantity": "region images, sagittal (one image type)", "ours": plane_counts(reg_one)["sagittal"], "paper": 13618},
    {"quantity": "region images, coronal (one image type)", "ours": plane_counts(reg_one)["coronal"], "paper": 5080},
    {"quantity": "region labels", "ours": reg_one["label"].nunique(), "paper": 86},
    {"quantity": "tiles, sagittal", "ours": plane_counts(tiles)["sagittal"], "paper": 3_340_000},
    {"quantity": "tiles, coronal", "ours": plane_counts(tiles)["coronal"], "paper": 960_000},
    {"quantity": "tile labels", "ours": tiles["label"].nunique(), "paper": 382},
]).rename(columns={"ours": f"ours ({LABEL})", "paper": report.PAPER_DATA})
display(sizes)
splits = pd.concat([wf.label_counts(regions_dir).assign(dataset="regions"),
                    wf.label_counts(tiles_dir).assign(dataset="tiles")])
display(Markdown(f"**Split sizes ({LABEL})**")); display(splits)
fig = plots.label_counts_figure(reg_one["label"].value_counts(), title="Images per region (SquareBBox 224)",
                                synthetic=page.synthetic)
plots.save_figure(fig, page.output_dir / "label_counts.png"); plots.show(fig)
page.results["sizes"] = sizes; page.results["splits"] = splits

# %% [markdown]
# ## The prepare reports: what each rule removed

# %% tags=["hide-input"]
for kind, d in (("regions", regions_dir), ("tiles", tiles_dir)):
    rep = read_json(d / "report.json")
    page.results[f"prepare_report_{kind}"] = rep
    display(Markdown(f"**{kind} ({LABEL})**"))
    display(pd.json_normalize({k: v for k, v in rep.items() if not isinstance(v, (list, dict))}).T)

# %% tags=["remove-input"]
paths = page.finish()
