"""Time budgets planned into the schedules.

A run given ``train.time_budget_minutes`` does not plan ``train.epochs`` and get cut by the clock
(its cosine schedules would never finish): it measures its own step rate over a few steps once
the machine is warm, then plans the number of steps that fits the rest of the budget, and every
schedule (learning rate, weight decay, EMA momentum) spans exactly that many steps. It measures
again over the next tenth of the plan and plans anew (start-up steps can run faster than the
steady rate), and then keeps timing every tenth of the plan: a rate that drifts more than
``DRIFT`` from the plan's re-plans the remaining steps (a run that slowed by 15% a quarter of the
way in would otherwise be cut by the clock at 90% of its schedules), so that the schedules end at
the budget. ``train.epochs`` stays an upper bound; the
learning-rate warm-up keeps its share of it (``warmup_epochs / epochs`` of the planned steps), and
so do a method's own warm-ups counted in epochs (the teacher temperature's: ``StepInfo.epoch`` is
the run's progress in ``train.epochs``). The plan is kept in the checkpoints (a resumed run keeps
it) and written to ``plan.json`` in the run folder, with how close the run came to it once it ends.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path

WARM_STEPS = 3  # steps not timed: first-call allocations, caches, loader start-up
PROBE_STEPS = 5  # steps timed to measure the rate
# the share of the remaining budget planned: the probe misses per-epoch costs (loader restarts,
# checkpoints, kNN), and a run that overshoots is cut by the clock before its schedules end
MARGIN = 0.97
# the second measurement spans this share of the first plan's steps: a few steps just after
# start-up can run faster than the steady rate (a MOKD run probed 1.31 s/step and ran at 1.44)
REFIT_SHARE = 0.1
# after it, every REFIT_SHARE of the plan is timed too; a rate this far from the plan's re-plans
DRIFT = 0.05


@dataclass
class Plan:
    """A budget's plan: ``planned_steps`` fit ``budget_seconds`` at ``seconds_per_step``, measured
    over steps ``probe_from`` to ``probe_from + PROBE_STEPS``; ``bound_steps`` is ``train.epochs``'s.
    The plan is measured again over steps ``refit_from`` to ``refit_step``: before that second
    measurement ``refitted`` is False; after it ``first_planned_steps`` keeps the first plan's steps."""

    budget_seconds: float
    seconds_per_step: float
    probe_from: int
    fitted_steps: int
    bound_steps: int
    planned_steps: int
    refit_step: int = 0  # 0: no second measurement (the run is too short for one)
    refit_from: int = 0
    refitted: bool = False
    first_planned_steps: int = 0
    # warm-ups counted in epochs keep their share of the plan (False: a plan stored before 2026-12-07,
    # whose run counted them in epochs of data and goes on doing so when resumed)
    epochs_share: bool = False
    # timed every tenth of the plan after the second measurement (False: a plan stored before
    # 2026-12-08); replans: how often a drift re-planned it, the last time over steps replan_from-replan_step
    watch: bool = False
    replans: int = 0
    replan_from: int = 0
    replan_step: int = 0

    @property
    def refit_pending(self) -> bool:
        return not self.refitted and 0 < self.refit_step < self.planned_steps

    def window(self) -> int:
        """Steps a watched stretch of the run spans (a tenth of the plan, at least ``PROBE_STEPS``)."""
        return max(PROBE_STEPS, math.ceil(REFIT_SHARE * self.planned_steps))

    def watches_after(self, start_step: int) -> bool:
        """Whether a run resumed at ``start_step`` times a stretch of its steps before its end."""
        if self.refit_pending:
            return self.refit_fits(start_step)
        return self.watch and start_step + WARM_STEPS + self.window() < self.planned_steps

    def refit_fits(self, start_step: int) -> bool:
        """Whether a run resumed at ``start_step`` can still take its pending second measurement
        before its last step (a re-plan at the end would restart schedules that have ended)."""
        return self.refit_pending and start_step + WARM_STEPS + PROBE_STEPS < self.planned_steps

    def describe(self) -> str:
        bound = f" (train.epochs bounds it at {self.bound_steps})" if self.fitted_steps > self.bound_steps else ""
        if self.replans:
            return (
                f"time budget {self.budget_seconds / 60:g} min: the step rate drifted to {self.seconds_per_step:.3g} "
                f"s/step over steps {self.replan_from}-{self.replan_step}; every schedule re-planned for "
                f"{self.planned_steps} steps (re-plan {self.replans}; first plan: {self.first_planned_steps}){bound}"
            )
        if self.refitted:
            return (
                f"time budget {self.budget_seconds / 60:g} min measured again: {self.seconds_per_step:.3g} s/step over "
                f"steps {self.refit_from}-{self.refit_step}; every schedule now planned for {self.planned_steps} "
                f"steps (first plan: {self.first_planned_steps}){bound}"
            )
        return (
            f"time budget {self.budget_seconds / 60:g} min: {self.seconds_per_step:.3g} s/step over steps "
            f"{self.probe_from}-{self.probe_from + PROBE_STEPS}, {self.fitted_steps} steps fit; "
            f"every schedule planned for {self.planned_steps} steps{bound}"
        )


