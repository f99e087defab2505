"""Time budgets planned into the schedules.

A run given ``train.time_budget_minutes`` does not plan ``train.epochs`` and get cut by the clock
(its cosine schedules would never finish): it measures its own step rate over a few steps once
the machine is warm, then plans the number of steps that fits the rest of the budget, and every
schedule (learning rate, weight decay, EMA momentum) spans exactly that many steps. ``train.epochs``
stays an upper bound, and the learning-rate warm-up keeps its share of it (``warmup_epochs /
epochs`` of the planned steps); a method's own warm-ups counted in epochs (the teacher
temperature's) stay in epochs. The plan is kept in the checkpoints (a resumed run keeps it) and written to
``plan.json`` in the run folder, with how close the run came to it once it ends.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

WARM_STEPS = 3  # steps not timed: first-call allocations, caches, loader start-up
PROBE_STEPS = 5  # steps timed to measure the rate
# the share of the remaining budget planned: the probe misses per-epoch costs (loader restarts,
# checkpoints, kNN), and a run that overshoots is cut by the clock before its schedules end
MARGIN = 0.97


@dataclass
class Plan:
    """A budget's plan: ``planned_steps`` fit ``budget_seconds`` at ``seconds_per_step``, measured
    over steps ``probe_from`` to ``probe_from + PROBE_STEPS``; ``bound_steps`` is ``train.epochs``'s."""

    budget_seconds: float
    seconds_per_step: float
    probe_from: int
    fitted_steps: int
    bound_steps: int
    planned_steps: int

    def describe(self) -> str:
        bound = f" (train.epochs bounds it at {self.bound_steps})" if self.fitted_steps > self.bound_steps else ""
        return (
            f"time budget {self.budget_seconds / 60:g} min: {self.seconds_per_step:.3g} s/step over steps "
            f"{self.probe_from}-{self.probe_from + PROBE_STEPS}, {self.fitted_steps} steps fit; "
            f"every schedule planned for {self.planned_steps} steps{bound}"
        )


class BudgetPlanner:
    """Watches the first steps of a budgeted run and returns its :class:`Plan` once measured.

    ``observe(step, train_seconds)`` is called after every optimiser step with the steps done and
    the training seconds spent (summed over resumptions); it returns the plan at the step that
    completes the measurement, else None."""

    def __init__(self, budget_seconds: float, bound_steps: int, start_step: int) -> None:
        self.budget, self.bound = budget_seconds, bound_steps
        self.probe_from = start_step + WARM_STEPS
        self.mark: float | None = None

    def observe(self, step: int, train_seconds: float) -> Plan | None:
        if step == self.probe_from:
            self.mark = train_seconds
        if self.mark is None or step != self.probe_from + PROBE_STEPS:
            return None
        rate = max((train_seconds - self.mark) / PROBE_STEPS, 1e-9)
        fitted = step + max(0, math.floor(MARGIN * (self.budget - train_seconds) / rate))
        planned = max(step + 1, min(fitted, self.bound))
        return Plan(self.budget, rate, self.probe_from, fitted, self.bound, planned)


def write_plan(out: Path, plan: Plan, **outcome) -> None:
    """``plan.json`` in the run folder: the plan, and (at the end) how the run went."""
    (out / "plan.json").write_text(json.dumps({**asdict(plan), **outcome}, indent=1) + "\n")
