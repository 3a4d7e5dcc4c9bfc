"""Evaluation: the simulated commerce environment and its scoring."""
