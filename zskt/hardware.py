"""Choosing a run's numeric precision: bf16-mixed only where the device runs it natively and a
measurement proved the method learns as well in it; fp32 everywhere else."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch


# oneDNN ISA caps (ONEDNN_MAX_CPU_ISA) under which the CPU still runs bf16 dot products natively
_BF16_ISA_CAPS = ("AVX512_CORE_BF16", "AVX512_CORE_FP16", "AVX512_CORE_AMX", "AVX10", "ALL", "DEFAULT")


def cpu_has_native_bf16() -> bool:
    """True when the CPU computes bf16 natively (AVX-512 BF16 or AMX); elsewhere bf16 is emulated and slow.

    A cap on oneDNN's instruction set (`ONEDNN_MAX_CPU_ISA=AVX2`, how one emulates an AVX2
    machine on a newer CPU) below AVX512_CORE_BF16 makes bf16 emulated whatever the CPU has.
    """
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA", "").strip().upper()
    if cap and not cap.startswith(_BF16_ISA_CAPS):
        return False
    flags = cpu_flags()
    return "avx512_bf16" in flags or "amx_bf16" in flags


def cpu_flags() -> set[str]:
    """The CPU's feature flags as Linux lists them (empty where /proc/cpuinfo is not there)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    return {flag for line in text.splitlines() if line.startswith("flags") for flag in line.split(":", 1)[1].split()}


def native_bf16(accelerator: str = "auto") -> bool:
    """True when the device a run lands on computes bf16 natively: a GPU that has it in hardware
    (not emulated: `including_emulation=False`), or a CPU with AVX-512 BF16 or AMX."""
    wants_gpu = accelerator in ("auto", "gpu", "cuda")
    if wants_gpu and torch.cuda.is_available():
        return torch.cuda.is_bf16_supported(including_emulation=False)
    return cpu_has_native_bf16()


def best_precision(accelerator: str = "auto", method: str | None = None, bf16_methods: Sequence[str] = ()) -> str:
    """`bf16-mixed` for a method in `bf16_methods` (those a measurement proved to learn as well in
    bf16 as in fp32) on a device with native bf16, else `32-true`."""
    return "bf16-mixed" if method in bf16_methods and native_bf16(accelerator) else "32-true"


def set_tf32(enabled: bool) -> None:
    """Let fp32 matmuls and cuDNN convolutions run in TF32 on GPUs that have it (`enabled`), or keep
    them in full fp32. PyTorch's own default lets cuDNN convolutions use TF32, so an "fp32" run on
    an Ampere-or-newer GPU is not fp32 unless this says so."""
    torch.set_float32_matmul_precision("high" if enabled else "highest")
    torch.backends.cudnn.allow_tf32 = enabled
