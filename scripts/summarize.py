"""Summarise zskt runs: every results.json under the given sweep or run dirs, as one table.

    python scripts/summarize.py outputs/multirun/<stamp> [more dirs] [--paper]
        [--csv summary.csv] [--json summary.json] [--plot summary.png] [--transitions curves.png]
        [--curves learning.png] [--curves-against cpu] [--at-cpu-s SECONDS]

Runs are grouped by (method, from, dataset, teacher, student, M, budget, precision): `from` is the
method of the model a run starts from (fine-tuning and belief matching, read from the results.json
next to its student.checkpoint), `budget` the training length (so short test runs never mix with
full-budget ones; for zero-shot also the student images per iteration, so batch sizes never mix),
`precision` the Trainer's (fp32 and bf16-mixed runs of the same recipe are two rows, and the table,
plots and curves name the precision when the runs hold more than one). Each group shows the final
test accuracy (the headline) as mean ± sample standard deviation (n - 1) over its runs (seeds), the
best-of-evaluations accuracy (the best of the periodic test-set evaluations: test-set model
selection, the number the originals report) in its own column, the count n, the mean wall time of a
run (and its mean CPU time, where the runs recorded one), the images the student was trained on (results.json's budget.student_images: the unit that puts
methods on equal compute), and for belief matching (method abm) the mean transition error.
Runs without a results.json (still running, or crashed) and runs whose status is not
"completed" are listed in a section of their own.

--paper adds the published numbers of docs/method.md#published-numbers (scripts/paper_numbers.py) beside each
row where one exists: the paper's, the reproducibility study's and, for the data-free KD benchmark's
networks (experiment=datafree_cifar10 / datafree_cifar100 / datafree_teachers), that benchmark's
(the Fast-Datafree README; a footnote names the rows where the CMI README disagrees).
--plot writes ONE PNG with two panels: top, accuracy vs M per method
(the paper's Figure 2: one line per method/dataset/teacher/student and budget scale, error bars = std, full
data dashed, zero-shot dotted); bottom, a teacher/student table (the paper's Table 1).
--curves writes a PNG of the learning curves: each group's test accuracy at its periodic evaluations
(results.json's evaluations, the mean over its runs) against the images the student trained on, log
scale; with --paper the published number of the row is marked at the published run's full budget.
--curves-against cpu draws them against the CPU hours the runs had spent at each evaluation instead
(the evaluations' cpu_s: the cost axis when methods' images differ in price).
--at-cpu-s SECONDS adds a column: each group's test accuracy at equal CPU time, that of each run's
last evaluation made within SECONDS of CPU time (mean ± std over the runs; '-' when a run recorded no
CPU times or made no evaluation that early).
--transitions writes a PNG of the transition curves of every belief-matching group (the paper's
Figure 4): the student's p_j solid, the teacher's dashed, each the mean over the group's runs of
the transition_curves.csv its run wrote.

Exit status 2 with one line on stderr when a DIR does not exist or holds no results.json.
"""

from __future__ import annotations

import argparse
import collections
import csv
import itertools
import json
import math
import os
import statistics
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from paper_numbers import BENCHMARK_CMI, BENCHMARK_SOURCE, format_value, full_budget_images, published  # noqa: E402

from zskt.network_names import entry_name  # noqa: E402
# the run dir's file names, from the package that writes them (method=abm writes TRANSITION_CURVES beside results.json)
from zskt.rundir import CHECKPOINTS, LAST_CHECKPOINT, RESULTS, RUN_CONFIG, TRANSITION_CURVES  # noqa: E402
DATA_FREE = ("dfq", "deepinversion", "fast", "fast_2", "fast_5", "fast_10")  # the field's other data-free methods
ZERO_SHOT = ("zero_shot", "zero_shot_modified", *DATA_FREE)  # M = 0: no training images at all
NOT_TRAINED = ("abm", "evaluate")                 # evaluations of an existing model
SOURCES = ("paper", "study", "benchmark")          # the published numbers' columns (scripts/paper_numbers.py)
METHOD_ORDER = ("scratch", "kd_at", "zero_shot", "zero_shot_modified", *DATA_FREE, "finetune", "abm", "evaluate")
NOTE = ("final = test accuracy at the end of training (the headline); best-of-evals = best of the periodic "
        "test-set evaluations (test-set model selection, the number the originals report); "
        "mean ± sample std (n - 1) over the group's runs (seeds); n = runs")
