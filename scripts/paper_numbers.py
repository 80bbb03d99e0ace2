"""The published numbers of docs/method.md#published-numbers, as data for `summarize.py --paper`.

Each entry is keyed like a summary row: (method, from, dataset, teacher, student, m, metric).
`from` is the method of the model a run starts from (fine-tuning, belief matching), `m` is
images per class (None: full data, or no data at all for zero-shot), `metric` is "test_acc"
(percent) or "mte". A value is a number or (mean, std) over three seeds; None: not published.
"paper" is Micaelli & Storkey (NeurIPS 2019), "study" the NeurIPS 2019 reproducibility study,
"benchmark" the data-free KD benchmark's table (BENCHMARK_SOURCE): its ZSKT row on five teacher/student
pairs, CIFAR-10 and CIFAR-100, its DeepInv-2k, DFQ and Fast-2/5/10 rows (methods deepinversion, dfq,
fast_2/5/10; fast is Fast-10), and the scratch accuracies of those teachers and students.

The benchmark's numbers come from the README of github zju-vipa/Fast-Datafree (commit 07476cad); the
README of github zju-vipa/CMI (commit 0e2b4217), the same authors' earlier copy of the table, agrees
on CIFAR-10 but not on CIFAR-100: its ZSKT row reads 67.74 / 34.72 / 30.15 / 29.73 / 28.44 (four of the
five pairs differ, by up to 25 points) and its ResNet-18 scratch accuracy reads 77.10 in one column and
77.01 in the other. BENCHMARK_CMI keeps the CMI README's values where they differ; summarize.py prints
them under the table. The benchmark's ZSKT is its own implementation (CMI scripts/zskt_cifar10.sh):
no attention term, temperature 20, SGD lr 0.1, batch 256, 200 x 400 iterations of 5 student steps:
not the paper's recipe, which the datafree_* presets run.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from omegaconf import DictConfig

Value = float | tuple[float, float] | None
Key = tuple[str, str | None, str, str | None, str, int | None, str]

FEW_SHOT_M = (10, 25, 50, 75, 100)
BENCHMARK_SOURCE = "the Fast-Datafree README (github zju-vipa/Fast-Datafree, commit 07476cad)"
# the benchmark's five pairs, in its tables' column order
BENCHMARK_PAIRS = (("ResNet-34", "ResNet-18"), ("VGG-11", "ResNet-18"), ("WRN-40-2", "WRN-16-1"),
                   ("WRN-40-2", "WRN-40-1"), ("WRN-40-2", "WRN-16-2"))
TABLE1_PAIRS = (("WRN-16-2", "WRN-16-1"), ("WRN-40-1", "WRN-16-1"), ("WRN-40-2", "WRN-16-1"),
                ("WRN-40-1", "WRN-16-2"), ("WRN-40-2", "WRN-16-2"), ("WRN-40-2", "WRN-40-1"))


# the benchmark's tables (Fast-Datafree README), per dataset: the ZSKT row over BENCHMARK_PAIRS, the
# teachers' and the students' scratch rows (one value per pair column, so teachers repeat)
BENCHMARK = {
    "cifar10": {"zero_shot": (93.32, 89.46, 83.74, 86.07, 89.66),
                "teacher": (95.70, 92.25, 94.87, 94.87, 94.87), "student": (95.20, 95.20, 91.12, 93.94, 93.95)},
    "cifar100": {"zero_shot": (67.74, 54.31, 36.66, 53.60, 54.59),
                 "teacher": (78.05, 71.32, 75.83, 75.83, 75.83), "student": (77.10, 77.10, 65.31, 72.19, 73.56)},
}
# the benchmark's other data-free methods (the same README tables, rows DeepInv-2k, DFQ, Fast-2/5/10), per dataset
# over BENCHMARK_PAIRS, as the methods of this package that run them: deepinversion (its ADI variant, as the benchmark
# ran it), dfq, fast_2 / fast_5 / fast_10 (method=fast is Fast-10)
BENCHMARK_METHODS = {
    "cifar10": {"deepinversion": (93.26, 90.36, 83.04, 86.85, 89.72), "dfq": (94.61, 90.84, 86.14, 91.69, 92.01),
                "fast_2": (92.62, 84.67, 88.36, 89.56, 89.68), "fast_5": (93.63, 89.94, 88.90, 92.04, 91.96),
                "fast_10": (94.05, 90.53, 89.29, 92.51, 92.45)},
    "cifar100": {"deepinversion": (61.32, 54.13, 53.77, 61.33, 61.34), "dfq": (77.01, 66.21, 51.27, 54.43, 64.79),
                 "fast_2": (69.76, 62.83, 41.77, 53.15, 57.08), "fast_5": (72.82, 65.28, 52.90, 61.80, 63.83),
                 "fast_10": (74.34, 67.44, 54.02, 63.91, 65.12)},
}
for _rows in BENCHMARK_METHODS.values():
    _rows["fast"] = _rows["fast_10"]
# the synthesis GPU-hours the README gives beside each number (its "Speed-up" column averages their ratios)
BENCHMARK_HOURS = {
    "cifar10": {"zero_shot": (1.67, 0.33, 0.87, 0.87, 0.87), "deepinversion": (42.1, 20.2, 16.9, 21.9, 18.2),
                "dfq": (8.79, 1.50, 0.75, 0.75, 0.75), "fast_2": (0.06, 0.03, 0.03, 0.03, 0.03),
                "fast_5": (0.14, 0.08, 0.08, 0.09, 0.08), "fast_10": (0.28, 0.15, 0.15, 0.17, 0.17)},
    "cifar100": {"zero_shot": (1.67, 0.33, 0.87, 0.87, 0.87), "deepinversion": (42.1, 20.1, 17.0, 21.9, 18.2),
                 "dfq": (8.79, 1.54, 0.75, 0.75, 0.75), "fast_2": (0.06, 0.03, 0.03, 0.04, 0.04),
                 "fast_5": (0.14, 0.08, 0.07, 0.09, 0.08), "fast_10": (0.27, 0.16, 0.16, 0.17, 0.17)},
}
# where the CMI README's copy of the table differs (CIFAR-100 only): key (as PUBLISHED) -> its value
BENCHMARK_CMI = {
    **{("zero_shot", None, "cifar100", teacher, student, None, "test_acc"): value
       for (teacher, student), value in zip(BENCHMARK_PAIRS[1:], (34.72, 30.15, 29.73, 28.44))},
    **{("dfq", None, "cifar100", teacher, student, None, "test_acc"): value
       for (teacher, student), value in zip(BENCHMARK_PAIRS[1:], (68.32, 54.77, 62.92, 59.01))},
    ("scratch", None, "cifar100", None, "ResNet-18", None, "test_acc"): 77.01,  # its VGG-11 column; 77.10 in the other
}


def _entries() -> dict[Key, dict[str, Value]]:
    out: dict[Key, dict[str, Value]] = {}

    def add(method: str, dataset: str, teacher: str | None, student: str, m: int | None, paper: Value = None,
            study: Value = None, origin: str | None = None, metric: str = "test_acc", benchmark: Value = None) -> None:
        key = (method, origin, dataset, teacher, student, m, metric)
        entry = out.setdefault(key, {"paper": None, "study": None, "benchmark": None})
        # a key two tables share (WRN-40-2 -> WRN-16-1 zero-shot, WRN scratch) keeps every source's number
        entry.update({name: value for name, value in (("paper", paper), ("study", study), ("benchmark", benchmark))
                      if value is not None})

    # Table 1: scratch accuracies (the students' and teachers' own rows)
    for student, paper, study in (("WRN-16-1", 91.04, 91.38), ("WRN-16-2", 93.97, 94.21),
                                  ("WRN-40-1", 93.18, 93.83), ("WRN-40-2", 94.73, 95.16)):
        add("scratch", "cifar10", None, student, None, paper, study)
    # Table 1: KD+AT at M = 200, zero-shot (paper and study), modified zero-shot (study)
    kd_at = (84.54, 81.71, 81.25, 85.74, 86.39, 87.35)
    zero_shot = ((82.44, 0.21), (79.93, 1.11), (83.69, 0.58), (86.60, 0.56), (89.71, 0.10), (86.60, 1.79))
    zero_shot_study = (81.25, 79.90, 83.63, 87.71, 89.31, 87.46)
    modified_study = (82.82, 82.61, 84.78, 89.27, 91.12, 90.27)
    for (teacher, student), kd, zs, zs_study, mod in zip(TABLE1_PAIRS, kd_at, zero_shot, zero_shot_study,
                                                         modified_study):
        add("kd_at", "cifar10", teacher, student, 200, paper=kd)
        add("zero_shot", "cifar10", teacher, student, None, paper=zs, study=zs_study)
        add("zero_shot_modified", "cifar10", teacher, student, None, study=mod)
    add("zero_shot", "svhn", "WRN-40-2", "WRN-16-1", None, paper=(94.06, 0.27), study=94.00)

    # Figure 2 (the study): WRN-40-2 -> WRN-16-1 over M, no teacher and KD+AT
    curves = {
        ("cifar10", "scratch"): (23.75, 36.16, 43.72, 52.44, 56.86),
        ("cifar10", "kd_at"): (36.97, 60.68, 68.47, 75.04, 77.65),
        ("svhn", "scratch"): (12.12, 30.95, 44.31, 48.64, 61.95),
        ("svhn", "kd_at"): (34.18, 48.35, 66.88, 78.73, 80.75),
    }
    for (dataset, method), values in curves.items():
        teacher = "WRN-40-2" if method == "kd_at" else None
        for m, value in zip(FEW_SHOT_M, values):
            add(method, dataset, teacher, "WRN-16-1", m, study=value)
    add("kd_at", "cifar10", "WRN-40-2", "WRN-16-1", None, study=92.19)
    add("kd_at", "svhn", "WRN-40-2", "WRN-16-1", None, study=95.45)

    # zero-shot + extra-M fine-tune (CIFAR-10), from the standard and the modified zero-shot student
    finetune = {"zero_shot": (83.68, 83.96, 84.67, 84.84, 85.12), "zero_shot_modified": (84.98, 85.24, 86.28, 86.61, 86.97)}
    for origin, values in finetune.items():
        for m, value in zip(FEW_SHOT_M, values):
            paper = 85.91 if (origin, m) == ("zero_shot", 100) else None
            add("finetune", "cifar10", "WRN-40-2", "WRN-16-1", m, paper=paper, study=value, origin=origin)

    # mean transition error (K = 100, xi = 1), WRN-40-2 teacher, WRN-16-1 students
    for dataset, origin, paper, study in (("cifar10", "zero_shot", 0.22, 0.18), ("cifar10", "zero_shot_modified", None, 0.22),
                                          ("cifar10", "kd_at", 0.68, 0.81), ("svhn", "zero_shot", 0.09, 0.11),
                                          ("svhn", "kd_at", 0.64, 0.83)):
        add("abm", dataset, "WRN-40-2", "WRN-16-1", None, paper, study, origin=origin, metric="mte")

    # the data-free KD benchmark: ZSKT on its five pairs, and its teachers' and students' scratch accuracies
    for dataset, rows in BENCHMARK.items():
        for (teacher, student), zero_shot_acc, teacher_acc, student_acc in zip(
                BENCHMARK_PAIRS, rows["zero_shot"], rows["teacher"], rows["student"]):
            add("zero_shot", dataset, teacher, student, None, benchmark=zero_shot_acc)
            add("scratch", dataset, None, teacher, None, benchmark=teacher_acc)
            add("scratch", dataset, None, student, None, benchmark=student_acc)
    for dataset, methods in BENCHMARK_METHODS.items():
        for method, values in methods.items():
            for (teacher, student), value in zip(BENCHMARK_PAIRS, values):
                add(method, dataset, teacher, student, None, benchmark=value)
    return out


PUBLISHED: dict[Key, dict[str, Value]] = _entries()


# The published runs' full budgets (docs/method.md#hyperparameters), in images the student takes optimiser
# steps on (results.json's budget.student_images): where a learning curve measured at a smaller budget would
# have to reach. Which runs were published is said here; their lengths are the recipes' (conf/recipe and
# conf/method, read through the configs, the one place they live).
FULL_BUDGET_RUNS = {"zero_shot": ("cifar10", "svhn"), "zero_shot_modified": ("cifar10",),
                    "scratch": ("cifar10", "svhn"), "kd_at": ("cifar10", "svhn")}
CLASSES = 10                                        # CIFAR-10's and SVHN's, the published runs' datasets


@functools.cache
def _method_config(method: str, dataset: str) -> DictConfig:
    """`method=<method> dataset=<dataset>`'s method node, as a run composes it."""
    from zskt.config import compose_config  # torch behind it: loaded only when a curve needs a full budget

    return compose_config([f"method={method}", f"dataset={dataset}"]).method


def full_budget_images(method: str, dataset: str, m: int | None) -> int | None:
    """The student images of the published run of this method (None: no full budget to mark)."""
    if dataset not in FULL_BUDGET_RUNS.get(method, ()):
        return None
    config = _method_config(method, dataset)
    if "iterations" in config:  # zero-shot: n_S student steps on each iteration's generated batch
        return config.iterations * config.n_student_steps * config.batch_size
    if m is None:
        return config.full_epochs * config.reference_m * CLASSES
    # few-shot: the recipe stretches the epochs by reference_m / M
    return int(config.full_epochs * config.reference_m / m) * m * CLASSES


def published(method: str, origin: str | None, dataset: str, teacher: str | None, student: str, m: int | None,
              metric: str) -> dict[str, Value] | None:
    """The paper's, the study's and the benchmark's number for this row, or None where none published one."""
    return PUBLISHED.get((method, origin, dataset, teacher, student, m, metric))


def format_value(value: Value, digits: int = 2) -> str:
    """'82.44 ± 0.21', '81.25', or '' (not published)."""
    if value is None:
        return ""
    if isinstance(value, tuple):
        return f"{value[0]:.{digits}f} ± {value[1]:.{digits}f}"
    return f"{value:.{digits}f}"
