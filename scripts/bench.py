"""Speed benchmark of zskt's training loops, written as JSON.

Times one zero-shot iteration (1 generator + n_S student steps, the package's real
LightningModule under a real Trainer) with the package's default speed switches for this
machine and, in the same run, with every switch off (fp32, NCHW, no compile); the same
iteration at several batch sizes; a scratch-training epoch end to end (in-memory uint8 data,
batched augmentation, Trainer) next to the model-only step rate; achieved GFLOP/s (FLOPs
counted by torch.utils.flop_counter) next to this machine's measured matmul peak.

Each measurement runs in its own subprocess, so peak memory is per configuration.

    python scripts/bench.py --teacher wrn-40-2 --student wrn-16-1 --batch-size 128 \\
        --iterations 3 --warmup 1 --out bench.json
    python scripts/bench.py --teacher resnet34 --student resnet18 --quick --out bench.json

Networks are named as people write them: wrn-40-2 (or the older 40-2), resnet34 / resnet-34,
resnet8, vgg11; attention points are each family's defaults (zskt.models.families).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING

from zskt.errors import UserError  # no torch behind it: the parser stays cheap

if TYPE_CHECKING:
    import pytorch_lightning as pl
    import torch

    from zskt.data.datamodule import ImageDataModule
    from zskt.methods.scratch import Scratch
    from zskt.methods.zero_shot import ZeroShot

# wrn-40-2 / WRN-40-2 / 40-2 (the spelling before other families), resnet34 / resnet-34, vgg11 / vgg-11
_NAME = re.compile(r"(?:(?P<wrn>wrn)-?)?(?P<depth>\d+)-(?P<width>\d+)|(?P<family>resnet|vgg)-?(?P<fdepth>\d+)")


def parse_network(text: str, num_classes: int = 10) -> dict:
    """The arch (zskt.models.families) a network name describes; a one-line UserError for a name
    or size that does not exist."""
    from zskt.models.families import check_config

    match = _NAME.fullmatch(text.strip().lower())
    if match is None:
        raise UserError(f"unknown network '{text}': write wrn-DEPTH-WIDTH (e.g. wrn-40-2), resnetDEPTH "
                        "(e.g. resnet34) or vggDEPTH (e.g. vgg11)")
    if match["family"]:
        arch = {"family": match["family"], "depth": int(match["fdepth"])}
    else:
        arch = {"family": "wrn", "depth": int(match["depth"]), "width": int(match["width"])}
    check_config(arch, f"network '{text}'")  # a depth the family does not build: one line, before any work
    return {**arch, "num_classes": num_classes}


def network_argument(text: str) -> dict:
    """`parse_network` for argparse: its error becomes argparse's one line and exit status 2."""
    try:
        return parse_network(text)
    except UserError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def is_wrn(arch: dict) -> bool:
    return arch.get("family", "wrn") == "wrn"


def check_pair(teacher: dict, student: dict) -> None:
    """The families' default attention points of the pair must pair (count and sizes), as the
    module checks before training: a one-line UserError here, before minutes of measuring."""
    from zskt.models.attention_points import AttentionPoints, pair_points
    from zskt.models.families import build_network, default_attention_layers

    points = {role: AttentionPoints(build_network(arch), default_attention_layers(arch), role)
              for role, arch in (("student", student), ("teacher", teacher))}
    try:
        pair_points(points["student"], points["teacher"], image_size=32)
    except UserError as err:  # its advice names config keys; here the remedy is another pair
        raise UserError(f"{str(err).split(': set ')[0]}: bench a pair whose attention points pair") from None


# ---------------------------------------------------------------------------- measurements (in a subprocess)
def _device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _peak_memory_mb() -> float:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def configured_method(overrides: list[str], **parts):
    """The method module `python -m zskt.run <overrides>` would build, its values from conf/ (the one
    place they live), `parts` (student, teacher, ...) and any override given as a keyword on top."""
    from hydra.utils import get_class, instantiate
    from omegaconf import OmegaConf

    from zskt.config import compose_config
    from zskt.models.families import default_attention_layers

    cfg = compose_config(overrides)
    method = OmegaConf.create(OmegaConf.to_container(cfg.method, resolve=True))
    if get_class(method._target_).uses_attention and "attention_layers" not in parts:
        # the families' default points (a network with none needs them given)
        parts["attention_layers"] = {"student": default_attention_layers(parts["student"]),
                                     "teacher": default_attention_layers(parts["teacher_arch"])}
    parts = {"channels_last": cfg.channels_last, "compile": cfg.compile,
             **{k: v for k, v in parts.items() if k != "teacher_arch"}}
    return instantiate(method, _convert_="all", **parts)


