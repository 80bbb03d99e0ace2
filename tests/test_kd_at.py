"""Few-shot KD+AT end to end: a frozen teacher, the few-shot subset, full data with m=all,
and a teacher that helps at the same M and budget."""

from __future__ import annotations

import json

import pytorch_lightning as pl
import torch
from zskt_test_helpers import compose_run_config, run_with_callbacks, TEACHER

import zskt.run



class _TeacherProbe(pl.Callback):
    """Records the teacher's weights and buffers before and after training, and the optimised tensors."""

    def on_train_start(self, trainer, pl_module) -> None:
        self.before = {k: v.clone() for k, v in pl_module.teacher.state_dict().items()}
        self.optimised = {id(p) for opt in trainer.optimizers for group in opt.param_groups for p in group["params"]}
        self.teacher_params = {id(p) for p in pl_module.teacher.parameters()}
        self.modes: set[bool] = set()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.modes.add(pl_module.teacher.training)

    def on_train_end(self, trainer, pl_module) -> None:
        self.after = {k: v.clone() for k, v in pl_module.teacher.state_dict().items()}


def test_kd_at_trains_on_m_images_per_class_from_a_frozen_teacher(tmp_path, teacher_zoo, monkeypatch):
    probe = _TeacherProbe()
    monkeypatch.chdir(teacher_zoo)  # a relative teacher.checkpoint is recorded as an absolute path
    results = run_with_callbacks(tmp_path, ["method=kd_at", "student.depth=10", *TEACHER,
                                            "teacher.checkpoint=digits/wrn-10-2-seed0.pt",
                                            "dataset.m=3", "method.epochs=4", "method.evaluations=2"], [probe])
    assert results["method"] == "kd_at" and results["m"] == 3
    assert results["budget"]["epochs"] == 4
    assert results["teacher"]["checkpoint"] == str(teacher_zoo / "digits" / "wrn-10-2-seed0.pt")
    assert results["teacher"]["test_acc"] > 80.0
    chosen = json.loads((tmp_path / "run" / "few_shot_indices.json").read_text())
    assert len(chosen["indices"]) == 30
    # frozen: same weights and BN buffers, eval mode at every step, in no optimiser
    assert probe.before.keys() == probe.after.keys()
    assert all(torch.equal(probe.before[k], probe.after[k]) for k in probe.before)
    assert probe.modes == {False}
    assert not probe.optimised & probe.teacher_params


def test_kd_at_stretches_few_shot_epochs_and_m_all_is_full_data(tmp_path):
    few = compose_run_config(tmp_path, ["method=kd_at", "dataset=cifar10", "dataset.m=25"])
    module_cls = zskt.run.get_class(few.method._target_)
    assert module_cls.__name__ == "KDAT"
    assert (few.method.alpha, few.method.temperature, few.method.beta) == (0.9, 4.0, 1000.0)
    assert few.method.full_epochs == 200 and few.method.reference_m == 5000
    assert compose_run_config(tmp_path, ["method=kd_at", "dataset.m=all"]).dataset.m == "all"


def test_kd_at_beats_no_teacher_at_the_same_m_and_budget(tmp_path, teacher_zoo):
    # 2 images per class, 300 epochs of one batch. beta is 100, not the paper's 1000: on these
    # tiny digits networks the paper's AT weight dominates the loss and needs far more steps than
    # a test affords (measured, seed 0: no teacher 61.8 %, beta 100 80.5 %, beta 1000 55.2 %)
    common = ["student.depth=10", *TEACHER, f"paths.models={teacher_zoo}", "dataset.m=2", "method.epochs=300",
              "method.evaluations=1", "seed=0"]
    alone = zskt.run.execute(compose_run_config(tmp_path / "scratch", ["method=scratch", *common]))
    taught = zskt.run.execute(compose_run_config(tmp_path / "kd_at", ["method=kd_at", "method.beta=100", *common]))
    assert alone["m"] == taught["m"] == 2 and alone["budget"] == taught["budget"]
    assert taught["test_acc"] > alone["test_acc"] + 10.0, (taught["test_acc"], alone["test_acc"])
