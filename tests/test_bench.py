"""scripts/bench.py's accounting, in-process on tiny networks: the plain loops do the work they
claim (the study's one pass of the teacher more than the module's), and the module's FLOPs
equal the plain loop's doing the same work, so Lightning's overhead is compared like for like."""

from __future__ import annotations

import json

import pytest

from scripts import bench

SPEC = {"teacher": bench.parse_network("10-1"), "student": bench.parse_network("wrn-10-1"), "batch_size": 4,
        "n_student_steps": 2, "generator_hidden": 128, "iterations": 1, "warmup": 1, "precision": "32-true",
        "channels_last": True, "compile": False}


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
    assert summary["fraction_of_bf16_matmul_peak"] is None  # an fp32 iteration is not measured against bf16
    in_bf16 = bench.where_the_time_goes({**module, "precision": "bf16-mixed"}, same, study, peak)
    assert in_bf16["fraction_of_bf16_matmul_peak"] == pytest.approx(module["gflops_achieved"] / 200.0, abs=1e-3)


def test_the_matmul_peak_reports_both_dtypes_and_the_matrix_it_timed():
    peak = bench.measure_matmul_peak({"max_size": 128})
    for dtype in ("float32", "bfloat16"):
        assert peak[f"{dtype}_matrix_size"] == 128
        assert peak[f"{dtype}_gflops"] > 0 and peak[f"{dtype}_gflop_per_cpu_second"] > 0


def test_a_narrower_generator_costs_less_in_the_generator_step_only_and_the_module_agrees():
    wide = bench.measure_plain_loop({**SPEC, "variant": "same_work", "generator_hidden": 64})
    narrow = bench.measure_plain_loop({**SPEC, "variant": "same_work", "generator_hidden": 32})
    assert narrow["phase_gflop"]["generator_step"] < wide["phase_gflop"]["generator_step"]
    assert narrow["phase_gflop"]["student_steps"] == wide["phase_gflop"]["student_steps"]
    module = bench.measure_zero_shot({**SPEC, "generator_hidden": 32})
    assert module["gflop_per_iteration"] == pytest.approx(narrow["gflop_per_iteration"], abs=0.011)


@pytest.mark.parametrize("name, arch", [
    ("40-2", {"family": "wrn", "depth": 40, "width": 2}),  # the spelling from before the families
    ("wrn-16-1", {"family": "wrn", "depth": 16, "width": 1}),
    ("WRN-40-2", {"family": "wrn", "depth": 40, "width": 2}),
    ("resnet34", {"family": "resnet", "depth": 34}),
    ("resnet-18", {"family": "resnet", "depth": 18}),
    ("resnet8", {"family": "resnet", "depth": 8}),
    ("vgg11", {"family": "vgg", "depth": 11}),
])
def test_network_names_parse_to_archs(name, arch):
    assert bench.parse_network(name) == {**arch, "num_classes": 10}


@pytest.mark.parametrize("name, says", [("mobilenet", "unknown network 'mobilenet'"), ("resnet35", "ResNet depth 35"),
                                        ("wrn-11-1", "network 'wrn-11-1'"), ("vgg12", "network 'vgg12'")])
def test_an_unknown_network_is_one_line_and_exit_2(name, says, capsys):
    with pytest.raises(bench.UserError, match=says):
        bench.parse_network(name)
    with pytest.raises(SystemExit) as exit_:
        bench.main(["--teacher", name])
    assert exit_.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert "error: argument --teacher: " in error and says in error


def test_the_bench_runs_a_pair_that_is_not_two_wrns(tmp_path, monkeypatch):
    """ResNet-8 -> WRN-10-1 end to end through main: every measurement in this process (no
    subprocesses, specs still through JSON), a made-up matmul peak to keep it fast."""
    monkeypatch.setattr(bench, "run_isolated", lambda kind, spec: bench.MEASUREMENTS[kind](json.loads(json.dumps(spec))))
    monkeypatch.setitem(bench.MEASUREMENTS, "matmul", lambda _: {
        "float32_gflops": 100.0, "float32_gflop_per_cpu_second": 100.0, "bfloat16_gflops": 200.0,
        "bfloat16_gflop_per_cpu_second": 200.0})
    out = tmp_path / "bench.json"
    bench.main(["--teacher", "resnet8", "--student", "wrn-10-1", "--batch-size", "4", "--batch-sizes", "",
                "--scratch-images", "0", "--iterations", "1", "--warmup", "1", "--n-student-steps", "2",
                "--precision", "32-true", "--precision-mixes", "off,student_bf16", "--out", str(out)])
    report = json.loads(out.read_text())
    assert (report["teacher"], report["student"]) == ("ResNet-8", "WRN-10-1")
    # each named mix timed by phase, in the order asked
    assert [m["precision_mix"] for m in report["precision_mixes"]] == ["off", "student_bf16"]
    for mix in report["precision_mixes"]:
        assert mix["seconds_per_iteration"] > 0 and mix["phase_seconds"]["student_steps"] > 0
    assert report["teacher_arch"]["family"] == "resnet"
    module, same = report["default"], report["plain_loop_same_work"]
    for key in ("seconds_per_iteration", "gflop_per_iteration", "gflops_achieved", "cpu_seconds_per_iteration"):
        assert module[key] > 0 and same[key] > 0, key
    assert module["gflop_per_iteration"] == pytest.approx(same["gflop_per_iteration"], abs=0.011)
    assert report["baseline"]["seconds_per_iteration"] > 0 and report["speedup"] > 0
    summary = report["where_the_time_goes"]
    for phase in ("generator_step", "teacher_forward (inside the generator step)", "student_steps"):
        assert summary["phases"][phase]["seconds"] > 0 and summary["phases"][phase]["gflop"] > 0, phase
    assert summary["fraction_of_fp32_matmul_peak"] > 0 and summary["fraction_of_fp32_matmul_peak_by_cpu_time"] > 0
    # the study's loop trains WRNs only: no reference for this pair, and the JSON says why
    assert report["plain_loop_study"] is None and "WRN-only" in report["plain_loop_study_skipped"]
    assert summary["speedup_over_study_plain_loop"] is None


