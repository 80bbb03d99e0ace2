"""zskt: zero-shot knowledge transfer via adversarial belief matching, and its baselines."""

__version__ = "0.1.0"
