"""Ensembles of trained tickets: load them, average their probabilities, measure and report."""
