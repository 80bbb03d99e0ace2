"""zskt.sweep and the sweep settings of conf/hydra: job dirs named by their overrides (the same
on resume), and the final metrics in TensorBoard's HPARAMS tab."""

from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from zskt.sweep import final_hparams, log_final_hparams

CONF = str(Path(__file__).resolve().parent.parent / "conf")
RESULTS = {"status": "completed", "method": "kd_at", "dataset": "cifar10", "m": 10, "seed": 1,
           "student": {"depth": 16, "width": 1, "params": 175066},
           "teacher": {"depth": 40, "width": 2, "checkpoint": "t.pt", "params": 2243546, "test_acc": 95.1},
           "test_acc": 60.5, "best_test_acc": 61.0, "budget": {"epochs": 100000, "budget_scale": 1.0}}


def job_config(overrides: list[str]) -> DictConfig:
    """One job's config as Hydra composes it (hydra.job.override_dirname included), set as current."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides, return_hydra_config=True)
    HydraConfig().set_config(cfg)
    return cfg


def test_job_dir_is_named_by_its_overrides_and_found_again_on_resume():
    job = ["method=kd_at", "dataset.m=10", "seed=0", "paths.outputs=/tmp/elsewhere",
           "callbacks.progress_bar.refresh_rate=0"]
    first = job_config(job)
    name = "dataset.m=10,method=kd_at,seed=0"  # sorted; paths and the progress bar left out
    assert first.hydra.sweep.subdir == name
    resumed = job_config(job[::-1] + ["resume=true"])  # any order, resume=true: the same dir
    assert resumed.hydra.sweep.subdir == name and resumed.resume is True
    # eight overrides still make a name well inside the 255-byte limit of one file name
    assert len(job_config(["method=zero_shot", "dataset=svhn", "student.depth=40", "student.width=2",
                           "teacher.depth=40", "teacher.width=4", "method.iterations=2000", "seed=2"])
               .hydra.sweep.subdir) < 150


def test_final_hparams_hold_the_overrides_identity_and_final_metrics():
    cfg = job_config(["method=kd_at", "dataset.m=10", "student.depth=16", "resume=true"])
    own = OmegaConf.masked_copy(cfg, [key for key in cfg if key != "hydra"])
    params, metrics = final_hparams(own, RESULTS)
    # numbers as numbers; M once, as the identity's m (not also as the override dataset.m)
    assert params["method"] == "kd_at" and params["student.depth"] == 16 and "dataset.m" not in params
    own.student.depth = 40  # values as the run holds them (a teacher trained on the way has its own)
    assert final_hparams(own, RESULTS)[0]["student.depth"] == 40
    assert "resume" not in params  # the dir name's exclude_keys are left out here too
    assert (params["student"], params["teacher"], params["m"], params["seed"]) == ("WRN-16-1", "WRN-40-2", 10, 1)
    assert params["budget/epochs"] == 100000
    assert metrics == {"final/test_acc": 60.5, "final/best_test_acc": 61.0, "final/teacher_test_acc": 95.1}
    # an evaluation: its MTE, no best-of-evaluations; no subset (M None): all
    params, metrics = final_hparams(own, {**RESULTS, "method": "abm", "m": None, "best_test_acc": None, "mte": 0.2,
                                          "budget": {}})
    assert params["m"] == "all" and metrics["final/mte"] == 0.2 and "final/best_test_acc" not in metrics


def test_hparams_tab_holds_the_final_metrics(tmp_path):
    cfg = job_config(["method=kd_at", "dataset.m=10"])
    logger = TensorBoardLogger(save_dir=str(tmp_path), name="", version="", default_hp_metric=False)
    trainer = pl.Trainer(logger=logger, enable_progress_bar=False, enable_checkpointing=False,
                         enable_model_summary=False)
    log_final_hparams(trainer, cfg, RESULTS)
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    assert events.Scalars("final/test_acc")[-1].value == 60.5
    content = events.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    assert start.hparams["m"].number_value == 10 and start.hparams["seed"].number_value == 1
    assert "dataset.m" not in start.hparams
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    assert {m.name.tag for m in experiment.metric_infos} == {"final/test_acc", "final/best_test_acc",
                                                             "final/teacher_test_acc"}


def test_the_slurm_launcher_config_composes_one_gpu_per_job():
    from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher

    cfg = job_config(["hydra/launcher=slurm", "hydra.launcher.partition=gpu", "method=zero_shot", "seed=0"])
    launcher = cfg.hydra.launcher
    assert launcher._target_ == f"{SlurmLauncher.__module__}.{SlurmLauncher.__name__}"
    assert (launcher.gpus_per_node, launcher.tasks_per_node, launcher.nodes) == (1, 1, 1)
    assert launcher.partition == "gpu" and launcher.timeout_min > 0
    assert cfg.trainer.devices == 1  # one single-device run per job


def test_hparams_name_any_family_and_read_old_results_as_wrn():
    # results.json entries carry the network's name (families); files from before them only depth/width (WRN)
    cfg = job_config(["method=zero_shot", "student=resnet", "teacher=vgg"])
    own = OmegaConf.masked_copy(cfg, [key for key in cfg if key != "hydra"])
    resnet = {**RESULTS, "student": {"family": "resnet", "depth": 18, "name": "ResNet-18", "params": 11173962},
              "teacher": {"family": "vgg", "depth": 11, "name": "VGG-11", "checkpoint": "t.pt", "test_acc": 92.0}}
    params, _ = final_hparams(own, resnet)
    assert (params["student"], params["teacher"]) == ("ResNet-18", "VGG-11")
    params, _ = final_hparams(own, {**RESULTS, "teacher": None})
    assert (params["student"], params["teacher"]) == ("WRN-16-1", "none")
