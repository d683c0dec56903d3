"""Defaults the command line shows and the analyses name their files by (importing nothing heavy)."""

TOP_IMAGES_K = 16  # analyze top-images -k
ENTROPY_K = 20  # analyze label-entropy -k: Fry's top-20
