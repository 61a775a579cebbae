"""Pin the CPU kernels torch picks, so a seed gives the same model on another x86 machine.

With one seed and one thread count a run repeats bit for bit on its machine, but three 2-core machines
trained three different victims from one recipe (docs/reliability.md). Three libraries choose their
code by the CPU they find, and each choice changes the bits of a short training run (measured with
``benchmarks/probes/cpu_kernels_fingerprint.py``): ATen's vectorised kernels (``ATEN_CPU_CAPABILITY``),
MKL's BLAS (``MKL_CBWR``, Intel's conditional numerical reproducibility) and oneDNN's convolutions
(``ONEDNN_MAX_CPU_ISA``). Pinning all three to AVX2 makes every AVX2 machine take the AVX2 paths; on an
AVX2-only machine that is what they take anyway (same bits, same speed), on an AVX-512 one it is slower.
Each library reads its variable once, at its first operation, so the pin must come before any.
"""
from __future__ import annotations

import os
import platform
from pathlib import Path

from .errors import NftkitError

PORTABLE_KERNELS = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
SWITCH = "NFTKIT_PORTABLE_KERNELS"


def _cpuinfo() -> dict[str, str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    first_cpu = text.split("\n\n")[0]
    return {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in first_cpu.splitlines())}


def cpu_name() -> str:
    return _cpuinfo().get("model name") or platform.processor() or platform.machine()


def pin_portable_kernels() -> None:
    """Make torch, MKL and oneDNN take their AVX2 code on any AVX2 CPU; call before any torch operation.

    Raises if the CPU has no AVX2 or torch already chose its kernels (then set ``NFTKIT_PORTABLE_KERNELS=1``
    for the ``nftkit`` command, or call this first thing in the script)."""
    import torch

    flags = _cpuinfo().get("flags", "").split()
    if platform.machine() not in ("x86_64", "AMD64") or (flags and "avx2" not in flags):
        raise NftkitError(f"portable CPU kernels need an x86 CPU with AVX2; this is {cpu_name()}: "
                          f"unset {SWITCH} (results then hold for this machine only)")
    os.environ.update(PORTABLE_KERNELS)
    chosen = torch.backends.cpu.get_cpu_capability()
    if chosen != "AVX2":
        raise NftkitError(f"torch already chose its {chosen} CPU kernels before the AVX2 pin: call "
                          f"pin_portable_kernels() before any torch operation, or set {SWITCH}=1 for the nftkit command")


def pinned_kernels() -> dict[str, str]:
    """The pins in force (empty when kernels follow the CPU)."""
    return {k: os.environ[k] for k in PORTABLE_KERNELS if k in os.environ}


def cpu_kernels() -> dict[str, object]:
    """What decides which kernels ran: recorded with each result, since another CPU trains another model."""
    import torch

    return {"cpu": cpu_name(), "cpu_capability": torch.backends.cpu.get_cpu_capability(), "pinned": pinned_kernels()}