def iteration_timer(times: list[float], cpu_times: list[float], phases: list[dict]) -> pl.Callback:
    """A Lightning callback that appends each training step's wall and CPU seconds and its phases to the lists."""
    import pytorch_lightning as pl

    class IterationTimer(pl.Callback):
        """Whole iterations, and their phases from timestamps taken by hooks: the generator
        optimiser's step ends the generator step, the student optimiser's last step ends the
        student steps, forward hooks time the teacher's passes; what is left of the step is
        schedulers and logging, and the time between two steps is Lightning's loop."""

        def on_train_start(self, trainer, pl_module):
            opt_g, opt_s = (o.optimizer for o in pl_module.optimizers())
            opt_g.register_step_post_hook(lambda *_: self.mark("generator_step_end"))
            opt_s.register_step_post_hook(lambda *_: self.mark("student_steps_end"))
            pl_module.teacher.register_forward_pre_hook(lambda *_: self.mark("teacher_start"))
            pl_module.teacher.register_forward_hook(lambda *_: self.teacher_done())
            self.end = None

        def mark(self, name: str) -> None:
            _sync()
            self.stamps[name] = time.perf_counter()

        def teacher_done(self) -> None:
            self.mark("teacher_end")
            self.teacher += self.stamps["teacher_end"] - self.stamps["teacher_start"]

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            _sync()
            self.start, self.stamps, self.teacher = time.perf_counter(), {}, 0.0
            self.cpu_start = time.process_time()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            _sync()
            end = time.perf_counter()
            times.append(end - self.start)
            cpu_times.append(time.process_time() - self.cpu_start)
            g_end, s_end = self.stamps["generator_step_end"], self.stamps["student_steps_end"]
            phases.append({
                "generator_step": g_end - self.start, "teacher_forward": self.teacher,
                "student_steps": s_end - g_end, "schedulers_and_logging": end - s_end,
                "lightning_between_steps": self.start - self.end if self.end is not None else float("nan"),
            })
            self.end = end

    return IterationTimer()


def zero_shot_module(spec: dict, iterations: int) -> ZeroShot:
    """The package's ZeroShot module for one setting of the benchmark, `iterations` long."""
    from zskt.models.families import build_network

    return configured_method(
        ["method=zero_shot", f"generator.hidden={spec['generator_hidden']}"], student=spec["student"],
        teacher=build_network(spec["teacher"]), teacher_arch=spec["teacher"],
        iterations=iterations,
        batch_size=spec["batch_size"], n_student_steps=spec["n_student_steps"], eval_every=iterations,
        channels_last=spec["channels_last"], compile=spec["compile"],
        student_batch=spec.get("student_batch", "pre_update"), precision_mix=spec.get("precision_mix", "off"),
    )


def fit_zero_shot(module: ZeroShot, spec: dict, callbacks: list) -> None:
    """Train `module` under a bare Lightning Trainer (no logger, checkpoints or validation)."""
    import pytorch_lightning as pl

    trainer = pl.Trainer(
        accelerator="auto", devices=1, precision=spec["precision"], logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0, callbacks=callbacks,
        **module.trainer_kwargs(),
    )
    trainer.fit(module)