def test_repeats_measure_the_compared_settings_in_turn_and_keep_each_ones_fastest_round(tmp_path, monkeypatch):
    """With --repeats 2 the module, both plain loops and the matmul peak run round after round
    (not all rounds of one, then the next), and each keeps its fastest round (the peak its highest)."""
    calls = []
    seconds = {("zero_shot", None): [5.0, 4.0], ("plain_loop", "same_work"): [4.5, 4.8], ("plain_loop", "study"): [7.0, 6.0]}
    peaks = [100.0, 120.0]

    def fake(kind, spec):
        calls.append((kind, spec.get("variant")))
        if kind == "matmul":
            gflops = peaks.pop(0)
            return {"float32_gflops": gflops, "float32_gflop_per_cpu_second": gflops / 2, "bfloat16_gflops": 2 * gflops,
                    "bfloat16_gflop_per_cpu_second": gflops, "float32_matrix_size": 2048, "bfloat16_matrix_size": 2048}
        per_iteration = seconds[(kind, spec.get("variant"))].pop(0)
        return {"precision": "32-true", "seconds_per_iteration": per_iteration, "cpu_seconds_per_iteration": 2 * per_iteration,
                "gflops_achieved": 400.0 / per_iteration, "gflop_per_cpu_second": 200.0 / per_iteration,
                "phase_seconds": {"generator_step": 1.0, "teacher_forward": 0.2, "student_steps": 2.0,
                                  "schedulers_and_logging": 0.01, "lightning_between_steps": 0.001},
                "phase_gflop": {"generator_step": 200.0, "teacher_forward": 50.0, "student_steps": 200.0}}

    monkeypatch.setattr(bench, "run_isolated", fake)
    out = tmp_path / "bench.json"
    bench.main(["--quick", "--repeats", "2", "--precision", "32-true", "--out", str(out)])
    one_round = [("zero_shot", None), ("plain_loop", "same_work"), ("plain_loop", "study"), ("matmul", None)]
    assert calls == one_round + one_round
    report = json.loads(out.read_text())
    assert report["repeats"] == 2
    assert report["default"]["seconds_per_iteration_each_round"] == [5.0, 4.0]
    assert report["default"]["seconds_per_iteration"] == 4.0
    assert report["plain_loop_same_work"]["seconds_per_iteration"] == 4.5
    assert report["plain_loop_study"]["seconds_per_iteration"] == 6.0
    assert report["matmul_peak"]["float32_gflops"] == 120.0
    summary = report["where_the_time_goes"]
    assert summary["speedup_over_study_plain_loop"] == pytest.approx(6.0 / 4.0, abs=1e-3)
    assert summary["fraction_of_fp32_matmul_peak"] == pytest.approx(100.0 / 120.0, abs=1e-3)


@pytest.mark.parametrize("flag, value, says", [("--repeats", "0", "--repeats must be at least 1, got 0"),
                                               ("--generator-hidden", "1", "--generator-hidden must be at least 2, got 1"),
                                               ("--precision-mixes", "off,bf16_all",
                                                "--precision-mixes: unknown bf16_all; choose from off, student_bf16")])
def test_a_count_out_of_range_is_one_line_and_exit_2(flag, value, says, capsys):
    with pytest.raises(SystemExit) as exit_:
        bench.main([flag, value, "--out", "/nonexistent/bench.json"])
    assert exit_.value.code == 2
    assert says in capsys.readouterr().err.strip().splitlines()[-1]


def test_a_pair_whose_attention_points_do_not_pair_is_one_line_before_measuring(capsys):
    with pytest.raises(SystemExit) as exit_:  # ResNet-18's four stages against ResNet-8's three
        bench.main(["--teacher", "resnet18", "--student", "resnet8", "--out", "/nonexistent/bench.json"])
    assert exit_.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert "attention points do not pair" in error and "layer4 4x4" in error
