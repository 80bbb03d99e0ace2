"""Fixtures shared by the test files."""

from __future__ import annotations

from pathlib import Path

import pytest
from zskt_test_helpers import compose_run_config, TEACHER

import zskt.run


@pytest.fixture
def compose_cfg():
    """`compose_cfg(tmp_dir, overrides)` -> the config `python -m zskt.run <overrides>` would run."""
    return compose_run_config


@pytest.fixture(scope="session")
def teacher_zoo(tmp_path_factory) -> Path:
    """A model zoo holding a small digits teacher (WRN-10-2, seed 0), trained once per test session."""
    root = tmp_path_factory.mktemp("zoo")
    results = zskt.run.execute(
        compose_run_config(root, ["method=scratch", "student.depth=10", "student.width=2", "method.epochs=3"])
    )
    assert results["test_acc"] > 80.0
    return root / "outputs" / "models"


@pytest.fixture(scope="session")
def zero_shot_student(tmp_path_factory, teacher_zoo) -> Path:
    """A (barely trained) zero-shot WRN-10-1 student's model.pt, from the zoo's WRN-10-2; it records its teacher."""
    root = tmp_path_factory.mktemp("zero-shot-student")
    zskt.run.execute(compose_run_config(root, [
        "method=zero_shot", "student.depth=10", *TEACHER, f"paths.models={teacher_zoo}", "method.iterations=2", "method.batch_size=16", "method.n_student_steps=2",
        "method.eval_every=2"]))
    return root / "run" / "model.pt"
