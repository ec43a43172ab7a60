"""Where torch work runs when the user does not say, and how to make it repeatable there."""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch

from decap_core.errors import DecapError


def default_device(requested: str | None = None) -> torch.device:
    """``requested`` if given and usable here, else CUDA when there is a GPU, else the CPU."""
    if requested is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(requested)
    except RuntimeError:
        raise DecapError(f"--device {requested}: not a torch device (cpu, cuda, cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DecapError(f"--device {requested}: no CUDA GPU here (or this torch is built without CUDA)")
    if device.type not in ("cpu", "cuda"):
        raise DecapError(f"--device {requested}: decap runs on cpu or cuda")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise DecapError(f"--device {requested}: this machine has {torch.cuda.device_count()} GPU(s)")
    return device


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


@contextlib.contextmanager
def cores_left_to(loaders: int, device: torch.device) -> Iterator[None]:
    """On the CPU, torch threads only on the cores that ``loaders`` loader processes leave free.

    Measured on 2 cores training the toy CLIP with one rendering loader: 2 torch threads spin on
    both cores and starve the loader (1.71 s a step); 1 thread leaves it a core (1.49-1.55 s).
    """
    threads = torch.get_num_threads()
    if device.type == "cpu" and loaders:
        torch.set_num_threads(max(1, threads - loaders))
    try:
        yield
    finally:
        torch.set_num_threads(threads)
