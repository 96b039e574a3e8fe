"""What this CPU can do natively, detected at run time (never assumed: the project runs on Xeons with AMX,
Zen with AVX512-BF16 and AVX2-only machines alike), and the precision choice that follows from it."""

from __future__ import annotations

import functools
import platform
from pathlib import Path

__all__ = ["AUTO_BF16", "cpu_flags", "has_native_bf16", "resolve_precision"]

#: The ``trainer.precision`` value that means: bf16 autocast where native, else fp32.
AUTO_BF16 = "auto-bf16"
_BF16_FLAGS = ("amx_bf16", "avx512_bf16")


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (Linux ``/proc/cpuinfo``; empty where it cannot be read)."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def has_native_bf16(flags: frozenset[str] | None = None) -> bool:
    """Whether bf16 matrix work runs natively (AMX-BF16 or AVX512-BF16 on x86); Apple / Arm CPUs are
    treated as not native (torch's CPU bf16 kernels there are not the fast path)."""
    flags = cpu_flags() if flags is None else flags
    return platform.machine().lower() in ("x86_64", "amd64") and any(f in flags for f in _BF16_FLAGS)


def resolve_precision(
    precision: str | int, accelerator: str | None, flags: frozenset[str] | None = None
) -> str | int:
    """``auto-bf16`` -> ``bf16-mixed`` on a CPU run with native bf16, else ``32-true`` (on a GPU:
    ``bf16-mixed``); any other value is returned unchanged."""
    if precision != AUTO_BF16:
        return precision
    if accelerator in ("gpu", "cuda") or (accelerator == "auto" and _cuda_available()):
        return "bf16-mixed"
    return "bf16-mixed" if has_native_bf16(flags) else "32-true"


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()
