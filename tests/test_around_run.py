"""What a user meets around a run (issue 33): the model zoo is never silently replaced, final files
get the umask's mode, a refused command leaves nothing behind, Ctrl-C and resume, the overrides."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import zskt.run
from zskt_test_helpers import TEACHER, cli, compose_run_config, run_with_callbacks

SCRATCH = ["method=scratch", "student.depth=10", "method.epochs=1"]


def test_zoo_entry_is_kept_unless_overwrite_zoo_and_records_its_run(tmp_path, caplog):
    first = zskt.run.execute(compose_run_config(tmp_path, SCRATCH, run_dir=tmp_path / "first"))
    zoo = tmp_path / "outputs" / "models" / "digits" / "wrn-10-1-seed0.pt"
    entry = torch.load(zoo, weights_only=True)
    assert entry["run"] == {"results": str((tmp_path / "first" / "results.json").resolve()),
                            "test_acc": first["test_acc"], "budget": first["budget"]}
    before = zoo.read_bytes()

    # a second run of the same network and seed (here with another data subset order: seed kept) keeps the entry
    with caplog.at_level(logging.WARNING, logger="zskt"):
        zskt.run.execute(compose_run_config(tmp_path, [*SCRATCH, "method.lr=0.01"], run_dir=tmp_path / "second"))
    assert zoo.read_bytes() == before
    lines = [r.getMessage() for r in caplog.records if "model zoo" in r.getMessage()]
    assert lines == [f"zskt: the model zoo already holds {zoo}: kept it (overwrite_zoo=true replaces it); "
                     f"this run's model is {tmp_path / 'second' / 'model.pt'}"]
    assert (tmp_path / "second" / "model.pt").is_file()

    third = zskt.run.execute(compose_run_config(tmp_path, [*SCRATCH, "overwrite_zoo=true"], run_dir=tmp_path / "third"))
    assert torch.load(zoo, weights_only=True)["run"]["results"] == str((tmp_path / "third" / "results.json").resolve())
    assert torch.load(zoo, weights_only=True)["run"]["test_acc"] == third["test_acc"]


def test_overwrite_zoo_is_validated(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        zskt.run.run(compose_run_config(tmp_path, [*SCRATCH, "overwrite_zoo=1"]))
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == "zskt: error: overwrite_zoo=1 is invalid: use true or false"


def test_final_files_get_the_mode_the_umask_gives(tmp_path):
    old = os.umask(0o022)
    try:
        zskt.run.execute(compose_run_config(tmp_path, SCRATCH))
    finally:
        os.umask(old)
    run = tmp_path / "run"
    files = [run / "model.pt", run / "results.json", run / "run_config.yaml", run / "checkpoints" / "last.ckpt",
             tmp_path / "outputs" / "models" / "digits" / "wrn-10-1-seed0.pt"]
    assert {str(f): oct(stat.S_IMODE(f.stat().st_mode)) for f in files} == {str(f): "0o644" for f in files}


def test_a_refused_command_writes_nothing(tmp_path):
    # Hydra creates the run dir, .hydra/ and run.log before the run starts: a refusal takes them away
    done = cli(tmp_path, "method=kd_at", "dataset=digits", "dataset.m=2")
    assert done.returncode == 2 and "teacher checkpoint" in done.stderr
    assert list(tmp_path.iterdir()) == []
    # a dir that held something keeps it, and only it
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    done = cli(tmp_path, "method=kd_at", "dataset=digits", "dataset.m=2", "hydra.run.dir=mine")
    assert done.returncode == 2
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == ["mine", "mine/notes.txt"]


def test_a_failed_download_leaves_no_data_folder(tmp_path, monkeypatch):
    from zskt.data import sources
    from zskt.errors import UserError

    def offline(name, root, split, download):  # what torchvision does without a network: makes root, then fails
        Path(root).mkdir(parents=True, exist_ok=True)
        raise UserError("CIFAR-10 could not be downloaded")

    monkeypatch.setattr(sources, "load_torchvision", offline)
    with pytest.raises(UserError):
        sources.download("cifar10", str(tmp_path / "data" / "cifar10"))
    assert list(tmp_path.iterdir()) == []


def test_resume_keeps_the_first_runs_hydra_files(tmp_path):
    zskt.run.execute(compose_run_config(tmp_path, SCRATCH))  # a completed run; then its .hydra as Hydra wrote it
    first = "- method=scratch\n- student.depth=10\n- method.epochs=1\n"
    (tmp_path / "run" / ".hydra").mkdir()
    (tmp_path / "run" / ".hydra" / "overrides.yaml").write_text(first)
    done = cli(tmp_path, "hydra.run.dir=run", "resume=true")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "already completed" in done.stdout
    assert (tmp_path / "run" / ".hydra" / "overrides.yaml").read_text() == first


class KillAtBatch(pl.Callback):
    """A run killed in its first epoch, before its first evaluation."""

    def __init__(self, batch: int) -> None:
        self.batch = batch

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == self.batch:
            raise RuntimeError("simulated kill")


def test_resume_from_the_interrupted_checkpoint_sums_the_wall_time(tmp_path):
    # no evaluation checkpoint before the crash (every 5 epochs): the run resumes from interrupted.ckpt
    overrides = [*SCRATCH[:2], "method.epochs=2", "callbacks.model_checkpoint.every_n_epochs=5"]
    with pytest.raises(RuntimeError, match="simulated kill"):
        run_with_callbacks(tmp_path, overrides, callbacks=[KillAtBatch(5)])
    checkpoints = tmp_path / "run" / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["interrupted.ckpt"]
    first_part = torch.load(checkpoints / "interrupted.ckpt", weights_only=True)["callbacks"]["WallTime"]["wall_time_s"]
    start = time.perf_counter()
    done = run_with_callbacks(tmp_path, ["resume=true"])
    second_part = time.perf_counter() - start
    assert [e["epoch"] for e in done["evaluations"]] == [1, 2]
    assert first_part > 0 and first_part + second_part - 1.0 <= done["wall_time_s"] <= first_part + second_part


ZERO_SHOT = ["method=zero_shot", "dataset=digits", "student.depth=10", *TEACHER, "method.batch_size=16",
             "method.n_student_steps=2", "trainer.precision=32-true", "callbacks.progress_bar.refresh_rate=0",
             "hydra.run.dir=run"]


def test_zero_shot_logs_and_says_everything_in_iterations(tmp_path, teacher_zoo):
    done = cli(tmp_path, *ZERO_SHOT, f"paths.models={teacher_zoo}", "method.iterations=20", "method.eval_every=10")
    assert done.returncode == 0, done.stderr[-2000:]
    output = done.stdout + done.stderr
    evaluations = json.loads((tmp_path / "run" / "results.json").read_text())["evaluations"]
    for iteration, evaluation in zip((10, 20), evaluations):
        assert (f"iteration {iteration}/20: student test accuracy {evaluation['test_acc']:.2f}%, top_class_share "
                f"{evaluation['top_class_share']:.2f} (collapse signal)") in output
    assert "Trainer.fit` stopped" not in output and "max_epochs" not in output
    events = EventAccumulator(str(tmp_path / "run"), size_guidance={"images": 0, "histograms": 0})
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    assert {"lr/generator", "lr/student", "train/generator_loss", "eval/acc", "test/acc"} <= scalars
    assert not {"epoch", "lr-Adam", "lr-Adam-1", "train/iteration"} & scalars
    # every axis in iterations: losses at each of the 20 (a short run still gets a curve), evaluations,
    # images and histograms at the iterations they happened, learning rates at each block's start
    assert [s.step for s in events.Scalars("train/student_loss")] == list(range(1, 21))
    assert [s.step for s in events.Scalars("eval/acc")] == [10, 20]
    assert [s.step for s in events.Scalars("test/acc")] == [20]
    assert [s.step for s in events.Scalars("lr/student")] == [0, 10]
    assert [i.step for i in events.Images("generator/samples")] == [10, 20]
    assert [h.step for h in events.Histograms("generator/teacher_classes")] == [10, 20]


def test_ctrl_c_says_how_to_resume_and_resume_continues(tmp_path, teacher_zoo):
    args = [*ZERO_SHOT, f"paths.models={teacher_zoo}", "method.iterations=40", "method.eval_every=40"]
    # SIG_DFL in the child: a shell's background job would ignore SIGINT, and so would Python then
    run = subprocess.Popen([sys.executable, "-m", "zskt.run", *args], cwd=tmp_path, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"},
                           preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    while not list((tmp_path / "run").glob("events.out.tfevents*")) and time.monotonic() < deadline:
        time.sleep(0.1)  # training has begun once the first loss is logged
    run.send_signal(signal.SIGINT)
    _, err = run.communicate(timeout=120)
    assert run.returncode == 130, err[-2000:]
    lines = [line for line in err.splitlines() if line.strip()]
    interrupted = tmp_path / "run" / "checkpoints" / "interrupted.ckpt"
    assert re.fullmatch(
        rf"zskt: stopped by Ctrl-C at iteration \d+: the moment is saved in {re.escape(str(interrupted))}; resume "
        rf"with `python -m zskt.run hydra.run.dir={re.escape(str(tmp_path / 'run'))} resume=true` \(from "
        rf"{re.escape(str(interrupted))}: the run had not reached its first evaluation\)", lines[-1]), lines[-1]
    assert "KeyboardInterrupt" not in err and "weights_only" not in err and "Traceback" not in err
    # no evaluation yet (one block of 40): resume=true continues from the moment Ctrl-C saved
    done = zskt.run.execute(compose_run_config(tmp_path, ["resume=true"]))
    assert done["budget"]["iterations"] == 40 and [e["student_images"] for e in done["evaluations"]] == [40 * 2 * 16]


def test_zero_shot_evaluation_period_follows_the_run(tmp_path, compose_cfg):
    from zskt.methods.zero_shot import default_eval_every
    from zskt.validation import validate_config

    # method.iterations alone is accepted: the default period is a tenth of the run, at most 1,000
    assert [default_eval_every(n) for n in (5, 40, 200, 80_000, 500_000)] == [1, 4, 20, 1000, 1000]
    cfg = compose_cfg(tmp_path, ["method=zero_shot", "method.iterations=40"])
    validate_config(cfg)
    assert cfg.method.eval_every is None
    # an explicit period longer than the run is refused
    cfg = compose_cfg(tmp_path, ["method=zero_shot", "method.iterations=40", "method.eval_every=50"])
    with pytest.raises(zskt.run.UserError, match=r"method.eval_every=50 is larger than the run"):
        validate_config(cfg)
