"""Defaults that the CLI needs before it may import torch (kept free of heavy imports)."""

#: The model `beholder score`, `serve`, `evaluate` and `export` use when none is given.
DEFAULT_MODEL = "nima-mobilenet-idealo"
