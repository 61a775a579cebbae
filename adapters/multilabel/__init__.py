"""multilabel adapter (in progress)."""
