"""CytoCLIP study core: ontology, atlas reader, synthetic atlas, dataset preparation, models, loss, trainer, metrics."""

__version__ = "0.1.0"
