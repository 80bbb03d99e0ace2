"""The data-free methods with the benchmark's presets and the precision default: `experiment=datafree_cifar10
method=fast` (and dfq, deepinversion, fast_2/5/10) expands to the five pairs x seeds 0-2 in fp32, each job in
<preset>/<method>/<pair>/seed<s>/, beside zero-shot's; these methods never default to bf16."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from test_presets import DATAFREE_PAIRS, OUTPUTS, SEEDS, expand, job_dir, job_config, network, resolved_precision

METHODS = ("dfq", "deepinversion", "fast", "fast_2", "fast_5", "fast_10")


@pytest.mark.parametrize("method", METHODS)
def test_each_method_runs_the_benchmarks_five_pairs(method):
    preset = "datafree_cifar10"
    jobs = expand(preset, (f"method={method}",))
    assert len(jobs) == len(DATAFREE_PAIRS) * len(SEEDS)
    seen = set()
    for job in jobs:
        cfg = job_config(preset, job)
        pair = cfg.hydra.runtime.choices.datafree_pair
        assert (network(cfg.teacher), network(cfg.student)) == DATAFREE_PAIRS[pair]
        assert (cfg.method.name, cfg.dataset.name, cfg.trainer.precision) == (method, "cifar10", "32-true")
        assert cfg.method.budget_scale == 1.0
        assert job_dir(cfg) == Path(OUTPUTS, preset, method, pair, f"seed{cfg.seed}")  # apart from zero-shot's
        seen.add((pair, cfg.seed))
    assert seen == set(itertools.product(DATAFREE_PAIRS, SEEDS))


def test_cifar100_too():
    jobs = expand("datafree_cifar100", ("method=dfq", "datafree_pair=wrn-40-2_wrn-16-1", "seed=0"))
    (job,) = jobs
    cfg = job_config("datafree_cifar100", job)
    assert (cfg.method.name, cfg.dataset.name, cfg.trainer.precision) == ("dfq", "cifar100", "32-true")


@pytest.mark.parametrize("native", [True, False])
def test_the_datafree_methods_run_in_fp32_even_where_bf16_is_native(monkeypatch, native):
    # adversarial and synthesis methods like zero-shot: fp32 unless trainer.precision says otherwise
    from zskt import hardware

    monkeypatch.setattr(hardware, "cpu_flags", lambda: {"avx2", "avx512f", "avx512_bf16"} if native else {"avx2"})
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.setattr(hardware.torch.cuda, "is_available", lambda: False)
    assert resolved_precision("method=kd_at") == ("bf16-mixed" if native else "32-true")  # the switch works here
    for method in METHODS:
        assert resolved_precision(f"method={method}") == "32-true", method
        assert resolved_precision(f"method={method}", "trainer.precision=bf16-mixed") == "bf16-mixed"


def student_images(method) -> int:
    """The student images a datafree_miniature job's config asks for (each method's own budget unit)."""
    if method.name == "zero_shot":
        return method.iterations * method.n_student_steps * method.batch_size
    if method.name == "dfq":
        return method.epochs * method.epoch_steps * method.batch_size
    if method.name == "fast":
        return (method.epochs - method.warmup_epochs) * method.kd_steps * method.batch_size
    return method.epochs * method.kd_steps * method.batch_size


def test_the_digits_comparison_runs_every_method_on_the_miniatures_teachers_at_one_budget():
    preset = "datafree_miniature"
    jobs = [job_config(preset, job) for job in expand(preset)]
    assert len(jobs) == 4 * len(SEEDS)
    assert {(cfg.method.name, cfg.seed) for cfg in jobs} == set(itertools.product(
        ("zero_shot", "dfq", "deepinversion", "fast"), SEEDS))
    for cfg in jobs:
        # the paper_miniature teachers (the zoo's WRN-16-2 digits model of the job's seed) and student, fp32
        assert (cfg.dataset.name, network(cfg.teacher), network(cfg.student)) == ("digits", ("wrn", 16, 2), ("wrn", 16, 1))
        assert cfg.teacher.train_if_missing and cfg.trainer.precision == "32-true"
        assert (cfg.method.batch_size, student_images(cfg.method)) == (64, 128_000), cfg.method.name
        assert job_dir(cfg) == Path(OUTPUTS, preset, cfg.method.name, f"seed{cfg.seed}")
    miniature = job_config("paper_miniature", expand("paper_miniature")[0])
    assert {cfg.teacher.checkpoint for cfg in jobs if cfg.seed == 0} == {miniature.teacher.checkpoint}
