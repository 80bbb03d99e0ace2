"""scripts/results_page.py: the committed results pages equal what their records in docs/runs produce,
and the check really fails when a record and its table part ways."""
from __future__ import annotations

import json
import shutil
import statistics
from pathlib import Path

import pytest

from scripts import results_page

DOCS = Path(__file__).resolve().parent.parent / "docs"


def write_seed(folder: Path, seed: int, acc: float, teacher_acc: float = 99.0, restarts: int = 0) -> None:
    (folder / f"seed{seed}").mkdir(parents=True, exist_ok=True)
    (folder / f"seed{seed}" / "results.json").write_text(json.dumps(
        {"status": "completed", "test_acc": acc, "teacher": {"test_acc": teacher_acc}, "generator_restarts": restarts}))


@pytest.mark.parametrize("page", results_page.PAGES)
def test_every_committed_page_equals_what_its_records_produce(page):
    text, changed = results_page.render(DOCS / page)
    assert changed == [], f"docs/{page}: run `python scripts/results_page.py` (stale blocks: {changed})"
    assert text == (DOCS / page).read_text()


def test_the_results_page_has_generated_blocks_for_its_records():
    text = (DOCS / "RESULTS.md").read_text()
    assert len(results_page.BLOCK.findall(text)) >= 4


def test_a_changed_record_makes_the_check_fail_and_a_rewrite_carries_it(tmp_path):
    shutil.copytree(DOCS / "runs", tmp_path / "runs")
    page = tmp_path / "quickstart-recipe.md"
    shutil.copy(DOCS / "quickstart-recipe.md", page)
    record = tmp_path / "runs/demo/threads2/seed1/results.json"
    results = json.loads(record.read_text())
    results["test_acc"] = 12.3456
    record.write_text(json.dumps(results))

    assert results_page.main(["--check", str(page)]) == 1
    assert "**12.35**" not in page.read_text()          # --check never writes
    assert results_page.main([str(page)]) == 0
    assert "| 1 | 96.94 | **12.35** |" in page.read_text()
    assert results_page.main(["--check", str(page)]) == 0


def test_seeds_table_counts_every_seed_in_the_mean_and_labels_the_successful_mean(tmp_path):
    for seed, acc in enumerate([90.0, 20.0, 85.0]):
        write_seed(tmp_path / "a", seed, acc)
    write_seed(tmp_path / "b", 1, 81.0)
    body = results_page.seeds_table(["--threshold", "80", "run a=a", "b=b"], tmp_path, False)
    lines = body.splitlines()
    assert lines[0] == ("| run | seed 0 | seed 1 | seed 2 | mean ± std (n) | seeds ≥ 80 % "
                        "| mean of those seeds only |")
    std = statistics.stdev([90.0, 20.0, 85.0])
    assert lines[2] == f"| run a | 90.00 | 20.00 | 85.00 | 65.00 ± {std:.2f} (3) | 2 of 3 | 87.50 |"
    assert lines[3] == "| b |  | 81.00 |  | 81.00 (1) | 1 of 1 | 81.00 |"
    only = results_page.seeds_table(["--seeds", "0,2", "a=a"], tmp_path, False)
    assert only.splitlines()[2] == f"| a | 90.00 | 85.00 | {87.5:.2f} ± {statistics.stdev([90.0, 85.0]):.2f} (2) |"


def test_a_bad_block_is_a_one_line_error(tmp_path, capsys):
    page = tmp_path / "page.md"
    page.write_text("<!-- results_page: seeds x=missing -->\n<!-- results_page: end -->\n")
    assert results_page.main([str(page)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("results_page: error: page.md: block 'seeds x=missing'") and "\n" not in err
    page.write_text("<!-- results_page: plots x -->\n<!-- results_page: end -->\n")
    assert results_page.main([str(page)]) == 2
    assert "unknown block kind 'plots'" in capsys.readouterr().err


def test_every_results_section_is_generated_from_records_or_says_it_has_none():
    """A figure on the page either comes from docs/runs (a generated block) or its section says
    **No record**; the sections that hold no run's figures are named here."""
    text = (DOCS / "RESULTS.md").read_text()
    sections = [part.split("\n", 1) for part in text.split("\n## ")[1:]]
    without_figures = {"Setup", "What this shows", "Commands"}
    for heading, body in sections:
        if heading in without_figures:
            continue
        assert results_page.BLOCK.search(body) or "**No record" in body, f"section '{heading}': no records, no mark"
