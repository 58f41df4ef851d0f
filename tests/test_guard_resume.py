"""plugins.guard (divergence rule, tensor check) and plugins.resume (seeds, batch plan)."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from plugins.guard import DivergenceError, LossMonitor, find_bad_tensor
from plugins.resume import BatchPlan, derive_seed, isolated_rng, seed_all


def test_non_finite_loss_stops_even_during_warmup():
    monitor = LossMonitor(factor=1000, warmup=20, window=5)
    monitor.check(2.0, iteration=1, lr=0.1)
    for bad in (float("nan"), float("inf"), float("-inf")):
        with pytest.raises(DivergenceError, match=r"iteration 2: loss .* is not finite \(lr 0.1\)"):
            monitor.check(bad, iteration=2, lr=0.1)


def test_ratio_rule_after_warmup_against_the_running_median():
    monitor = LossMonitor(factor=1000, warmup=3, window=4)
    assert monitor.problem(1e6) is None  # warm-up: only recorded
    for loss in (1.0, 2.0, 3.0):
        assert monitor.problem(loss) is None
    # window (1e6, 1, 2, 3): median 1.5
    assert monitor.problem(1400.0) is None
    # window (1, 2, 3, 1400): median 2.5, so 2600 does not pass (and stays out of the window)
    assert monitor.problem(2600.0) is not None
    assert monitor.problem(2400.0) is None
    # window (2, 3, 1400, 2400): median 701.5
    assert monitor.problem(7e5) is None
    problem = monitor.problem(1e9)
    assert problem is not None and "more than 1000x the median" in problem
    with pytest.raises(DivergenceError) as info:
        monitor.check(1e12, iteration=7, lr=None, where="; last checkpoint: x.pth")
    assert info.value.iteration == 7 and info.value.loss == 1e12
    assert str(info.value).endswith("(lr unknown); last checkpoint: x.pth")


def test_ratio_rule_can_be_turned_off_and_state_round_trips():
    monitor = LossMonitor(factor=0, warmup=0, window=3)
    for loss in (1.0, 1e12):
        assert monitor.problem(loss) is None
    other = LossMonitor(factor=10, warmup=0, window=3)
    other.load_state_dict(monitor.state_dict())
    assert list(other.recent) == [1.0, 1e12] and other.seen == 2
    with pytest.raises(ValueError, match="window"):
        LossMonitor(window=0)


def test_find_bad_tensor_names_the_first_bad_entry():
    state = {
        "model": {"a": torch.ones(3), "steps": torch.tensor([5], dtype=torch.int64)},
        "ema": {"state": {"w": torch.tensor([1.0, float("nan"), float("inf")])}},
        "meta": ["text", np.float32(1.0)],
    }
    assert find_bad_tensor(state) == "ema.state.w: 2 non-finite values"
    state["ema"]["state"]["w"] = torch.tensor([1.0, -3e9])
    assert find_bad_tensor(state) is None
    assert find_bad_tensor(state, max_abs=1e8) == "ema.state.w: |value| up to 3e+09 > 1e+08"
    assert find_bad_tensor({"x": [np.array([0.0, np.nan])]}, path="ckpt") == (
        "ckpt.x[0]: 1 non-finite values"
    )


def test_derived_seeds_are_stable_and_distinct():
    assert derive_seed(0, 1, 2) == derive_seed(0, 1, 2)
    seeds = {derive_seed(s, k, i) for s in (0, 1) for k in (0, 1) for i in range(50)}
    assert len(seeds) == 200 and all(0 <= s < 2**64 for s in seeds)
    assert derive_seed(-1, 3) == derive_seed(2**64 - 1, 3)


def test_isolated_rng_is_reproducible_and_restores_the_callers_state():
    seed_all(5)
    expected = (random.random(), np.random.rand(), torch.rand(()))
    seed_all(5)
    with isolated_rng(123):
        inside = (random.random(), np.random.rand(), torch.rand(()))
    with isolated_rng(123):
        assert (random.random(), np.random.rand(), torch.rand(())) == inside
    assert (random.random(), np.random.rand(), torch.rand(())) == expected


def test_batch_plan_covers_each_group_once_per_pass():
    groups = [list(range(0, 12)), list(range(100, 106))]
    plan = BatchPlan(groups, batch_size=3, seed=0)
    # 12 and 6 items: two of every three batches are group 0's
    batches = [plan.batch(j) for j in range(6)]
    for batch in batches:
        assert len({index >= 100 for _, index in batch}) == 1
    seen0 = sorted(i for b in batches for _, i in b if i < 100)
    seen1 = sorted(i for b in batches for _, i in b if i >= 100)
    assert seen0 == groups[0] and seen1 == groups[1]
    # a pure function of (seed, j): a fresh plan agrees, out of order; every item seed unique
    fresh = BatchPlan(groups, batch_size=3, seed=0)
    assert [fresh.batch(j) for j in (5, 0, 3)] == [batches[5], batches[0], batches[3]]
    seeds = [s for j in range(40) for s, _ in plan.batch(j)]
    assert len(set(seeds)) == len(seeds)
    # the next pass is another permutation
    assert [i for j in range(6, 12) for _, i in plan.batch(j)] != [i for b in batches for _, i in b]
    assert BatchPlan(groups, 3, seed=1).batch(0) != batches[0]


def test_batch_plan_rejects_empty_input():
    with pytest.raises(ValueError, match="no items"):
        BatchPlan([[], []], batch_size=2, seed=0)
    with pytest.raises(ValueError, match="batch_size"):
        BatchPlan([[1]], batch_size=0, seed=0)
