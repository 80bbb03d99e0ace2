"""What several modules need to know about a run's config: where the configs live, the model
zoo's file names, composing and resolving a config, and building a part of the run from its config
node. (The files a run writes are named in `zskt.rundir`.)

Everything here sits below `zskt.run` and the modules it wires, so none of them imports run.py.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

from zskt.errors import UserError
from zskt.hardware import best_precision
from zskt.network_names import config_slug
from zskt.rundir import RUN_CONFIG, load_run_config

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


def zoo_path(models: str, dataset: str, network: str, seed: int) -> str:
    """Where the model zoo keeps a full-data scratch model (the conf/teacher files' default checkpoint);
    `network` is its family's part of the name (`zskt.models.families.slug_of`: wrn-40-2, resnet-34)."""
    return str(Path(str(models)) / str(dataset) / f"{network}-seed{seed}.pt")


def wandb_offline() -> bool:
    """logger=wandb's `offline`: true unless W&B credentials are there (WANDB_API_KEY, or the ~/.netrc
    entry `wandb login` writes), so the logger never waits for a login prompt or a network."""
    import netrc

    if os.environ.get("WANDB_API_KEY"):
        return False
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is None
    except (OSError, netrc.NetrcParseError):
        return True


def register_resolvers() -> None:
    """Make `${zskt_precision:<accelerator>,<method>,<bf16 methods>}`, `${zskt_zoo:<models>,<dataset>,<network>,<seed>}`,
    `${zskt_slug:}` (a teacher node's model-zoo name, conf/teacher/_base.yaml) and `${zskt_wandb_offline:}`
    available to the configs."""
    if not OmegaConf.has_resolver("zskt_precision"):
        OmegaConf.register_new_resolver("zskt_precision", best_precision)
    if not OmegaConf.has_resolver("zskt_zoo"):
        OmegaConf.register_new_resolver("zskt_zoo", zoo_path)
    if not OmegaConf.has_resolver("zskt_slug"):
        OmegaConf.register_new_resolver("zskt_slug", config_slug)
    if not OmegaConf.has_resolver("zskt_wandb_offline"):
        OmegaConf.register_new_resolver("zskt_wandb_offline", wandb_offline)


register_resolvers()


def is_multirun() -> bool:
    """True inside a job of a Hydra multirun (`-m`)."""
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def compose_config(overrides: list[str], return_hydra_config: bool = False) -> DictConfig:
    """The config `python -m zskt.run <overrides>` composes, through Hydra's compose API; inside a
    running Hydra app it reuses that app's search path. `return_hydra_config`: with its `hydra` node."""
    if GlobalHydra.instance().is_initialized():
        return compose(config_name="config", overrides=overrides, return_hydra_config=return_hydra_config)
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=overrides, return_hydra_config=return_hydra_config)


def resolve_config(cfg: DictConfig) -> DictConfig:
    """The run's full config with every interpolation resolved; on `resume=true`, the saved one."""
    output_dir = Path(cfg.paths.output_dir)
    saved = output_dir / RUN_CONFIG
    if cfg.resume and saved.is_file():
        resumed = load_run_config(saved)
        resumed.resume = True
        return resumed
    if cfg.resume and not is_multirun():
        raise UserError(f"resume=true but {output_dir} holds no run to resume: pass hydra.run.dir=<an earlier run dir>")
    try:
        # the `hydra` node (present when composed with the compose API) is Hydra's, not the run's
        own = OmegaConf.masked_copy(cfg, [key for key in cfg if key != "hydra"])
        resolved = OmegaConf.create(OmegaConf.to_container(own, resolve=True, throw_on_missing=True))
    except MissingMandatoryValue as err:
        raise UserError(f"{err.full_key} must be set: add {err.full_key}=... to the command") from None
    except OmegaConfBaseException as err:
        raise UserError(f"the config does not resolve ({str(err).splitlines()[0]}): check the overrides") from None
    resolved.resume = False
    return resolved


def instantiate_node(node: DictConfig, what: str, **kwargs: Any) -> Any:
    """`hydra.utils.instantiate` with plain containers; a key the part does not take is one line."""
    try:
        return instantiate(node, _convert_="all", **kwargs)
    except UserError:
        raise
    except Exception as err:  # instantiate wraps constructor errors in InstantiationException
        if isinstance(err.__cause__, UserError):
            raise err.__cause__ from None
        if isinstance(err.__cause__, TypeError) or "unexpected keyword" in str(err):
            raise UserError(f"{what} config has a key the {what} does not take ({str(err).splitlines()[-1][:200]}): "
                            "fix the override") from None
        raise


