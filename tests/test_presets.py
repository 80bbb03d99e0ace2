"""The paper presets (conf/experiment/paper_*.yaml): each composes, its sweep expands to the
intended jobs with distinct output dirs, the chained presets find the models earlier presets
leave, and every preset runs end to end with a debug budget."""

from __future__ import annotations

import itertools
import shutil
from functools import cache
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

import zskt.run
from scripts import summarize

REPO = Path(__file__).resolve().parent.parent
CONF = REPO / "conf"

SEEDS = (0, 1, 2)
FEW_SHOT_M = (10, 25, 50, 75, 100)
TABLE1_PAIRS = (((16, 2), (16, 1)), ((40, 1), (16, 1)), ((40, 2), (16, 1)),
                ((40, 1), (16, 2)), ((40, 2), (16, 2)), ((40, 2), (40, 1)))
T40_2, S16_1 = (40, 2), (16, 1)


def table1(method: str, m: int | None) -> set[tuple]:
    return {(method, "cifar10", m, t, s, seed, None) for (t, s), seed in itertools.product(TABLE1_PAIRS, SEEDS)}


def few_shot(dataset: str, ms: tuple) -> set[tuple]:
    return {(method, dataset, m, T40_2 if method == "kd_at" else None, S16_1, seed, None)
            for method, m, seed in itertools.product(("scratch", "kd_at"), ms + (None,), SEEDS)}


# every job of every preset: (method, dataset, M, teacher, student, seed, student.checkpoint under paths.outputs)
EXPECTED_JOBS = {
    "paper_teachers": {("scratch", dataset, None, None, (d, k), seed, None)
                       for dataset, d, k, seed in itertools.product(("cifar10", "svhn"), (16, 40), (1, 2), SEEDS)},
    "paper_table1_kd_at": table1("kd_at", 200),
    "paper_table1_zero_shot": table1("zero_shot", None),
    "paper_table1_zero_shot_modified": table1("zero_shot_modified", None),
    "paper_few_shot_cifar10": few_shot("cifar10", FEW_SHOT_M),
    "paper_few_shot_svhn": few_shot("svhn", FEW_SHOT_M + (200,)),
    "paper_zero_shot_svhn": {("zero_shot", "svhn", None, T40_2, S16_1, seed, None) for seed in SEEDS},
    "paper_finetune_cifar10": {
        ("finetune", "cifar10", m, T40_2, S16_1, seed, f"paper_table1_{start}/wrn-40-2_wrn-16-1/seed{seed}/model.pt")
        for start, m, seed in itertools.product(("zero_shot", "zero_shot_modified"), FEW_SHOT_M, SEEDS)},
    "paper_abm": {("abm", dataset, None, T40_2, S16_1, seed, path.format(seed=seed)) for seed in SEEDS
                  for dataset, path in (("cifar10", "paper_table1_zero_shot/wrn-40-2_wrn-16-1/seed{seed}/model.pt"),
                                        ("cifar10", "paper_table1_kd_at/wrn-40-2_wrn-16-1/seed{seed}/model.pt"),
                                        ("svhn", "paper_zero_shot_svhn/wrn-40-2_wrn-16-1/seed{seed}/model.pt"),
                                        ("svhn", "paper_few_shot_svhn/kd_at/m_200/seed{seed}/model.pt"))},
    "paper_miniature": {("zero_shot", "digits", None, (16, 2), (16, 1), seed, None) for seed in SEEDS}
    | {(method, "digits", m, (16, 2) if method == "kd_at" else None, (16, 1), seed, None)
       for method, m, seed in itertools.product(("kd_at", "scratch"), (1, 2, 5, 10, 25), SEEDS)},
    "paper_miniature_abm": {("abm", "digits", None, (16, 2), (16, 1), seed, f"paper_miniature/{job}/seed{seed}/model.pt")
                            for job, seed in itertools.product(("zero_shot", "kd_at_m25"), SEEDS)},
}
OUTPUTS = "outputs"  # paths.outputs by default: the chained paths are relative to it


