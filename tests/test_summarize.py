"""scripts/summarize.py on a synthetic tree of results.json files: grouping, exact statistics,
unfinished runs, CSV/JSON copies, published numbers and the plot."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from scripts import summarize

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
T40_2 = {"depth": 40, "width": 2, "checkpoint": "zoo.pt", "params": 2243546, "test_acc": 95.0}
S16_1 = {"depth": 16, "width": 1, "params": 175066}


def write_run(job: Path, **fields) -> Path:
    """A completed results.json in `job` (defaults: KD+AT WRN-40-2 -> WRN-16-1 on CIFAR-10, M = 10)."""
    results = {"status": "completed", "method": "kd_at", "dataset": "cifar10", "m": 10, "seed": 0,
               "student": S16_1, "teacher": T40_2, "test_acc": 0.0, "best_test_acc": 0.0,
               "budget": {"epochs": 100000, "budget_scale": 1.0, "student_images": 10_000_000}, "wall_time_s": 1.0, "model": "model.pt",
               "precision": "bf16-mixed", **fields}
    job.mkdir(parents=True)
    (job / "results.json").write_text(json.dumps(results))
    return job


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A sweep of every kind of run, plus unfinished ones; the expected numbers are in the tests."""
    sweep = tmp_path / "sweep"
    for seed, (final, best) in enumerate([(36.0, 37.0), (38.0, 39.0), (40.0, 44.0)]):
        write_run(sweep / f"kd10_{seed}", seed=seed, test_acc=final, best_test_acc=best)
    for seed, final in enumerate([60.0, 61.0]):
        write_run(sweep / f"kd25_{seed}", seed=seed, m=25, test_acc=final, best_test_acc=final)
    write_run(sweep / "kd_full", m=None, test_acc=92.0, best_test_acc=92.5, budget={"epochs": 200, "budget_scale": 1.0})
    for seed, final in enumerate([20.0, 26.0]):
        write_run(sweep / f"scratch10_{seed}", method="scratch", teacher=None, seed=seed, test_acc=final,
                  best_test_acc=final)
    zero_shot_jobs = [write_run(sweep / f"zs_{seed}", method="zero_shot", m=None, seed=seed, test_acc=final,
                                best_test_acc=final + 1, budget={"iterations": 80000, "budget_scale": 1.0})
                      for seed, final in enumerate([83.0, 84.0, 85.0])]
    write_run(sweep / "zs_short", method="zero_shot", m=None, test_acc=50.0, best_test_acc=50.0,
              budget={"iterations": 800, "budget_scale": 0.01})
    kd200 = write_run(sweep / "kd200", m=200, test_acc=81.0, best_test_acc=81.0)
    # belief matching: the student's origin is the results.json beside results["student_checkpoint"]
    for seed, mte in enumerate([0.2, 0.3]):
        write_run(sweep / f"abm_zs_{seed}", method="abm", m=None, seed=seed, test_acc=83.0, best_test_acc=None,
                  budget={}, mte=mte, mte_stderr=0.01, student_checkpoint=str(zero_shot_jobs[seed] / "model.pt"))
    write_run(sweep / "abm_kd", method="abm", m=None, test_acc=81.0, best_test_acc=None, budget={}, mte=0.8,
              student_checkpoint=str(kd200 / "model.pt"))
    # fine-tune: the origin comes from run_config.yaml's student.checkpoint
    tuned = write_run(sweep / "ft", method="finetune", test_acc=84.0, best_test_acc=84.5, start_test_acc=83.0,
                      budget={"epochs": 200, "budget_scale": 1.0})
    (tuned / "run_config.yaml").write_text(f"student:\n  checkpoint: {zero_shot_jobs[0] / 'model.pt'}\n")
    # unfinished: a Hydra job dir that never wrote results, one with a checkpoint, a diverged run
    (sweep / "crashed" / ".hydra").mkdir(parents=True)
    (sweep / "running" / "checkpoints").mkdir(parents=True)
    (sweep / "running" / "run_config.yaml").write_text("seed: 0\n")
    (sweep / "running" / "checkpoints" / "last.ckpt").write_bytes(b"")
    write_run(sweep / "diverged", status="diverged", message="non-finite loss at step 12")
    return sweep


