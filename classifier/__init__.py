"""granttag core: taxonomy, text analysis, model training, prediction, evaluation and storage."""

__version__ = "0.1.0"
