"""`scripts/summarize.py --paper` beside runs of dfq, deepinversion and fast_2/5/10 (and fast = Fast-10) on the
benchmark's pairs: each row carries the Fast-Datafree README's number for its method, pair and dataset."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from test_summarize import DATAFREE_PAIRS, SCRIPTS, summarize, write_run

# the README's rows over its five pairs (CIFAR-10, CIFAR-100)
PUBLISHED = {
    "deepinversion": ((93.26, 90.36, 83.04, 86.85, 89.72), (61.32, 54.13, 53.77, 61.33, 61.34)),
    "dfq": ((94.61, 90.84, 86.14, 91.69, 92.01), (77.01, 66.21, 51.27, 54.43, 64.79)),
    "fast_2": ((92.62, 84.67, 88.36, 89.56, 89.68), (69.76, 62.83, 41.77, 53.15, 57.08)),
    "fast_5": ((93.63, 89.94, 88.90, 92.04, 91.96), (72.82, 65.28, 52.90, 61.80, 63.83)),
    "fast_10": ((94.05, 90.53, 89.29, 92.51, 92.45), (74.34, 67.44, 54.02, 63.91, 65.12)),
}
PUBLISHED["fast"] = PUBLISHED["fast_10"]


@pytest.fixture
def runs(tmp_path: Path) -> Path:
    """What experiment=datafree_<dataset> method=<m> leaves: <preset>/<method>/<pair>/seed0/results.json."""
    outputs = tmp_path / "outputs"
    for method in PUBLISHED:
        for dataset in ("cifar10", "cifar100"):
            for teacher, student in DATAFREE_PAIRS:
                pair = f"{teacher['name']}_{student['name']}".lower()
                write_run(outputs / f"datafree_{dataset}" / method / pair / "seed0", method=method, dataset=dataset,
                          m=None, seed=0, teacher=teacher, student=student, test_acc=50.0, best_test_acc=60.0,
                          budget={"iterations": 80000, "epochs": 200, "budget_scale": 1.0}, precision="32-true")
    return outputs


def test_every_method_pair_and_dataset_gets_its_benchmark_number(runs):
    rows = summarize.summarize(summarize.find_runs([runs])[0])
    got = {(r["method"], r["dataset"], r["teacher"], r["student"]): r["benchmark"] for r in rows}
    assert len(got) == len(PUBLISHED) * 2 * 5
    for method, per_dataset in PUBLISHED.items():
        for dataset, values in zip(("cifar10", "cifar100"), per_dataset):
            for (teacher, student), value in zip(DATAFREE_PAIRS, values):
                assert got[(method, dataset, teacher["name"], student["name"])] == value, (method, dataset)
    assert all(r["m_label"] == "0" for r in rows)  # data-free: no training image


def test_the_table_and_the_cmi_readme_footnote(runs):
    done = subprocess.run([sys.executable, str(SCRIPTS / "summarize.py"), str(runs), "--paper"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "| 86.14 |" in done.stdout and "| 89.29 |" in done.stdout and "| 41.77 |" in done.stdout
    footnote = next(line for line in done.stdout.splitlines() if line.startswith("benchmark:"))
    assert "DFQ" in footnote and "Fast-2/5/10" in footnote
    assert "dfq cifar100 WRN-40-2 → WRN-16-1: 54.77" in footnote  # the CMI README's copy of the DFQ row differs
