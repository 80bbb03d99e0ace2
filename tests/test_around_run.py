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
    from omegaconf import OmegaConf

    from zskt.config import resolve_config

    # a completed run's files (its saved config and results), and its .hydra as Hydra wrote it
    run = tmp_path / "run"
    run.mkdir()
    (run / "run_config.yaml").write_text(OmegaConf.to_yaml(resolve_config(compose_run_config(tmp_path, SCRATCH))))
    (run / "results.json").write_text(json.dumps({"status": "completed", "test_acc": 50.0}))
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
    clock = torch.load(checkpoints / "interrupted.ckpt", weights_only=True)["callbacks"]["WallTime"]
    first_part, first_cpu = clock["wall_time_s"], clock["cpu_time_s"]
    start, cpu_start = time.perf_counter(), time.process_time()
    done = run_with_callbacks(tmp_path, ["resume=true"])
    second_part, second_cpu = time.perf_counter() - start, time.process_time() - cpu_start
    assert [e["epoch"] for e in done["evaluations"]] == [1, 2]
    assert first_part > 0 and first_part + second_part - 1.0 <= done["wall_time_s"] <= first_part + second_part
    assert first_cpu > 0 and first_cpu + second_cpu - 1.0 <= done["cpu_time_s"] <= first_cpu + second_cpu
    # each evaluation is stamped with the clocks at that point: rising, within the run's totals
    walls, cpus = [e["wall_s"] for e in done["evaluations"]], [e["cpu_s"] for e in done["evaluations"]]
    assert 0 < walls[0] < walls[1] <= done["wall_time_s"] and 0 < cpus[0] < cpus[1] <= done["cpu_time_s"]


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
    # the end: both accuracies, where the results and the curves are, the command that opens them
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    run = (tmp_path / "run").resolve()
    assert (f"zero_shot on digits: final test accuracy {results['test_acc']:.2f}% (best of evaluations "
            f"{results['best_test_acc']:.2f}%), teacher {results['teacher']['test_acc']:.2f}%; results in "
            f"{run / 'results.json'}") in output
    assert f"TensorBoard logs in {run}: open them with `tensorboard --logdir {run}`" in output
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


# a path option naming the wrong kind of thing: {file} is a file, {folder} a folder
WRONG_KIND = [
    (["dataset=image_folder", "dataset.root={file}"], "dataset.root={file} is a file, not a folder: pass a folder there"),
    (["dataset=cifar10", "dataset.root={file}"], "dataset.root={file} is a file, not a folder: pass a folder there"),
    (["dataset=cifar10", "paths.data={file}"], "paths.data={file} is a file, not a folder: pass a folder there"),
    (["paths.models={file}"], "paths.models={file} is a file, not a folder: pass a folder there"),
    (["paths.cache={file}"], "paths.cache={file} is a file, not a folder: pass a folder there"),
    (["method=evaluate", "student.checkpoint={folder}"],
     "student.checkpoint={folder} is a folder, not a file: pass a checkpoint file there"),
    (["method=kd_at", "dataset.m=2", "teacher.checkpoint={folder}", "teacher.train_if_missing=true"],
     "teacher.checkpoint={folder} is a folder, not a file: pass a checkpoint file there"),
    (["method=evaluate", "student.checkpoint={file}/model.pt"],
     "student.checkpoint={file}/model.pt cannot exist: {file} is a file, not a folder: pass a checkpoint file there"),
]


@pytest.mark.parametrize(("overrides", "expected"), WRONG_KIND, ids=[" ".join(o) for o, _ in WRONG_KIND])
def test_a_path_of_the_wrong_kind_is_one_line(tmp_path, capsys, overrides, expected):
    names = {"file": tmp_path / "a_file", "folder": tmp_path / "a_folder"}
    names["file"].write_text("not a folder")
    names["folder"].mkdir()
    with pytest.raises(SystemExit) as exit_info:
        zskt.run.run(compose_run_config(tmp_path, [o.format(**names) for o in overrides]))
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == f"zskt: error: {expected.format(**names)}"


def test_the_run_dir_hydra_would_make_under_a_file_is_one_line(tmp_path):
    (tmp_path / "a_file").write_text("not a folder")
    done = cli(tmp_path, "method=evaluate", "hydra.run.dir=a_file/run")
    assert done.returncode == 2
    assert done.stderr.strip() == (f"zskt: error: hydra.run.dir {tmp_path}/a_file/run cannot exist: {tmp_path}/a_file is a "
                                   "file, not a folder: pass another hydra.run.dir (or paths.outputs=<a folder>)")


