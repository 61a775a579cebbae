"""Fingerprint the CPU kernels: 20 SGD steps of a half-width PointNet and of a small CNN, one thread,
under each library's code choice; prints a hash of the trained weights per setting. Equal hashes mean
bit-identical models. Run it on two machines: the `pinned` rows should match across AVX2 machines.
usage: python benchmarks/probes/cpu_kernels_fingerprint.py"""
import hashlib
import os
import subprocess
import sys

SETTINGS = {
    "default (follow the CPU)": {},
    "pinned (NFTKIT_PORTABLE_KERNELS=1)": {"NFTKIT_PORTABLE_KERNELS": "1"},
    "ATEN_CPU_CAPABILITY=default": {"ATEN_CPU_CAPABILITY": "default"},
    "MKL_CBWR=COMPATIBLE": {"MKL_CBWR": "COMPATIBLE"},
    "ONEDNN_MAX_CPU_ISA=SSE41": {"ONEDNN_MAX_CPU_ISA": "SSE41"},
}


def _digest(model) -> str:
    h = hashlib.sha256()
    for value in model.state_dict().values():
        h.update(value.detach().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _child() -> None:
    from nftkit.cpu_kernels import SWITCH, pin_portable_kernels

    if os.environ.get(SWITCH) == "1":
        pin_portable_kernels()
    import torch
    from torch import nn

    from nftkit.adapters.pointcloud.models import PointNet

    torch.set_num_threads(1)
    torch.manual_seed(0)
    cnn = nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.AdaptiveAvgPool2d(4),
                        nn.Flatten(), nn.Linear(1024, 10))
    cases = [(PointNet(5, width=0.5), torch.randn(32, 256, 3), torch.randint(0, 5, (32,))),
             (cnn, torch.randn(64, 1, 28, 28), torch.randint(0, 10, (64,)))]
    digests = []
    for model, inputs, labels in cases:
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        for _ in range(20):
            opt.zero_grad()
            nn.functional.cross_entropy(model(inputs), labels).backward()
            opt.step()
        digests.append(_digest(model))
    print(torch.backends.cpu.get_cpu_capability(), *digests)


if __name__ == "__main__":
    if sys.argv[1:] == ["--child"]:
        _child()
        sys.exit()
    from nftkit.cpu_kernels import PORTABLE_KERNELS, SWITCH, cpu_name

    print(f"CPU: {cpu_name()}\n\n| setting | ATen kernels | PointNet | CNN |\n|---|---|---|---|")
    for name, extra in SETTINGS.items():
        env = {k: v for k, v in os.environ.items() if k not in (SWITCH, *PORTABLE_KERNELS)}
        out = subprocess.run([sys.executable, __file__, "--child"], env={**env, **extra, "OMP_NUM_THREADS": "1"},
                             capture_output=True, text=True, check=True).stdout.split()
        print(f"| {name} | {' | '.join(out)} |")
