"""The one entry point: `python -m zskt.run method=... dataset=... key=value`.

It only wires: compose (Hydra) -> check -> build the parts (data, the method module with what its
class asks for (`zskt.build`), trainer) -> fit (`zskt.fitting`) / test -> hand the results on
(`zskt.results`). Mistakes a user can fix end as one line on stderr and exit status 2; this module is
the only one that exits (`run` and the command line below), everything else raises.
"""

from __future__ import annotations

import os

# OpenMP threads that spin while they wait (libgomp's default) lose their cores on a machine shared
# with other jobs: the demo's student phase sat at 0/200 for a minute. Passive waiting costs little
# on an idle machine. OpenMP reads the variable when torch loads it, so this comes before any import
# of torch; a value the user set wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# logger=mlflow writes MLflow's file store into the run dir (no server), which MLflow 3 keeps behind this switch
os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")

import logging  # noqa: E402 - after the OpenMP default above
import signal  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from collections.abc import Sequence  # noqa: E402
from pathlib import Path  # noqa: E402

import hydra  # noqa: E402
import pytorch_lightning as pl
from hydra.core.hydra_config import HydraConfig
from hydra.utils import get_class
from omegaconf import DictConfig
from pytorch_lightning.utilities.rank_zero import rank_zero_only

from zskt import results
from zskt.build import build_method
from zskt.callbacks import WallTime
from zskt.config import check_overrides, instantiate_node, resolve_config
from zskt.errors import RefusedBeforeRun, RunStopped, UserError
from zskt.fitting import fit
from zskt.hardware import set_tf32
from zskt.rundir import (check_resume, disk_full, disk_full_message, lock_run_dir, releases_run_dir_locks,
                         remove_refused_run_dir)
from zskt.sweep import log_final_hparams
from zskt.trainer import build_trainer
from zskt.validation import validate_config

log = logging.getLogger("zskt")
info = rank_zero_only(log.info)

# Lightning notices that are expected here and would only alarm users:
warnings.filterwarnings("ignore", message=r".*`IterableDataset` has `__len__` defined")  # zero-shot iterations
warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode at the start of training")  # frozen teachers
warnings.filterwarnings("ignore", message=r".*smaller than the logging interval")  # tiny few-shot epochs
warnings.filterwarnings("ignore", message=r".*treespec, LeafSpec\)` is deprecated")  # Lightning's, not ours
# with an OnExceptionCheckpoint, Lightning turns a fresh fit's ckpt_path=None into "last" and warns
# twice when (as in a fresh run dir, which `results.check_fresh` ensures) there is none
warnings.filterwarnings("ignore", message=r"`\.fit\(ckpt_path=None\)` was called without a model")
warnings.filterwarnings("ignore", message=r'\.fit\(ckpt_path="last"\) is set, but there is no last checkpoint')
# litlogger's advert; and Lightning's note on Ctrl-C, which `zskt.fitting.fit` replaces with the line that resumes the run
logging.getLogger("pytorch_lightning.utilities.rank_zero").addFilter(
    lambda record: "litlogger" not in record.getMessage() and "Detected KeyboardInterrupt" not in record.getMessage())
# the run's own last line says it completed; "max_epochs=2 reached" means nothing for a run in iterations
logging.getLogger("pytorch_lightning.utilities.rank_zero").addFilter(
    lambda record: "`Trainer.fit` stopped: `max_epochs=" not in record.getMessage())
# resume=true from interrupted.ckpt (a run stopped before its first evaluation) restarts the epoch's loader on purpose
warnings.filterwarnings("ignore", message=r"You're resuming from a checkpoint that ended before the epoch ended")
# callbacks.on_exception saves a full (resumable) checkpoint on purpose: Lightning's note on its default is noise
logging.getLogger("pytorch_lightning.trainer.connectors.checkpoint_connector").addFilter(
    lambda record: "`weights_only` was not set" not in record.getMessage())


