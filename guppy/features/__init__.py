"""Features of the fish: sparse autoencoders at every snapshot, followed across training, scored against what it knows (guppy-sae)."""
