"""Analyses that run the CLIP model again: the SAE spliced into the forward pass, features changed inside it,
features named and images or texts searched through the model's towers, and encoder directions set
against the model's own neurons."""
