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
prompt = "{}"
batch_size = 64
device = None
profile = "demo"
experiment = "segmentation"
output_dir = "book/results/segmentation"

# %% [markdown]
# # Whole sections: a drawn area and a coarse segmentation (Figs 2-3)
#
# What a user of a trained model gets, through the functions behind `cytoclip predict` and `cytoclip segment`
# (`cytoclip.annotate`). First an arbitrary area is drawn on a validation section (a disc around a point inside a
# region) and named by the whole-region model, with the score of each candidate (paper Fig. 2). Then the whole
# validation section is segmented coarsely by naming each tissue tile with the tiles model (paper Fig. 3): the
# command's outputs (a GeoJSON of the predicted regions that QuPath and the atlas reader open, the overlay, the
# per-tile scores) and the comparison with the annotation: pixel accuracy (one cell per tile) and the IoU of each
# region.

# %% tags=["hide-input"]
import numpy as np
import pandas as pd
from IPython.display import Image, Markdown, display
from shapely.geometry import Point

from cytoclip import plots
from cytoclip import workflow as wf
from cytoclip.annotate import candidates, format_table, open_model, predict_areas, segment_to_files
from cytoclip.atlas import Atlas, Section
from cytoclip.page import Page

page = Page.open(globals())
device = page.device
data = page.study_data(["regions", "tiles"])
regions_data = wf.experiment_dataset(data["regions"], "square224", planes=planes, split="sections",
                                     split_seed=split_seed)
tiles_data = wf.experiment_dataset(data["tiles"], "tile", planes=planes, split="tiles", split_seed=split_seed)

# %% [markdown]
# ## A drawn area, named by the whole-region model (Fig. 2)
#
# `cytoclip predict --model <run> --atlas <atlas> --section <specimen>/<section> --geojson area.geojson` gives
# this table; the candidates are the run's training labels.

# %% tags=["hide-input"]
atlas_ = Atlas(data["atlas"])
spec_id, sec_id = wf.validation_section(regions_data)
section = atlas_.section(spec_id, sec_id)
regions_run = wf.run_dir_for(runs_dir, profile, "train_clip224", seed)
net = open_model(regions_run, device=device)
net.prompt = prompt
cands = candidates(net, atlas_.ontology)
oid, geom = max(section.annotations().items(), key=lambda kv: kv[1].area)
centre = geom.representative_point()
area = Point(centre.x, centre.y).buffer(0.5 * (geom.area / np.pi) ** 0.5)  # level-0 px, as a GeoJSON holds it
ranking = predict_areas(net, cands, section, [("drawn disc", area)], top_k=5)
label, score = ranking["label"].iloc[0], float(ranking["score"].iloc[0])
display(Markdown(f"**A drawn area on specimen {spec_id}, section {sec_id} ({page.data})**: the disc lies mostly in "
                 f"*{atlas_.ontology.name(oid)}*; read at {net.read_mpp:g} µm/px, {len(cands)} candidates."))
print(format_table(ranking))
thumb_mpp = 32
thumb = section.read_level(thumb_mpp)
fig = plots.boxes_figure(thumb, [], polygons=[np.asarray(area.exterior.coords) * section.mpp0 / thumb_mpp],
                         title=f"Drawn area: {label} ({score:.2f})", synthetic=page.synthetic)
plots.save_figure(fig, page.output_dir / "drawn_area.png"); plots.show(fig)
page.results["drawn_area"] = {"specimen": spec_id, "section": sec_id, "annotated": atlas_.ontology.name(oid),
                              "ranking": ranking[["rank", "label", "label_id", "score"]].set_index("rank")}

# %% [markdown]
# ## A coarse segmentation by the tiles model (Fig. 3)
#
# `cytoclip segment --model <run> --atlas <atlas> --section <specimen>/<section> --output-dir <dir>` writes these
# files for each section; the scores compare the tile labels with the annotation mapped to the model's classes.

# %% tags=["hide-input"]
tnet = open_model(wf.run_dir_for(runs_dir, profile, "train_tiles", seed), device=device)
tnet.prompt = prompt
tcands = candidates(tnet, atlas_.ontology)
record = segment_to_files(tnet, tcands, section, page.output_dir / "sections", ontology=atlas_.ontology,
                          batch_size=batch_size, synthetic=page.synthetic, progress=False)
out = page.output_dir / "sections"
scores = record["scores"]
predicted = Section(section.image_path, out / record["outputs"]["geojson"], ontology=atlas_.ontology).annotations()
display(Markdown(f"**Coarse segmentation ({page.data})**: {record['n_tissue_tiles']} tissue tiles of "
                 f"{record['tile']} px at {record['mpp']:g} µm/px named; {len(predicted)} predicted regions in "
                 f"`{record['outputs']['geojson']}` (read back by the atlas reader); pixel accuracy "
                 f"{scores['pixel_accuracy']:.3f} over {scores['n_pixels']} annotated tile cells, mean IoU "
                 f"{scores['mean_iou']:.3f}."))
display(pd.DataFrame(sorted(scores["iou"].items(), key=lambda kv: -np.nan_to_num(kv[1])),
                     columns=["region", "iou"]).head(20).round(3))
display(Image(filename=str(out / record["outputs"]["overlay"])))
tiles = pd.read_parquet(out / record["outputs"]["tiles"])
display(tiles[tiles["label"].notna()][["row", "col", "x0", "y0", "label", "score"]].head(5).round(3))
page.results["segmentation"] = {**scores, "n_predicted": record["n_tissue_tiles"],
                                "n_regions": len(record["regions"])}

# %% tags=["remove-input"]
paths = page.finish()