CSV_COLUMNS = ("method", "from", "dataset", "teacher", "student", "m", "budget", "precision", "n", "seeds",
               "test_acc_mean", "test_acc_std", "best_test_acc_mean", "best_test_acc_std", "mte_mean", "mte_std",
               "teacher_test_acc_mean", "paper", "study", "benchmark", "wall_time_s_mean", "cpu_time_s_mean",
               "student_images_mean", "at_cpu_mean", "at_cpu_std")


class SummaryError(Exception):
    """A problem with the command line's directories: one line, exit status 2."""


@dataclass(frozen=True)
class Run:
    """One completed run, reduced to what the summary needs."""

    key: tuple  # (method, from, dataset, teacher, student, m, budget, precision)
    seed: int | None
    test_acc: float | None
    best_test_acc: float | None
    mte: float | None
    teacher_test_acc: float | None
    wall_time_s: float | None
    cpu_time_s: float | None  # the process's CPU seconds (runs made before it was recorded: None)
    student_images: int | None  # images the student took optimiser steps on (results.json's budget)
    budget_scale: float  # method.budget_scale: runs of one method at different scales are different curves
    job: Path  # the run's directory (belief matching's transition_curves.csv is read from it)
    evaluations: tuple = ()  # its learning curve: (student images, test accuracy, CPU s or None) per evaluation

    def accuracy_at_cpu(self, seconds: float) -> float | None:
        """The test accuracy of the last evaluation made within `seconds` of CPU time (None: no CPU
        times recorded, or no evaluation that early)."""
        if not self.evaluations or any(cpu is None for _, _, cpu in self.evaluations):
            return None
        within = [acc for _, acc, cpu in self.evaluations if cpu <= seconds]
        return within[-1] if within else None


@dataclass(frozen=True)
class Unfinished:
    """A job dir without a completed results.json."""

    path: str
    status: str
    detail: str


# ---------------------------------------------------------------------------- reading runs
def arch(node: dict | None) -> str | None:
    """A results.json student/teacher entry's network as people write it: 'ResNet-18', 'WRN-40-2'
    (None: no teacher); `zskt.network_names.entry_name`, torch-free."""
    return entry_name(node)


def budget_label(budget: dict | None) -> str:
    """'80000 it, 1280 img/it' (zero-shot: its iterations and the student images of each, so runs of
    one length at different batch sizes never join), '200 ep', '2 ep ×0.01' (a scaled-down budget),
    'K 100, N 1000' (belief matching: its steps and images, so a short evaluation never joins a full
    one); '-' when the budget says nothing."""
    budget = budget or {}
    if "iterations" in budget:
        text = f"{budget['iterations']} it"
        if budget.get("student_images") and budget["iterations"]:
            text += f", {budget['student_images'] // budget['iterations']} img/it"
    elif "epochs" in budget:
        text = f"{budget['epochs']} ep"
    elif "n_images" in budget:
        return f"K {budget['k']}, N {budget['n_images']}"
    else:
        return "-"
    scale = budget.get("budget_scale", 1.0)
    return text if scale == 1.0 else f"{text} ×{scale:g}"


def origin(job_dir: Path, results: dict) -> str | None:
    """The method of the model this run started from (the results.json beside its student.checkpoint);
    None for runs that start from scratch or from a checkpoint with no results.json beside it."""
    start = results.get("student_checkpoint")
    if not start and (job_dir / RUN_CONFIG).is_file():
        start = ((yaml.safe_load((job_dir / RUN_CONFIG).read_text()) or {}).get("student") or {}).get("checkpoint")
    if not start:
        return None
    source = Path(start).parent / RESULTS
    if not source.is_file():
        return None
    method = json.loads(source.read_text()).get("method")
    if results.get("step_on", "student") != "student":
        method = f"{method}, steps on {results['step_on']}"
    return method


def load_run(path: Path) -> Run | Unfinished:
    """A results.json as a `Run`, or `Unfinished` when it is not a completed run."""
    try:
        results = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        return Unfinished(str(path.parent), "unreadable", f"{RESULTS}: {err}")
    if results.get("status") != "completed":
        return Unfinished(str(path.parent), str(results.get("status")), str(results.get("message", "")))
    budget = results.get("budget") or {}
    key = (results["method"], origin(path.parent, results), results["dataset"], arch(results.get("teacher")),
           arch(results["student"]), results.get("m"), budget_label(budget), results.get("precision"))
    return Run(key, results.get("seed"), results.get("test_acc"), results.get("best_test_acc"), results.get("mte"),
               (results.get("teacher") or {}).get("test_acc"), results.get("wall_time_s"), results.get("cpu_time_s"),
               budget.get("student_images"), budget.get("budget_scale", 1.0), path.parent,
               tuple((e["student_images"], e["test_acc"], e.get("cpu_s")) for e in results.get("evaluations") or []))


