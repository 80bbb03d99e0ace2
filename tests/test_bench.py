"""scripts/bench.py's accounting, in-process on tiny networks: the plain loops do the work they
claim (the study's one pass of the teacher more than the module's), and the module's FLOPs
equal the plain loop's doing the same work, so Lightning's overhead is compared like for like."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
import bench  # noqa: E402

SPEC = {"teacher": bench.parse_network("10-1"), "student": bench.parse_network("wrn-10-1"), "batch_size": 4, "n_student_steps": 2, "iterations": 1, "warmup": 1,
        "precision": "32-true", "channels_last": True, "compile": False}


def test_plain_loops_and_module_count_the_same_work_but_the_study_pays_the_teacher_twice():
    same = bench.measure_plain_loop({**SPEC, "variant": "same_work"})
    study = bench.measure_plain_loop({**SPEC, "variant": "study"})
    teacher = same["phase_gflop"]["teacher_forward"]
    assert teacher > 0 and study["phase_gflop"]["teacher_pass"] == teacher
    assert "teacher_pass" not in same["phase_gflop"]
    assert study["gflop_per_iteration"] == pytest.approx(same["gflop_per_iteration"] + teacher, abs=0.011)
    assert study["channels_last"] is False and same["channels_last"] is True
    module = bench.measure_zero_shot(SPEC)
    assert module["gflop_per_iteration"] == pytest.approx(same["gflop_per_iteration"], abs=0.011)
    phases = module["phase_seconds"]
    assert set(phases) == {"generator_step", "teacher_forward", "student_steps", "schedulers_and_logging",
                           "lightning_between_steps"}
    # the teacher runs inside the generator step, which with the student steps is most of the iteration
    assert 0 < phases["teacher_forward"] < phases["generator_step"]
    assert phases["generator_step"] + phases["student_steps"] <= module["seconds_per_iteration"]
    peak = {"float32_gflops": 100.0, "bfloat16_gflops": 200.0, "float32_gflop_per_cpu_second": 50.0}
    summary = bench.where_the_time_goes(module, same, study, peak)
    assert summary["fraction_of_fp32_matmul_peak"] == pytest.approx(module["gflops_achieved"] / 100.0, abs=1e-3)