def measure_zero_shot(spec: dict) -> dict:
    """Seconds per zero-shot iteration (median over the timed ones) under one setting."""
    from torch.utils.flop_counter import FlopCounterMode

    times: list[float] = []
    cpu_times: list[float] = []  # process CPU seconds (all threads): robust to a shared machine's load
    phases: list[dict] = []
    fit_zero_shot(zero_shot_module(spec, spec["warmup"] + spec["iterations"]), spec,
                  [iteration_timer(times, cpu_times, phases)])
    seconds = statistics.median(times[spec["warmup"]:])
    cpu_seconds = statistics.median(cpu_times[spec["warmup"]:])
    timed = phases[spec["warmup"]:]
    phase_seconds = {key: round(statistics.median(p[key] for p in timed), 4) for key in timed[0]}
    peak = _peak_memory_mb()
    counter = FlopCounterMode(display=False)
    module = zero_shot_module(spec, 1)  # outside the counter: building probes the networks on one image
    with counter:
        fit_zero_shot(module, spec, [])
    flops = counter.get_total_flops()
    return {
        "precision": spec["precision"], "precision_mix": spec.get("precision_mix", "off"),
        "channels_last": spec["channels_last"], "compile": spec["compile"],
        "batch_size": spec["batch_size"], "seconds_per_iteration": round(seconds, 4),
        "peak_memory_mb": round(peak, 1), "gflop_per_iteration": round(flops / 1e9, 2),
        "gflops_achieved": round(flops / 1e9 / seconds, 1), "phase_seconds": phase_seconds,
        "cpu_seconds_per_iteration": round(cpu_seconds, 4),
        "gflop_per_cpu_second": round(flops / 1e9 / cpu_seconds, 1),
    }


class PlainLoop:
    """The zero-shot iteration as a plain PyTorch loop (`measure_plain_loop`): the module's networks,
    attention points, Adam optimisers and cosine schedules, with method=zero_shot's values from conf/."""

    def __init__(self, spec: dict) -> None:
        import torch

        from zskt.config import compose_config
        from zskt.models import Generator
        from zskt.models.attention_points import AttentionPoints
        from zskt.models.families import build_network, default_attention_layers

        cfg = compose_config(["method=zero_shot"])
        self.study = spec["variant"] == "study"
        self.channels_last = spec["channels_last"] and not self.study
        self.device = _device()
        self.fmt = fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        self.teacher = build_network(spec["teacher"]).to(self.device, memory_format=fmt).eval().requires_grad_(False)
        self.student = build_network(spec["student"]).to(self.device, memory_format=fmt)
        self.teacher_points = AttentionPoints(self.teacher, default_attention_layers(spec["teacher"]), "teacher")
        self.student_points = AttentionPoints(self.student, default_attention_layers(spec["student"]), "student")
        self.z_dim = cfg.generator.z_dim
        self.generator = Generator(z_dim=self.z_dim, hidden=spec["generator_hidden"]).to(self.device, memory_format=fmt)
        self.opt_s = torch.optim.Adam(self.student.parameters(), lr=cfg.method.student_lr)
        self.opt_g = torch.optim.Adam(self.generator.parameters(), lr=cfg.method.generator_lr)
        total = spec["warmup"] + spec["iterations"]
        self.schedules = [torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total) for opt in (self.opt_s, self.opt_g)]
        self.noise = torch.Generator().manual_seed(0)
        self.autocast = torch.autocast(self.device, dtype=torch.bfloat16, enabled=spec["precision"] == "bf16-mixed")
        self.beta, self.clip = cfg.method.beta, cfg.method.grad_clip
        self.batch_size, self.n_student_steps = spec["batch_size"], spec["n_student_steps"]

    def iteration(self, phase: Callable[[str], AbstractContextManager]) -> None:
        """One iteration, each phase inside `phase(name)` (a context manager that times or counts it)."""
        import torch

        from zskt.losses import generator_loss, zero_shot_student_loss

        student, clip = self.student, self.clip
        with phase("generator_step"):
            z = torch.randn(self.batch_size, self.z_dim, generator=self.noise).to(self.device)
            x = self.generator(z).contiguous(memory_format=self.fmt)
            student.requires_grad_(False)  # no student weight gradients in the generator step
            with phase("teacher_forward"):
                t_logits, t_features = self.teacher_points(x)
            loss_g = generator_loss(student(x), t_logits)
            self.opt_g.zero_grad()
            loss_g.backward()
            torch.nn.utils.clip_grad_norm_(self.generator.parameters(), clip)
            self.opt_g.step()
            student.requires_grad_(True)
        x = x.detach()
        if self.study:
            with phase("teacher_pass"), torch.no_grad():
                t_logits, t_features = self.teacher_points(x)
        t_logits, t_features = t_logits.detach(), [f.detach() for f in t_features]
        with phase("student_steps"):
            for _ in range(self.n_student_steps):
                s_logits, s_features = self.student_points(x)
                loss_s = zero_shot_student_loss(s_logits, t_logits, s_features, t_features, self.beta)
                self.opt_s.zero_grad()
                loss_s.backward()
                torch.nn.utils.clip_grad_norm_(student.parameters(), clip)
                self.opt_s.step()
        for schedule in self.schedules:
            schedule.step()