# ---------------------------------------------------------------------------- composing and expanding
@cache
def compose_preset(preset: str, groups: tuple[str, ...] = ()) -> DictConfig:
    """The composed config of `experiment=<preset>` with config-group overrides (cached: composing is slow)."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=[f"experiment={preset}", *groups], return_hydra_config=True)


def expand(preset: str, arguments: tuple[str, ...] = ()) -> list[list[str]]:
    """The jobs Hydra's basic sweeper launches for `-m experiment=<preset> <arguments>`: the preset's
    hydra.sweeper.params, then the command line's overrides (which win), as a cartesian product."""
    params = [f"{key}={value}" for key, value in compose_preset(preset).hydra.sweeper.params.items()]
    overrides = OverridesParser.create().parse_overrides([*params, *arguments])
    (batch,) = BasicSweeper.split_arguments(overrides, None)
    return batch


def job_config(preset: str, job: list[str]) -> DictConfig:
    """One job's config: its config-group overrides composed, its key overrides applied like Hydra's."""
    parsed = OverridesParser.create().parse_overrides(job)
    groups = tuple(sorted(o.input_line for o in parsed if (CONF / o.key_or_group).is_dir()))
    cfg = compose_preset(preset, groups).copy()
    for override in parsed:
        if not (CONF / override.key_or_group).is_dir():
            OmegaConf.update(cfg, override.key_or_group, override.value(), merge=True)
    return cfg


def signature(cfg: DictConfig) -> tuple:
    method = cfg.method.name
    m = None if cfg.dataset.m in (None, "all") else cfg.dataset.m
    checkpoint = cfg.student.checkpoint
    return (method, cfg.dataset.name, m, None if method == "scratch" else (cfg.teacher.depth, cfg.teacher.width),
            (cfg.student.depth, cfg.student.width), cfg.seed,
            None if checkpoint is None else str(Path(checkpoint).relative_to(OUTPUTS)))


def job_dir(cfg: DictConfig) -> Path:
    return Path(cfg.hydra.sweep.dir) / cfg.hydra.sweep.subdir


@cache
def jobs(preset: str) -> tuple[tuple[tuple, Path], ...]:
    return tuple((signature(cfg), job_dir(cfg)) for cfg in (job_config(preset, job) for job in expand(preset)))


def test_every_result_has_a_preset():
    presets = {p.stem for p in (CONF / "experiment").glob("paper_*.yaml")}
    assert presets == set(EXPECTED_JOBS)
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        options = GlobalHydra.instance().config_loader().get_group_options("experiment")
    assert set(EXPECTED_JOBS) <= set(options) and not any("/" in o for o in options)  # paper/ holds shared parts


@pytest.mark.parametrize("preset", sorted(EXPECTED_JOBS))
def test_preset_composes_as_a_multirun_over_the_intended_jobs(preset):
    cfg = compose_preset(preset)
    assert cfg.hydra.mode == RunMode.MULTIRUN  # `python -m zskt.run experiment=<preset>` sweeps without -m
    assert cfg.hydra.sweep.dir == f"{OUTPUTS}/{preset}"
    assert cfg.hydra.sweeper.params.seed == "0,1,2"
    assert cfg.method.get("budget_scale", 1.0) == 1.0  # the paper's budgets as is

    found = jobs(preset)
    signatures = [s for s, _ in found]
    assert len(signatures) == len(EXPECTED_JOBS[preset]) and set(signatures) == EXPECTED_JOBS[preset]
    assert len({d for _, d in found}) == len(found)  # no two jobs share an output dir


def test_output_dirs_are_distinct_across_presets():
    dirs = [d for preset in EXPECTED_JOBS for _, d in jobs(preset)]
    assert len(set(dirs)) == len(dirs) == sum(len(v) for v in EXPECTED_JOBS.values())


def test_chained_presets_read_the_models_earlier_presets_write():
    written = {d / "model.pt" for preset in EXPECTED_JOBS for _, d in jobs(preset)}
    for preset in ("paper_finetune_cifar10", "paper_abm"):
        for (*_, checkpoint), _ in jobs(preset):
            assert Path(OUTPUTS) / checkpoint in written, checkpoint