# sections whose nodes are built with every key they hold (a key the part does not take is already one
# line, `instantiate_node`), or Hydra's own: a `+key` there is read
_BUILT_WHOLE = ("method", "dataset", "logger", "generator", "callbacks", "hydra")
# `+key`s people try, none of which anything reads here, and what to use instead
_INSTEAD = {
    "ckpt_path": "to continue a run, pass hydra.run.dir=<its dir> resume=true",
    "resume_from_checkpoint": "to continue a run, pass hydra.run.dir=<its dir> resume=true",
    "trainer.max_epochs": "the method's budget sets the length: use method.epochs (zero-shot: method.iterations)",
    "trainer.min_epochs": "the method's budget sets the length: use method.epochs (zero-shot: method.iterations)",
    "trainer.max_steps": "the method's budget sets the length: use method.epochs (zero-shot: method.iterations)",
    "trainer.min_steps": "the method's budget sets the length: use method.epochs (zero-shot: method.iterations)",
    "trainer.check_val_every_n_epoch": "use method.evaluations (zero-shot: method.eval_every)",
    "trainer.reload_dataloaders_every_n_epochs": "the method sets it",
    "trainer.default_root_dir": "use hydra.run.dir=<a folder> (or paths.outputs=...)",
    "trainer.logger": "use logger=<tensorboard|csv|mlflow|wandb|many>",
    "trainer.callbacks": "add one with +callbacks.<name>._target_=<its class>",
}


def check_additions(args: list[str]) -> None:
    """Refuse a `+key=value` that nothing would read (one line, with what to use instead), and a
    `+group=option` for a group the defaults list already holds (Hydra's 'Multiple values')."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        overrides = OverridesParser.create().parse_overrides([a for a in args if not a.startswith("-")])
    except Exception:  # noqa: BLE001 - a malformed override: composing it says what is wrong
        return
    groups = {folder.name for folder in CONF_DIR.iterdir() if folder.is_dir()}
    for override in overrides:
        if override.type.name != "ADD":
            continue
        key, text = override.key_or_group, override.input_line
        section, _, rest = key.partition(".")
        if key in groups:
            raise UserError(f"{text}: {key} is already in the defaults list (conf/config.yaml): write "
                            f"{key}={override.get_value_element_as_str()}, without +")
        if key in _INSTEAD:
            raise UserError(f"{text} is not read by anything: {_INSTEAD[key]}")
        if section in _BUILT_WHOLE and rest or section == "trainer" and rest:
            continue  # instantiated with all its keys: Lightning's Trainer or the part says if it takes it
        if section in ("student", "teacher") and rest.startswith("kwargs."):
            continue  # the constructor arguments of a custom or torchvision network
        where = f"the {section} network's options" if section in ("student", "teacher") else "the config"
        raise UserError(f"{text} is not read by anything ({key} is not in {where}): drop it, or set an existing "
                        "option (python -m zskt.run --cfg job lists them)")


def check_overrides(args: list[str]) -> None:
    """Compose the config from the command line once before Hydra does, so an unknown option or key
    is one line and exit status 2 instead of Hydra's multi-line report (a sweep's values are left to
    Hydra), and refuse additions nothing reads (`check_additions`)."""
    check_additions(args)
    if any(a in ("-m", "--multirun") or a.startswith("-") for a in args) or not args:
        return
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import MissingConfigException
    from hydra.types import RunMode

    try:
        sweeps = [o.input_line for o in OverridesParser.create().parse_overrides(args) if o.is_sweep_override()]
        # the rest composed on its own; a sweep needs multirun: -m, or a preset's hydra.mode
        cfg = compose_config([a for a in args if a not in sweeps], return_hydra_config=bool(sweeps))
    except MissingConfigException as err:
        group = Path(str(err.missing_cfg_file or "")).parent.name or "option"
        # a leading underscore marks a building block (dataset/_base.yaml), not a choice
        options = ", ".join(o for o in err.options or [] if not o.startswith("_"))
        raise UserError(f"unknown {group} '{Path(str(err.missing_cfg_file)).name}': choose one of {options}") from None
    except Exception as err:  # Hydra's override and composition errors
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        cause = f" ({str(err.__cause__).splitlines()[0]})" if err.__cause__ else ""
        raise UserError(f"{lines[0] if lines else type(err).__name__}{cause}: fix the override "
                        "(new keys need a leading +)") from None
    if sweeps and cfg.hydra.mode != RunMode.MULTIRUN:
        raise UserError(f"{sweeps[0]} lists several values, a sweep: add -m to run one job per value "
                        "(python -m zskt.run -m ...), or give one value")