def find_runs(dirs: list[Path]) -> tuple[list[Run], list[Unfinished]]:
    """Every results.json under `dirs` (recursively), and the job dirs (a .hydra/ or run_config.yaml)
    that have none. SummaryError if a dir does not exist or holds no results.json."""
    runs: dict[Path, Run | Unfinished] = {}
    for top in dirs:
        if not top.is_dir():
            raise SummaryError(f"{top} is not a directory: pass sweep or run directories (e.g. outputs/multirun/<stamp>)")
        found, without = 0, 0
        for here, subdirs, files in os.walk(top):
            subdirs[:] = sorted(d for d in subdirs if not d.startswith(".") and d != CHECKPOINTS)
            job = Path(here)
            if RESULTS in files:
                found += 1
                runs[job.resolve()] = load_run(job / RESULTS)
            elif RUN_CONFIG in files or (job / ".hydra").is_dir():
                without += 1
                last = job / CHECKPOINTS / LAST_CHECKPOINT
                hint = f" (has {CHECKPOINTS}/{LAST_CHECKPOINT}: resume=true continues it)" if last.is_file() else ""
                runs[job.resolve()] = Unfinished(str(job), f"no {RESULTS}", f"still running or crashed{hint}")
        if not found:
            raise SummaryError(f"{top} holds no {RESULTS} ({without} job dirs without one: still running or crashed)")
    completed = [r for r in runs.values() if isinstance(r, Run)]
    return completed, [r for r in runs.values() if isinstance(r, Unfinished)]


