"""A run's identity and final numbers for its loggers (a sweep's in TensorBoard's HPARAMS tab).

`log_final_hparams` is called by `zskt.run.execute` when a run completes: it logs the run's
identity and overrides as hyperparameters together with its final metrics, so
`tensorboard --logdir <sweep dir>` compares every job in one table. (Which job is running is
Hydra's own launcher log: "Launching n jobs locally", "#i : <overrides>".)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from zskt.network_names import entry_name

if TYPE_CHECKING:
    import pytorch_lightning as pl

# results.json entries shown as metrics in the HPARAMS tab (those a run has), under final/<name>
FINAL_METRICS = ("test_acc", "best_test_acc", "start_test_acc", "mte")


# ---------------------------------------------------------------------------- HPARAMS
def _hparam(value: Any) -> Any:
    """A value as the HPARAMS tab shows it: numbers and booleans as they are (sortable), anything else
    as text (Lightning would turn None into 'None')."""
    if isinstance(value, (bool, int, float, str)):
        return value
    return "null" if value is None else str(value)


def override_values(cfg: DictConfig) -> dict[str, Any]:
    """The job's command-line overrides as {key: value}: a value as the run's own (resolved) config
    holds it, a config group as its option's name; the sweep-dir name's exclude_keys and `dataset.m`
    (the identity's `m`) left out."""
    if not HydraConfig.initialized():
        return {}
    from hydra.core.override_parser.overrides_parser import OverridesParser

    hydra_cfg = HydraConfig.get()
    excluded = {*hydra_cfg.job.config.override_dirname.exclude_keys, "dataset.m"}
    values = {}
    for override in OverridesParser.create().parse_overrides(list(hydra_cfg.overrides.task)):
        key = override.key_or_group
        if key in excluded or override.is_delete():
            continue
        value = OmegaConf.select(cfg, key, default=None)  # a config group's node: its option's name instead
        values[key] = (override.get_value_element_as_str() if value is None or OmegaConf.is_config(value)
                       else _hparam(value))
    return values


def final_hparams(cfg: DictConfig, results: dict) -> tuple[dict[str, Any], dict[str, float]]:
    """(hyperparameters, metrics) of a completed run: its overrides and identity (method, dataset,
    M - 'all' for the full train set -, seed, networks, budget); its final numbers from results.json as
    final/<name>."""
    params = {**override_values(cfg), "method": results["method"], "dataset": results["dataset"],
              "m": "all" if results["m"] is None else results["m"], "seed": results["seed"],
              "student": entry_name(results["student"]) or "none",
              "teacher": entry_name(results["teacher"]) or "none",
              **{f"budget/{key}": _hparam(value) for key, value in (results.get("budget") or {}).items()}}
    metrics = {f"final/{name}": float(results[name]) for name in FINAL_METRICS if results.get(name) is not None}
    if (results.get("teacher") or {}).get("test_acc") is not None:
        metrics["final/teacher_test_acc"] = float(results["teacher"]["test_acc"])
    return params, metrics


def log_final_hparams(trainer: pl.Trainer, cfg: DictConfig, results: dict) -> None:
    """Log the run's hyperparameters with its final metrics to every logger of `trainer` (TensorBoard's
    HPARAMS tab, which takes both in one call; CSV, MLflow and W&B take the metrics as a last row; the
    loggers write on global rank 0 only)."""
    from pytorch_lightning.loggers import TensorBoardLogger

    params, metrics = final_hparams(cfg, results)
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.log_hyperparams(params, metrics)
        else:
            # the networks' names beside the module's own hyperparameters (student/depth, ...) that Lightning
            # logged at the start: a file store (MLflow's) cannot hold both `student` and `student/depth`
            logger.log_hyperparams({f"{key}/name" if key in ("student", "teacher") else key: value
                                    for key, value in params.items()})
            # at the run's last step on its own axis (iterations for zero-shot, `log_iteration_axis`)
            module = trainer.lightning_module
            step = module.iteration if getattr(module, "logs_in_iterations", False) else trainer.global_step
            logger.log_metrics(metrics, step=step)
        logger.save()
