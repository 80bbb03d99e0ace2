"""Helpers the test files share: composing the Hydra config in-process, outputs under a tmp dir."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
from PIL import Image
from torch import nn
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig

REPO = Path(__file__).resolve().parent.parent
CONF = str(REPO / "conf")
# fast and machine-independent: no progress bar, fp32 whatever the CPU, the offline digits set
FAST = ["callbacks.progress_bar.refresh_rate=0", "trainer.precision=32-true", "dataset=digits"]
# the teacher the session-wide teacher_zoo fixture (conftest.py) trains: WRN-10-2, seed 0
TEACHER = ["teacher.depth=10", "teacher.width=2", "teacher.seed=0"]
# a WRN's attention points (conf/network/wrn.yaml's default)
WRN_GROUPS = ["block1", "block2", "block3"]


def compose_run_config(tmp: Path, overrides: list[str], run_dir: Path | None = None):
    """The config `python -m zskt.run <overrides>` would run, its outputs under `tmp`
    (the run in `run_dir`, by default `tmp/run`)."""
    run_dir = run_dir or tmp / "run"
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose(
            config_name="config",
            # quoted: a sweep job's dir name holds '=' and ','
            overrides=[f"hydra.run.dir='{run_dir}'", f"paths.output_dir='{run_dir}'",
                       f"paths.outputs={tmp / 'outputs'}", *FAST, *overrides],
            return_hydra_config=True,
        )
    HydraConfig().set_config(cfg)
    return cfg


def run_with_callbacks(tmp: Path, overrides: list[str], callbacks=(), run_dir: Path | None = None) -> dict:
    """`zskt.run.execute` on `compose_run_config(tmp, overrides, run_dir)`, with extra Lightning callbacks."""
    import zskt.run

    return zskt.run.execute(compose_run_config(tmp, overrides, run_dir), callbacks=callbacks)


def straight_and_resumed(tmp: Path, overrides: list[str], kill_epoch: int, straight_callbacks=()) -> tuple:
    """The same run twice: straight through in `tmp/a`, and in `tmp/b` killed when epoch `kill_epoch`
    starts and resumed. Returns both runs' results and both final checkpoints (`checkpoints/last.ckpt`)."""
    import pytest
    import torch
    import zskt.run

    straight = zskt.run.execute(compose_run_config(tmp / "a", overrides), callbacks=straight_callbacks)
    with pytest.raises(RuntimeError, match="simulated kill"):
        zskt.run.execute(compose_run_config(tmp / "b", overrides), callbacks=[KillAtEpoch(kill_epoch)])
    resumed = zskt.run.execute(compose_run_config(tmp / "b", ["resume=true"]))
    a, b = (torch.load(tmp / run / "run" / "checkpoints" / "last.ckpt", weights_only=True) for run in ("a", "b"))
    return straight, resumed, a, b


class KillAtEpoch(pl.Callback):
    """A killed job: fail when epoch `epoch` starts (after the previous epoch's checkpoint)."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch == self.epoch:
            raise RuntimeError("simulated kill")


def write_image_folder(root: Path, classes=("a", "b", "c"), per_class: int = 4, size: int = 32) -> None:
    """An ImageFolder tree (train/<class>/*.png, test/<class>/*.png) of random images."""
    rng = np.random.default_rng(1)
    for split in ("train", "test"):
        for name in classes:
            (root / split / name).mkdir(parents=True)
            for i in range(per_class):
                pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / name / f"{i}.png")


def cli(cwd: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """`python -m zskt.run <args>` in `cwd`, its output captured."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "-m", "zskt.run", *args], cwd=cwd, capture_output=True, text=True,
                          env=env, timeout=timeout)


class TinyNet(nn.Module):
    """A user's own network for the custom-family tests: three conv stages (32, 16, 8 pixels at a
    32x32 input, like a WRN's groups) and a linear head; `width` is a constructor argument of its own."""

    def __init__(self, num_classes: int, width: int = 4) -> None:
        super().__init__()
        self.stage1 = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU())
        self.stage2 = nn.Sequential(nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.BatchNorm2d(2 * width),
                                    nn.ReLU())
        self.stage3 = nn.Sequential(nn.Conv2d(2 * width, 4 * width, 3, stride=2, padding=1),
                                    nn.BatchNorm2d(4 * width), nn.ReLU())
        self.head = nn.Linear(4 * width, num_classes)

    def forward(self, x):
        return self.head(self.stage3(self.stage2(self.stage1(x))).mean(dim=(2, 3)))


def learning_curve(results: dict) -> list[dict]:
    """results.json's evaluations without their clock stamps (wall_s, cpu_s): what an exact resume must
    reproduce (the clocks differ from run to run)."""
    return [{k: v for k, v in e.items() if k not in ("wall_s", "cpu_s")} for e in results["evaluations"]]
