"""Learning-rate schedules of the official recipes, as multipliers of the base learning rate.

* ``linear_warmup_cosine`` — PromptIR and PIP (``LinearWarmupCosineAnnealingLR`` of pl_bolts, stepped once per
  *epoch*): the closed form of pl_bolts — a linear ramp from ``warmup_start_factor`` that reaches 1 at epoch
  ``warmup_epochs - 1``, then half a cosine from 1 at epoch ``warmup_epochs`` to ``eta_min_factor`` at
  ``max_epochs``. The learning rate is constant within an epoch, as in the official training. With
  ``per_step=True`` (our option for short runs, such as the CPU recipe) the same curve is followed continuously:
  epochs are fractional (``step / steps_per_epoch``), the ramp reaches 1 at epoch ``warmup_epochs`` and the cosine
  moves at every step instead of in an epoch staircase. ``epoch_lag=1`` reproduces PromptIR's Lightning training,
  which steps the scheduler with ``scheduler.step(self.current_epoch)`` at the end of each epoch, before Lightning
  counts that epoch as completed: epoch ``e`` then trains at the closed form of epoch ``e - 1`` (epochs 0 and 1 both
  at the start value, the base learning rate first reached at epoch ``warmup_epochs``).
* ``cosine_restart_cyclic`` — Restormer (BasicSR ``CosineAnnealingRestartCyclicLR``, stepped per iteration):
  consecutive periods, each a cosine from the base learning rate to its own ``eta_min``.
* ``cosine_restart`` — CPL (BasicSR ``CosineAnnealingRestartLR``): periods with restart weights, one eta_min.
* ``constant``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Optional


def _cosine_fall(progress: float) -> float:
    """Half a cosine wave, from 1 at ``progress`` 0 down to 0 at ``progress`` 1: the shape every schedule here
    anneals with, scaled between its own floor and ceiling."""
    return math.cos(0.5 * math.pi * progress) ** 2  # = (1 + cos(pi * progress)) / 2


def linear_warmup_cosine(
    steps_per_epoch: int,
    warmup_epochs: float,
    max_epochs: float,
    warmup_start_factor: float = 0.0,
    eta_min_factor: float = 0.0,
    per_step: bool = False,
    epoch_lag: int = 0,
) -> Callable[[int], float]:
    if epoch_lag < 0 or (epoch_lag and per_step):
        raise ValueError(f"epoch_lag must be a non-negative number of epochs (per-epoch schedule only), got {epoch_lag}")
    if per_step:
        def smooth_factor(step: int) -> float:
            epoch = step / steps_per_epoch
            if epoch < warmup_epochs:
                return warmup_start_factor + epoch * (1.0 - warmup_start_factor) / warmup_epochs
            progress = min(1.0, (epoch - warmup_epochs) / max(1e-12, max_epochs - warmup_epochs))
            return eta_min_factor + (1.0 - eta_min_factor) * _cosine_fall(progress)

        return smooth_factor

    def factor(step: int) -> float:
        epoch = max(step // steps_per_epoch - epoch_lag, 0)
        if epoch < warmup_epochs:
            return warmup_start_factor + epoch * (1.0 - warmup_start_factor) / max(1, warmup_epochs - 1)
        progress = (epoch - warmup_epochs) / max(1, max_epochs - warmup_epochs)
        return eta_min_factor + (1.0 - eta_min_factor) * _cosine_fall(progress)

    return factor


def _check_periods(periods: Sequence[int]) -> None:
    if not periods or any(isinstance(p, bool) or not isinstance(p, int) or p < 1 for p in periods):
        raise ValueError(f"periods must be a non-empty list of positive step counts, got {list(periods)}")


def _locate(step: int, periods: Sequence[int]) -> tuple[int, int]:
    """The period ``step`` falls in and its offset there. Periods are closed on the right, as BasicSR counts them:
    the step that ends a period still belongs to it (offset = its length, so the cosine is at its floor), and the
    next period starts one step later at offset 1. Steps past the last period stay at its end (BasicSR fails there)."""
    start = 0
    for index, period in enumerate(periods):
        if step <= start + period:
            return index, step - start
        start += period
    return len(periods) - 1, periods[-1]


def cosine_restart_cyclic(periods: Sequence[int], eta_min_factors: Sequence[float]) -> Callable[[int], float]:
    _check_periods(periods)
    if len(periods) != len(eta_min_factors):
        raise ValueError("periods and eta_min_factors must have the same length")

    def factor(step: int) -> float:
        index, offset = _locate(step, periods)
        eta = eta_min_factors[index]
        return eta + (1.0 - eta) * _cosine_fall(offset / periods[index])

    return factor


def cosine_restart(
    periods: Sequence[int], restart_weights: Sequence[float], eta_min_factor: float
) -> Callable[[int], float]:
    _check_periods(periods)
    if len(periods) != len(restart_weights):
        raise ValueError("periods and restart_weights must have the same length")

    def factor(step: int) -> float:
        index, offset = _locate(step, periods)
        weight = restart_weights[index]
        return eta_min_factor + weight * (1.0 - eta_min_factor) * _cosine_fall(offset / periods[index])

    return factor


def schedule_end_step(name: str, steps_per_epoch: int, **options) -> Optional[int]:
    """The step at which a warm-up + cosine schedule reaches its floor (``max_epochs`` × ``steps_per_epoch``);
    ``None`` for schedules without an end (constant, restarts)."""
    if name != "linear_warmup_cosine":
        return None
    return int(round((float(options["max_epochs"]) + options.get("epoch_lag", 0)) * steps_per_epoch))


def build_lr_lambda(name: str, steps_per_epoch: int, **options) -> Callable[[int], float]:
    """The multiplier function for ``torch.optim.lr_scheduler.LambdaLR`` named by a recipe."""
    if name == "constant":
        if options:  # e.g. a warm-up meant for another schedule: refused rather than silently unused
            raise ValueError(f"the constant schedule takes no options, got {sorted(options)}")
        return lambda step: 1.0
    if name == "linear_warmup_cosine":
        return linear_warmup_cosine(steps_per_epoch, **options)
    if name == "cosine_restart_cyclic":
        return cosine_restart_cyclic(**options)
    if name == "cosine_restart":
        return cosine_restart(**options)
    raise ValueError(
        f"unknown lr_scheduler {name!r}; choose constant, linear_warmup_cosine, cosine_restart_cyclic or cosine_restart"
    )