def by_key(rows: list[dict]) -> dict[tuple, dict]:
    return {(r["method"], r["from"], r["dataset"], r["m_label"], r["budget"]): r for r in rows}


def test_groups_and_exact_statistics(tree):
    runs, _ = summarize.find_runs([tree])
    rows = by_key(summarize.summarize(runs))
    assert len(rows) == 10 and len(runs) == 17

    kd10 = rows[("kd_at", None, "cifar10", "10", "100000 ep")]
    assert kd10["n"] == 3 and kd10["seeds"] == [0, 1, 2]
    assert kd10["test_acc_mean"] == pytest.approx(38.0) and kd10["test_acc_std"] == pytest.approx(2.0)  # sample std
    assert kd10["best_test_acc_mean"] == pytest.approx(40.0) and kd10["best_test_acc_std"] == pytest.approx(math.sqrt(13))
    assert (kd10["teacher"], kd10["student"]) == ("WRN-40-2", "WRN-16-1")
    kd25 = rows[("kd_at", None, "cifar10", "25", "100000 ep")]
    assert kd25["test_acc_mean"] == pytest.approx(60.5) and kd25["test_acc_std"] == pytest.approx(math.sqrt(0.5))
    full = rows[("kd_at", None, "cifar10", "full", "200 ep")]
    assert full["n"] == 1 and full["test_acc_std"] is None  # one run: no spread
    scratch = rows[("scratch", None, "cifar10", "10", "100000 ep")]
    assert scratch["teacher"] is None and scratch["test_acc_std"] == pytest.approx(math.sqrt(18))

    # zero-shot is M = 0; a scaled-down budget is its own group, never mixed with the full one
    zero_shot = rows[("zero_shot", None, "cifar10", "0", "80000 it")]
    assert zero_shot["n"] == 3 and zero_shot["test_acc_mean"] == pytest.approx(84.0)
    assert zero_shot["test_acc_std"] == pytest.approx(1.0) and zero_shot["best_test_acc_mean"] == pytest.approx(85.0)
    assert rows[("zero_shot", None, "cifar10", "0", "800 it ×0.01")]["n"] == 1

    # starting models: abm and finetune rows are split by the method of the model they start from
    abm = rows[("abm", "zero_shot", "cifar10", "-", "-")]
    assert abm["n"] == 2 and abm["mte_mean"] == pytest.approx(0.25) and abm["mte_std"] == pytest.approx(math.sqrt(0.005))
    assert abm["best_test_acc_mean"] is None
    assert rows[("abm", "kd_at", "cifar10", "-", "-")]["mte_mean"] == pytest.approx(0.8)
    assert rows[("finetune", "zero_shot", "cifar10", "10", "200 ep")]["test_acc_mean"] == pytest.approx(84.0)


def test_unfinished_runs_are_listed_not_dropped(tree):
    _, unfinished = summarize.find_runs([tree])
    listed = {Path(u.path).name: u for u in unfinished}
    assert set(listed) == {"crashed", "running", "diverged"}
    assert listed["diverged"].status == "diverged" and "non-finite" in listed["diverged"].detail
    assert listed["crashed"].status == "no results.json"
    assert "resume=true" in listed["running"].detail  # it has a checkpoint to continue from
    text = summarize.markdown(summarize.summarize(summarize.find_runs([tree])[0]), unfinished)
    assert "## Unfinished runs: 3" in text and str(tree / "crashed") in text


