"""The command-line scripts (run each as `python scripts/<name>.py`); a package so that the tests import
them as `from scripts import summarize` (pytest puts the repo root on the path: pyproject.toml)."""
