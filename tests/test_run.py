"""The entry point end to end: a CLI run, a sweep, the model zoo and evaluation."""

import json

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import zskt.run
from zskt_test_helpers import cli
from zskt.models import WideResNet
from zskt.models.size_and_layout import count_parameters

RESULT_KEYS = {"status", "method", "dataset", "m", "seed", "student", "teacher", "test_acc", "best_test_acc",
               "budget", "wall_time_s", "model"}


def test_cli_scratch_run_writes_results_model_checkpoint_and_zoo(tmp_path):
    done = cli(tmp_path, "method=scratch", "dataset=digits", "student.depth=10", "method.epochs=1",
               "callbacks.progress_bar.refresh_rate=0", "hydra.run.dir=run")
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert RESULT_KEYS <= set(results) and results["status"] == "completed"
    params = count_parameters(WideResNet(10, 1, 10))
    assert results["student"] == {"family": "wrn", "depth": 10, "width": 1, "name": "WRN-10-1", "params": params}
    # student_images: one epoch over digits' 1,438 train images (1,797 less the 20 % test split)
    assert results["budget"] == {"epochs": 1, "budget_scale": 1.0, "student_images": 1438} and results["m"] is None
    # its learning curve: the one evaluation, after the epoch's 1,438 images
    (evaluation,) = results["evaluations"]
    assert evaluation["epoch"] == 1 and evaluation["student_images"] == 1438
    assert evaluation["test_acc"] <= results["best_test_acc"]
    assert 0 <= results["test_acc"] <= 100 and results["model"] == "model.pt"
    torch.load(tmp_path / "run" / "model.pt", weights_only=True)
    torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert (tmp_path / "outputs" / "models" / "digits" / "wrn-10-1-seed0.pt").is_file()
    assert "final test accuracy" in done.stdout


def test_sweep_over_m_writes_one_result_per_job(tmp_path):
    done = cli(tmp_path, "-m", "method=scratch", "dataset=digits", "student.depth=10", "method.epochs=2",
               "dataset.m=2,3", "callbacks.progress_bar.refresh_rate=0", "hydra.sweep.dir=sweep")
    assert done.returncode == 0, done.stderr[-2000:]
    results = sorted((json.loads(p.read_text()) for p in (tmp_path / "sweep").glob("*/results.json")),
                     key=lambda r: r["m"])
    assert [r["m"] for r in results] == [2, 3]
    assert "Launching 2 jobs locally" in done.stdout
    for number, m in enumerate((2, 3), start=1):
        # each job's dir is named by its overrides (the progress bar's left out); Hydra's launcher announces
        # each job as it starts
        job = tmp_path / "sweep" / f"dataset.m={m},dataset=digits,method.epochs=2,method=scratch,student.depth=10"
        assert f"#{number - 1} : method=scratch dataset=digits student.depth=10 method.epochs=2 " \
               f"dataset.m={m} callbacks.progress_bar.refresh_rate=0" in done.stdout
        chosen = json.loads((job / "few_shot_indices.json").read_text())
        assert chosen["m"] == m and len(chosen["indices"]) == 10 * m
        # TensorBoard's HPARAMS tab: the job's overrides beside its final accuracy
        events = EventAccumulator(str(job))
        events.Reload()
        final = json.loads((job / "results.json").read_text())["test_acc"]
        assert events.Scalars("final/test_acc")[-1].value == pytest.approx(final)
        assert b"method.epochs" in events.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    assert not (tmp_path / "outputs" / "models").exists()  # few-shot models are not teachers


def test_scratch_learns_and_evaluate_reproduces_it(tmp_path, teacher_zoo, compose_cfg):
    model = teacher_zoo / "digits" / "wrn-10-2-seed0.pt"
    results = zskt.run.execute(compose_cfg(tmp_path, ["method=evaluate", f"student.checkpoint={model}"]))
    assert results["test_acc"] > 80.0  # chance is 10 %
    assert results["student"]["depth"] == 10 and results["student"]["width"] == 2


def test_few_shot_epochs_follow_the_recipe(compose_cfg, tmp_path):
    from hydra.utils import instantiate

    cfg = compose_cfg(tmp_path, ["method=scratch", "dataset=svhn", "dataset.m=25", "method.budget_scale=0.5"])
    module = instantiate(cfg.method, student={"depth": 10, "width": 1, "num_classes": 10}, m=25,
                         channels_last=cfg.channels_last, compile=cfg.compile, _convert_="all")
    assert module.max_epochs == int(100 * 5000 / 25) // 2  # E = 100 on SVHN, halved by budget_scale
