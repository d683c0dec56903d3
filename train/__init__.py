"""Stage two: sparse autoencoders trained by streaming rows from an activation store."""

from train.export import load_sae

__all__ = ["load_sae"]