# ---------------------------------------------------------------------------- statistics
def mean_std(values: list[float | None]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (n - 1) of the values present; std None below 2 values."""
    present = [v for v in values if v is not None]
    if not present:
        return None, None
    return statistics.fmean(present), (statistics.stdev(present) if len(present) > 1 else None)


def m_label(method: str, m: int | None) -> str:
    """M as the tables print it: '0' for zero-shot, 'full' for the full train set, '-' for evaluations."""
    if m is not None:
        return str(m)
    return "0" if method in ZERO_SHOT else "-" if method in NOT_TRAINED else "full"


def method_rank(method: str) -> int:
    return METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER)


def sort_key(row: dict) -> tuple:
    method = row["method"]
    return (row["dataset"], method_rank(method), method, row["from"] or "", row["teacher"] or "", row["student"],
            row["m"] if row["m"] is not None else math.inf, row["budget"], row["precision"] or "")


def mixed_precision(rows: list[dict]) -> bool:
    """Whether the rows hold runs of more than one precision (then every label names its precision)."""
    return len({r["precision"] for r in rows}) > 1


def mean_curve(curves: list[tuple]) -> list[tuple[int, float, float | None]]:
    """The group's learning curve: the mean test accuracy (and mean CPU seconds, None unless every run
    recorded them) over its runs at each evaluation, as far as every run got (runs of a group share the
    schedule: same method, budget and evaluations)."""
    length = min((len(c) for c in curves), default=0)
    curve = []
    for i in range(length):
        cpus = [c[i][2] for c in curves]
        cpu = None if None in cpus else statistics.fmean(cpus)
        curve.append((curves[0][i][0], statistics.fmean(c[i][1] for c in curves), cpu))
    return curve


def summarize(runs: list[Run], at_cpu_s: float | None = None) -> list[dict]:
    """One row per group: its key fields, n, seeds, and mean/std of each metric; published numbers added;
    with `at_cpu_s`, the accuracy at that CPU time (`at_cpu_mean`, `at_cpu_std`; Run.accuracy_at_cpu)."""
    groups: dict[tuple, list[Run]] = {}
    for run in runs:
        groups.setdefault(run.key, []).append(run)
    rows = []
    for key, members in groups.items():
        method, start, dataset, teacher, student, m, budget, precision = key
        row = {"method": method, "from": start, "dataset": dataset, "teacher": teacher, "student": student,
               "m": m, "m_label": m_label(method, m), "budget": budget, "precision": precision,
               "budget_scale": members[0].budget_scale,
               "n": len(members),
               "seeds": sorted((r.seed for r in members if r.seed is not None))}
        for metric in ("test_acc", "best_test_acc", "mte", "teacher_test_acc", "wall_time_s", "cpu_time_s",
                       "student_images"):
            row[f"{metric}_mean"], row[f"{metric}_std"] = mean_std([getattr(r, metric) for r in members])
        row["at_cpu_s"] = at_cpu_s
        row["at_cpu_mean"] = row["at_cpu_std"] = None
        if at_cpu_s is not None:
            at = [r.accuracy_at_cpu(at_cpu_s) for r in members]
            if None not in at:  # a mean over only the runs that got there would flatter the group
                row["at_cpu_mean"], row["at_cpu_std"] = mean_std(at)
        numbers = published(method, start, dataset, teacher, student, m, "mte" if method == "abm" else "test_acc")
        for source in SOURCES:
            row[source] = numbers[source] if numbers else None
        row["jobs"] = [str(r.job) for r in members]
        row["curve"] = mean_curve([r.evaluations for r in members])
        rows.append(row)
    return sorted(rows, key=sort_key)


# ---------------------------------------------------------------------------- output
def cell(mean: float | None, std: float | None, digits: int = 2) -> str:
    """'82.44 ± 0.21'; a single run shows its value alone; '-' when absent."""
    if mean is None:
        return "-"
    return f"{mean:.{digits}f}" if std is None else f"{mean:.{digits}f} ± {std:.{digits}f}"


def table_columns(rows: list[dict], paper: bool) -> list[tuple[str, Callable[[dict], str]]]:
    """(header, row -> text) for the Markdown table; `from` and MTE only when some row has them."""
    columns = [("method", lambda r: r["method"])]
    if any(r["from"] for r in rows):
        columns.append(("from", lambda r: r["from"] or ""))
    columns += [("dataset", lambda r: r["dataset"]), ("teacher", lambda r: r["teacher"] or "-"),
                ("student", lambda r: r["student"]), ("M", lambda r: r["m_label"]), ("budget", lambda r: r["budget"])]
    if mixed_precision(rows):
        columns.append(("precision", lambda r: r["precision"] or "?"))
    columns += [("student images", lambda r: "-" if r["student_images_mean"] is None else f"{r['student_images_mean']:,.0f}"),
                ("n", lambda r: str(r["n"])),
                ("final acc %", lambda r: cell(r["test_acc_mean"], r["test_acc_std"])),
                ("best-of-evals acc % (test-set selection)", lambda r: cell(r["best_test_acc_mean"], r["best_test_acc_std"]))]
    if any(r["mte_mean"] is not None for r in rows):
        columns.append(("MTE", lambda r: cell(r["mte_mean"], r["mte_std"], 3)))
    if paper:
        columns += [("paper", lambda r: format_value(r["paper"])), ("study", lambda r: format_value(r["study"]))]
        if any(r["benchmark"] is not None for r in rows):  # the data-free KD benchmark's networks and datasets
            columns.append(("benchmark", lambda r: format_value(r["benchmark"])))
    if rows and rows[0]["at_cpu_s"] is not None:
        columns.append((f"acc % at {rows[0]['at_cpu_s']:g} CPU s", lambda r: cell(r["at_cpu_mean"], r["at_cpu_std"])))
    columns.append(("wall s (mean)", lambda r: "-" if r["wall_time_s_mean"] is None else f"{r['wall_time_s_mean']:.0f}"))
    if any(r["cpu_time_s_mean"] is not None for r in rows):
        columns.append(("CPU s (mean)", lambda r: "-" if r["cpu_time_s_mean"] is None else f"{r['cpu_time_s_mean']:.0f}"))
    return columns


def benchmark_footnote(rows: list[dict]) -> str:
    """Where the benchmark column comes from, that its ZSKT is not the paper's recipe, and the rows on
    which the CMI README's copy of the table disagrees (scripts/paper_numbers.py)."""
    text = (f"benchmark: the data-free KD benchmark's published numbers, from {BENCHMARK_SOURCE}: ZSKT as that "
            "benchmark ran it (its own recipe: no attention term, T = 20, SGD; not the paper's), its DeepInv-2k, DFQ "
            "and Fast-2/5/10 (methods deepinversion, dfq, fast_2/5/10; fast = Fast-10), and its "
            "teachers' and students' scratch accuracies.")
    differ = []
    for r in rows:
        cmi = BENCHMARK_CMI.get((r["method"], r["from"], r["dataset"], r["teacher"], r["student"], r["m"], "test_acc"))
        if cmi is not None and r["benchmark"] is not None:
            pair = f"{r['teacher']} → {r['student']}" if r["teacher"] else r["student"]
            differ.append(f"{r['method']} {r['dataset']} {pair}: {format_value(cmi)} (here {format_value(r['benchmark'])})")
    if differ:
        text += " The CMI README (github zju-vipa/CMI) gives other numbers for " + "; ".join(differ) + "."
    return text


