"""Above training: run the M members of a DST Ensemble on a Ray cluster, compare methods."""
