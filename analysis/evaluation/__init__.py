"""The evaluation a paper reports to say which SAE is good, each metric scored from the cached codes (and,
for the ceilings, the store's activations) so that SAEs and baselines are compared on the same images."""