class BudgetPlanner:
    """Times a budgeted run's steps and returns its :class:`Plan`: first over ``PROBE_STEPS``
    steps once the machine is warm, then again over the next ``REFIT_SHARE`` of the planned steps.

    ``observe(step, train_seconds)`` is called after every optimiser step with the steps done and
    the training seconds spent (summed over resumptions); at ``target`` it returns the plan, which
    the caller adopts (``adopt``: every process then waits for the same next measurement). Given
    the ``plan`` of a resumed run whose second measurement is pending, it takes that one anew."""

    def __init__(self, budget_seconds: float, bound_steps: int, start_step: int, plan: Plan | None = None) -> None:
        self.budget, self.bound, self.plan = budget_seconds, bound_steps, plan
        self.mark_step, self.mark = start_step + WARM_STEPS, None
        self.target: int | None = self.mark_step + PROBE_STEPS
        if plan is not None and plan.refit_pending:
            self.target = max(plan.refit_step, self.target)
        elif plan is not None:  # resumed after its second measurement: watched from the next stretch on
            self.target = self.mark_step + plan.window()

    @property
    def done(self) -> bool:
        return self.plan is not None and self.target is None

    def observe(self, step: int, train_seconds: float) -> Plan | None:
        if step == self.mark_step:
            self.mark = train_seconds
        if self.mark is None or step != self.target:
            return None
        rate = max((train_seconds - self.mark) / (step - self.mark_step), 1e-9)
        fitted = step + max(0, math.floor(MARGIN * (self.budget - train_seconds) / rate))
        planned = max(step + 1, min(fitted, self.bound))
        if self.plan is None:
            refit = step + max(PROBE_STEPS, math.ceil(REFIT_SHARE * (planned - step)))
            plan = Plan(self.budget, rate, self.mark_step, fitted, self.bound, planned, refit_step=refit)
            return replace(plan, epochs_share=True, watch=True)
        if not self.plan.refit_pending:  # a watched stretch
            if abs(rate / self.plan.seconds_per_step - 1) <= DRIFT:
                return self.plan
            first = self.plan.first_planned_steps or self.plan.planned_steps
            return replace(
                self.plan,
                seconds_per_step=rate,
                fitted_steps=fitted,
                planned_steps=planned,
                first_planned_steps=first,
                replans=self.plan.replans + 1,
                replan_from=self.mark_step,
                replan_step=step,
            )
        return replace(
            self.plan,
            seconds_per_step=rate,
            fitted_steps=fitted,
            planned_steps=planned,
            refit_from=self.mark_step,
            refit_step=step,
            refitted=True,
            first_planned_steps=self.plan.planned_steps,
        )

    def adopt(self, plan: Plan, step: int, train_seconds: float) -> None:
        """The plan in force from ``step`` on; a pending second measurement, or the next watched
        stretch (one that ends before the plan does), starts here."""
        self.plan = plan
        self.mark_step, self.mark, self.target = step, train_seconds, None
        if plan.refit_pending:
            self.target = plan.refit_step
        elif plan.watch and step + plan.window() < plan.planned_steps:
            self.target = step + plan.window()


def write_plan(out: Path, plan: Plan, **outcome) -> None:
    """``plan.json`` in the run folder: the plan, and (at the end) how the run went."""
    (out / "plan.json").write_text(json.dumps({**asdict(plan), **outcome}, indent=1) + "\n")
