"""Where torch work runs when the user does not say, and how to make it repeatable there."""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch


def default_device(requested: str | None = None) -> torch.device:
    """``requested`` if given, else CUDA when there is a GPU, else the CPU."""
    return torch.device(requested or ("cuda" if torch.cuda.is_available() else "cpu"))


@contextlib.contextmanager
def repeatable_on_cpu(device: torch.device) -> Iterator[None]:
    """Deterministic kernels while training on the CPU: one seed and thread count, one set of weights.

    With two or more threads some CPU kernels otherwise sum in a varying order, and two trainings
    of the same seed drift apart. GPUs keep their fast kernels.
    """
    if device.type != "cpu":
        yield
        return
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before)
