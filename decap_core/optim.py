"""Optimiser helpers shared by the CLIP and decoder trainers."""
from __future__ import annotations

import math

import torch


def warmup_cosine(step: int, total_steps: int, warmup_steps: int, floor: float = 0.05) -> float:
    """Learning-rate multiplier: linear warm-up, then cosine decay down to ``floor``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def adamw(model: torch.nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (not on biases, norms, embeddings' scales)."""
    decay, no_decay = [], []
    for parameter in model.parameters():
        if parameter.requires_grad:
            (decay if parameter.ndim >= 2 else no_decay).append(parameter)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.98), eps=1e-6)


class ClippedAdamW:
    """``adamw`` under the ``warmup_cosine`` schedule, each step after clipping the gradient norm."""

    def __init__(self, model: torch.nn.Module, lr: float, weight_decay: float, steps: int, warmup: int,
                 grad_clip: float):
        self.parameters = list(model.parameters())
        self.grad_clip = grad_clip
        self.optimizer = adamw(model, lr, weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: warmup_cosine(s, steps, warmup))

    def step(self) -> None:
        """Clip, update, advance the schedule, and clear the gradients for the next step."""
        torch.nn.utils.clip_grad_norm_(self.parameters, self.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
