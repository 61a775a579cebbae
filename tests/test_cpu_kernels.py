import os
import platform
import subprocess
import sys

import pytest

from nftkit.cpu_kernels import PORTABLE_KERNELS, SWITCH

pytestmark = pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64")
                                or "avx2" not in open("/proc/cpuinfo").read(), reason="needs an x86 CPU with AVX2")

# the process starts on the slowest ATen kernels, so the pin is seen taking effect even on an AVX2-only CPU
THROUGH_THE_CLI = """
import os, torch
from nftkit.cli import main
rc = main(["recipe", "list", "nothing-matches"])
print(rc, torch.backends.cpu.get_cpu_capability(), os.environ.get("ONEDNN_MAX_CPU_ISA"), os.environ.get("MKL_CBWR"))
"""
TOO_LATE = """
import torch, nftkit
torch.ones(3).add_(1)
try:
    nftkit.pin_portable_kernels()
except nftkit.NftkitError as err:
    print(err)
"""


def _run(code: str, **env: str) -> str:
    clean = {k: v for k, v in os.environ.items() if k not in (SWITCH, *PORTABLE_KERNELS)}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          env={**clean, "ATEN_CPU_CAPABILITY": "default", **env}).stdout.strip()


def test_the_switch_pins_all_three_libraries_to_avx2_before_torch_chooses():
    assert _run(THROUGH_THE_CLI, **{SWITCH: "1"}) == "0 AVX2 AVX2 AVX2"
    assert _run(THROUGH_THE_CLI) == "0 DEFAULT None None"


def test_a_pin_after_torch_chose_its_kernels_is_refused_with_the_fix():
    message = _run(TOO_LATE)
    assert "already chose its DEFAULT CPU kernels" in message and "before any torch operation" in message