def test_published_numbers_sit_beside_their_rows(tree):
    rows = by_key(summarize.summarize(summarize.find_runs([tree])[0]))
    zero_shot = rows[("zero_shot", None, "cifar10", "0", "80000 it")]
    assert zero_shot["paper"] == (83.69, 0.58) and zero_shot["study"] == 83.63
    assert rows[("kd_at", None, "cifar10", "10", "100000 ep")]["study"] == 36.97
    assert rows[("kd_at", None, "cifar10", "200", "100000 ep")]["paper"] == 81.25
    assert rows[("kd_at", None, "cifar10", "full", "200 ep")]["study"] == 92.19
    assert rows[("abm", "kd_at", "cifar10", "-", "-")]["paper"] == 0.68  # MTE, not an accuracy
    assert rows[("finetune", "zero_shot", "cifar10", "10", "200 ep")]["study"] == 83.68
    assert rows[("zero_shot", None, "cifar10", "0", "800 it ×0.01")]["paper"] == (83.69, 0.58)
    text = summarize.markdown(list(rows.values()), [], paper=True)
    header = next(line for line in text.splitlines() if line.startswith("| method"))
    assert header.endswith("| paper | study | benchmark | wall s (mean) |") and "| from |" in header and "| MTE |" in header
    assert "| 83.69 ± 0.58 | 83.63 | 83.74 |" in text  # WRN-40-2 -> WRN-16-1 is also a data-free benchmark pair
    assert "| paper |" not in summarize.markdown(list(rows.values()), [])
    # without a benchmark row, no benchmark column and no footnote
    others = [r for r in rows.values() if r["benchmark"] is None]
    text = summarize.markdown(others, [], paper=True)
    assert "| paper | study | wall s (mean) |" in text and "benchmark" not in text


def test_mean_std_and_labels():
    assert summarize.mean_std([]) == (None, None)
    assert summarize.mean_std([3.0, None]) == (3.0, None)
    assert summarize.mean_std([1.0, 2.0, 3.0, 4.0]) == (2.5, pytest.approx(math.sqrt(5 / 3)))
    assert summarize.cell(84.0, 1.0) == "84.00 ± 1.00" and summarize.cell(None, None) == "-"
    assert summarize.budget_label({"iterations": 80000, "budget_scale": 1.0}) == "80000 it"
    assert summarize.budget_label({"epochs": 2, "budget_scale": 0.01}) == "2 ep ×0.01"
    # belief matching: K and N in the label (its budget_scale already scaled them), so N = 30 and N = 1000 never mix
    assert summarize.budget_label({"k": 100, "n_images": 30, "budget_scale": 1.0}) == "K 100, N 30"
    assert summarize.budget_label({}) == "-"
    assert [summarize.m_label(m, None) for m in ("zero_shot", "kd_at", "abm")] == ["0", "full", "-"]


