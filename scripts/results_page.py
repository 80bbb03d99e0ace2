"""Regenerate the record-backed tables and plots of the results pages from the run records in docs/runs.

    python scripts/results_page.py            # rewrite every generated block (and its plots) in place
    python scripts/results_page.py --check    # exit 1, naming each block, when a page differs from its records

A generated block sits between two HTML comments in the Markdown; the opening one names what fills it:

    <!-- results_page: seeds --threshold 80 demo=runs/demo/threads2 -->
    | ...the table... |
    <!-- results_page: end -->

Paths in a block are relative to the page's folder. The kinds of block:

- `seeds [--threshold T] [--digits D] [--seeds 0,1,2] LABEL=DIR ...`: one row per LABEL, the final test accuracy of each
  `seed<s>/results.json` under DIR in its own column, the mean ± sample std over every seed that ran, and with
  a threshold the seeds that reached it and the mean of those seeds only (labelled, never instead of the mean).
- `per_seed DIR`: one row per `seed<s>` under DIR: teacher and student accuracy, generator restarts, and the
  wall and CPU time its `command.json` measured (the whole command, `/usr/bin/time`).
- `summarize [--paper] [--at-cpu-s S] [--plot PNG] [--curves PNG [--curves-against cpu]] [--transitions PNG] DIR ...`: the grouped table of
  scripts/summarize.py over those dirs (and its plots, written in place; `--check` compares tables only).
- `gradients JSON ...`: the gradient cosines against fp32 of scripts/precision_compare.py, one column per file.
- `speed JSON`: seconds per zero-shot iteration per `method.precision_mix` from scripts/bench.py's JSON.

A block's arguments split as a shell would: quote a label that holds blanks (`"fp32 (the demo)"=runs/...`);
a label ends at its first `=`.
"""
from __future__ import annotations

import argparse
import json
import re
import shlex
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import summarize  # noqa: E402

from zskt.io import atomic_write_text  # noqa: E402

DOCS = Path(__file__).resolve().parent.parent / "docs"
PAGES = ("RESULTS.md", "quickstart-recipe.md")
BLOCK = re.compile(r"(<!-- results_page: (?!end)(?P<spec>.*?) -->\n)(?P<body>.*?)(<!-- results_page: end -->)", re.S)


class PageError(Exception):
    """A block names a kind, option or record that does not exist."""


# ---------------------------------------------------------------------------- the kinds of block
def seed_results(directory: Path) -> dict[int, dict]:
    """The results.json of each `seed<s>` folder under `directory`, by seed."""
    found = {int(p.parent.name[4:]): json.loads(p.read_text()) for p in directory.glob("seed*/results.json")}
    if not found:
        raise PageError(f"{directory} holds no seed<s>/results.json")
    return dict(sorted(found.items()))


