"""Time full-width PointNet training steps (32 clouds x 256 points) with and without freed memory kept.
usage: python benchmarks/probes/host_memory_step.py [keep|release]   (OMP_NUM_THREADS sets the threads)"""
import resource
import sys
import time

import torch

from nftkit.adapters.pointcloud.models import PointNet
from nftkit.host_memory import keep_freed_memory

if sys.argv[1:] != ["release"]:
    print("kept:", keep_freed_memory())
torch.manual_seed(0)
model = PointNet(5, width=1.0)
opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
points, labels = torch.randn(32, 256, 3), torch.randint(0, 5, (32,))


def step():
    opt.zero_grad()
    torch.nn.functional.cross_entropy(model(points), labels).backward()
    opt.step()


for _ in range(3):
    step()
r0, t = resource.getrusage(resource.RUSAGE_SELF), time.time()
for _ in range(30):
    step()
r1 = resource.getrusage(resource.RUSAGE_SELF)
print(f"{(time.time() - t) / 30 * 1000:.0f} ms/step, user {r1.ru_utime - r0.ru_utime:.1f} s, "
      f"system {r1.ru_stime - r0.ru_stime:.1f} s, page faults {r1.ru_minflt - r0.ru_minflt}")
