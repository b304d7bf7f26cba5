"""Pythia's schedules: linear warmup then cosine decay of the learning rate; checkpoint steps."""

from __future__ import annotations

import math


def lr_at(step: int, peak: float, steps: int, warmup_fraction: float,
          min_lr_fraction: float) -> float:
    """Learning rate of the update at `step` (0-based): linear warmup over the first
    round(warmup_fraction * steps) updates, then cosine decay reaching
    min_lr_fraction * peak at the last update."""
    warmup = round(warmup_fraction * steps)
    if step < warmup:
        return peak * (step + 1) / warmup
    floor = min_lr_fraction * peak
    decay_steps = steps - 1 - warmup
    progress = 1.0 if decay_steps <= 0 else (step - warmup) / decay_steps
    return floor + (peak - floor) * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def checkpoint_steps(steps: int, every: int, log_checkpoints: bool = True) -> list[int]:
    """Steps whose weights are saved: 0 (the initialization), 1, 2, 4 ... 512 when
    `log_checkpoints` (those within the run), every `every` steps, and the last step."""
    chosen = {0, steps, *range(every, steps + 1, every)}
    if log_checkpoints:
        chosen |= {2**i for i in range(10) if 2**i <= steps}
    return sorted(chosen)