def test_paper_budgets():
    assert compose_preset("paper_table1_zero_shot").method.iterations == 80000
    assert compose_preset("paper_table1_zero_shot_modified").method.iterations == 65000
    assert compose_preset("paper_zero_shot_svhn").method.iterations == 50000
    cfg = compose_preset("paper_few_shot_svhn", ("method=scratch",))
    assert (cfg.method.full_epochs, cfg.method.reference_m) == (100, 5000)
    assert compose_preset("paper_finetune_cifar10").method.full_epochs == 200
    abm = compose_preset("paper_abm").method
    assert (abm.k, abm.xi, abm.n_images) == (100, 1.0, 1000)


def test_command_line_narrows_a_preset_sweep():
    # the SVHN M = 200 KD+AT students alone, and one Table 1 pair at one seed
    narrowed = expand("paper_few_shot_svhn", ("method=kd_at", "dataset.m=200"))
    assert sorted(job[0] for job in narrowed) == ["seed=0", "seed=1", "seed=2"] and len(narrowed) == 3
    assert len(expand("paper_table1_zero_shot", ("table1_pair=wrn-16-2_wrn-16-1", "seed=1"))) == 1


# ---------------------------------------------------------------------------- smoke runs
# `debug=fast` (one epoch of at most 2 batches, or one zero-shot iteration; belief matching at
# K = 1 on 2 images) on digits with WRN-10 networks; the teacher is the test session's zoo model
SMOKE = ["debug=fast", "teacher.depth=10", "teacher.width=2", "student.depth=10", "student.width=1"]
SMOKE_EXTRA = {  # what digits and a one-core budget need beyond that
    "paper_table1_kd_at": ["dataset.m=10"],  # M = 200 exceeds digits' classes
    "paper_table1_zero_shot": ["method.batch_size=8", "method.n_student_steps=2"],
    "paper_table1_zero_shot_modified": ["method.batch_size=8", "method.n_student_steps=2"],
    "paper_zero_shot_svhn": ["method.batch_size=8", "method.n_student_steps=2"],
    "paper_miniature": ["method.batch_size=8", "method.n_student_steps=2"],
    # the preset's own chaining, at its CIFAR-10 entry (the smoke runs on digits)
    "paper_abm": ["student.checkpoint='${abm_students.cifar10.${abm_student}}'"],
}
CHAINED = ("paper_finetune_cifar10", "paper_abm", "paper_miniature_abm")  # they start from earlier presets' students


