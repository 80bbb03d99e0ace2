"""What bf16-mixed changes in the zero-shot generator step, measured on one fixed batch.

From the same weights (a teacher checkpoint, and a student and generator initialised from
`--seed`) and the same z, the generator step's loss -KL(t || s) is back-propagated once in fp32
and once under `torch.autocast(<device>, dtype=torch.bfloat16)` (what Lightning's `bf16-mixed`
does); the script writes the cosine between the two generator gradients, their norms and the
two losses as JSON. A cosine near 1 says bf16 moves the generator the same way; the gradient
directions are what the adversarial game is made of.

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
from zskt.losses import generator_loss
from zskt.models import Generator, WideResNet


def generator_gradient(teacher: nn.Module, student: nn.Module, generator: nn.Module, z: Tensor,
                       bf16: bool) -> tuple[dict[str, Tensor], float]:
    """The fp32 gradient of the generator step's loss with respect to each generator parameter,
    and the loss. Works on copies: the BN statistics of the nets passed in stay as they are."""
    student, generator = copy.deepcopy(student).train(), copy.deepcopy(generator).train()
    student.requires_grad_(False)  # the generator step trains the generator only
    with torch.autocast(z.device.type, dtype=torch.bfloat16, enabled=bf16):
        x = generator(z)
        loss = generator_loss(student(x), teacher(x))
    names, params = zip(*generator.named_parameters())
    grads = torch.autograd.grad(loss, params)
    return {n: g.float() for n, g in zip(names, grads)}, float(loss.detach())


def cosine(a: Tensor, b: Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.double().flatten(), b.double().flatten(), dim=0))


def compare(teacher: nn.Module, student: nn.Module, generator: nn.Module, z: Tensor) -> dict:
    """fp32 vs bf16-mixed generator gradients on one batch: the cosine of the whole gradient and of
    each parameter's, norms, losses. (The conv biases, each before a BatchNorm, have a true gradient of 0:
    their per-tensor cosines compare rounding noise.)"""
    per32, loss32 = generator_gradient(teacher, student, generator, z, bf16=False)
    per16, loss16 = generator_gradient(teacher, student, generator, z, bf16=True)
    g32, g16 = torch.cat([g.flatten() for g in per32.values()]), torch.cat([g.flatten() for g in per16.values()])
    return {"cosine": cosine(g32, g16), "grad_norm_fp32": float(g32.norm()), "grad_norm_bf16": float(g16.norm()),
            "relative_difference": float((g16 - g32).norm() / g32.norm()),
            "loss_fp32": loss32, "loss_bf16": loss16,
            "per_parameter_cosine": {name: cosine(per32[name], per16[name]) for name in per32}}


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
        **compare(teacher, student, generator, z),
    }
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
