"""One factory for every model of the study: :func:`create_model` returns a :class:`CytoModel`.

Backends: ``tiny`` / ``tiny-vit`` (small open_clip CLIPs trained from scratch on CPU), ``hf:`` (transformers
CLIP, the paper's OpenAI ViT-L/14 and -336), ``open_clip:`` (open_clip models incl. BiomedCLIP), ``uni:`` and
``conch:`` (pathology foundation models), and saved model / run directories. See :data:`MODEL_ZOO`.
"""

from cytoclip.data import PadToSquare
from cytoclip.models.base import (
    MODEL_JSON,
    SAVED_FORMATS,
    CytoModel,
    ModelSpecError,
    ModelWeightsNotFound,
    TextTowerMissing,
    downloads_allowed,
)
from cytoclip.models.factory import BACKENDS, create_model, parse_spec
from cytoclip.models.zoo import MODEL_ZOO, describe_model, model_zoo_table

__all__ = [
    "BACKENDS", "MODEL_JSON", "MODEL_ZOO", "SAVED_FORMATS", "CytoModel", "ModelSpecError", "ModelWeightsNotFound",
    "PadToSquare", "TextTowerMissing", "create_model", "describe_model", "downloads_allowed", "model_zoo_table",
    "parse_spec",
]