def presets_by_glob(pattern: str) -> list[str]:
    """The experiment options `experiment=glob(<pattern>)` sweeps over, chained presets last."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        loader = GlobalHydra.instance().config_loader()
        (override,) = OverridesParser.create(config_loader=loader).parse_overrides([f"experiment=glob({pattern})"])
        options = list(override.sweep_string_iterator())
    return sorted(options, key=lambda p: (p in CHAINED, CHAINED.index(p) if p in CHAINED else 0, p))


def smoke_overrides(preset: str) -> list[str]:
    """The preset's first sweep job, then the smoke settings, which win: the job's own dataset and
    network choices give way to digits (compose_run_config's) and WRN-10s."""
    extra = SMOKE + SMOKE_EXTRA.get(preset, [])
    replaced = {o.split("=")[0] for o in extra} | {"dataset"}
    first = expand(preset)[0]
    return [f"experiment={preset}", *(o for o in first if o.split("=")[0] not in replaced), *extra]


def test_every_preset_runs_its_first_job_with_a_debug_budget(tmp_path, teacher_zoo, compose_cfg):
    """`experiment=glob(paper_*)`: each preset's first job in this process, in the dir its sweep gives
    it, with `debug=fast`; fine-tuning and belief matching start from the zero-shot preset's student.
    Then summarize.py reads the tree. (The demo, the one other preset, runs in test_zero_shot.py.)"""
    zoo = tmp_path / "outputs" / "models" / "digits"
    zoo.mkdir(parents=True)
    shutil.copy(teacher_zoo / "digits" / "wrn-10-2-seed0.pt", zoo)
    presets = presets_by_glob("paper_*")
    assert set(presets) == set(EXPECTED_JOBS)
    for preset in presets:
        cfg = compose_cfg(tmp_path, smoke_overrides(preset))
        cfg.paths.output_dir = str(job_dir(cfg))  # the dir the preset's sweep layout gives the job
        results = zskt.run.execute(cfg)
        assert results["status"] == "completed", preset
        assert (Path(cfg.paths.output_dir) / "results.json").is_file()

    outputs = tmp_path / "outputs"
    first_dirs = {"paper_table1_zero_shot": "wrn-10-2_wrn-10-1/seed0", "paper_teachers": "digits/wrn-10-1/seed0",
                  "paper_few_shot_cifar10": "scratch/m_10/seed0", "paper_finetune_cifar10": "from_zero_shot/m_10/seed0",
                  "paper_abm": "digits/zero_shot/seed0", "paper_miniature": "zero_shot/seed0",
                  "paper_miniature_abm": "zero_shot/seed0"}
    for preset, subdir in first_dirs.items():
        assert (outputs / preset / subdir / "results.json").is_file(), preset
    runs, unfinished = summarize.find_runs([outputs])
    rows = summarize.summarize(runs)
    assert not unfinished and len(runs) == len(EXPECTED_JOBS)
    assert {r["method"] for r in rows} == {"scratch", "kd_at", "zero_shot", "zero_shot_modified", "finetune", "abm"}
    assert {(r["method"], r["from"]) for r in rows if r["from"]} == {("finetune", "zero_shot"), ("abm", "zero_shot")}


@pytest.mark.parametrize("preset", sorted(EXPECTED_JOBS))
def test_paper_presets_run_in_fp32_unless_the_command_line_says_otherwise(preset):
    # the originals ran in fp32; bf16-mixed is a speed switch the user turns on explicitly
    assert compose_preset(preset).trainer.precision == "32-true"
    assert compose_preset(preset, ("trainer.precision=bf16-mixed",)).trainer.precision == "bf16-mixed"
    for job in expand(preset)[:1]:  # a sweep job inherits it
        assert job_config(preset, job).trainer.precision == "32-true"


def test_outside_the_paper_presets_precision_follows_the_method_and_the_hardware():
    # the bare config asks the resolver (method, device); the demo pins fp32 so that its README
    # figures hold on every machine
    expected = {None: "${zskt_precision:${trainer.accelerator},${method.name},[scratch,kd_at]}", "demo": "32-true"}
    for preset, precision in expected.items():
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            cfg = compose(config_name="config", overrides=[f"experiment={preset}"] if preset else [])
        assert OmegaConf.to_container(cfg.trainer)["precision"] == precision


def resolved_precision(*overrides: str) -> str:
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides)).trainer.precision


@pytest.mark.parametrize("native", [True, False])
def test_zero_shot_methods_run_in_fp32_even_where_bf16_is_native(monkeypatch, native):
    # a bf16 zero-shot student stayed at chance where fp32 learned (docs/RESULTS.md, Precision): the
    # zero-shot methods default to fp32 on every device; scratch and KD+AT, measured to learn as well
    # in bf16, take it where it is native; an explicit trainer.precision always wins
    from zskt import hardware

    monkeypatch.setattr(hardware, "cpu_flags", lambda: {"avx2", "avx512f", "avx512_bf16"} if native else {"avx2"})
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.setattr(hardware.torch.cuda, "is_available", lambda: False)
    fast = "bf16-mixed" if native else "32-true"
    expected = {"zero_shot": "32-true", "zero_shot_modified": "32-true", "scratch": fast, "kd_at": fast,
                "finetune": "32-true", "evaluate": "32-true", "abm": "32-true"}
    for method, precision in expected.items():
        assert resolved_precision(f"method={method}") == precision, method
        assert resolved_precision(f"method={method}", "trainer.precision=bf16-mixed") == "bf16-mixed"
        assert resolved_precision(f"method={method}", "trainer.precision=32-true") == "32-true"


