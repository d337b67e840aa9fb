"""A trained model as a neuroanatomist's tool: name an image or a drawn area, segment whole sections.

Modules, one concern each:

* :mod:`~cytoclip.annotate.trained` — open a run, saved model or factory spec with what its run records
  (training labels and their ontology ids, prompt, image scale);
* :mod:`~cytoclip.annotate.labels` — the candidate names: training labels, a text file, an ontology subtree;
* :mod:`~cytoclip.annotate.sources` — inputs: section TIFFs, atlas sections, image files, boxes, GeoJSON polygons;
* :mod:`~cytoclip.annotate.predict` — top-k names with scores of images and areas (``cytoclip predict``);
* :mod:`~cytoclip.annotate.segment` — per section GeoJSON + overlay PNG + tile scores + scores, resumable
  (``cytoclip segment``);
* :mod:`~cytoclip.annotate.cli` — the two verbs.

The whole-section computations themselves (:func:`predict_area`, :func:`segment_section`, the rasters and their
scores) are :mod:`cytoclip.evaluate.sections`, shared with the evaluation.
"""

from cytoclip.annotate.labels import Candidates, candidates
from cytoclip.annotate.predict import format_table, predict_areas, predict_images, write_predictions
from cytoclip.annotate.segment import section_outputs, segment_sections, segment_to_files
from cytoclip.annotate.sources import atlas_sections, open_section, read_geojson_areas
from cytoclip.annotate.trained import TrainedModel, open_model

__all__ = ["Candidates", "TrainedModel", "atlas_sections", "candidates", "format_table", "open_model",
           "open_section", "predict_areas", "predict_images", "read_geojson_areas", "section_outputs",
           "segment_sections", "segment_to_files", "write_predictions"]
