"""Where torch work runs when the user does not say."""
from __future__ import annotations

import torch


def default_device(requested: str | None = None) -> torch.device:
    """``requested`` if given, else CUDA when there is a GPU, else the CPU."""
    return torch.device(requested or ("cuda" if torch.cuda.is_available() else "cpu"))
