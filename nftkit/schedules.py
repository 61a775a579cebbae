"""Depth schedules mu(l): the lower bound of the masks of layer l (1..L); masks live in [mu(l), 1]."""
from __future__ import annotations

import math
from typing import Callable

from .registry import Registry

# each shape maps (l, L, alpha, beta) -> mu(l)
SCHEDULES: Registry[Callable[[int, int, float, float], float]] = Registry("mask schedule")


def _t(l: int, L: int) -> float:
    return 0.0 if L <= 1 else (l - 1) / (L - 1)


@SCHEDULES.register("exponential")
def exponential(l: int, L: int, alpha: float, beta: float) -> float:
    return alpha * math.exp(-beta * l)


@SCHEDULES.register("linear")
def linear(l: int, L: int, alpha: float, beta: float) -> float:
    return alpha * (1.0 - _t(l, L))


@SCHEDULES.register("cosine")
def cosine(l: int, L: int, alpha: float, beta: float) -> float:
    return alpha * 0.5 * (1.0 + math.cos(math.pi * _t(l, L)))


@SCHEDULES.register("log")
def logarithmic(l: int, L: int, alpha: float, beta: float) -> float:
    return alpha * (1.0 - math.log1p((math.e - 1.0) * _t(l, L)))


@SCHEDULES.register("cubic")
def cubic(l: int, L: int, alpha: float, beta: float) -> float:
    return alpha * (1.0 - _t(l, L)) ** 3


@SCHEDULES.register("constant")
def constant(l: int, L: int, alpha: float, beta: float) -> float:
    return alpha


@SCHEDULES.register("none")
def unbounded(l: int, L: int, alpha: float, beta: float) -> float:
    """The paper's 'NFT w/o mu(l)' ablation: masks only kept in [0, 1]."""
    return 0.0


def lower_bounds(shape: str, depths: list[int], alpha: float, beta: float) -> list[float]:
    fn = SCHEDULES.get(shape)
    L = max(depths, default=0)
    return [min(1.0, max(0.0, fn(l, L, alpha, beta))) for l in depths]