def time_plain_loop(loop: PlainLoop, warmup: int, iterations: int) -> tuple[list[float], list[float], dict]:
    """Wall and CPU seconds of every iteration, and each phase's seconds over the timed iterations only."""
    import contextlib

    seconds: dict[str, list[float]] = {}

    @contextlib.contextmanager
    def timed(name: str):
        _sync()
        start = time.perf_counter()
        yield
        _sync()
        seconds.setdefault(name, []).append(time.perf_counter() - start)

    times, cpu_times = [], []
    for i in range(warmup + iterations):
        seconds_before = {k: len(v) for k, v in seconds.items()}
        _sync()
        start, cpu_start = time.perf_counter(), time.process_time()
        with loop.autocast:
            loop.iteration(timed)
        _sync()
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu_start)
        if i < warmup:
            seconds = {k: v[:seconds_before.get(k, 0)] for k, v in seconds.items()}
    return times, cpu_times, seconds


def count_plain_loop_flops(loop: PlainLoop) -> dict[str, int]:
    """FLOPs of each phase, one more iteration under a counter per phase; the teacher's forward pass
    (nested in the generator step) is counted on its own, one pass."""
    import contextlib

    import torch
    from torch.utils.flop_counter import FlopCounterMode

    flops: dict[str, int] = {}

    @contextlib.contextmanager
    def counted(name: str):
        if name == "teacher_forward":  # nested in the generator step: counted separately below
            yield
            return
        counter = FlopCounterMode(display=False)
        with counter:
            yield
        flops[name] = flops.get(name, 0) + counter.get_total_flops()

    with loop.autocast:
        loop.iteration(counted)
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            loop.teacher_points(torch.randn(loop.batch_size, 3, 32, 32, device=loop.device)
                                .contiguous(memory_format=loop.fmt))
    flops["teacher_forward"] = counter.get_total_flops()
    return flops


def measure_plain_loop(spec: dict) -> dict:
    """The same zero-shot iteration as a plain PyTorch loop, no Lightning: per-phase seconds and GFLOP.

    `spec["variant"]`: "same_work" does exactly the module's work (the generator step's teacher
    outputs are the pre_update targets; the module's memory format): the module's time over this
    one is Lightning's overhead. "study" is the study's algorithm written plainly: NCHW, and the
    teacher run again without gradients for the student phase (the work the module did before
    it reused the generator step's teacher pass). Attention points are captured as the module
    captures them (AttentionPoints on the families' default layers), for any pair of networks.
    """
    loop = PlainLoop(spec)
    times, cpu_times, seconds = time_plain_loop(loop, spec["warmup"], spec["iterations"])
    per_iteration = statistics.median(times[spec["warmup"]:])
    phase_seconds = {k: round(sum(v) / spec["iterations"], 4) for k, v in seconds.items()}
    flops = count_plain_loop_flops(loop)
    total_flops = sum(flops[k] for k in ("generator_step", "teacher_pass", "student_steps") if k in flops)
    return {
        "variant": spec["variant"], "precision": spec["precision"], "channels_last": loop.channels_last,
        "batch_size": spec["batch_size"], "seconds_per_iteration": round(per_iteration, 4),
        "phase_seconds": phase_seconds, "gflop_per_iteration": round(total_flops / 1e9, 2),
        "phase_gflop": {k: round(v / 1e9, 2) for k, v in flops.items()},
        "gflops_achieved": round(total_flops / 1e9 / per_iteration, 1),
        "cpu_seconds_per_iteration": round(statistics.median(cpu_times[spec["warmup"]:]), 4),
    }


def scratch_module(spec: dict) -> Scratch:
    """The package's Scratch module for the scratch-epoch measurement (one epoch over all images)."""
    return configured_method(["method=scratch"], student=spec["student"],
                             m=None, full_epochs=1, channels_last=spec["channels_last"], compile=spec["compile"])


