"""`clipsae serve`: the live explorer of cached codes (index, JSON API, pages)."""
