"""Building blocks of structured pruning on top of Torch-Pruning's dependency graph."""
