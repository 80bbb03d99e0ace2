"""Crash safety and determinism: a killed run resumes to the weights of an uninterrupted one (so
the same seed gives the same results), SIGKILL and SIGTERM on a real process, resumed sweeps,
and the divergence guard."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import zskt.run
from zskt_test_helpers import compose_run_config as compose_cfg
from zskt_test_helpers import cli, KillAtEpoch, run_with_callbacks, TEACHER

ZERO_SHOT = ["student.depth=10", "method.batch_size=16", "method.n_student_steps=2", "method.eval_every=2"]

# each method at a tiny budget with at least three checkpoints (one per epoch or evaluation)
METHODS = {
    "scratch": ["method=scratch", "student.depth=10", "dataset.m=5", "method.epochs=3", "method.evaluations=3"],
    "kd_at": ["method=kd_at", "student.depth=10", *TEACHER, "dataset.m=5", "method.epochs=3", "method.evaluations=3"],
    "zero_shot": ["method=zero_shot", *ZERO_SHOT, *TEACHER, "method.iterations=6"],
}


def method_overrides(method: str, zoo: Path, student: Path | None = None) -> list[str]:
    if method == "abm":
        return ["method=abm", f"student.checkpoint={student}", "method.k=3", "method.n_images=8",
                "method.batch_images=4", f"paths.models={zoo}"]
    return [*METHODS[method], f"paths.models={zoo}"]


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "model.pt", weights_only=True)["state_dict"]


def same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_same_seed_same_results_for_belief_matching(tmp_path, teacher_zoo, zero_shot_student):
    """Determinism of the training methods is asserted where a killed-and-resumed run is compared
    with an uninterrupted one of the same seed (below, test_zero_shot.py, test_finetune.py):
    equal accuracies and bit-identical weights. ABM trains nothing, so it is checked here."""
    overrides = method_overrides("abm", teacher_zoo, zero_shot_student)
    first = zskt.run.execute(compose_cfg(tmp_path / "a", overrides))
    second = zskt.run.execute(compose_cfg(tmp_path / "b", overrides))
    assert first["status"] == second["status"] == "completed"
    assert first["mte"] == second["mte"] and first["test_acc"] == second["test_acc"]


# zero-shot, modified zero-shot and fine-tune: test_zero_shot.py and test_finetune.py
@pytest.mark.parametrize("method", ["scratch", "kd_at"])
def test_a_killed_run_resumes_to_the_same_weights(tmp_path, teacher_zoo, method):
    overrides = method_overrides(method, teacher_zoo)
    straight = zskt.run.execute(compose_cfg(tmp_path / "a", overrides))
    with pytest.raises(RuntimeError, match="simulated kill"):
        run_with_callbacks(tmp_path / "b", overrides, [KillAtEpoch(2)])
    assert not (tmp_path / "b" / "run" / "results.json").exists()
    resumed = zskt.run.execute(compose_cfg(tmp_path / "b", ["resume=true"]))
    assert resumed["test_acc"] == straight["test_acc"] and resumed["best_test_acc"] == straight["best_test_acc"]
    assert same_weights(weights(tmp_path / "a" / "run"), weights(tmp_path / "b" / "run"))


def start(tmp: Path, zoo: Path, *args: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "zskt.run", *METHODS["zero_shot"], f"paths.models={zoo}", "dataset=digits",
               "trainer.precision=32-true", "callbacks.progress_bar.refresh_rate=0", *args]
    # one thread each: two of them run side by side on CI's two cores, with the same float order
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    # output to a file, not a pipe: a pipe nobody reads can fill and stall the run
    log_path = tmp / f"zskt-{time.monotonic_ns()}.log"
    with open(log_path, "w") as log:  # the child keeps its own descriptor
        process = subprocess.Popen(command, cwd=tmp, stdout=log, stderr=subprocess.STDOUT, text=True, env=env)
    process.log_path = log_path
    return process


def output(process: subprocess.Popen) -> str:
    return process.log_path.read_text()[-3000:]


def wait_for(path: Path, process: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not path.is_file():
        assert process.poll() is None, output(process)
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def test_sigkill_then_resume_gives_identical_weights(tmp_path, teacher_zoo):
    long = ["method.iterations=12", "method.eval_every=4"]
    straight = start(tmp_path, teacher_zoo, *long, "hydra.run.dir=straight")
    killed = start(tmp_path, teacher_zoo, *long, "hydra.run.dir=killed")
    wait_for(tmp_path / "killed" / "checkpoints" / "last.ckpt", killed)
    killed.send_signal(signal.SIGKILL)
    assert killed.wait() == -signal.SIGKILL  # killed before it finished
    assert not (tmp_path / "killed" / "results.json").exists()
    assert not list((tmp_path / "killed").rglob("*.tmp"))  # a kill mid-save leaves only whole files
    resumed = start(tmp_path, teacher_zoo, "hydra.run.dir=killed", "resume=true")
    assert resumed.wait(timeout=600) == 0, output(resumed)
    assert straight.wait(timeout=600) == 0, output(straight)
    assert same_weights(weights(tmp_path / "straight"), weights(tmp_path / "killed"))
    done = json.loads((tmp_path / "killed" / "results.json").read_text())
    assert done["status"] == "completed" and done["budget"]["iterations"] == 12


def test_sigterm_saves_a_checkpoint_and_says_how_to_resume(tmp_path, teacher_zoo):
    process = start(tmp_path, teacher_zoo, "method.iterations=1000", "hydra.run.dir=run")
    wait_for(tmp_path / "run" / "checkpoints" / "last.ckpt", process)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=300) == 128 + signal.SIGTERM, output(process)
    err = output(process)
    assert (tmp_path / "run" / "checkpoints" / "interrupted.ckpt").is_file()
    assert not (tmp_path / "run" / "results.json").exists()
    lines = [line for line in err.splitlines() if line.startswith("zskt:")]
    assert lines and "resume=true" in lines[-1] and "hydra.run.dir=" in lines[-1], err[-2000:]


def test_a_non_finite_loss_stops_the_run_and_says_where(tmp_path, teacher_zoo, capsys):
    overrides = [*method_overrides("zero_shot", teacher_zoo), "method.iterations=4", "method.student_lr=1e30",
                 "method.generator_lr=1e30", "method.grad_clip=1e30", "callbacks.divergence_guard.check_every_n_steps=1"]
    with pytest.raises(SystemExit) as exit_info:
        zskt.run.run(compose_cfg(tmp_path, overrides))
    assert exit_info.value.code == 1
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["status"] == "diverged" and "at iteration" in results["message"]
    err = capsys.readouterr().err.strip().splitlines()
    assert "diverged" in err[-1] and "last good checkpoint" in err[-1]


def test_a_resumed_sweep_skips_finished_jobs_resumes_killed_ones_and_starts_missing_ones(tmp_path):
    common = ["method=scratch", "dataset=digits", "student.depth=10", "method.epochs=3", "method.evaluations=3",
              "trainer.precision=32-true", "callbacks.progress_bar.refresh_rate=0"]
    sweep = tmp_path / "sweep"
    named = [c for c in common if not c.startswith("callbacks.")]  # the progress bar is left out of job names
    job = {m: sweep / ",".join(sorted([f"dataset.m={m}", *named])) for m in (2, 3, 4)}
    # job m=2 finished in an earlier sweep; job m=3 was killed after its second epoch; m=4 never started
    zskt.run.execute(compose_cfg(tmp_path, ["dataset.m=2", *common], run_dir=job[2]))
    finished = (job[2] / "results.json").read_text()
    with pytest.raises(RuntimeError, match="simulated kill"):
        run_with_callbacks(tmp_path, ["dataset.m=3", *common], [KillAtEpoch(2)], run_dir=job[3])
    straight = zskt.run.execute(compose_cfg(tmp_path / "straight", ["dataset.m=3", *common]))

    done = cli(tmp_path, "-m", "dataset.m=2,3,4", *common, f"hydra.sweep.dir={sweep}", "resume=true")
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"{job[2]} already completed" in done.stdout
    assert (job[2] / "results.json").read_text() == finished  # untouched
    assert same_weights(weights(job[3]), weights(tmp_path / "straight" / "run"))  # continued, not restarted
    assert json.loads((job[3] / "results.json").read_text())["test_acc"] == straight["test_acc"]
    assert json.loads((job[4] / "results.json").read_text())["status"] == "completed"