def table_lines(rows: list[dict], paper: bool = False) -> list[str]:
    """The groups as the lines of one Markdown table (header, rule, a line per group)."""
    columns = table_columns(rows, paper)
    lines = ["| " + " | ".join(h for h, _ in columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    return lines + ["| " + " | ".join(f(row) for _, f in columns) + " |" for row in rows]


def markdown(rows: list[dict], unfinished: list[Unfinished], paper: bool = False) -> str:
    """The summary as Markdown: the results table, then the unfinished runs."""
    lines = [f"## Results: {sum(r['n'] for r in rows)} completed runs in {len(rows)} groups", "", NOTE + ".", ""]
    if paper:
        lines += ["paper / study: published numbers of the paper (Micaelli & Storkey, 2019) and its reproducibility "
                  "study (scripts/paper_numbers.py; MTE for abm rows, else test accuracy %).", ""]
    lines += table_lines(rows, paper)
    if paper and any(r["benchmark"] is not None for r in rows):
        lines += ["", benchmark_footnote(rows)]
    repeated = [row for row in rows if len(set(row["seeds"])) < len(row["seeds"])]
    if repeated:
        lines += ["", f"Note: {len(repeated)} group(s) hold the same seed more than once (the same run in two dirs?): "
                  + "; ".join(f"{r['method']} {r['dataset']} {r['student']} M={r['m_label']} seeds {r['seeds']}"
                              for r in repeated)]
    lines += ["", f"## Unfinished runs: {len(unfinished)}", ""]
    if unfinished:
        lines += ["| run dir | status | detail |", "|---|---|---|"]
        lines += [f"| {u.path} | {u.status} | {u.detail} |" for u in sorted(unfinished, key=lambda u: u.path)]
    else:
        lines.append("none")
    return "\n".join(lines) + "\n"


def write_csv(rows: list[dict], path: Path) -> None:
    """One line per group (CSV_COLUMNS); seeds joined with ';', published numbers as printed."""
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({**row, "m": row["m_label"], "seeds": ";".join(map(str, row["seeds"])),
                             **{source: format_value(row[source]) for source in SOURCES}})


def write_json(rows: list[dict], unfinished: list[Unfinished], path: Path) -> None:
    """{"note", "groups": rows, "unfinished": [{path, status, detail}]}; published values as numbers or [mean, std]."""
    document = {"note": NOTE, "groups": rows, "unfinished": [u.__dict__ for u in unfinished]}
    path.write_text(json.dumps(document, indent=2) + "\n")


# ---------------------------------------------------------------------------- plot
def series_label(row: dict, with_precision: bool = False) -> str:
    start = f" from {row['from']}" if row["from"] else ""
    label = f"{row['method']}{start}, {row['dataset']}, {row['teacher'] or 'no teacher'} → {row['student']}"
    return f"{label}, {row['precision'] or 'precision ?'}" if with_precision else label


def networks_of(row: dict) -> tuple:
    """What a Figure 2 line is drawn for, whatever its budget: (method, from, dataset, teacher, student,
    precision)."""
    return row["method"], row["from"], row["dataset"], row["teacher"], row["student"], row["precision"]


def curve_series(rows: list[dict]) -> list[tuple[list[dict], list[dict]]]:
    """Figure 2's lines: per (method, from, dataset, teacher, student, precision, budget scale), its rows over M sorted
    by M, and the full-data rows of the same method and networks (drawn once, with its first line). A
    longer run at the same M (a larger method.budget_scale) is a line of its own, not a point of this one."""
    lines: dict[tuple, list[dict]] = {}
    full: dict[tuple, list[dict]] = {}
    for row in rows:
        if row["method"] in NOT_TRAINED + ZERO_SHOT:
            continue
        networks = networks_of(row)
        if row["m"] is None:
            full.setdefault(networks, []).append(row)
        else:
            lines.setdefault(networks + (row["budget_scale"],), []).append(row)
    return [(sorted(points, key=lambda r: r["m"]), full.pop(key[:-1], [])) for key, points in lines.items()]


def draw_curves(ax, rows: list[dict], paper: bool) -> None:
    """Figure 2: test accuracy vs M, one line per series, std error bars; full data dashed, zero-shot dotted."""
    drawn, marked, colors = set(), set(), itertools.cycle([f"C{i}" for i in range(10)])
    named = mixed_precision(rows)
    for points, full_rows in curve_series(rows):
        color = next(colors)
        scale = points[0]["budget_scale"]
        xs, ys = [r["m"] for r in points], [r["test_acc_mean"] for r in points]
        ax.errorbar(xs, ys, yerr=[r["test_acc_std"] or 0.0 for r in points], marker="o", capsize=3, color=color,
                    label=series_label(points[0], named) + ("" if scale == 1.0 else f", budget ×{scale:g}"))
        for full in full_rows:
            ax.axhline(full["test_acc_mean"], color=color, linestyle="--", label=f"{series_label(full, named)}, full data")
        if paper and networks_of(points[0]) not in marked:  # the published crosses once per method and networks
            marked.add(networks_of(points[0]))
            marks = [(r["m"], r["study"] if r["study"] is not None else r["paper"]) for r in points]
            marks = [(x, v[0] if isinstance(v, tuple) else v) for x, v in marks if v is not None]
            if marks:
                ax.plot(*zip(*marks), linestyle="none", marker="x", color=color, markersize=8)
        drawn.add((points[0]["dataset"], points[0]["student"]))
    for row in rows:
        if row["method"] in ZERO_SHOT and (row["dataset"], row["student"]) in drawn:
            ax.axhline(row["test_acc_mean"], linestyle=":", color=next(colors),
                       label=f"{series_label(row, named)} (M = 0, {row['budget']})")
    if not drawn:
        ax.text(0.5, 0.5, "no runs over M (few-shot sweeps) to draw", ha="center", va="center", transform=ax.transAxes)
    title = "Test accuracy vs M (images per class); error bars: sample std over seeds"
    ax.set(xlabel="M (images per class)", ylabel="final test accuracy (%)",
           title=title + ("; x: published" if paper else ""))
    if drawn:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")


def scratch_cell(rows: list[dict], dataset: str, student: str) -> str:
    """The student's own accuracy without a teacher: its full-data scratch runs, else its no-teacher
    (few-shot scratch) runs at each M the sweep holds, one line per M."""
    own = [r for r in rows
           if r["method"] == "scratch" and not r["teacher"] and (r["dataset"], r["student"]) == (dataset, student)]
    full = [r for r in own if r["m"] is None]
    if full:
        best = max(full, key=lambda r: r["n"])
        return cell(best["test_acc_mean"], best["test_acc_std"])
    return "\n".join(f"{cell(r['test_acc_mean'], r['test_acc_std'])}\n(M = {r['m_label']})"
                     for r in sorted(own, key=lambda r: r["m"])) or "-"


def table_pairs(rows: list[dict]) -> int:
    """How many teacher/student pairs the table draws (its lines)."""
    return len({(r["dataset"], r["teacher"], r["student"]) for r in rows if r["teacher"] and r["method"] not in NOT_TRAINED})


def draw_table(ax, rows: list[dict], max_columns: int = 6) -> None:
    """Table 1: one line per (dataset, teacher, student), one column per (method, from, M) - the columns
    with the most pairs first - plus the teacher's accuracy and the student's own scratch accuracy."""
    ax.axis("off")
    taught = [r for r in rows if r["teacher"] and r["method"] not in NOT_TRAINED]
    if not taught:
        ax.text(0.5, 0.5, "no teacher/student runs", ha="center", va="center", transform=ax.transAxes)
        return
    pairs = sorted({(r["dataset"], r["teacher"], r["student"]) for r in taught})
    pairs_of: dict[tuple, set] = {}
    for r in taught:
        pairs_of.setdefault((r["method"], r["from"], r["m_label"]), set()).add((r["dataset"], r["teacher"], r["student"]))
    columns = sorted(pairs_of, key=lambda c: (-len(pairs_of[c]), method_rank(c[0]), c[0], c[1] or "",
                                              int(c[2]) if c[2].isdigit() else math.inf))[:max_columns]
    cells = []
    for dataset, teacher, student in pairs:
        mine = [r for r in taught if (r["dataset"], r["teacher"], r["student"]) == (dataset, teacher, student)]
        teacher_acc = mean_std([r["teacher_test_acc_mean"] for r in mine])[0]
        line = [cell(teacher_acc, None), scratch_cell(rows, dataset, student)]
        for method, start, m in columns:
            matches = [r for r in mine if (r["method"], r["from"], r["m_label"]) == (method, start, m)]
            match = max(matches, key=lambda r: r["n"], default=None)  # several budgets: the one with most runs
            line.append(cell(match["test_acc_mean"], match["test_acc_std"]) if match else "-")
        cells.append(line)
    headers = ["teacher acc", "student scratch"] + ["\n".join([method] + ([f"from {start}"] if start else []) + [f"M = {m}"])
                                                    for method, start, m in columns]
    table = ax.table(cellText=cells, rowLabels=[f"{d}: {t} → {s}" for d, t, s in pairs], colLabels=headers,
                     loc="center", cellLoc="center")
    table.auto_set_font_size(False)
    table.set_fontsize(8)
    table.scale(1, 2.2)
    ax.set_title("Teacher/student pairs: final test accuracy % (mean ± std over seeds)")


def plot(rows: list[dict], path: Path, paper: bool = False) -> None:
    """One PNG, two panels: accuracy vs M (top), the teacher/student table (bottom)."""
    from matplotlib.figure import Figure  # Agg canvas: no display needed

    # the table's panel as tall as its lines (a header of up to three lines, then one per pair), so the
    # figure has no empty band; none without teacher/student pairs
    pairs = table_pairs(rows)
    table_inches = 0.55 * (pairs + 3) if pairs else 0.0
    fig = Figure(figsize=(12, 7 + table_inches), layout="constrained")
    if pairs:
        curves, table = fig.subplots(2, 1, height_ratios=[7, table_inches])
        draw_table(table, rows)
    else:
        curves = fig.subplots()
    draw_curves(curves, rows, paper)
    fig.savefig(path, dpi=110)


def read_curves(job: str) -> dict[str, list[float]] | None:
    """A belief-matching run's transition_curves.csv as columns (k, p_student, p_teacher, ...); None if absent."""
    path = Path(job) / TRANSITION_CURVES
    if not path.is_file():
        return None
    with path.open() as handle:
        records = list(csv.DictReader(handle))
    return {name: [float(r[name]) for r in records] for name in records[0]} if records else None


def transition_groups(rows: list[dict]) -> list[tuple[dict, int, list[float], list[float]]]:
    """(row, K, mean student curve, mean teacher curve) per belief-matching group with curves on disk;
    SummaryError when there is none."""
    groups = []
    for row in rows:
        curves = [c for c in (read_curves(job) for job in row["jobs"]) if c] if row["method"] == "abm" else []
        if curves:
            length = min(len(c["k"]) for c in curves)
            groups.append((row, length, *[[statistics.fmean(c[name][i] for c in curves) for i in range(length)]
                                           for name in ("p_student", "p_teacher")]))
    if not groups:
        raise SummaryError(f"--transitions: no belief-matching (method=abm) run with a {TRANSITION_CURVES} to draw")
    return groups


def plot_transitions(groups: list[tuple[dict, int, list[float], list[float]]], path: Path) -> None:
    """Figure 4: per belief-matching group, the mean over its runs of the student's (solid) and the
    teacher's (dashed) transition curve, p_j against k, with the group's MTE in the legend."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 5), layout="constrained")
    ax = fig.subplots()
    for (row, length, student, teacher), color in zip(groups, itertools.cycle([f"C{i}" for i in range(10)])):
        who = f"{row['student']} student from {row['from'] or 'an unknown method'}"
        ax.plot(range(length), student, color=color, label=f"{who} (MTE {cell(row['mte_mean'], row['mte_std'], 3)}, n = {row['n']})")
        ax.plot(range(length), teacher, color=color, linestyle="--", label=f"its teacher {row['teacher']}")
    ax.set(xlabel="k (gradient steps on the student's input)", ylabel="$p_j$ (target-class probability)", ylim=(0, 1),
           title="Transition curves: mean $p_j$ over images and targets; MTE = mean |student - teacher|")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.savefig(path, dpi=110)


def curve_labels(rows: list[dict]) -> list[str]:
    """The learning-curve legend of each row: its networks, M, and its budget where another row has the
    same method, networks and M (a batch-size or schedule-length comparison), and the precision when
    the rows hold more than one."""
    named = mixed_precision(rows)
    lines = collections.Counter((networks_of(r), r["m"]) for r in rows)
    labels = []
    for row in rows:
        m = "" if row["method"] in ZERO_SHOT else f", M = {m_label(row['method'], row['m'])}"
        budget = f", {row['budget']}" if lines[(networks_of(row), row["m"])] > 1 else ""
        labels.append(f"{series_label(row, named)}{m}{budget} (n={row['n']})")
    return labels


def plot_learning_curves(rows: list[dict], path: Path, paper: bool = False, against: str = "images") -> None:
    """Test accuracy against the images the student trained on (log scale), one line per group with a
    learning curve; with `paper`, the published figure of the same row marked (x) at its run's full budget.
    `against="cpu"`: against the CPU hours spent at each evaluation (groups whose runs recorded them)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    colors = itertools.cycle([f"C{i}" for i in range(10)])
    by_cpu = against == "cpu"
    curves = [r for r in rows if r["curve"] and not (by_cpu and any(cpu is None for _, _, cpu in r["curve"]))]
    for row, label in zip(curves, curve_labels(curves)):
        color = next(colors)
        images, accuracy, cpu = zip(*row["curve"])
        ax.plot([s / 3600 for s in cpu] if by_cpu else images, accuracy, marker="o", color=color, label=label)
        published_value = row["study"] if row["study"] is not None else row["paper"]
        full = full_budget_images(row["method"], row["dataset"], row["m"])
        if paper and not by_cpu and published_value is not None and full is not None:
            value = published_value[0] if isinstance(published_value, tuple) else published_value
            ax.plot([full], [value], marker="x", markersize=10, color=color, linestyle="none")
    if by_cpu:
        ax.set(xlabel="CPU hours spent (every thread of the run's process)", ylabel="test accuracy (%)",
               title="Learning curves against CPU time")
    else:
        ax.set(xscale="log", xlabel="images the student trained on (log scale)", ylabel="test accuracy (%)",
               title="Learning curves" + ("; x: published, at its full budget" if paper else ""))
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    plt.close(fig)


# ---------------------------------------------------------------------------- command line
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="summarize.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dirs", nargs="+", type=Path, metavar="DIR",
                        help="sweep or run directories; every results.json below them is read")
    parser.add_argument("--paper", action="store_true", help="add the published (paper, study, benchmark) numbers beside each row")
    parser.add_argument("--csv", type=Path, metavar="FILE", help="also write the table as CSV")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write groups and unfinished runs as JSON")
    parser.add_argument("--plot", type=Path, metavar="FILE",
                        help="write one PNG: accuracy vs M (Figure 2) above the teacher/student table (Table 1)")
    parser.add_argument("--curves", type=Path, metavar="FILE",
                        help="write a PNG of the learning curves: test accuracy against student images (log scale)")
    parser.add_argument("--curves-against", choices=("images", "cpu"), default="images",
                        help="the learning curves' x axis: student images (default) or the CPU hours spent")
    parser.add_argument("--at-cpu-s", type=float, metavar="SECONDS",
                        help="add a column: each group's test accuracy at its last evaluation within SECONDS of CPU time")
    parser.add_argument("--transitions", type=Path, metavar="FILE",
                        help="write a PNG of the belief-matching transition curves, student vs teacher (Figure 4)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        runs, unfinished = find_runs(args.dirs)
    except SummaryError as err:
        print(f"summarize: error: {err}", file=sys.stderr)
        return 2
    if args.at_cpu_s is not None and args.at_cpu_s <= 0:
        print(f"summarize: error: --at-cpu-s {args.at_cpu_s:g} must be a positive number of seconds", file=sys.stderr)
        return 2
    rows = summarize(runs, args.at_cpu_s)
    try:  # checked before anything is written
        curves = transition_groups(rows) if args.transitions else []
    except SummaryError as err:
        print(f"summarize: error: {err}", file=sys.stderr)
        return 2
    print(markdown(rows, unfinished, args.paper), end="")
    written = []  # said on stderr: stdout is the table, often redirected into a file
    if args.csv:
        write_csv(rows, args.csv)
        written.append((args.csv, "the table as CSV"))
    if args.json:
        write_json(rows, unfinished, args.json)
        written.append((args.json, "groups and unfinished runs as JSON"))
    if args.plot:
        plot(rows, args.plot, args.paper)
        written.append((args.plot, "accuracy vs M and the teacher/student table"))
    if args.transitions:
        plot_transitions(curves, args.transitions)
        written.append((args.transitions, "the belief-matching transition curves"))
    if args.curves:
        plot_learning_curves(rows, args.curves, args.paper, args.curves_against)
        written.append((args.curves, "the learning curves"))
    for path, what in written:
        print(f"summarize: wrote {path.resolve()} ({what})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
