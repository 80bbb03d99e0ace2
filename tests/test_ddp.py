"""Every training method data-parallel under CPU `ddp_spawn` with two gloo processes: it runs
to the end and both ranks hold the same student. Each case spawns two interpreters (~25 s on
CI), so a module's DDP path is run once: KD+AT covers scratch's (the same SGD recipe, data
module and sampler, plus a teacher); zero-shot is in tests/test_zero_shot.py, and the modified
variant is the same module (only where the student's batch comes from differs)."""

from __future__ import annotations

from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from zskt_test_helpers import run_with_callbacks, TEACHER

DDP = ["trainer=ddp", "trainer.devices=2", "trainer.accelerator=cpu", "trainer.strategy.start_method=spawn",
       "trainer.strategy.process_group_backend=gloo", "callbacks.progress_bar.refresh_rate=0",
       "trainer.precision=32-true"]


class _SaveRankStudent(pl.Callback):
    """Each rank saves its final student parameters."""

    def __init__(self, folder: str) -> None:
        self.folder = folder

    def on_train_end(self, trainer, pl_module) -> None:
        params = {k: v.detach().cpu().clone() for k, v in pl_module.student.named_parameters()}
        torch.save(params, Path(self.folder) / f"rank{trainer.global_rank}.pt")


@pytest.mark.parametrize("method", ["kd_at", "finetune"])
def test_every_method_runs_under_ddp_and_ranks_agree(tmp_path, teacher_zoo, zero_shot_student, method):
    overrides = {
        "kd_at": ["method=kd_at", "student.depth=10", *TEACHER, "dataset.m=4", "method.epochs=2"],
        "finetune": ["method=finetune", f"student.checkpoint={zero_shot_student}", "dataset.m=4", "method.epochs=2"],
    }[method]
    results = run_with_callbacks(tmp_path, [*overrides, f"paths.models={teacher_zoo}", *DDP],
                                 [_SaveRankStudent(str(tmp_path))])
    assert results["status"] == "completed"
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert rank0.keys() == rank1.keys()
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0)
    saved = torch.load(tmp_path / "run" / "model.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(saved[k], rank0[k]) for k in rank0)  # model.pt holds the trained student
