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
max_tiles_per_section = 120
prompt = "{}"
batch_size = 64
device = None
profile = "demo"
experiment = "segmentation"
output_dir = "book/results/segmentation"

# %% [markdown]
# # Whole sections: a drawn area and a coarse segmentation (Figs 2-3)
#
# First an arbitrary area is drawn on a validation section (a disc around a point inside a region) and named by the
# whole-region model, with the score of each candidate (paper Fig. 2). Then a whole validation section is segmented
# coarsely by naming each tissue tile with the tiles model (paper Fig. 3), and the tile labels are compared with the
# annotation: pixel accuracy (one cell per tile) and the IoU of each region.

# %% tags=["hide-input"]
import numpy as np
import pandas as pd
from IPython.display import Markdown, display
from shapely import affinity, union_all
from shapely.geometry import Point

from cytoclip import plots
from cytoclip import workflow as wf
from cytoclip.atlas import Atlas
from cytoclip.evaluate import annotation_grid, predict_area, segment_section, segmentation_scores
from cytoclip.models import create_model
from cytoclip.page import Page
from cytoclip.tiles import leaf_label_map

page = Page.open(globals())
device = page.device
data = page.study_data(["regions", "tiles"])
regions_data = wf.experiment_dataset(data["regions"], "square224", planes=planes, split="sections",
                                     split_seed=split_seed)
tiles_data = wf.experiment_dataset(data["tiles"], "tile", planes=planes, split="tiles", split_seed=split_seed)

# %% [markdown]
# ## A drawn area, named by the whole-region model (Fig. 2)

# %% tags=["hide-input"]
atlas_ = Atlas(data["atlas"])
spec_id, sec_id = wf.validation_section(regions_data)
section = atlas_.section(spec_id, sec_id)
net = create_model(wf.run_dir_for(runs_dir, profile, "train_clip224", seed), device=device)
class_names = sorted(pd.read_parquet(regions_data / "manifest.parquet")["label"].unique())
oid, geom = max(section.annotations().items(), key=lambda kv: kv[1].area)
centre = geom.representative_point()
area = Point(centre.x, centre.y).buffer(0.5 * (geom.area / np.pi) ** 0.5)
to16 = section.mpp0 / 16  # the drawn area is in level-0 px; the whole-region model reads 16 µm/px
label, score, top = predict_area(net, section, affinity.scale(area, to16, to16, origin=(0, 0)), class_names,
                                 mpp=16, prompt=prompt)
ranking = pd.DataFrame(top, columns=["label", "score"]).rename_axis("rank")
display(Markdown(f"**A drawn area on specimen {spec_id}, section {sec_id} ({page.data})**: the disc lies mostly in "
                 f"*{atlas_.ontology.name(oid)}*."))
display(ranking.round(4))
thumb_mpp = 32
thumb = section.read_level(thumb_mpp)
fig = plots.boxes_figure(thumb, [], polygons=[np.asarray(area.exterior.coords) * section.mpp0 / thumb_mpp],
                         title=f"Drawn area: {label} ({score:.2f})", synthetic=page.synthetic)
plots.save_figure(fig, page.output_dir / "drawn_area.png"); plots.show(fig)
page.results["drawn_area"] = {"specimen": spec_id, "section": sec_id, "annotated": atlas_.ontology.name(oid),
                              "ranking": ranking}

# %% [markdown]
# ## A coarse segmentation by the tiles model (Fig. 3)

# %% tags=["hide-input"]
tnet = create_model(wf.run_dir_for(runs_dir, profile, "train_tiles", seed), device=device)
tiles_manifest = pd.read_parquet(tiles_data / "manifest.parquet")
tile_px, tile_mpp = 224, float(tiles_manifest["mpp"].iloc[0])
tile_classes = sorted(tiles_manifest["label"].unique())
ids = dict(zip(tiles_manifest["label"], tiles_manifest["label_id"].astype(int)))
colors = [atlas_.ontology.color(ids[n]) for n in tile_classes]
seg = segment_section(tnet, section, tile_classes, tile=tile_px, mpp=tile_mpp, colors=colors, prompt=prompt,
                      batch_size=batch_size)
# the annotation on the same tile grid: the leaf structure holding each tile's centre
index_of = {ids[n]: i for i, n in enumerate(tile_classes)}
leaf = leaf_label_map(atlas_.ontology)
by_class = {}
for oid, g in section.annotations(mpp=tile_mpp).items():
    c = index_of.get(leaf.get(int(oid)))
    if c is not None:
        by_class.setdefault(c, []).append(g)
truth = annotation_grid({c: union_all(gs) for c, gs in by_class.items()}, seg["labels"].shape, cell=tile_px)
scores = segmentation_scores(seg["labels"], truth, class_names=tile_classes)
n_predicted = int((seg["labels"] >= 0).sum())
display(Markdown(f"**Coarse segmentation ({page.data})**: {n_predicted} tissue tiles named; pixel accuracy "
                 f"{scores['pixel_accuracy']:.3f} over {scores['n_pixels']} annotated tile cells, mean IoU "
                 f"{scores['mean_iou']:.3f}."))
display(pd.DataFrame(sorted(scores["iou"].items(), key=lambda kv: -np.nan_to_num(kv[1])),
                     columns=["region", "iou"]).head(20).round(3))
fig = plots.segmentation_overlay_figure(thumb, seg["labels"], tile_classes, colors, synthetic=page.synthetic,
                                        title=f"Coarse segmentation, specimen {spec_id} section {sec_id}")
plots.save_figure(fig, page.output_dir / "segmentation.png"); plots.show(fig)
page.results["segmentation"] = {**scores, "n_predicted": n_predicted}

# %% tags=["remove-input"]
paths = page.finish()
