"""Data-parallel runs over torch.distributed, as started by ``torchrun``.

Every rank holds the whole model and draws the same global batches; each computes the loss on its
own slice and the gradients of the tunable tensors are averaged before every optimiser step, so all
ranks apply the same update. Gradients are averaged with one all-reduce at ``optimizer.step`` rather
than by the DistributedDataParallel module: DDP's reducer expects exactly one backward pass per
forward over every parameter, which the extra passes of SAM, ANP's inner maximisation and the Fisher
trace (``autograd.grad``) do not follow. Only rank 0 writes files.
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist

from .errors import ConfigError


def world() -> tuple[int, int]:
    """(rank, world size); (0, 1) outside a distributed run."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    return world()[0] == 0


def init_from_env() -> None:
    """Join the process group torchrun describes in the environment (NCCL on GPUs, Gloo on CPU)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend)


def local_device(device: str) -> torch.device:
    """A plain 'cuda' means this rank's own GPU."""
    if device == "cuda" and world()[1] > 1:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device(device)


def shard(indices: torch.Tensor) -> torch.Tensor:
    """This rank's contiguous slice of every global batch (rows are steps)."""
    rank, size = world()
    if size == 1:
        return indices
    per_rank, rest = divmod(indices.shape[1], size)
    if rest:
        raise ConfigError(f"batch_size {indices.shape[1]} is not divisible by the {size} processes; "
                          f"choose a batch_size that is a multiple of {size}")
    return indices[:, rank * per_rank:(rank + 1) * per_rank]


def average(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """The mean of each tensor over ranks, with one all-reduce."""
    _, size = world()
    if size == 1:
        return tensors
    flat = torch.cat([t.reshape(-1) for t in tensors])
    dist.all_reduce(flat)
    flat /= size
    return [part.view_as(t) for part, t in zip(flat.split([t.numel() for t in tensors]), tensors)]


def average_gradients(params: list[torch.Tensor]) -> None:
    if world()[1] == 1:
        return
    grads = average([p.grad if p.grad is not None else torch.zeros_like(p) for p in params])
    for p, g in zip(params, grads):
        p.grad = g


def broadcast_state(module: torch.nn.Module) -> None:
    """Make every rank hold rank 0's parameters and buffers (BatchNorm statistics are per rank)."""
    if world()[1] == 1:
        return
    with torch.no_grad():
        for tensor in [*module.parameters(), *module.buffers()]:
            dist.broadcast(tensor.data, src=0)


def barrier() -> None:
    if world()[1] > 1:
        dist.barrier()


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
