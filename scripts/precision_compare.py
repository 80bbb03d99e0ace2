"""What reduced precision changes in a zero-shot iteration, measured on one fixed batch.

From the same weights (a teacher checkpoint, and a student and generator initialised from
`--seed`) and the same z, the generator step's loss -KL(t || s) is back-propagated in fp32, under
`torch.autocast(<device>, dtype=torch.bfloat16)` (what Lightning's `bf16-mixed` does) and under
autocast with the generator's own layers in fp32 (method.precision_mix=generator_fp32); a student
step's KL likewise in fp32 and bf16 (precision_mix=student_bf16). The script writes the cosines
between the fp32 and the reduced-precision gradients, their norms and the losses as JSON, for the
fresh generator and for one grown to collapse (trained against the fixed student until the teacher
puts most of the batch in one class, as happens in runs that stay at chance). A cosine near 1 says
the reduced precision moves the network the same way; the gradient directions are what the
adversarial game is made of.

    python scripts/precision_compare.py --teacher outputs/models/cifar10/wrn-16-2-seed0.pt \\
        --student 16-1 --seed 0 --batch-size 128 --out precision.json
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
from pathlib import Path

import torch
from torch import Tensor, nn

from zskt.checkpoints import load_model
from zskt.hardware import cpu_has_native_bf16
from zskt.losses import generator_loss, zero_shot_student_loss
from zskt.models.attention_points import AttentionPoints
from zskt.models import Generator, WideResNet


def generator_gradient(teacher: nn.Module, student: nn.Module, generator: nn.Module, z: Tensor,
                       bf16: bool, generator_in_fp32: bool = False) -> tuple[dict[str, Tensor], float]:
    """The fp32 gradient of the generator step's loss with respect to each generator parameter,
    and the loss; under bf16 autocast when `bf16`, with the generator's own layers kept in fp32 when
    `generator_in_fp32` (method.precision_mix=generator_fp32). Works on copies: the BN statistics of
    the nets passed in stay as they are."""
    student, generator = copy.deepcopy(student).train(), copy.deepcopy(generator).train()
    student.requires_grad_(False)  # the generator step trains the generator only
    with torch.autocast(z.device.type, dtype=torch.bfloat16, enabled=bf16):
        with torch.autocast(z.device.type, dtype=torch.bfloat16, enabled=bf16 and not generator_in_fp32):
            x = generator(z)
        loss = generator_loss(student(x), teacher(x))
    names, params = zip(*generator.named_parameters())
    grads = torch.autograd.grad(loss, params)
    return {n: g.float() for n, g in zip(names, grads)}, float(loss.detach())


def student_gradient(teacher: nn.Module, student: nn.Module, x: Tensor, bf16: bool,
                     beta: float = 0.0) -> tuple[dict[str, Tensor], float]:
    """The gradient of a student step's loss on the batch `x` with respect to each student parameter,
    and the loss: KL(t || s), plus `beta` times attention transfer at the WRN groups when `beta` > 0
    (the zero-shot student's whole loss); on a copy of the student."""
    student = copy.deepcopy(student).train().requires_grad_(True)
    groups = ["block1", "block2", "block3"]
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
        with torch.no_grad():
            teacher_logits, teacher_features = AttentionPoints(teacher, groups, "teacher")(x)
        student_logits, student_features = AttentionPoints(student, groups, "student")(x)
        loss = zero_shot_student_loss(student_logits, teacher_logits, student_features, teacher_features, beta)
    names, params = zip(*student.named_parameters())
    grads = torch.autograd.grad(loss, params)
    return {n: g.float() for n, g in zip(names, grads)}, float(loss.detach())


def cosine(a: Tensor, b: Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.double().flatten(), b.double().flatten(), dim=0))


def against_fp32(per32: dict[str, Tensor], loss32: float, per16: dict[str, Tensor], loss16: float) -> dict:
    """A reduced-precision gradient against the fp32 one: the cosine of the whole gradient and of each
    parameter's, norms, losses. (The conv biases, each before a BatchNorm, have a true gradient of 0:
    their per-tensor cosines compare rounding noise.)"""
    g32, g16 = torch.cat([g.flatten() for g in per32.values()]), torch.cat([g.flatten() for g in per16.values()])
    return {"cosine": cosine(g32, g16), "grad_norm_fp32": float(g32.norm()), "grad_norm_bf16": float(g16.norm()),
            "relative_difference": float((g16 - g32).norm() / g32.norm()),
            "loss_fp32": loss32, "loss_bf16": loss16,
            "per_parameter_cosine": {name: cosine(per32[name], per16[name]) for name in per32}}


