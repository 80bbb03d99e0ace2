"""Choosing the fastest correct numeric precision for the machine a run lands on."""

from __future__ import annotations

import os
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


def best_precision(accelerator: str = "auto") -> str:
    """`bf16-mixed` where the chosen device runs bf16 natively, else `32-true`."""
    wants_gpu = accelerator in ("auto", "gpu", "cuda")
    if wants_gpu and torch.cuda.is_available():
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "32-true"
    return "bf16-mixed" if cpu_has_native_bf16() else "32-true"
