"""Saying so where a model with random weights makes figures meaningless.

A store extracted without ``--pretrained`` (the demo's, the tests') holds a random CLIP's
activations: its SAE's features are real statistics of those activations, but a feature's name
from the text tower, and zero-shot accuracies, are noise. Every output that shows them says so.
"""

WARNING = ("the model has random weights (no --pretrained): feature names and zero-shot figures here are noise, "
           "not evidence of any concept")


RANDOM_INIT = "random-init"  # how extraction records weights it did not load (pipeline.model)


def store_has_random_weights(store) -> bool:
    """True when the store was extracted from a randomly initialised model."""
    return str(store.config.get("pretrained") or "").startswith(RANDOM_INIT)


def model_has_random_weights(clip) -> bool:
    """True when a loaded model (``pipeline.model.load_clip``) was randomly initialised."""
    return str(clip.vision.identity.get("pretrained") or "").startswith(RANDOM_INIT)
