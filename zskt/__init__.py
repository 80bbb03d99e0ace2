"""zskt: zero-shot knowledge transfer via adversarial belief matching, and its baselines."""

from omegaconf import OmegaConf

from zskt.network_names import config_slug

__version__ = "0.1.0"

# `${zskt_slug:}` names a teacher's model-zoo file (conf/teacher/_base.yaml). Registered with the package,
# torch-free, so every way of composing conf/ (zskt.run, the compose API, initialize_config_dir in the
# tests) has it: each imports a zskt module first.
if not OmegaConf.has_resolver("zskt_slug"):
    OmegaConf.register_new_resolver("zskt_slug", config_slug)
