"""The analysis stage: SAE codes cached in the store (``clipsae encode``) and statistics computed from them.

Analysis reads the store and the inference SAE (``clipsae.train.model``), never the trainer.
"""