def seeds_table(args: list[str], here: Path, write_plots: bool) -> str:
    parser = argparse.ArgumentParser(prog="seeds", exit_on_error=False)
    parser.add_argument("--threshold", type=float)
    parser.add_argument("--digits", type=int, default=2)
    parser.add_argument("--seeds", help="only these seeds, e.g. 0,1,2")
    parser.add_argument("rows", nargs="+")
    opts = parser.parse_args(args)
    wanted = {int(s) for s in opts.seeds.split(",")} if opts.seeds else None
    rows = [(label, {s: r for s, r in seed_results(here / path).items() if wanted is None or s in wanted})
            for label, path in (r.split("=", 1) for r in opts.rows)]
    seeds = sorted({s for _, runs in rows for s in runs})
    fmt = f"{{:.{opts.digits}f}}"
    header = ["run", *(f"seed {s}" for s in seeds), "mean ± std (n)"]
    if opts.threshold is not None:
        header += [f"seeds ≥ {opts.threshold:g} %", "mean of those seeds only"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label, runs in rows:
        accs = {s: r["test_acc"] for s, r in runs.items()}
        values = list(accs.values())
        spread = f" ± {fmt.format(statistics.stdev(values))}" if len(values) > 1 else ""
        cells = [label, *(fmt.format(accs[s]) if s in accs else "" for s in seeds),
                 f"{fmt.format(statistics.fmean(values))}{spread} ({len(values)})"]
        if opts.threshold is not None:
            good = [v for v in values if v >= opts.threshold]
            cells += [f"{len(good)} of {len(values)}", fmt.format(statistics.fmean(good)) if good else "-"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def per_seed_table(args: list[str], here: Path, write_plots: bool) -> str:
    (path,) = args
    lines = ["| seed | teacher % | student % | generator restarts | wall (whole command) | user + system CPU s |",
             "|---|---|---|---|---|---|"]
    for seed, results in seed_results(here / path).items():
        command = here / path / f"seed{seed}" / "command.json"
        timing = json.loads(command.read_text()) if command.is_file() else {}
        cpu = timing.get("user_cpu_s", 0) + timing.get("system_cpu_s", 0)
        lines.append(f"| {seed} | {results['teacher']['test_acc']:.2f} | **{results['test_acc']:.2f}** "
                     f"| {results.get('generator_restarts', 0)} | {timing.get('wall_clock', '-')} "
                     f"| {f'{cpu:.0f}' if timing else '-'} |")
    return "\n".join(lines) + "\n"


def summarize_table(args: list[str], here: Path, write_plots: bool) -> str:
    parser = argparse.ArgumentParser(prog="summarize", exit_on_error=False)
    parser.add_argument("--paper", action="store_true")
    for option in ("--plot", "--curves", "--transitions"):
        parser.add_argument(option)
    parser.add_argument("--curves-against", choices=("images", "cpu"), default="images")
    parser.add_argument("--at-cpu-s", type=float)
    parser.add_argument("dirs", nargs="+")
    opts = parser.parse_args(args)
    runs, _ = summarize.find_runs([here / d for d in opts.dirs])
    rows = summarize.summarize(runs, opts.at_cpu_s)
    if write_plots:
        if opts.plot:
            summarize.plot(rows, here / opts.plot, opts.paper)
        if opts.curves:
            summarize.plot_learning_curves(rows, here / opts.curves, opts.paper, opts.curves_against)
        if opts.transitions:
            summarize.plot_transitions(summarize.transition_groups(rows), here / opts.transitions)
    return "\n".join(summarize.table_lines(rows, opts.paper)) + "\n"


GRADIENT_ROWS = (  # (row label, precision_compare key)
    ("generator step, all bf16 (`bf16-mixed`)", "generator_step_bf16_mixed"),
    ("generator step, generator in fp32 (`generator_fp32`)", "generator_step_generator_fp32"),
    ("student step in bf16, KL only", "student_step_bf16"),
    ("student step in bf16, KL + AT (its whole loss)", "student_step_bf16_with_attention"),
)


def gradients_table(args: list[str], here: Path, write_plots: bool) -> str:
    records = [json.loads((here / a).read_text()) for a in args]
    seeds = " / ".join(f"seed {r['seed']}" for r in records)
    lines = [f"| gradient, cosine against fp32 ({seeds}) | fresh generator | collapsed generator |", "|---|---|---|"]
    for label, key in GRADIENT_ROWS:
        cells = [" / ".join(f"{r[regime][key]['cosine']:.3f}" if key in r[regime] else "-" for r in records)
                 for regime in ("fresh", "collapsed")]
        lines.append(f"| {label} | {cells[0]} | {cells[1]} |")
    steps = " and ".join(str(r["collapsed"]["generator_steps"]) for r in records)
    lines += ["", f"(collapsed: the teacher put {records[0]['collapsed']['top_class_share']:.0%} of the batch in one "
              f"class after {steps} generator steps)"]
    return "\n".join(lines) + "\n"


def speed_table(args: list[str], here: Path, write_plots: bool) -> str:
    (path,) = args
    record = json.loads((here / path).read_text())
    mixes = record["precision_mixes"]
    base = next(m for m in mixes if m["precision_mix"] == "off")["seconds_per_iteration"]
    lines = ["| `method.precision_mix` | s / iteration | generator step (its teacher pass) | 10 student steps "
             "| speed-up over fp32 |", "|---|---|---|---|---|"]
    for mix in mixes:
        phase = mix["phase_seconds"]
        name = "off (fp32)" if mix["precision_mix"] == "off" else f"`{mix['precision_mix']}`"
        lines.append(f"| {name} | {mix['seconds_per_iteration']:.2f} | {phase['generator_step']:.2f} "
                     f"({phase['teacher_forward']:.2f}) | {phase['student_steps']:.2f} "
                     f"| {base / mix['seconds_per_iteration']:.2f} |")
    return "\n".join(lines) + "\n"


KINDS: dict[str, Callable[[list[str], Path, bool], str]] = {
    "seeds": seeds_table, "per_seed": per_seed_table, "summarize": summarize_table, "gradients": gradients_table, "speed": speed_table}


# ---------------------------------------------------------------------------- pages
def render(page: Path, write_plots: bool = False) -> tuple[str, list[str]]:
    """The page's text with every generated block refilled from its records, and the specs of the blocks
    whose committed text differs from that."""
    text = page.read_text()
    changed: list[str] = []

    def refill(match: re.Match) -> str:
        kind, *args = shlex.split(match["spec"])
        if kind not in KINDS:
            raise PageError(f"{page.name}: unknown block kind {kind!r} (one of {', '.join(KINDS)})")
        try:
            body = KINDS[kind](args, page.parent, write_plots)
        except SystemExit as err:  # argparse on a malformed block: it printed the usage line already
            raise PageError(f"{page.name}: block '{match['spec']}': bad arguments") from err
        except (PageError, argparse.ArgumentError, OSError, KeyError, ValueError, summarize.SummaryError) as err:
            raise PageError(f"{page.name}: block '{match['spec']}': {err}") from err
        if body != match["body"]:
            changed.append(match["spec"])
        return match[1] + body + match[4]

    return BLOCK.sub(refill, text), changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="compare only: exit 1 when a block differs")
    parser.add_argument("pages", nargs="*", type=Path, default=[DOCS / p for p in PAGES])
    args = parser.parse_args(argv)
    stale = 0
    for page in args.pages:
        try:
            text, changed = render(page, write_plots=not args.check)
        except PageError as err:
            print(f"results_page: error: {err}", file=sys.stderr)
            return 2
        stale += len(changed)
        for spec in changed:
            print(f"results_page: {page.name}: '{spec}' {'differs from' if args.check else 'refilled from'} its records")
        if not args.check and changed:
            atomic_write_text(text, page)
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
