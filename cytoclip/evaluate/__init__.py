"""Evaluation: one path from a model and a prepared dataset to every number of the study.

Modules, one concern each:

* :mod:`~cytoclip.evaluate.embed` — image and text embeddings;
* :mod:`~cytoclip.evaluate.zero_shot` — the zero-shot classifier (class-name prompts);
* :mod:`~cytoclip.evaluate.classification` — P/R/F1 with bootstrap intervals; the multi-region rule;
* :mod:`~cytoclip.evaluate.retrieval` — the retrieval set and Recall@K / hit@K (Table IV);
* :mod:`~cytoclip.evaluate.baselines` — linear probe and k-NN on frozen embeddings;
* :mod:`~cytoclip.evaluate.errors` — error analysis (tree distance, adjacency, confused pairs);
* :mod:`~cytoclip.evaluate.sections` — whole-section uses (a drawn area, coarse segmentation);
* :mod:`~cytoclip.evaluate.run` — :func:`evaluate`, the one function behind ``cytoclip evaluate`` and every
  notebook; :mod:`~cytoclip.evaluate.cli` — the verb.
"""

from cytoclip.evaluate.baselines import knn, linear_probe
from cytoclip.evaluate.classification import METRICS, classification_summary, multi_region_summary
from cytoclip.evaluate.cli import configure_parser
from cytoclip.evaluate.embed import dataset_fingerprint, embed_arrays, embed_images, embed_texts, model_fingerprint
from cytoclip.evaluate.errors import error_analysis, label_adjacency, region_adjacency
from cytoclip.evaluate.retrieval import KS, TASKS, retrieval, sample_retrieval_set
from cytoclip.evaluate.run import ARRAYS, RETRIEVAL_SIZES, evaluate, load_arrays, resolve_evaluation
from cytoclip.evaluate.sections import (annotation_grid, class_colors, predict_area, segment_section,
                                        segmentation_scores)
from cytoclip.evaluate.zero_shot import class_texts, temperature, text_classifier, zero_shot

__all__ = [
    "ARRAYS", "KS", "METRICS", "RETRIEVAL_SIZES", "TASKS", "annotation_grid", "class_colors", "class_texts",
    "classification_summary", "configure_parser", "dataset_fingerprint", "embed_arrays", "embed_images",
    "embed_texts", "error_analysis", "evaluate", "knn", "label_adjacency", "linear_probe", "load_arrays",
    "model_fingerprint", "multi_region_summary", "predict_area", "region_adjacency", "resolve_evaluation",
    "retrieval", "sample_retrieval_set", "segment_section", "segmentation_scores", "temperature",
    "text_classifier", "zero_shot",
]