def compare(teacher: nn.Module, student: nn.Module, generator: nn.Module, z: Tensor, beta: float = 250.0) -> dict:
    """On one batch, each reduced-precision choice of a zero-shot iteration against fp32: the generator
    step all in bf16 (bf16-mixed), the generator step with the generator in fp32 (precision_mix
    generator_fp32), and a student step in bf16 (what student_bf16 changes; its generator step is fp32),
    its KL alone and with `beta` times attention transfer;
    plus what the teacher makes of the batch (its top-class probability and the share of the batch in its
    most frequent class: near 1 for a collapsed generator)."""
    fp32 = generator_gradient(teacher, student, generator, z, bf16=False)
    with torch.no_grad():
        x = copy.deepcopy(generator).train()(z)
        probs = teacher(x).float().softmax(1)
    classes = probs.argmax(1)
    return {
        "teacher_max_prob": float(probs.amax(1).mean()),
        "top_class_share": float(torch.bincount(classes, minlength=probs.shape[1]).max() / classes.numel()),
        "generator_step_bf16_mixed": against_fp32(*fp32, *generator_gradient(teacher, student, generator, z, bf16=True)),
        "generator_step_generator_fp32": against_fp32(
            *fp32, *generator_gradient(teacher, student, generator, z, bf16=True, generator_in_fp32=True)),
        "student_step_bf16": against_fp32(*student_gradient(teacher, student, x, bf16=False),
                                          *student_gradient(teacher, student, x, bf16=True)),
        "student_step_bf16_with_attention": against_fp32(
            *student_gradient(teacher, student, x, bf16=False, beta=beta),
            *student_gradient(teacher, student, x, bf16=True, beta=beta)),
    }


def grow_collapsed(teacher: nn.Module, student: nn.Module, generator: nn.Module, z: Tensor, max_steps: int,
                   share: float, lr: float, confidence: float = 0.0) -> tuple[nn.Module, int]:
    """A generator collapsed as it does in a run: trained in fp32 by the generator step's own loss
    (Adam at `lr`) against the fixed student, batch after batch, until the teacher puts at least `share`
    of the batch `z` in one class with a mean top-class probability of at least `confidence` (or
    `max_steps` pass). Returns it and the steps it took."""
    generator = copy.deepcopy(generator).train()
    student = copy.deepcopy(student).train().requires_grad_(False)
    optimiser = torch.optim.Adam(generator.parameters(), lr=lr)
    noise = torch.Generator().manual_seed(0)
    for step in range(1, max_steps + 1):
        batch = torch.randn(z.shape, generator=noise).to(z.device)
        x = generator(batch)
        loss = generator_loss(student(x), teacher(x))
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        with torch.no_grad():
            probs = teacher(generator(z)).float().softmax(1)
        classes = probs.argmax(1)
        if torch.bincount(classes).max() >= share * classes.numel() and probs.amax(1).mean() >= confidence:
            return generator, step
    return generator, max_steps


def parse_arch(text: str) -> tuple[int, int]:
    depth, width = text.split("-")
    return int(depth), int(width)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--teacher", required=True, help="the teacher's model.pt (or an original checkpoint)")
    parser.add_argument("--student", default="16-1", help="student WRN depth-width (default 16-1)")
    parser.add_argument("--seed", type=int, default=0, help="seeds the student, the generator and z")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--collapse-steps", type=int, default=300,
                        help="at most this many generator steps to grow the collapsed case (0: the fresh case only)")
    parser.add_argument("--collapse-share", type=float, default=0.9,
                        help="the share of a batch in one teacher class that counts as collapsed (default 0.9)")
    parser.add_argument("--collapse-confidence", type=float, default=0.999,
                        help="and the teacher's mean top-class probability on it (default 0.999: the saturated softmax "
                             "of a run stuck at chance)")
    parser.add_argument("--generator-lr", type=float, default=1e-3, help="Adam's rate while growing the collapse")
    parser.add_argument("--out", default="precision_compare.json")
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    teacher, meta = load_model(args.teacher)
    teacher = teacher.to(device).eval().requires_grad_(False)
    depth, width = parse_arch(args.student)
    torch.manual_seed(args.seed)
    student = WideResNet(depth, width, meta["arch"]["num_classes"]).to(device)
    generator = Generator().to(device)
    z = torch.randn(args.batch_size, generator.z_dim, generator=torch.Generator().manual_seed(args.seed)).to(device)

    results = {
        "teacher": str(args.teacher), "student": args.student, "seed": args.seed, "batch_size": args.batch_size,
        "device": str(device),
        "native_bf16": torch.cuda.is_bf16_supported() if device.type == "cuda" else cpu_has_native_bf16(),
        "torch": torch.__version__, "machine": platform.processor() or platform.machine(),
        "fresh": compare(teacher, student, generator, z),
    }
    if args.collapse_steps > 0:
        collapsed, steps = grow_collapsed(teacher, student, generator, z, args.collapse_steps, args.collapse_share,
                                          args.generator_lr, args.collapse_confidence)
        results["collapsed"] = {"generator_steps": steps, **compare(teacher, student, collapsed, z)}
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
