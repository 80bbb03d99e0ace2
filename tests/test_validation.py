"""Every numeric and on/off option of every method and data set config, found by walking
conf/method/*.yaml and conf/dataset/*.yaml (not a hand-kept list): a wrong type, a negative
value, and zero where zero is meaningless are each one line; the shipped values pass."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import DictConfig, ListConfig, OmegaConf

import zskt.run
from zskt_test_helpers import CONF, compose_run_config
from zskt.errors import UserError
from zskt.validation import validate_config

# options where 0 means something (no AT term, no weight decay, plain SGD, no padding, seed 0, ...)
ZERO_MEANS_SOMETHING = {
    "method.beta", "method.weight_decay", "method.anchor_weight", "method.alpha", "method.noise_seed", "method.balance_weight",
    "method.seed", "method.plot_k", "method.generator.negative_slope", "dataset.num_workers",
    "dataset.crop_padding", "dataset.subset_seed", "dataset.split_seed", "dataset.mean",
}
# the data-free methods' options where 0 means something (a loss term off, plain SGD, no padding or jitter, no
# warm-up, Adam's beta 0, a reset at the first call); momentum too (they have no Nesterov switch that needs it)
DATAFREE = ("method=dfq", "method=deepinversion", "method=fast")
DATAFREE_ZERO_MEANS_SOMETHING = {f"method.{key}" for key in (
    "bn_weight", "oh_weight", "adv_weight", "balance_weight", "tv_weight", "l2_weight", "lr_min", "momentum",
    "generator_betas", "synthesis_betas", "js_clamp", "crop_padding", "jitter", "bn_momentum", "reset_after",
    "warmup_epochs")}
# options that hold no number or flag (names, paths, choices): the walk skips them
NOT_NUMERIC = {"method.student_checkpoint", "method.output_dir", "dataset.root", "dataset.cache_dir"}


def _configs() -> list[tuple[str, DictConfig]]:
    """(which file, the resolved run config) for every method and every data set file."""
    out = []
    for group, fixed in (("method", ["dataset=digits"]), ("dataset", ["method=scratch"]), ("recipe", ["method=scratch"])):
        for path in sorted((Path(CONF) / group).glob("[!_]*.yaml")):  # _base.yaml: a building block, not a choice
            extra = ["dataset.root=/x"] if path.stem == "image_folder" else []
            cfg = compose_run_config(Path("/tmp/unused"), [*fixed, f"{group}={path.stem}", *extra])
            out.append((f"{group}={path.stem}", zskt.run.resolve_config(cfg)))
    return out


CONFIGS = _configs()


def _leaves(node, prefix: str):
    """(dotted key, container, index, value) of every number, flag or null under `node`, lists included."""
    items = node.items() if isinstance(node, DictConfig) else enumerate(node)
    for name, value in items:
        key = f"{prefix}.{name}"
        if key in NOT_NUMERIC:
            continue
        if isinstance(value, (DictConfig, ListConfig)):
            yield from _leaves(value, key)
        elif value is None or isinstance(value, (bool, int, float)):
            yield key, node, name, value


# each file's own options: conf/method/*.yaml's under method, conf/dataset/*.yaml's under dataset, conf/recipe/*.yaml's under recipe
CASES = sorted({(which, key, type(value).__name__) for which, cfg in CONFIGS
                for key, *_, value in _leaves(cfg[which.split("=")[0]], which.split("=")[0])})


def _option(key: str) -> str:
    """'method.milestones.1' -> 'method.milestones' (a list is named whole; a mapping's entries by name)."""
    return ".".join(part for part in key.split(".") if not part.isdigit())


def _refused(cfg: DictConfig, key: str, value) -> str | None:
    """The one-line error for setting the leaf `key` to `value`, or None if it is accepted."""
    bad = cfg.copy()
    *path, last = key.split(".")
    node = bad
    for part in path:
        node = node[int(part)] if part.isdigit() else node[part]
    node[int(last) if last.isdigit() else last] = value
    try:
        validate_config(bad)
    except UserError as err:
        assert "\n" not in str(err)
        return str(err)
    return None


def test_the_walk_finds_the_options_it_must():
    keys = {key for _, key, _ in CASES}
    for needed in ("method.lr", "method.beta", "method.temperature", "method.grad_clip", "method.n_student_steps",
                   "method.eval_every", "method.generator.z_dim", "method.milestones.0", "method.xi",
                   "method.epochs", "dataset.batch_size", "dataset.mean.0", "dataset.test_fraction", "dataset.augment"):
        assert needed in keys, needed
    assert len(keys) > 50


@pytest.mark.parametrize("which", [which for which, _ in CONFIGS])
def test_the_shipped_configs_pass(which):
    validate_config(dict(CONFIGS)[which])


@pytest.mark.parametrize(("which", "key", "kind"), CASES, ids=[f"{w} {k}" for w, k, _ in CASES])
def test_every_numeric_option_refuses_a_wrong_type_and_meaningless_values(which, key, kind):
    cfg = dict(CONFIGS)[which]
    option = _option(key)
    message = _refused(cfg, key, "abc")
    assert message is not None and f"{option}=" in message and "is invalid" in message, (key, message)
    if kind == "bool":
        assert _refused(cfg, key, 1) is not None, key  # a flag is true or false, not 1
        return
    assert _refused(cfg, key, -1) is not None, key
    assert _refused(cfg, key, True) is not None, key  # a flag where a number belongs
    zero = _refused(cfg, key, 0)
    if option in ZERO_MEANS_SOMETHING or (which.startswith(DATAFREE) and option in DATAFREE_ZERO_MEANS_SOMETHING):
        assert zero is None or kind == "NoneType", (key, zero)  # (a null list option: 0 is no list)
    else:
        assert zero is not None and option in zero, key
    if kind == "int":
        assert _refused(cfg, key, 2.5) is not None, key  # counts and seeds are integers


@pytest.mark.parametrize(("key", "value", "expected"), [
    ("method.alpha", 1.5, "method.alpha=1.5 is invalid: use a number from 0 to 1"),
    ("method.momentum", 1.0, "method.momentum=1.0 is invalid"),
    ("method.milestones", [0.5, 1.5], "method.milestones=[0.5, 1.5] is invalid"),
    ("dataset.test_fraction", 1.0, "dataset.test_fraction=1.0 is invalid"),
    ("dataset.mean", [0.5, 0.5], "dataset.mean=[0.5, 0.5] is invalid: use 3 numbers"),
    ("seed", -3, "seed=-3 is invalid"),
    ("seed", 2**40, "is invalid: use an integer from 0 to"),
    ("method.lr", float("nan"), "method.lr=nan is invalid"),
])
def test_ranges_beyond_the_sign(key, value, expected):
    cfg = dict(CONFIGS)["dataset=cifar10" if key.startswith("dataset") else "method=kd_at"].copy()
    OmegaConf.update(cfg, key, value)
    with pytest.raises(UserError) as raised:
        validate_config(cfg)
    assert expected in str(raised.value)


def test_cross_checks():
    cfg = dict(CONFIGS)["method=zero_shot"].copy()
    cfg.method.iterations, cfg.method.eval_every = 100, 500
    with pytest.raises(UserError, match=r"method.eval_every=500 is larger than the run \(method.iterations=100\)"):
        validate_config(cfg)
    cfg = dict(CONFIGS)["method=scratch"].copy()
    cfg.method.momentum = 0
    with pytest.raises(UserError, match="Nesterov needs a positive momentum"):
        validate_config(cfg)
    cfg.method.nesterov = False
    validate_config(cfg)


@pytest.mark.parametrize(("overrides", "expected"), [
    (["method=zero_shot", "method.n_student_steps=0"], "method.n_student_steps=0 is invalid"),
    (["method=kd_at", "method.temperature=-1"], "method.temperature=-1 is invalid"),
    (["method=zero_shot", "method.iterations=10", "method.eval_every=20"], "larger than the run"),
    (["method.lr=fast"], "method.lr='fast' is invalid: use a positive number"),
])
def test_the_run_stops_with_one_line_before_writing(tmp_path, capsys, overrides, expected):
    with pytest.raises(SystemExit) as exit_info:
        zskt.run.run(compose_run_config(tmp_path, overrides))
    assert exit_info.value.code == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert err == [err[0]] and err[0].startswith("zskt: error: ") and expected in err[0], err
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").rglob("*"))


def test_callback_periods_are_checked_too():
    cfg = dict(CONFIGS)["method=scratch"].copy()
    cfg.callbacks.divergence_guard.check_every_n_steps = 0  # would divide by zero at the first batch
    with pytest.raises(UserError, match="callbacks.divergence_guard.check_every_n_steps=0 is invalid"):
        validate_config(cfg)
