"""Evaluations of trained networks beyond test accuracy (adversarial belief matching)."""