def test_command_line_writes_table_csv_json_and_plot(tree, tmp_path):
    out = {name: tmp_path / name for name in ("s.csv", "s.json", "s.png")}
    done = subprocess.run([sys.executable, str(SCRIPTS / "summarize.py"), str(tree), "--paper",
                           "--csv", str(out["s.csv"]), "--json", str(out["s.json"]), "--plot", str(out["s.png"])],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "| kd_at |  | cifar10 | WRN-40-2 | WRN-16-1 | 10 | 100000 ep | 10,000,000 | 3 | 38.00 ± 2.00 | 40.00 ± 3.61 |" in done.stdout
    assert "sample std (n - 1)" in done.stdout and "## Unfinished runs: 3" in done.stdout

    with out["s.csv"].open() as handle:
        table = list(csv.DictReader(handle))
    assert len(table) == 10 and tuple(table[0]) == summarize.CSV_COLUMNS
    zero_shot = next(r for r in table if r["method"] == "zero_shot" and r["budget"] == "80000 it")
    assert (zero_shot["m"], zero_shot["n"], zero_shot["seeds"]) == ("0", "3", "0;1;2")
    assert float(zero_shot["test_acc_mean"]) == pytest.approx(84.0) and zero_shot["paper"] == "83.69 ± 0.58"

    document = json.loads(out["s.json"].read_text())
    assert len(document["groups"]) == 10 and len(document["unfinished"]) == 3
    abm = next(g for g in document["groups"] if g["method"] == "abm" and g["from"] == "zero_shot")
    assert abm["mte_mean"] == pytest.approx(0.25) and abm["paper"] == 0.22

    image = out["s.png"].read_bytes()
    assert image[:8] == PNG_SIGNATURE and len(image) > 20_000
    import matplotlib.image

    pixels = matplotlib.image.imread(out["s.png"])
    assert pixels.shape[0] > 500 and pixels.shape[1] > 500
    assert pixels[..., :3].std() > 0.05  # lines, text and a table, not a blank canvas
    assert (pixels[..., :3].reshape(-1, 3).round(1) != 1.0).any(axis=1).mean() > 0.01


def test_missing_or_empty_dir_is_one_line_and_exit_2(tmp_path, capsys):
    (tmp_path / "empty" / "job" / ".hydra").mkdir(parents=True)
    assert summarize.main([str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "holds no results.json (1 job dirs without one" in err
    done = subprocess.run([sys.executable, str(SCRIPTS / "summarize.py"), str(tmp_path / "nowhere")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and "is not a directory" in done.stderr


def test_help_explains_the_columns(capsys):
    with pytest.raises(SystemExit) as exit_info:
        summarize.parse_args(["--help"])
    text = capsys.readouterr().out
    assert exit_info.value.code == 0
    assert all(word in text for word in ("best-of-evaluations", "sample", "--paper", "--csv", "--json", "--plot", "ONE PNG"))


def test_wall_time_column_is_the_group_mean(tree):
    rows = by_key(summarize.summarize(summarize.find_runs([tree])[0]))
    assert rows[("kd_at", None, "cifar10", "10", "100000 ep")]["wall_time_s_mean"] == pytest.approx(1.0)
    assert rows[("kd_at", None, "cifar10", "10", "100000 ep")]["student_images_mean"] == 10_000_000
    assert rows[("zero_shot", None, "cifar10", "0", "80000 it")]["student_images_mean"] is None  # not recorded
    table = summarize.markdown(list(rows.values()), [])
    assert "| wall s (mean) |" in table.splitlines()[4]


def write_curves(job: Path, p_student: list[float], p_teacher: list[float]) -> None:
    lines = ["k,p_student,p_student_stderr,p_teacher,p_teacher_stderr"]
    lines += [f"{k},{s},0.01,{t},0.01" for k, (s, t) in enumerate(zip(p_student, p_teacher))]
    (job / "transition_curves.csv").write_text("\n".join(lines) + "\n")


def test_transition_curves_are_averaged_over_a_groups_runs_and_drawn(tree, tmp_path):
    write_curves(tree / "abm_zs_0", [0.1, 0.5, 0.9], [0.1, 0.3, 0.5])
    write_curves(tree / "abm_zs_1", [0.2, 0.6, 0.7], [0.1, 0.2, 0.3])
    rows = summarize.summarize(summarize.find_runs([tree])[0])
    (row, length, student, teacher), = summarize.transition_groups(rows)  # abm_kd has no curves on disk
    assert (row["from"], length) == ("zero_shot", 3)
    assert student == pytest.approx([0.15, 0.55, 0.8]) and teacher == pytest.approx([0.1, 0.25, 0.4])

    out = tmp_path / "curves.png"
    assert summarize.main([str(tree), "--transitions", str(out)]) == 0
    assert out.read_bytes()[:8] == PNG_SIGNATURE and out.stat().st_size > 10_000


def test_transitions_without_belief_matching_runs_is_one_line_and_writes_nothing(tree, tmp_path, capsys):
    csv_out, png_out = tmp_path / "s.csv", tmp_path / "curves.png"
    assert summarize.main([str(tree), "--csv", str(csv_out), "--transitions", str(png_out)]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1 and "no belief-matching" in captured.err
    assert not csv_out.exists() and not png_out.exists()


def test_a_longer_budget_at_the_same_m_is_its_own_curve(tree):
    """Figure 2 draws one line per budget scale: a 5x run at M = 10 must not join the M = 10/25 line as a
    second point at the same M (which drew a vertical segment); full data stays with the first line."""
    write_run(tree / "kd10_x5", test_acc=70.0, best_test_acc=70.0,
              budget={"epochs": 500, "budget_scale": 5.0, "student_images": 50_000_000})
    rows = summarize.summarize(summarize.find_runs([tree])[0])
    kd_lines = [(points, full) for points, full in summarize.curve_series(rows)
                if (points[0]["method"], points[0]["from"]) == ("kd_at", None)]
    by_scale = {points[0]["budget_scale"]: (points, full) for points, full in kd_lines}
    assert sorted(by_scale) == [1.0, 5.0]
    points, full = by_scale[1.0]
    assert [(r["m"], r["test_acc_mean"]) for r in points] == [(10, 38.0), (25, 60.5), (200, 81.0)]
    assert [r["test_acc_mean"] for r in full] == [92.0]
    points, full = by_scale[5.0]
    assert [(r["m"], r["test_acc_mean"]) for r in points] == [(10, 70.0)] and full == []


# ---------------------------------------------------------------------------- the data-free KD benchmark
RESNET34 = {"family": "resnet", "depth": 34, "name": "ResNet-34", "params": 21282122, "checkpoint": "zoo.pt", "test_acc": 95.0}
RESNET18 = {"family": "resnet", "depth": 18, "name": "ResNet-18", "params": 11173962}
VGG11 = {"family": "vgg", "depth": 11, "name": "VGG-11", "params": 9231114, "checkpoint": "zoo.pt", "test_acc": 92.0}


def wrn(depth: int, width: int, teacher: bool = False) -> dict:
    node = {"family": "wrn", "depth": depth, "width": width, "name": f"WRN-{depth}-{width}", "params": 1}
    return {**node, "checkpoint": "zoo.pt", "test_acc": 94.0} if teacher else node


# the five pairs in the benchmark's order, and its published ZSKT accuracies (Fast-Datafree README)
DATAFREE_PAIRS = [(RESNET34, RESNET18), (VGG11, RESNET18), (wrn(40, 2, True), wrn(16, 1)),
                  (wrn(40, 2, True), wrn(40, 1)), (wrn(40, 2, True), wrn(16, 2))]
BENCHMARK_ZSKT = {"cifar10": (93.32, 89.46, 83.74, 86.07, 89.66), "cifar100": (67.74, 54.31, 36.66, 53.60, 54.59)}


@pytest.fixture
def datafree_tree(tmp_path: Path) -> Path:
    """What experiment=datafree_cifar10 / datafree_cifar100 and datafree_teachers leave: zero-shot runs
    per pair and seed (<preset>/<pair>/seed<s>/results.json) and the teachers' scratch runs."""
    outputs = tmp_path / "outputs"
    for dataset in BENCHMARK_ZSKT:
        for index, (teacher, student) in enumerate(DATAFREE_PAIRS):
            pair = f"{teacher['name']}_{student['name']}".lower()
            for seed in (0, 1):
                write_run(outputs / f"datafree_{dataset}" / pair / f"seed{seed}", method="zero_shot", dataset=dataset,
                          m=None, seed=seed, teacher=teacher, student=student, test_acc=50.0 + index + seed,
                          best_test_acc=60.0, budget={"iterations": 80000, "budget_scale": 1.0})
        for teacher in (RESNET34, VGG11, wrn(40, 2)):
            node = {k: v for k, v in teacher.items() if k not in ("checkpoint", "test_acc")}
            write_run(outputs / "datafree_teachers" / dataset / node["name"].lower() / "seed0", method="scratch",
                      dataset=dataset, m=None, teacher=None, student=node, test_acc=90.0, best_test_acc=90.0,
                      budget={"epochs": 200, "budget_scale": 1.0})
    return outputs


def test_datafree_rows_carry_the_benchmarks_published_numbers(datafree_tree):
    rows = summarize.summarize(summarize.find_runs([datafree_tree])[0])
    zero_shot = {(r["dataset"], r["teacher"], r["student"]): r for r in rows if r["method"] == "zero_shot"}
    assert len(zero_shot) == 10  # ResNet-18 students never share a row with a WRN student, nor two teachers one row
    for dataset, published in BENCHMARK_ZSKT.items():
        for index, ((teacher, student), value) in enumerate(zip(DATAFREE_PAIRS, published)):
            row = zero_shot[(dataset, teacher["name"], student["name"])]
            assert row["n"] == 2 and row["test_acc_mean"] == pytest.approx(50.5 + index)
            assert row["benchmark"] == value
    assert zero_shot[("cifar10", "ResNet-34", "ResNet-18")]["paper"] is None  # the paper had no ResNet pair
    assert zero_shot[("cifar10", "WRN-40-2", "WRN-16-1")]["paper"] == (83.69, 0.58)  # ... but this WRN pair
    teachers = {(r["dataset"], r["student"]): r["benchmark"] for r in rows if r["method"] == "scratch"}
    assert teachers == {("cifar10", "ResNet-34"): 95.70, ("cifar10", "VGG-11"): 92.25, ("cifar10", "WRN-40-2"): 94.87,
                        ("cifar100", "ResNet-34"): 78.05, ("cifar100", "VGG-11"): 71.32, ("cifar100", "WRN-40-2"): 75.83}


def test_summarize_paper_prints_the_benchmark_column_and_the_cmi_footnote(datafree_tree):
    done = subprocess.run([sys.executable, str(SCRIPTS / "summarize.py"), str(datafree_tree), "--paper"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    header = next(line for line in lines if line.startswith("| method"))
    assert header.endswith("| paper | study | benchmark | wall s (mean) |")
    assert "| zero_shot | cifar10 | ResNet-34 | ResNet-18 | 0 | 80000 it | - | 2 | 50.50 ± 0.71 | 60.00 ± 0.00 |  |  | 93.32 |" in done.stdout
    assert "| zero_shot | cifar100 | VGG-11 | ResNet-18 | 0 | 80000 it | - | 2 | 51.50 ± 0.71 | 60.00 ± 0.00 |  |  | 54.31 |" in done.stdout
    assert "| scratch | cifar100 | - | ResNet-34 | full | 200 ep |" in done.stdout
    footnote = next(line for line in lines if line.startswith("benchmark:"))
    assert "Fast-Datafree" in footnote and "not the paper's" in footnote
    # the CMI README's CIFAR-100 ZSKT row disagrees on four pairs: each shown row says so
    for pair, cmi in (("VGG-11 → ResNet-18", "34.72"), ("WRN-40-2 → WRN-16-1", "30.15"),
                      ("WRN-40-2 → WRN-40-1", "29.73"), ("WRN-40-2 → WRN-16-2", "28.44")):
        assert f"zero_shot cifar100 {pair}: {cmi}" in footnote
    assert "ResNet-34 → ResNet-18" not in footnote and "cifar10 " not in footnote  # those agree


def test_network_labels_use_the_recorded_name_and_old_files_read_as_wrn():
    assert summarize.arch(RESNET18) == "ResNet-18" and summarize.arch(VGG11) == "VGG-11"
    assert summarize.arch({"depth": 16, "width": 1, "params": 175066}) == "WRN-16-1"  # results.json before families
    assert summarize.arch({"family": "resnet", "depth": 18}) == "resnet-18"  # no name: still never a WRN
    assert summarize.arch(None) is None


def test_learning_curves_average_the_runs_evaluations_and_plot(tmp_path):
    sweep = tmp_path / "sweep"
    for seed, accuracies in enumerate([(10.0, 20.0, 30.0), (12.0, 24.0)]):  # the second run stopped early
        evaluations = [{"epoch": i + 1, "student_images": 1280 * (i + 1), "test_acc": a} for i, a in enumerate(accuracies)]
        write_run(sweep / f"zs_{seed}", method="zero_shot", m=None, seed=seed, test_acc=accuracies[-1],
                  best_test_acc=accuracies[-1], budget={"iterations": 3, "budget_scale": 1.0}, evaluations=evaluations)
    write_run(sweep / "kd", m=200, test_acc=50.0)  # an older results.json: no evaluations, no line
    rows = summarize.summarize(summarize.find_runs([sweep])[0])
    (zero_shot,) = [r for r in rows if r["method"] == "zero_shot"]
    assert zero_shot["curve"] == [(1280, 11.0, None), (2560, 22.0, None)]  # as far as both runs got; no CPU times
    assert [r["curve"] for r in rows if r["method"] == "kd_at"] == [[]]
    out = tmp_path / "curves.png"
    assert summarize.main([str(sweep), "--paper", "--curves", str(out)]) == 0
    assert out.read_bytes().startswith(PNG_SIGNATURE)


def test_accuracy_at_equal_cpu_time_reads_each_runs_last_evaluation_within_it(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    for seed, points in enumerate([((10.0, 100.0), (30.0, 200.0), (50.0, 300.0)), ((20.0, 90.0), (40.0, 210.0))]):
        evaluations = [{"epoch": i + 1, "student_images": 1000 * (i + 1), "test_acc": a, "cpu_s": c}
                       for i, (a, c) in enumerate(points)]
        write_run(sweep / f"dfq_{seed}", method="dfq", m=None, seed=seed, test_acc=points[-1][0], cpu_time_s=points[-1][1] + 5,
                  budget={"iterations": 3, "budget_scale": 1.0}, evaluations=evaluations)
    write_run(sweep / "kd", m=200, test_acc=50.0)  # no CPU times recorded: '-' in the column, never a guess
    runs = summarize.find_runs([sweep])[0]
    rows = summarize.summarize(runs, at_cpu_s=205.0)
    (dfq,) = [r for r in rows if r["method"] == "dfq"]
    assert dfq["at_cpu_mean"] == pytest.approx((30.0 + 20.0) / 2)  # seed 0 at 200 s, seed 1 at 90 s
    assert dfq["cpu_time_s_mean"] == pytest.approx((305.0 + 215.0) / 2)
    assert dfq["curve"] == [(1000, 15.0, 95.0), (2000, 35.0, 205.0)]
    # a run with no evaluation that early leaves the group without a figure rather than a flattering mean
    assert summarize.summarize(runs, at_cpu_s=95.0)[0]["at_cpu_mean"] is None
    assert summarize.main([str(sweep), "--at-cpu-s", "205", "--curves", str(tmp_path / "c.png"),
                           "--curves-against", "cpu"]) == 0
    table = capsys.readouterr().out
    assert "| acc % at 205 CPU s |" in table and "| 25.00 ± 7.07 |" in table and "| CPU s (mean) |" in table
    assert (tmp_path / "c.png").read_bytes().startswith(PNG_SIGNATURE)
    assert summarize.main([str(sweep), "--at-cpu-s", "0"]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_the_same_recipe_in_two_precisions_is_two_rows_each_named(tmp_path):
    sweep = tmp_path / "sweep"
    for precision, accuracies in (("32-true", (10.0, 39.0)), ("bf16-mixed", (11.0, 30.0))):
        evaluations = [{"epoch": i + 1, "student_images": 128_000 * (i + 1), "test_acc": a} for i, a in enumerate(accuracies)]
        write_run(sweep / precision, method="zero_shot", m=None, precision=precision, test_acc=accuracies[-1],
                  best_test_acc=accuracies[-1], budget={"iterations": 2000, "budget_scale": 1.0}, evaluations=evaluations)
    rows = summarize.summarize(summarize.find_runs([sweep])[0])
    assert [(r["precision"], r["n"], r["test_acc_mean"]) for r in rows] == [("32-true", 1, 39.0), ("bf16-mixed", 1, 30.0)]
    assert summarize.mixed_precision(rows)
    assert [summarize.series_label(r, True).rsplit(", ", 1)[1] for r in rows] == ["32-true", "bf16-mixed"]
    text = summarize.markdown(rows, [])
    assert "| precision |" in text and "| 2000 it | 32-true | - | 1 | 39.00 |" in text
    assert "same seed more than once" not in text  # not one group holding seed 0 twice
    assert "| precision |" not in summarize.markdown(rows[:1], [])  # one precision: no column
    out = tmp_path / "s.csv"
    assert summarize.main([str(sweep), "--csv", str(out), "--curves", str(tmp_path / "c.png")]) == 0
    with out.open() as handle:
        assert [r["precision"] for r in csv.DictReader(handle)] == ["32-true", "bf16-mixed"]


def test_zero_shot_runs_of_one_length_at_two_batch_sizes_are_two_rows_named_in_the_curves(tmp_path):
    sweep = tmp_path / "sweep"
    for name, images, seed, accuracies in (("b64_s0", 640_000, 0, (12.0, 30.0)), ("b64_s1", 640_000, 1, (10.0, 26.0)),
                                           ("b128_s0", 1_280_000, 0, (11.0, 35.0))):
        evaluations = [{"epoch": i + 1, "student_images": images // 2 * (i + 1), "test_acc": a}
                       for i, a in enumerate(accuracies)]
        write_run(sweep / name, method="zero_shot", m=None, seed=seed, test_acc=accuracies[-1],
                  best_test_acc=accuracies[-1], evaluations=evaluations,
                  budget={"iterations": 1000, "budget_scale": 1.0, "student_images": images})
    rows = summarize.summarize(summarize.find_runs([sweep])[0])
    assert [(r["budget"], r["n"], r["test_acc_mean"]) for r in rows] == [
        ("1000 it, 1280 img/it", 1, 35.0), ("1000 it, 640 img/it", 2, 28.0)]
    assert rows[1]["curve"] == [(320_000, 11.0, None), (640_000, 28.0, None)]  # the mean over its two seeds
    labels = summarize.curve_labels(rows)
    assert labels == ["zero_shot, cifar10, WRN-40-2 → WRN-16-1, 1000 it, 1280 img/it (n=1)",
                      "zero_shot, cifar10, WRN-40-2 → WRN-16-1, 1000 it, 640 img/it (n=2)"]
    assert summarize.curve_labels(rows[:1]) == ["zero_shot, cifar10, WRN-40-2 → WRN-16-1 (n=1)"]  # alone: no budget
    assert summarize.budget_label({"iterations": 800, "budget_scale": 0.01, "student_images": 256_000}) == \
        "800 it, 320 img/it ×0.01"
    assert summarize.main([str(sweep), "--curves", str(tmp_path / "c.png")]) == 0


def test_full_budgets_follow_spec_section_4():
    from scripts.paper_numbers import full_budget_images

    assert full_budget_images("zero_shot", "cifar10", None) == 80_000 * 10 * 128
    assert full_budget_images("zero_shot_modified", "cifar10", None) == 65_000 * 10 * 128
    assert full_budget_images("kd_at", "cifar10", 200) == int(200 * 5000 / 200) * 200 * 10  # 10 M images
    assert full_budget_images("scratch", "svhn", 25) == int(100 * 5000 / 25) * 25 * 10
    assert full_budget_images("abm", "cifar10", None) is None


def test_the_command_line_says_where_it_wrote_and_the_figure_has_no_empty_band(tree, tmp_path):
    out = {name: tmp_path / name for name in ("s.png", "c.png", "s.csv")}
    done = subprocess.run([sys.executable, str(SCRIPTS / "summarize.py"), str(tree), "--plot", str(out["s.png"]),
                           "--csv", str(out["s.csv"])], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines() == [f"summarize: wrote {out['s.csv']} (the table as CSV)",
                                        f"summarize: wrote {out['s.png']} (accuracy vs M and the teacher/student table)"]
    import matplotlib.image

    pixels = matplotlib.image.imread(out["s.png"])[..., :3]
    inked = (pixels.reshape(pixels.shape[0], -1) < 0.95).any(axis=1)  # rows holding anything but white
    last = max(i for i, row in enumerate(inked) if row)
    assert last > 0.93 * pixels.shape[0]  # the table reaches the bottom: no empty band below it


def test_the_scratch_column_holds_the_students_no_teacher_runs(tree):
    rows = summarize.summarize(summarize.find_runs([tree])[0])
    # no full-data scratch run of WRN-16-1 here: its few-shot scratch runs at M = 10 (20 and 26 %)
    assert summarize.scratch_cell(rows, "cifar10", "WRN-16-1") == "23.00 ± 4.24\n(M = 10)"
    full = {**rows[0], "method": "scratch", "teacher": None, "m": None, "m_label": "full", "n": 1,
            "test_acc_mean": 93.5, "test_acc_std": None}
    assert summarize.scratch_cell([*rows, full], "cifar10", "WRN-16-1") == summarize.cell(93.5, None)


def test_learning_curve_legends_say_which_number_is_m():
    rows = [{"method": "kd_at", "dataset": "cifar10", "teacher": "WRN-40-2", "student": "WRN-16-1", "m": 2, "n": 1,
             "budget": "10 ep", "precision": "32-true", "from": None}]
    assert summarize.curve_labels(rows) == ["kd_at, cifar10, WRN-40-2 → WRN-16-1, M = 2 (n=1)"]