@releases_run_dir_locks
def execute(raw: DictConfig, callbacks: Sequence[pl.Callback] = ()) -> dict:
    """Run one configured job and return its results (also written to results.json).
    `callbacks`: extra Lightning callbacks for this run's Trainer (not for a teacher it trains)."""
    wall = WallTime(time.perf_counter(), time.process_time())
    cfg = resolve_config(raw)
    validate_config(cfg)
    output_dir = Path(cfg.paths.output_dir)
    results.check_output_dir(cfg)
    lock_run_dir(output_dir)  # one run per dir: held until execute returns; the kernel drops it if the process dies
    results.check_fresh(cfg)
    if cfg.resume and (done := results.completed_run(output_dir)) is not None:
        info(f"{output_dir} already completed (test accuracy {done.get('test_acc')}%); nothing to resume")
        return done

    # the parts: data, the method module (the student and what the method asks of the run), the trainer
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    set_tf32(cfg.tf32)
    method_cls = get_class(cfg.method._target_)
    datamodule = instantiate_node(cfg.dataset, "dataset")
    datamodule.prepare_data()  # here, not by the Trainer: the class count sizes the networks before it exists
    datamodule.setup("fit")
    if cfg.resume:  # what the run reads back from its dir, before it writes anything there
        check_resume(output_dir, datamodule.indices, method_cls.trains, cfg.checkpoint.allow_unsafe)
    # train=execute: a missing teacher is trained by a run of its own, through this same function
    module, teacher = build_method(raw, cfg, method_cls, datamodule, train=execute)
    trainer = build_trainer(cfg, module, [*callbacks, wall], module.training_batches(datamodule))

    # every input is checked: from here on the run writes its outputs
    if trainer.is_global_zero:
        results.write_start(cfg, output_dir, datamodule)
    if method_cls.trains and (diverged := fit(cfg, trainer, module, datamodule, wall)) is not None:
        return diverged
    tested = trainer.test(module, dataloaders=datamodule.test_dataloader(), verbose=False)[0]

    done = results.collect(cfg, module, trainer, datamodule, tested, teacher.info, wall.seconds(),
                           wall.cpu_seconds())
    if trainer.is_global_zero:
        if method_cls.trains:
            results.save_student(cfg, output_dir, module, datamodule, teacher.info, done)
        log_final_hparams(trainer, cfg, done)
        results.write_results(done, output_dir, trainer.loggers)
    return done


def output_dir_of(cfg: DictConfig) -> str:
    """The run's output dir as the command gave it (the one Hydra created)."""
    try:
        return str(cfg.paths.output_dir)
    except Exception:  # noqa: BLE001 - a config that does not resolve: the dir Hydra made
        return HydraConfig.get().runtime.output_dir


def run(cfg: DictConfig) -> dict:
    """`execute` with its endings as exit statuses: a user error one line and 2, a run stopped before
    its end (`RunStopped`: diverged 1, SIGTERM 143, Ctrl-C 130) its line and its status."""
    try:
        return execute(cfg)
    except UserError as err:
        print(f"zskt: error: {err}", file=sys.stderr)
        remove_refused_run_dir(output_dir_of(cfg))
        sys.exit(2)
    except RunStopped as stop:
        print(f"zskt: {stop}", file=sys.stderr)
        sys.exit(stop.status)
    except KeyboardInterrupt:  # before or after Lightning's fit, which says more (`zskt.fitting.fit`)
        print("zskt: stopped by Ctrl-C outside training: nothing to resume from this moment", file=sys.stderr)
        remove_refused_run_dir(output_dir_of(cfg))
        sys.exit(128 + signal.SIGINT)
    except Exception as err:  # a full disk: raised directly, or chained under a failed save in Lightning's handlers
        if (full := disk_full(err)) is None:
            raise
        print(f"zskt: error: {disk_full_message(full, cfg.paths.output_dir)}", file=sys.stderr)
        sys.exit(2)


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    """Hydra's task: one job of the command (each job of a sweep)."""
    run(cfg)


if __name__ == "__main__":
    try:
        check_overrides(sys.argv[1:])  # before Hydra, whose own report of a bad override is many lines
        main()
    except (UserError, RefusedBeforeRun) as error:  # RefusedBeforeRun: from a Hydra callback (zskt.rundir)
        print(f"zskt: error: {error}", file=sys.stderr)
        sys.exit(2)
