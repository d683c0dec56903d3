"""What each feature does, computed from what is cached alone: the codes in the store (and, for the
dictionary match, the SAEs' weights). Nothing here runs the CLIP model."""