def test_an_explicit_option_contradicting_the_checkpoint_is_one_line(tmp_path, teacher_zoo, capsys):
    teacher = teacher_zoo / "digits" / "wrn-10-2-seed0.pt"
    common = ["method=kd_at", "dataset.m=2", "method.epochs=1", f"teacher.checkpoint={teacher}"]
    with pytest.raises(SystemExit):
        zskt.run.run(compose_run_config(tmp_path, [*common, "teacher.depth=28"]))
    assert capsys.readouterr().err.strip() == (
        f"zskt: error: checkpoint {teacher} holds a WRN-10-2 with 10 classes, expected depth 28 (depth=28): "
        "fix the config or pass the matching checkpoint")
    # left at its default (WRN-40-2), the option yields to what the file records
    done = zskt.run.execute(compose_run_config(tmp_path, common))
    assert done["teacher"]["name"] == "WRN-10-2"


UNREAD = [
    (["+ckpt_path=x.ckpt"], "+ckpt_path=x.ckpt is not read by anything: to continue a run, pass "
                            "hydra.run.dir=<its dir> resume=true"),
    (["+trainer.max_epochs=1"], "+trainer.max_epochs=1 is not read by anything: the method's budget sets the length: "
                                "use method.epochs (zero-shot: method.iterations)"),
    (["-m", "+trainer.max_epochs=1,2"], "+trainer.max_epochs=1,2 is not read by anything: the method's budget sets "
                                        "the length: use method.epochs (zero-shot: method.iterations)"),
    (["+paths.extra=1"], "+paths.extra=1 is not read by anything (paths.extra is not in the config): drop it, or set "
                         "an existing option (python -m zskt.run --cfg job lists them)"),
    (["+teacher.depht=16"], "+teacher.depht=16 is not read by anything (teacher.depht is not in the teacher network's "
                            "options): drop it, or set an existing option (python -m zskt.run --cfg job lists them)"),
    (["+experiment=demo"], "+experiment=demo: experiment is already in the defaults list (conf/config.yaml): write "
                           "experiment=demo, without +"),
]


@pytest.mark.parametrize(("args", "expected"), UNREAD, ids=[" ".join(a) for a, _ in UNREAD])
def test_an_override_nothing_reads_is_one_line(args, expected):
    with pytest.raises(zskt.run.UserError) as raised:
        zskt.run.check_overrides(args)
    assert str(raised.value) == expected


def test_additions_that_are_read_pass():
    # a custom network's constructor arguments, a Trainer argument, a new callback
    zskt.run.check_overrides(["student=custom", "student._target_=zskt_test_helpers.TinyNet", "+student.kwargs.width=8",
                              "+trainer.gradient_clip_val=1.0", "+callbacks.timer._target_=pytorch_lightning.callbacks.Timer"])


def test_a_custom_network_that_does_not_import_names_the_cause(tmp_path, capsys):
    with pytest.raises(SystemExit):
        zskt.run.run(compose_run_config(tmp_path, ["method=evaluate", "student=custom", "student._target_=my_pkg.MyNet"]))
    captured = capsys.readouterr()
    assert captured.err.strip() == (
        "zskt: error: student: custom network my_pkg.MyNet does not import (ModuleNotFoundError(\"No module named "
        "'my_pkg'\") Are you sure that module 'my_pkg' is installed?): check the module path and that it is "
        "installed or on PYTHONPATH")
    assert "my_pkg" not in captured.out


def test_train_if_missing_is_suggested_only_for_the_zoo_path(tmp_path, capsys):
    with pytest.raises(SystemExit):
        zskt.run.run(compose_run_config(tmp_path, ["method=kd_at", "dataset.m=2", "teacher.checkpoint=nope.pth"]))
    assert capsys.readouterr().err.strip() == (
        "zskt: error: teacher checkpoint nope.pth does not exist: check the path (teacher.checkpoint), or leave it at "
        "its default, the model zoo's file for teacher.*")
    with pytest.raises(SystemExit):
        zskt.run.run(compose_run_config(tmp_path, ["method=kd_at", "dataset.m=2"]))
    assert "or set teacher.train_if_missing=true" in capsys.readouterr().err


OPENMP_PROBE = """
import os, sys
class Probe:  # records the OpenMP wait policy when torch starts to load
    def find_spec(self, name, path=None, target=None):
        if name == "torch" and "seen" not in globals():
            globals()["seen"] = os.environ.get("OMP_WAIT_POLICY")
        return None
sys.meta_path.insert(0, Probe())
import zskt.run
print(seen)
"""