@pytest.mark.parametrize(("hardware_bf16", "emulated_bf16"), [(True, True), (False, True), (False, False)])
def test_gpu_bf16_means_bf16_in_hardware_not_emulated(monkeypatch, hardware_bf16, emulated_bf16):
    # torch.cuda.is_bf16_supported() says True on GPUs that only emulate bf16 (V100, T4): slower, not faster
    from zskt import hardware

    monkeypatch.setattr(hardware.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(hardware.torch.cuda, "is_bf16_supported",
                        lambda including_emulation=True: hardware_bf16 or (including_emulation and emulated_bf16))
    expected = "bf16-mixed" if hardware_bf16 else "32-true"
    assert hardware.best_precision("gpu", "kd_at", ["scratch", "kd_at"]) == expected
    assert hardware.best_precision("auto", "zero_shot", ["scratch", "kd_at"]) == "32-true"


def test_tf32_is_a_config_key_that_sets_both_torch_switches():
    from zskt import hardware

    before = torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32
    try:
        hardware.set_tf32(True)
        assert (torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32) == ("high", True)
        hardware.set_tf32(False)
        assert (torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32) == ("highest", False)
    finally:
        torch.set_float32_matmul_precision(before[0])
        torch.backends.cudnn.allow_tf32 = before[1]
    assert resolved_tf32() is False


def resolved_tf32() -> bool:
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=["method=zero_shot"]).tf32


@pytest.mark.parametrize(
    ("flags", "isa_cap", "native"),
    [
        ({"avx2", "avx512f", "avx512_bf16"}, None, True),
        ({"avx2", "amx_bf16"}, None, True),
        ({"avx2", "fma"}, None, False),
        ({"avx2", "avx512f", "avx512_bf16"}, "AVX2", False),  # an AVX2 machine emulated on a newer CPU
        ({"avx2", "avx512f", "avx512_bf16"}, "avx512_core_vnni", False),
        ({"avx2", "avx512f", "avx512_bf16"}, "AVX512_CORE_BF16", True),
        ({"avx2", "amx_bf16"}, "AVX512_CORE_AMX", True),
    ],
)
def test_native_bf16_follows_the_cpu_flags_and_the_onednn_isa_cap(monkeypatch, flags, isa_cap, native):
    from zskt import hardware

    monkeypatch.setattr(hardware, "cpu_flags", lambda: flags)
    if isa_cap is None:
        monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    else:
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", isa_cap)
    assert hardware.cpu_has_native_bf16() is native
    assert hardware.best_precision("cpu", "kd_at", ["kd_at"]) == ("bf16-mixed" if native else "32-true")
    assert hardware.best_precision("cpu", "zero_shot", ["kd_at"]) == "32-true"


# ---------------------------------------------------------------------------- the data-free KD benchmark
# its five pairs: name -> (teacher, student) as (family, depth, width or None); the README's order
DATAFREE_PAIRS = {
    "resnet-34_resnet-18": (("resnet", 34, None), ("resnet", 18, None)),
    "vgg-11_resnet-18": (("vgg", 11, None), ("resnet", 18, None)),
    "wrn-40-2_wrn-16-1": (("wrn", 40, 2), ("wrn", 16, 1)),
    "wrn-40-2_wrn-40-1": (("wrn", 40, 2), ("wrn", 40, 1)),
    "wrn-40-2_wrn-16-2": (("wrn", 40, 2), ("wrn", 16, 2)),
}
DATAFREE_TEACHERS = {"resnet-34": ("resnet", 34, None), "vgg-11": ("vgg", 11, None), "wrn-40-2": ("wrn", 40, 2)}
DATAFREE_DATASETS = ("cifar10", "cifar100")


def network(node: DictConfig) -> tuple:
    """(family, depth, width or None) of a composed student/teacher node."""
    return node.family, node.depth, node.get("width") if node.family == "wrn" else None


def datafree_jobs(preset: str) -> list[DictConfig]:
    return [job_config(preset, job) for job in expand(preset)]


