import subprocess
import sys

# allocate and free a 48 MB tensor 20 times, then report the page faults that took
PROBE = """
import resource, sys, torch
import nftkit
kept = nftkit.keep_freed_memory()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    torch.ones(12 * 2**20)
print(kept, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _probe(opt_out: str) -> tuple[bool, int]:
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True,
                         env={"NFTKIT_KEEP_FREED_MEMORY": opt_out, "PATH": ""}).stdout.split()
    return out[0] == "True", int(out[1])


def test_freed_memory_is_kept_so_repeated_steps_do_not_fault_it_in_again():
    kept, faults_kept = _probe("1")
    released, faults_released = _probe("0")
    if sys.platform.startswith("linux"):
        assert kept and not released
        # one 48 MB tensor is ~12,000 pages: without the setting every allocation faults them all in
        assert faults_released > 20 * 10_000
        assert faults_kept < faults_released / 5
