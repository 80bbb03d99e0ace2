"""Choosing the fastest correct numeric precision for the machine a run lands on."""

from __future__ import annotations

from pathlib import Path

import torch


def cpu_has_native_bf16() -> bool:
    """True when the CPU computes bf16 natively (AVX-512 BF16 or AMX); elsewhere bf16 is emulated and slow."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def best_precision(accelerator: str = "auto") -> str:
    """`bf16-mixed` where the chosen device runs bf16 natively, else `32-true`."""
    wants_gpu = accelerator in ("auto", "gpu", "cuda")
    if wants_gpu and torch.cuda.is_available():
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "32-true"
    return "bf16-mixed" if cpu_has_native_bf16() else "32-true"
