"""The time plan of a train.minutes run, on a simulated clock: how long the run trains and its rate."""

import math

from rawdenoise.time_plan import PLAN_STEPS, TimePlan, steps_within

WARMUP, FLOOR, VAL_EVERY, VAL_S = 60, 0.05, 200, 0.5


def simulate(pace, budget_s: float, iterations: int = 100_000, stop_at: int | None = None, plan: TimePlan | None = None,
             step: int = 0, clock: float = 0.0):  # fmt: skip
    """Drive a plan as train.py's loop does, where step k takes pace(k) seconds and every VAL_EVERY-th step
    (and the last) is followed by a validation of VAL_S. -> (plan, step, seconds spent, each step's rate
    factor, the plan's first length)."""
    plan = plan or TimePlan(iterations, WARMUP, FLOOR, budget_s, VAL_EVERY)
    now, validated, factors, first_length, session_start = clock, 0.0, [], None, step
    while step < min(plan.total, plan.iterations) and (stop_at is None or step < stop_at):  # the loader's steps end there
        factors.append(plan.rate_factor(step))
        now += pace(step)
        step += 1
        if step == session_start + 1:
            plan.start_timing(step, now, validated)
        elif plan.due(step):
            before = now
            if not plan.planned:
                now += VAL_S  # the first plan times a validation
            total, _ = plan.propose(step, before, now, validated, VAL_S)
            plan.adopt(step, total, now, validated)
            first_length = first_length or plan.total
        if step % VAL_EVERY == 0 or step == plan.total:
            now += VAL_S
            validated += VAL_S
    return plan, step, now, factors, first_length


def test_a_run_whose_first_steps_were_slow_still_trains_for_its_whole_budget():
    # Measured: the first 60 steps at 0.19 s (the machine busy), then 0.06 s; planned once, the run
    # fitted 1616 steps and ended after 112 s of its 321.
    plan, step, spent, _, first_length = simulate(lambda k: 0.19 if k < 60 else 0.06, budget_s=321)
    assert first_length < 1700
    assert 0.98 * 321 <= spent <= 1.01 * 321
    assert step == plan.total > 2.5 * first_length


def test_a_run_that_slows_down_after_its_plan_ends_near_its_budget_not_past_it():
    plan, step, spent, _, first_length = simulate(lambda k: 0.25 if k < 3000 else 0.35, budget_s=58 * 60)
    assert first_length > 13_000  # what the first pace promised
    assert 0.98 * 58 * 60 <= spent <= 1.01 * 58 * 60
    assert step == plan.total < 11_000


def test_the_rate_bends_to_each_new_length_without_a_jump_and_ends_on_its_floor():
    _, _, _, factors, _ = simulate(lambda k: 0.19 if k < 60 else 0.06 * (1 + 0.3 * math.sin(k / 300)), budget_s=321)
    decay = factors[WARMUP:]
    steps = [b - a for a, b in zip(decay, decay[1:])]
    assert abs(decay[0] - 1) < 1e-12 and all(s <= 0 for s in steps)  # it only falls once the warm-up is over
    assert max(-s for s in steps) < 3 * (1 - FLOOR) * math.pi / 2 / len(decay)  # no jump: about the cosine's own slope
    assert decay[-1] - FLOOR < 1e-5


def test_a_plan_never_outgrows_the_recipes_steps_even_where_a_plan_falls_on_the_last_one():
    for iterations in (91, 100, 121):  # plans at steps 31, 61, 91, 121: the run must still end on its own last step
        plan, step, _, _, _ = simulate(lambda k: 0.01, budget_s=3600, iterations=iterations)
        assert step == plan.total == iterations


def test_one_plan_is_the_cosine_from_the_warm_up_to_the_last_step():
    plan = TimePlan(1000, WARMUP, FLOOR)  # no budget: the recipe's iterations, never planned again
    assert [plan.rate_factor(k) for k in range(WARMUP)] == [(k + 1) / WARMUP for k in range(WARMUP)]
    for k in range(WARMUP, 1000):
        progress = (k - WARMUP) / (1000 - WARMUP)
        assert plan.rate_factor(k) == FLOOR + (1 - FLOOR) * 0.5 * (1 + math.cos(math.pi * progress))
    plan.start_timing(1, 0.0, 0.0)
    assert not any(plan.due(k) for k in range(1000))


def test_a_plan_restored_from_a_checkpoint_goes_on_as_the_uninterrupted_one():
    pace = lambda k: 0.19 if k < 60 else 0.06  # noqa: E731
    whole, whole_step, _, whole_factors, _ = simulate(pace, budget_s=321)
    part, step, clock, first_factors, _ = simulate(pace, budget_s=321, stop_at=700)
    restored = TimePlan(100_000, WARMUP, FLOOR, 321, VAL_EVERY)
    restored.load_state_dict(part.state_dict())
    assert [restored.rate_factor(k) for k in range(step, step + 100)] == [part.rate_factor(k) for k in range(step, step + 100)]
    resumed, end, spent, rest, _ = simulate(pace, budget_s=321, plan=restored, step=step, clock=clock)
    assert abs(end - whole_step) < 0.03 * whole_step and 0.98 * 321 <= spent <= 1.01 * 321
    assert first_factors + rest[:1] == whole_factors[: step + 1]  # the same rates up to the first plan after the resume


def test_a_checkpoint_from_before_re_planning_keeps_its_length():
    plan = TimePlan(200, 10, FLOOR, budget_s=1e-3, val_every=VAL_EVERY)
    plan.load_state_dict({"total": 32, "planned": True})  # what last.pt held before
    assert plan.total == 32 and plan.planned
    plan.start_timing(31, 0.0, 0.0)  # resumed at step 30: its first step is 31, the next plan 30 steps on
    assert plan.next_plan == 31 + PLAN_STEPS > plan.total
    unplanned = TimePlan(200, 10, FLOOR, budget_s=60, val_every=VAL_EVERY)
    unplanned.load_state_dict({"total": 150, "planned": False})  # stopped before its plan: the recipe's length
    assert unplanned.total == 200 and not unplanned.planned


def test_a_time_budget_plans_the_steps_that_fit_counting_validation():
    # 90 s left, 2 s of it for the final validation: 88 s at 0.5 s a step plus a 2 s validation every 10
    assert steps_within(100.0, 10.0, 31, 0.5, 2.0, 10) == 31 + 125
    assert steps_within(100.0, 10.0, 31, 0.5, 0.0, 10) == 31 + 180  # no validation frames
    assert steps_within(100.0, 150.0, 31, 0.5, 2.0, 10) == 32  # over budget: one more step, ending on a validation
