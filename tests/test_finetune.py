"""Extra-M fine-tuning of a zero-shot student: theta_0, frozen BN statistics, the starting
accuracy, the teacher recorded in the student's model.pt, resume, and input errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

import zskt.run
from zskt_test_helpers import compose_run_config as compose_cfg
from zskt_test_helpers import KillAtEpoch, TEACHER
from zskt_test_helpers import run_with_callbacks as run
from zskt.checkpoints import load_model

FINETUNE = ["method=finetune", "dataset.m=5", "method.epochs=3", "method.evaluations=3"]  # evaluate + checkpoint every epoch


class _Probe(pl.Callback):
    """Records the anchor term when training starts and the networks' modes during training."""

    def __init__(self) -> None:
        self.anchor_at_start: float | None = None
        self.modes: set[tuple[bool, bool]] = set()

    def on_train_start(self, trainer, pl_module) -> None:
        self.anchor_at_start = float(pl_module.anchor_term())

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.modes.add((pl_module.student.training, pl_module.teacher.training))


def finetune_overrides(student: Path, tmp: Path, *extra: str) -> list[str]:
    # an empty model zoo: the teacher can only come from the student's model.pt
    return [*FINETUNE, f"student.checkpoint={student}", f"paths.models={tmp / 'empty-zoo'}", *extra]


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory, zero_shot_student):
    """One fine-tune run: its run dir, results and probe."""
    root = tmp_path_factory.mktemp("finetune")
    probe = _Probe()
    results = run(root, finetune_overrides(zero_shot_student, root), [probe])
    return root / "run", results, probe


def _batch_norms(model: torch.nn.Module) -> dict[str, torch.nn.BatchNorm2d]:
    return {name: m for name, m in model.named_modules() if isinstance(m, torch.nn.BatchNorm2d)}


def test_theta_0_is_a_frozen_copy_of_the_starting_student(finetuned, zero_shot_student):
    run_dir, _, probe = finetuned
    start, _ = load_model(zero_shot_student)
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    state = ckpt["state_dict"]
    assert probe.anchor_at_start == 0.0  # the anchor term vanishes where the fine-tune starts
    for key, value in start.state_dict().items():
        assert torch.equal(state[f"theta_0.{key}"], value), key  # theta_0 never moved
    assert any(not torch.equal(state[f"student.{k}"], v) for k, v in start.named_parameters())  # the student did
    assert bool(state["anchored"])
    # theta_0 is in no optimiser: Adam holds exactly the student's parameter tensors
    assert len(ckpt["optimizer_states"][0]["state"]) == len(list(start.parameters()))
    assert ckpt["optimizer_states"][0]["param_groups"][0]["lr"] < 5e-4  # cosine-annealed below the start


def test_student_bn_statistics_stay_frozen_while_bn_affine_trains(finetuned, zero_shot_student):
    run_dir, _, probe = finetuned
    before = _batch_norms(load_model(zero_shot_student)[0])
    after = _batch_norms(load_model(run_dir / "model.pt")[0])
    assert before.keys() == after.keys() and len(before) > 0
    for name, bn in before.items():
        assert torch.equal(bn.running_mean, after[name].running_mean), name
        assert torch.equal(bn.running_var, after[name].running_var), name
        assert not torch.equal(bn.weight, after[name].weight), name  # affine parameters still train
    assert probe.modes == {(False, False)}  # student and teacher in eval mode at every step


def test_starting_accuracy_is_recorded_next_to_final_and_best(finetuned, zero_shot_student, tmp_path):
    _, results, _ = finetuned
    evaluated = run(tmp_path, ["method=evaluate", f"student.checkpoint={zero_shot_student}"])
    assert results["start_test_acc"] == pytest.approx(evaluated["test_acc"], abs=1e-3)
    assert results["best_test_acc"] >= results["test_acc"]
    assert results["m"] == 5 and results["budget"] == {"epochs": 3, "budget_scale": 1.0, "student_images": 3 * 10 * 5}
    # every periodic evaluation of the fit is recorded, and best-of-evaluations is their best (it was the
    # final test alone: the fit's validation loop was mistaken for the measurement before the fit)
    assert [(e["epoch"], e["student_images"]) for e in results["evaluations"]] == [(1, 50), (2, 100), (3, 150)]
    assert results["best_test_acc"] == pytest.approx(max(e["test_acc"] for e in results["evaluations"]
                                                         + [{"test_acc": results["test_acc"]}]), abs=1e-3)


def test_teacher_is_the_one_recorded_in_the_students_model_pt(finetuned, zero_shot_student, tmp_path):
    _, results, _ = finetuned
    recorded = load_model(zero_shot_student)[1]["teacher"]["checkpoint"]
    assert results["teacher"]["checkpoint"] == recorded
    assert results["teacher"]["test_acc"] > 85.0

    other = tmp_path / "other-teacher.pt"  # the user's choice wins
    shutil.copyfile(recorded, other)
    chosen = run(tmp_path, finetune_overrides(zero_shot_student, tmp_path, "dataset.m=2", "method.epochs=1",
                                              f"teacher.checkpoint={other}"))
    assert chosen["teacher"]["checkpoint"] == str(other)


def test_resume_keeps_the_original_theta_0(finetuned, zero_shot_student, tmp_path):
    straight_dir, straight, _ = finetuned
    overrides = finetune_overrides(zero_shot_student, tmp_path)
    with pytest.raises(RuntimeError, match="simulated kill"):
        run(tmp_path, overrides, [KillAtEpoch(1)])
    resumed = zskt.run.execute(compose_cfg(tmp_path, ["resume=true"]))

    a = torch.load(straight_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a if k.startswith(("theta_0.", "student.")))
    assert resumed["start_test_acc"] == straight["start_test_acc"]
    assert resumed["test_acc"] == straight["test_acc"]
    assert resumed["best_test_acc"] == straight["best_test_acc"]  # evaluations before the kill count too


@pytest.mark.parametrize("drop, message", [("dataset.m", "add dataset.m=M"), ("student.checkpoint", "add student.checkpoint=")])
def test_missing_m_or_student_is_one_line_error(zero_shot_student, tmp_path, capsys, drop, message):
    zoo = load_model(zero_shot_student)[1]["teacher"]["checkpoint"]
    overrides = [*FINETUNE, f"student.checkpoint={zero_shot_student}", f"teacher.checkpoint={zoo}", *TEACHER,
                 "student.depth=10", f"{drop}=null"]
    with pytest.raises(SystemExit) as exit_info:
        zskt.run.run(compose_cfg(tmp_path, overrides))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("zskt: error: method=finetune") and message in err[0]
