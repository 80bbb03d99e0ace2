"""Helpers the test files share: composing the Hydra config in-process, outputs under a tmp dir."""

from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig

REPO = Path(__file__).resolve().parent.parent
CONF = str(REPO / "conf")
# fast and machine-independent: no progress bar, fp32 whatever the CPU, the offline digits set
FAST = ["callbacks.progress_bar.refresh_rate=0", "trainer.precision=32-true", "dataset=digits"]


def compose_run_config(tmp: Path, overrides: list[str]):
    """The config `python -m zskt.run <overrides>` would run, its outputs under `tmp`."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose(
            config_name="config",
            overrides=[f"hydra.run.dir={tmp / 'run'}", f"paths.output_dir={tmp / 'run'}",
                       f"paths.outputs={tmp / 'outputs'}", *FAST, *overrides],
            return_hydra_config=True,
        )
    HydraConfig().set_config(cfg)
    return cfg


def run_with_callbacks(tmp: Path, overrides: list[str], callbacks=()) -> dict:
    """`zskt.run.execute` on `compose_run_config(tmp, overrides)`, with extra Lightning callbacks."""
    import zskt.run

    original = zskt.run.build_callbacks
    zskt.run.build_callbacks = lambda cfg, every: [*original(cfg, every), *callbacks]
    try:
        return zskt.run.execute(compose_run_config(tmp, overrides))
    finally:
        zskt.run.build_callbacks = original


class KillAtEpoch(pl.Callback):
    """A killed job: fail when epoch `epoch` starts (after the previous epoch's checkpoint)."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch == self.epoch:
            raise RuntimeError("simulated kill")
