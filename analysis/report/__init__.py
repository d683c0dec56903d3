"""``clipsae analyze report``: a static site to browse an SAE's features, opened from disk with no server."""