def model_only_rate(spec: dict, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Images per second of the scratch module's forward/backward/SGD step alone, on one resident,
    normalised batch: no loader, no augmentation, no Trainer."""
    import torch
    import torch.nn.functional as F

    from zskt.data.augment import normalize

    bs = spec["batch_size"]
    model = scratch_module(spec)
    device = _device()
    model.to(device)
    optimizer = model.configure_optimizers()["optimizer"]
    x = model.to_input(normalize(images[:bs], [0.5] * 3, [0.25] * 3).to(device))
    y = labels[:bs].to(device)
    autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=spec["precision"] == "bf16-mixed")
    steps = max(3, min(20, spec["scratch_images"] // bs))
    for i in range(steps + 2):
        if i == 2:
            _sync()
            start = time.perf_counter()
        with autocast:
            loss = F.cross_entropy(model.student(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    _sync()
    return steps * bs / (time.perf_counter() - start)


def epoch_seconds(spec: dict, datamodule: ImageDataModule) -> float:
    """Seconds of a full scratch-training epoch end to end (Trainer, loader, on-device augmentation),
    after a warm-up epoch."""
    import pytorch_lightning as pl

    epoch_times: list[float] = []

    class EpochTimer(pl.Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            _sync()
            self.start = time.perf_counter()

        def on_train_epoch_end(self, trainer, pl_module):
            _sync()
            epoch_times.append(time.perf_counter() - self.start)

    trainer = pl.Trainer(accelerator="auto", devices=1, precision=spec["precision"], max_epochs=2, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         limit_val_batches=0, callbacks=[EpochTimer()])
    trainer.fit(scratch_module(spec), datamodule=datamodule)
    return epoch_times[-1]


def measure_scratch(spec: dict) -> dict:
    """One scratch-training epoch end to end vs the model-only step rate, same module and settings."""
    import torch

    from zskt.data.datamodule import ImageDataModule
    from zskt.data.sources import ImageTensors

    n, bs = spec["scratch_images"], spec["batch_size"]
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=generator)
    labels = torch.randint(0, 10, (n,), generator=generator)
    split = ImageTensors(images, labels, [str(i) for i in range(10)])
    datamodule = ImageDataModule.from_tensors(split, split, batch_size=bs, augment=True,
                                              mean=[0.5] * 3, std=[0.25] * 3)
    model_only = model_only_rate(spec, images, labels)
    seconds = epoch_seconds(spec, datamodule)
    end_to_end = n / seconds
    return {
        "images": n, "batch_size": bs, "epoch_seconds": round(seconds, 2),
        "images_per_second_end_to_end": round(end_to_end, 1),
        "images_per_second_model_only": round(model_only, 1),
        "end_to_end_fraction_of_model_only": round(end_to_end / model_only, 3),
    }


def measure_matmul_peak(spec: dict) -> dict:
    """GFLOP/s of a large square matmul in fp32 and bf16 on the benchmark's device.

    The matrix grows from 256 while one product takes under a tenth of a second (up to 2048 on a
    CPU, 4096 on a GPU; `spec["max_size"]` caps it), so a dtype the CPU only emulates (bf16
    without AVX-512 BF16 or AMX, hundreds of times slower) is measured in seconds on a small
    matrix instead of for minutes.
    """
    import torch

    device = _device()
    largest, result = spec.get("max_size", 4096 if torch.cuda.is_available() else 2048), {}
    for dtype in (torch.float32, torch.bfloat16):
        size = min(256, largest)
        while True:
            a = torch.randn(size, size, device=device, dtype=dtype)
            b = torch.randn(size, size, device=device, dtype=dtype)
            torch.mm(a, b)  # warm-up: kernel selection, first-touch of the output
            _sync()
            start = time.perf_counter()
            torch.mm(a, b)
            _sync()
            one = time.perf_counter() - start
            if size >= largest or one >= 0.1:
                break
            size *= 2
        reps = max(1, min(5, int(0.5 / max(one, 1e-6))))
        best = best_cpu = 0.0
        for _ in range(3):  # best of three: on a shared machine the slow trials measure the neighbours
            _sync()
            start, cpu_start = time.perf_counter(), time.process_time()
            for _ in range(reps):
                torch.mm(a, b)
            _sync()
            gflop = 2 * size**3 * reps / 1e9
            best = max(best, gflop / (time.perf_counter() - start))
            best_cpu = max(best_cpu, gflop / max(time.process_time() - cpu_start, 1e-9))
        name = str(dtype).split(".")[-1]
        result[f"{name}_gflops"] = round(best, 1)
        result[f"{name}_gflop_per_cpu_second"] = round(best_cpu, 1)
        result[f"{name}_matrix_size"] = size
    return result


DESCRIPTIONS = {
    "default": "zero-shot iteration, defaults ({precision}, channels_last)",
    "plain_loop_same_work": "the same iteration as a plain PyTorch loop, same work",
    "plain_loop_study": "the study's algorithm as a plain PyTorch loop (NCHW, second teacher pass)",
    "matmul_peak": "fp32 and bf16 matmul peak",
}
MEASUREMENTS = {"zero_shot": measure_zero_shot, "plain_loop": measure_plain_loop, "scratch": measure_scratch,
                "matmul": measure_matmul_peak}


def run_isolated(kind: str, spec: dict) -> dict:
    """Run one measurement in a fresh interpreter (clean peak-memory accounting)."""
    proc = subprocess.run(
        [sys.executable, __file__, "--_measure", kind, "--_spec", json.dumps(spec)],
        capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    if proc.returncode != 0:
        sys.exit(f"bench: the {kind} measurement failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------- main
def where_the_time_goes(module: dict, same_work: dict, study: dict | None, peak: dict) -> dict:
    """Per-phase seconds and GFLOP of one iteration, the fraction of the matmul peak, Lightning's
    overhead over the plain loop doing the same work, and the speed-up over the study's plain loop
    (None where there is no study loop: a pair that is not two WRNs)."""
    phases = module["phase_seconds"]
    overhead = module["seconds_per_iteration"] - same_work["seconds_per_iteration"]

    def speedup(key: str) -> float | None:
        return None if study is None else round(study[key] / module[key], 3)

    return {
        "phases": {
            "generator_step": {"seconds": phases["generator_step"], "gflop": same_work["phase_gflop"]["generator_step"]},
            "teacher_forward (inside the generator step)": {
                "seconds": phases["teacher_forward"], "gflop": same_work["phase_gflop"]["teacher_forward"]},
            "student_steps": {"seconds": phases["student_steps"], "gflop": same_work["phase_gflop"]["student_steps"]},
            "schedulers_and_logging": {"seconds": phases["schedulers_and_logging"], "gflop": 0.0},
            "lightning_between_steps": {"seconds": phases["lightning_between_steps"], "gflop": 0.0},
        },
        "fraction_of_fp32_matmul_peak": round(module["gflops_achieved"] / peak["float32_gflops"], 3),
        # against the bf16 peak only where the iteration ran in bf16: an fp32 run's share of it means nothing
        "fraction_of_bf16_matmul_peak": round(module["gflops_achieved"] / peak["bfloat16_gflops"], 3)
        if module["precision"] == "bf16-mixed" else None,
        # the same ratio in CPU seconds: what a loaded, shared machine cannot distort as much
        "fraction_of_fp32_matmul_peak_by_cpu_time": round(
            module["gflop_per_cpu_second"] / peak["float32_gflop_per_cpu_second"], 3),
        "lightning_overhead_percent": round(100 * overhead / same_work["seconds_per_iteration"], 1),
        "speedup_over_study_plain_loop": speedup("seconds_per_iteration"),
        "speedup_over_study_plain_loop_by_cpu_time": speedup("cpu_seconds_per_iteration"),
    }


def build_parser() -> argparse.ArgumentParser:
    """The command line (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", default="wrn-40-2", type=network_argument,
                        help="teacher network: wrn-40-2 (or 40-2), resnet34, resnet8, vgg11, ... (default wrn-40-2)")
    parser.add_argument("--student", default="wrn-16-1", type=network_argument,
                        help="student network, named like --teacher (default wrn-16-1)")
    parser.add_argument("--batch-size", type=int, default=128, help="generated batch size (default 128)")
    parser.add_argument("--batch-sizes", default="64,128,256",
                        help="comma-separated batch sizes for the cost-vs-batch sweep (default 64,128,256; '' skips it)")
    parser.add_argument("--n-student-steps", type=int, default=10, help="student steps per iteration (default 10)")
    parser.add_argument("--generator-hidden", type=int, default=None,
                        help="the generator's width, generator.hidden (default: conf/generator's, the paper's 128; "
                             "the demo's is 96)")
    parser.add_argument("--iterations", type=int, default=3, help="timed zero-shot iterations (median reported)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed iterations first (default 1)")
    parser.add_argument("--precision", default="auto", choices=("auto", "32-true", "bf16-mixed"),
                        help="precision of the default setting and the plain loops (auto: what method=zero_shot resolves to here)")
    parser.add_argument("--compile", action="store_true", help="also torch.compile in the default setting")
    parser.add_argument("--precision-mixes", default="",
                        help="comma-separated method.precision_mix values to time as well, each in 32-true with the "
                             "default setting's other switches (e.g. off,student_bf16,generator_fp32,fp32_compiled)")
    parser.add_argument("--scratch-images", type=int, default=50000,
                        help="images in the scratch-epoch measurement (default 50000, CIFAR-10's train set; 0 skips it)")
    parser.add_argument("--quick", action="store_true",
                        help="only the iteration, its phases, the plain loops and the matmul peak: 2 timed iterations "
                             "after 1 warm-up, no every-switch-off baseline, no batch sweep, no scratch epoch")
    parser.add_argument("--repeats", type=int, default=1,
                        help="rounds of the compared measurements (module, plain loops, matmul peak), taken in turn; "
                             "each keeps its fastest round (default 1; 2-3 on a shared machine)")
    parser.add_argument("--out", default="bench.json", help="where to write the JSON (default bench.json)")
    parser.add_argument("--_measure", help=argparse.SUPPRESS)
    parser.add_argument("--_spec", help=argparse.SUPPRESS)
    return parser


def precision_mixes(args: argparse.Namespace) -> list[str]:
    """The --precision-mixes values, in the order given."""
    return [m.strip() for m in args.precision_mixes.split(",") if m.strip()]


def check_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> str:
    """Refuse a pair or a count that cannot be measured (argparse's one line, exit status 2), fill in
    --generator-hidden from conf/, and return the precision of the default setting."""
    from zskt.config import compose_config
    from zskt.methods.zero_shot import PRECISION_MIXES

    try:
        check_pair(args.teacher, args.student)
    except UserError as err:
        parser.error(str(err))
    if args.repeats < 1:
        parser.error(f"--repeats must be at least 1, got {args.repeats}")
    unknown = [mix for mix in precision_mixes(args) if mix not in PRECISION_MIXES]
    if unknown:
        parser.error(f"--precision-mixes: unknown {', '.join(unknown)}; choose from {', '.join(PRECISION_MIXES)}")
    if args.generator_hidden is None:  # the width a run gets: conf/generator, the one place it lives
        args.generator_hidden = compose_config([]).generator.hidden
    if args.generator_hidden < 2:  # its last hidden layer has hidden // 2 channels
        parser.error(f"--generator-hidden must be at least 2, got {args.generator_hidden}")
    # auto: the precision `python -m zskt.run method=zero_shot` resolves to on this machine
    return compose_config(["method=zero_shot"]).trainer.precision if args.precision == "auto" else args.precision


def machine_report(args: argparse.Namespace, argv: list[str] | None) -> dict:
    """The report's head: the machine, the pair and the command."""
    import torch

    from zskt.hardware import cpu_has_native_bf16
    from zskt.models.families import name_of

    return {
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else f"cpu ({platform.processor() or platform.machine()})",
        "cpu_bf16": "native (AVX-512 BF16 or AMX)" if cpu_has_native_bf16() else "emulated",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "teacher": name_of(args.teacher), "student": name_of(args.student),
        "teacher_arch": args.teacher, "student_arch": args.student, "n_student_steps": args.n_student_steps,
        "generator_hidden": args.generator_hidden,
        "command": " ".join(sys.argv if argv is None else ["scripts/bench.py", *argv]),
    }


def measure_compared(args: argparse.Namespace, default: dict, precision: str, report: dict) -> None:
    """The module, the plain loops and the matmul peak, into `report`. They are compared with each other:
    with --repeats they are measured in turn, round after round, and each keeps its fastest round, so a
    slow spell of a shared host (20 % and more between minutes here) does not land on one side of a ratio only."""
    compared = {"default": ("zero_shot", default), "plain_loop_same_work": ("plain_loop", {**default, "variant": "same_work"})}
    if is_wrn(args.teacher) and is_wrn(args.student):
        compared["plain_loop_study"] = ("plain_loop", {**default, "variant": "study"})
    else:  # the study's code trains WRNs only: there is no study loop to compare other networks with
        report["plain_loop_study"] = None
        report["plain_loop_study_skipped"] = "the study's loop is WRN-only; this pair is not two WRNs"
    compared["matmul_peak"] = ("matmul", {})
    rounds: dict[str, list[dict]] = {key: [] for key in compared}
    for round_ in range(args.repeats):
        for key, (kind, spec) in compared.items():
            print(f"bench: round {round_ + 1}/{args.repeats}: {DESCRIPTIONS[key].format(precision=precision)}",
                  file=sys.stderr)
            rounds[key].append(run_isolated(kind, spec))
    for key, results in rounds.items():
        if key == "matmul_peak":
            report[key] = {k: max(r[k] for r in results) for k in results[0]}
        else:
            report[key] = min(results, key=lambda r: r["seconds_per_iteration"])
            report[key]["seconds_per_iteration_each_round"] = [r["seconds_per_iteration"] for r in results]
    report["repeats"] = args.repeats


def measure_the_rest(args: argparse.Namespace, default: dict, report: dict) -> None:
    """Into `report`: the every-switch-off baseline (not with --quick), the batch sweep, the precision
    mixes and the scratch epoch, each where asked for."""
    if not args.quick:
        print("bench: zero-shot iteration, baseline (32-true, NCHW, no compile)", file=sys.stderr)
        baseline = {**default, "precision": "32-true", "channels_last": False, "compile": False}
        report["baseline"] = run_isolated("zero_shot", baseline)
        report["speedup"] = round(report["baseline"]["seconds_per_iteration"] / report["default"]["seconds_per_iteration"], 3)
    report["batch_sweep"] = []
    for bs in [int(b) for b in args.batch_sizes.split(",") if b.strip()]:
        print(f"bench: zero-shot iteration at batch {bs}", file=sys.stderr)
        result = report["default"] if bs == args.batch_size else run_isolated("zero_shot", {**default, "batch_size": bs})
        report["batch_sweep"].append({k: result[k] for k in ("batch_size", "seconds_per_iteration", "peak_memory_mb")})
    report["precision_mixes"] = []
    for mix in precision_mixes(args):
        print(f"bench: zero-shot iteration, method.precision_mix={mix}", file=sys.stderr)
        result = run_isolated("zero_shot", {**default, "precision": "32-true", "precision_mix": mix})
        report["precision_mixes"].append({k: result[k] for k in (
            "precision_mix", "seconds_per_iteration", "cpu_seconds_per_iteration", "phase_seconds", "peak_memory_mb")})
    if args.scratch_images > 0:
        print(f"bench: scratch epoch over {args.scratch_images} in-memory images", file=sys.stderr)
        report["scratch"] = run_isolated("scratch", {**default, "batch_size": 128, "scratch_images": args.scratch_images})


def main(argv: list[str] | None = None) -> None:
    """Measure (or, with the hidden --_measure, run one measurement for `run_isolated`) and write the JSON."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args._measure:
        print(json.dumps(MEASUREMENTS[args._measure](json.loads(args._spec))))
        return
    if args.quick:
        args.iterations, args.warmup, args.batch_sizes, args.scratch_images = 2, 1, "", 0
    precision = check_arguments(parser, args)
    default = {"teacher": args.teacher, "student": args.student, "batch_size": args.batch_size,
               "n_student_steps": args.n_student_steps, "generator_hidden": args.generator_hidden,
               "iterations": args.iterations, "warmup": args.warmup,
               "precision": precision, "channels_last": True, "compile": args.compile}
    report = machine_report(args, argv)
    measure_compared(args, default, precision, report)
    measure_the_rest(args, default, report)
    report["where_the_time_goes"] = where_the_time_goes(report["default"], report["plain_loop_same_work"],
                                                        report["plain_loop_study"], report["matmul_peak"])
    report["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