@pytest.mark.parametrize(("given", "expected"), [(None, "PASSIVE"), ("ACTIVE", "ACTIVE")])
def test_the_entry_point_sets_a_passive_openmp_wait_policy_before_torch(given, expected):
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if given is not None:
        env["OMP_WAIT_POLICY"] = given
    done = subprocess.run([sys.executable, "-c", OPENMP_PROBE], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr[-1000:]
    assert done.stdout.strip() == expected


FEW_SHOT = ["method=scratch", "dataset.m=2", "student.depth=10", "method.epochs=3"]


def _csv_rows(path: Path) -> list[dict]:
    import csv

    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.parametrize("logger", ["csv", "many"])
def test_csv_logger_gets_the_curves_hparams_and_final_metrics(tmp_path, logger, caplog):
    with caplog.at_level(logging.INFO, logger="zskt"):
        done = zskt.run.execute(compose_run_config(tmp_path, [*FEW_SHOT, f"logger={logger}"]))
    run = tmp_path / "run"
    csv_dir = run / "csv" / "version_0"
    rows = _csv_rows(csv_dir / "metrics.csv")
    # 3 epochs of one batch (20 images): the loss at every step, an evaluation per epoch, the final numbers last
    assert [float(r["train/loss"]) > 0 for r in rows if r.get("train/loss")] == [True] * 3
    assert len([r for r in rows if r.get("eval/acc")]) == 3
    assert len([r for r in rows if r.get("lr/student")]) == 3  # LearningRateMonitor, at each epoch's start
    assert float(rows[-1]["final/test_acc"]) == pytest.approx(done["test_acc"])
    hparams = (csv_dir / "hparams.yaml").read_text()
    assert "method: scratch" in hparams and "m: 2" in hparams and "logger: " + logger in hparams
    assert f"metrics in {csv_dir / 'metrics.csv'}" in caplog.text
    # every method prints a line per evaluation, in its epochs (zero-shot's, in iterations: above)
    said = [r.getMessage() for r in caplog.records if ": test accuracy" in r.getMessage()]
    assert said == [f"epoch {e['epoch']}/3: test accuracy {e['test_acc']:.2f}%" for e in done["evaluations"]]
    assert [e["epoch"] for e in done["evaluations"]] == [1, 2, 3]
    assert bool(list(run.glob("events.out.tfevents*"))) == (logger == "many")
    if logger == "many":
        assert f"open them with `tensorboard --logdir {run}`" in caplog.text


def test_mlflow_logger_writes_a_local_store_with_hparams_and_final_metrics(tmp_path):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    done = zskt.run.execute(compose_run_config(tmp_path, [*FEW_SHOT, "logger=mlflow"]))
    store = tmp_path / "run" / "mlruns"
    client = MlflowClient(f"file:{store}")
    (run,) = client.search_runs([client.get_experiment_by_name("zskt").experiment_id])
    assert run.data.params["method"] == "scratch" and run.data.params["m"] == "2"
    assert run.data.metrics["final/test_acc"] == pytest.approx(done["test_acc"])
    assert len(client.get_metric_history(run.info.run_id, "train/loss")) == 3


def test_wandb_logger_runs_offline(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))  # no `wandb login` credentials: offline
    monkeypatch.setenv("HOME", str(tmp_path))
    import wandb

    done = zskt.run.execute(compose_run_config(tmp_path, [*FEW_SHOT, "logger=wandb"]))
    try:
        assert wandb.run.offline and wandb.run.config["m"] == 2 and wandb.run.config["student/name"] == "WRN-10-1"
        assert wandb.run.summary["final/test_acc"] == pytest.approx(done["test_acc"])
    finally:
        wandb.finish()
    (offline,) = (tmp_path / "run" / "wandb").glob("offline-run-*")
    assert list(offline.glob("*.wandb"))  # the run's records, for `wandb sync`


def test_a_logger_whose_package_is_missing_is_one_line(tmp_path, capsys, monkeypatch):
    import pytorch_lightning.loggers.mlflow as lightning_mlflow

    monkeypatch.setattr(lightning_mlflow, "_MLFLOW_AVAILABLE", False)  # as on a machine without mlflow
    with pytest.raises(SystemExit):
        zskt.run.run(compose_run_config(tmp_path, [*FEW_SHOT, "logger=mlflow"]))
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("zskt: error: logger pytorch_lightning.loggers.MLFlowLogger cannot start (")
    assert err.endswith("): pip install mlflow-skinny, or choose another logger=")
