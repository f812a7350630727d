"""Datasets (TFDS builders and sources) and the Grain input pipelines that read them."""