@pytest.mark.parametrize("dataset", DATAFREE_DATASETS)
def test_datafree_preset_sweeps_the_benchmarks_five_pairs(dataset):
    """`experiment=datafree_<dataset>`: zero-shot, fp32, a multirun over the five pairs (each choosing the
    teacher= and student= families, not only sizes) and seeds 0-2, each job in <method>/<pair>/seed<s>/."""
    preset = f"datafree_{dataset}"
    cfg = compose_preset(preset)
    assert cfg.hydra.mode == RunMode.MULTIRUN and cfg.hydra.sweep.dir == f"{OUTPUTS}/{preset}"
    configs = datafree_jobs(preset)
    assert len(configs) == len(DATAFREE_PAIRS) * len(SEEDS)
    seen = set()
    for cfg in configs:
        pair = cfg.hydra.runtime.choices.datafree_pair
        teacher, student = DATAFREE_PAIRS[pair]
        assert (network(cfg.teacher), network(cfg.student)) == (teacher, student), pair
        # the family is the config group the pair chose: its own keys, nothing left over from the WRN default
        assert (cfg.hydra.runtime.choices.teacher, cfg.hydra.runtime.choices.student) == (teacher[0], student[0])
        assert ("width" in cfg.student) == (student[0] == "wrn") and ("width" in cfg.teacher) == (teacher[0] == "wrn")
        assert (cfg.method.name, cfg.dataset.name, cfg.trainer.precision) == ("zero_shot", dataset, "32-true")
        assert cfg.method.iterations == 80000 and cfg.method.get("budget_scale", 1.0) == 1.0
        assert job_dir(cfg) == Path(OUTPUTS, preset, "zero_shot", pair, f"seed{cfg.seed}")
        seen.add((pair, cfg.seed))
    assert seen == set(itertools.product(DATAFREE_PAIRS, SEEDS))
    # one pair at one seed from the command line; bf16 only when asked for
    assert len(expand(preset, ("datafree_pair=vgg-11_resnet-18", "seed=1"))) == 1
    assert compose_preset(preset, ("trainer.precision=bf16-mixed",)).trainer.precision == "bf16-mixed"


def test_datafree_teachers_preset_trains_every_teacher_the_pairs_load():
    """experiment=datafree_teachers: method=scratch on full CIFAR-10 and CIFAR-100 for ResNet-34, VGG-11 and
    WRN-40-2, seeds 0-2; the model-zoo files those runs publish are exactly the zero-shot presets' default
    teacher checkpoints (outputs/models/cifar10/resnet-34-seed0.pt, ...)."""
    from zskt.config import zoo_path
    from zskt.models.families import arch_from_config, slug_of

    configs = datafree_jobs("datafree_teachers")
    assert len(configs) == len(DATAFREE_DATASETS) * len(DATAFREE_TEACHERS) * len(SEEDS)
    published, dirs = set(), set()
    for cfg in configs:
        name = cfg.hydra.runtime.choices.datafree_teacher
        assert network(cfg.student) == DATAFREE_TEACHERS[name]
        assert (cfg.method.name, cfg.dataset.m, cfg.trainer.precision) == ("scratch", None, "32-true")
        assert cfg.dataset.name in DATAFREE_DATASETS
        dirs.add(job_dir(cfg))
        assert job_dir(cfg) == Path(OUTPUTS, "datafree_teachers", cfg.dataset.name, name, f"seed{cfg.seed}")
        # where zskt.results publishes a full-data scratch model
        published.add(zoo_path(cfg.paths.models, cfg.dataset.name, slug_of(arch_from_config(cfg.student, 0)), cfg.seed))
    assert len(dirs) == len(configs)
    expected = {f"{OUTPUTS}/models/{dataset}/{name}-seed{seed}.pt"
                for dataset, name, seed in itertools.product(DATAFREE_DATASETS, DATAFREE_TEACHERS, SEEDS)}
    assert published == expected
    loaded = {OmegaConf.to_container(cfg.teacher, resolve=True)["checkpoint"]
              for dataset in DATAFREE_DATASETS for cfg in datafree_jobs(f"datafree_{dataset}")}
    assert loaded == published
    assert len(expand("datafree_teachers", ("dataset=cifar10",))) == len(DATAFREE_TEACHERS) * len(SEEDS)


def test_datafree_presets_are_outside_the_paper_ones():
    # the paper_* presets reproduce the paper; the benchmark's presets never join their glob or their outputs
    assert not set(presets_by_glob("datafree_*")) & set(EXPECTED_JOBS)
    assert set(presets_by_glob("datafree_*")) == {"datafree_cifar10", "datafree_cifar100", "datafree_miniature",
                                                 "datafree_teachers"}
