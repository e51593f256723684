"""A training run's length and its rate schedule, when the recipe is a time budget (train.minutes).

The run times its first steps and plans the most steps that finish inside the budget; then, every
REPLANS-th of the plan, it times the steps since the last plan and plans again. One plan made at the
start is wrong whenever the machine's speed changes, and on a laptop or a shared machine it does: a
demo-sized run whose first 60 steps ran at 0.19 s (the machine busy with something else) planned 1616
steps, then stepped at 0.06 s and finished after 112 s of its 321; the other way, a machine that slows
down after the plan overruns the budget, and the quality recipe promises at most an hour.

The rate: a linear warm-up, then a cosine decay to `floor` over the steps after it. A new length
spreads the decay still to come over the steps now left (the schedule keeps an anchor, the decay's
progress at the step of the last change), so the rate never jumps; under one plan it is exactly the
cosine from the warm-up's end to the last step. A run without a budget keeps its length: the
recipe's train.iterations (or the length a resumed run had planned).

The plan decides nothing from the clock by itself: `propose` turns a measurement into a length and
`adopt` takes the one every process agrees on (under torchrun, rank 0's, broadcast by the caller), at
steps that `due` names from the plan alone, the same on every process.
"""

from __future__ import annotations

import math

PLAN_STEPS = 30  # steps timed, after the first (which pays for start-up), before the first plan
REPLANS = 50  # plans after the first, about: every 1/REPLANS of the planned length, at least PLAN_STEPS steps
NOTABLE = 0.05  # a change of the length by more than this share is printed; smaller ones only move the bar


def steps_within(budget_s: float, spent_s: float, step: int, step_s: float, val_s: float, val_every: int) -> int:
    """How many steps a run at `step`, `spent_s` seconds into a `budget_s` budget, can reach: each further
    step costs `step_s`, and a validation (`val_s`) follows every `val_every` steps and the last one.
    At least one more step, so that the run still ends on a validation."""
    further = (budget_s - spent_s - val_s) / (step_s + val_s / val_every)
    return step + max(1, math.floor(further))


class TimePlan:
    """The run's length (`total`) and the rate factor of each step (`rate_factor`, for LambdaLR)."""

    def __init__(self, iterations: int, warmup: int, floor: float, budget_s: float = 0.0, val_every: int = 1):
        self.iterations, self.warmup, self.floor = iterations, warmup, floor
        self.budget_s, self.val_every = budget_s, val_every
        self.total = iterations
        self.planned = False  # whether the clock has set the length yet
        self.anchor: tuple[int, float] | None = None  # (step, decay progress there) since the last change; None: the warm-up's end
        self.next_plan: int | None = None  # the step of the next plan; None: the first is PLAN_STEPS after the run (re)starts
        self.window: tuple[int, float, float] | None = None  # (step, time, validation seconds) where timing began
        self.printed = iterations  # the length last printed

    # --- the rate ------------------------------------------------------------------------------
    def progress(self, step: int) -> float:
        """How far the decay has gone at `step`: 0 at the warm-up's end, 1 at the last step."""
        start, done = self.anchor or (self.warmup, 0.0)
        return min(1.0, max(0.0, done + (1 - done) * (step - start) / max(1, self.total - start)))

    def rate_factor(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        return self.floor + (1 - self.floor) * 0.5 * (1 + math.cos(math.pi * self.progress(step)))

    # --- the length ----------------------------------------------------------------------------
    def start_timing(self, step: int, now: float, validated_s: float) -> None:
        """The run's first step of this session is done (it paid for start-up): time from here."""
        if self.budget_s:
            self.window = (step, now, validated_s)
            self.next_plan = max(self.next_plan or 0, step + PLAN_STEPS)

    def due(self, step: int) -> bool:
        # not on the last step: the run ends there, and a longer plan would outrun the data (train.iterations)
        return bool(self.budget_s) and self.window is not None and step == self.next_plan and step < self.total

    def propose(self, step: int, now: float, spent_s: float, validated_s: float, val_s: float) -> tuple[int, float]:
        """-> (the most steps that fit the budget at the pace of the steps since the last plan, that pace).
        `validated_s`: seconds the run's validations took so far (left out of the pace); `val_s`: one
        validation's."""
        from_step, started, validated_before = self.window
        step_s = (now - started - (validated_s - validated_before)) / max(1, step - from_step)
        step_s = max(step_s, 1e-6)  # a clock that stepped back (monotonic clocks do not) must not end the run
        return min(self.iterations, steps_within(self.budget_s, spent_s, step, step_s, val_s, self.val_every)), step_s

    def adopt(self, step: int, total: int, now: float, validated_s: float) -> str | None:
        """Take `total` as the run's length from `step` on; -> a line to print when it is the first plan or
        changes the length notably, else None."""
        if step > self.warmup:  # the decay has begun: what is left of it spreads over the new remaining steps
            self.anchor = (step, self.progress(step))
        first = not self.planned
        self.total, self.planned = max(total, min(step + 1, self.iterations)), True
        self.window = (step, now, validated_s)
        self.next_plan = step + max(PLAN_STEPS, self.total // REPLANS)
        if first or abs(self.total - self.printed) > NOTABLE * self.printed:
            self.printed = self.total
            return "planned" if first else "re-planned"
        return None

    # --- checkpoints ---------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"total": self.total, "planned": self.planned, "anchor": self.anchor, "next_plan": self.next_plan}

    def load_state_dict(self, state: dict) -> None:
        """A checkpoint's plan (one written before re-planning holds only total and planned). The
        timing window is this session's own: it starts again after the resumed run's first step."""
        self.total, self.planned = state["total"], bool(state.get("planned"))
        self.printed = self.total
        anchor = state.get("anchor")
        self.anchor = tuple(anchor) if anchor is not None else None
        self.next_plan = state.get("next_plan") if self.planned else None
        if not self.planned:
            self.total = self.iterations  # the recipe's, which a resume may have changed
