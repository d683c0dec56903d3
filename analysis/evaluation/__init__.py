"""The evaluation a paper reports to say which SAE is good, each metric scored from the cached codes (and,
for the ceilings, the store's activations) so that SAEs, seeds and baselines are compared on the same
images, and the one table that puts them side by side (compare)."""
