"""harness.experts.stats against closed-form values on synthetic routers."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from harness.experts.stats import (
    DEFAULT_CAPACITY_FACTORS,
    ResponseRecord,
    aggregate,
    capacity_per_expert,
    merge_records,
    response_record,
    response_stats,
    simulate_capacity,
)

E, K = 4, 2


def one(ids, probs=None, *, num_experts=E, top_k=K, factors=DEFAULT_CAPACITY_FACTORS, source=""):
    return response_record([(np.asarray(ids), None if probs is None else np.asarray(probs))],
                           num_experts=num_experts, top_k=top_k, capacity_factors=factors, source=source)


def test_uniform_router():
    # 4 tokens, each expert chosen exactly twice, every router row uniform.
    ids = [[0, 1], [2, 3], [0, 1], [2, 3]]
    probs = np.full((4, E), 1 / E)
    s = response_stats(one(ids, probs))
    assert s.utilization == ((0.25, 0.25, 0.25, 0.25),)
    assert s.router_entropy.mean == pytest.approx(1.0)  # H = log E, normalised = 1
    assert s.utilization_entropy.mean == pytest.approx(1.0)
    assert s.top_k_mass.mean == pytest.approx(K / E)  # 2 x 1/4
    assert s.imbalance_cv.mean == 0.0
    assert s.max_over_mean.mean == 1.0
    # capacity at 1.0 = ceil(1.0 * 4 * 2 / 4) = 2 = what each expert receives: nothing dropped.
    for f in DEFAULT_CAPACITY_FACTORS:
        assert s.capacity_at(f).assignment_overflow_rate.mean == 0.0
        assert s.capacity_at(f).dropped_token_rate.mean == 0.0


def test_one_hot_router_top2():
    # All probability on expert 0; top-2 picks expert 1 (probability 0) as the second slot.
    T = 6
    ids = [[0, 1]] * T
    probs = np.tile([1.0, 0.0, 0.0, 0.0], (T, 1))
    s = response_stats(one(ids, probs))
    assert s.utilization[0] == (0.5, 0.5, 0.0, 0.0)
    assert s.router_entropy.mean == 0.0  # 0 log 0 = 0
    assert s.top_k_mass.mean == 1.0
    assert s.utilization_entropy.mean == pytest.approx(math.log(2) / math.log(4))  # = 0.5
    # counts (6, 6, 0, 0): mean 3, population std 3 -> CV 1; max/mean 2
    assert s.imbalance_cv.mean == pytest.approx(1.0)
    assert s.max_over_mean.mean == pytest.approx(2.0)
    # factor 1.0: capacity ceil(6*2/4) = 3; experts 0 and 1 each keep tokens 0-2 and drop 3-5:
    # 6 of 12 slots dropped, and tokens 3, 4, 5 lose both slots -> 3 of 6 tokens dropped.
    c = s.capacity_at(1.0)
    assert c.assignment_overflow_rate.mean == 0.5
    assert c.dropped_token_rate.mean == 0.5
    # factor 1.5: capacity ceil(4.5) = 5 -> token 5 loses both slots: 2/12 slots, 1/6 tokens.
    assert s.capacity_at(1.5).assignment_overflow_rate.mean == pytest.approx(2 / 12)
    assert s.capacity_at(1.5).dropped_token_rate.mean == pytest.approx(1 / 6)
    # factor 2.0: capacity 6 = T: nothing dropped.
    assert s.capacity_at(2.0).assignment_overflow_rate.mean == 0.0


def test_one_hot_router_top1_extreme_imbalance():
    T = 8
    s = response_stats(one([[0]] * T, np.tile([1.0, 0, 0, 0], (T, 1)), top_k=1))
    assert s.utilization[0] == (1.0, 0.0, 0.0, 0.0)
    assert s.utilization_entropy.mean == 0.0
    # counts (8, 0, 0, 0): mean 2, std sqrt(((8-2)^2 + 3 * 2^2) / 4) = sqrt(12) -> CV sqrt(3); max/mean = E
    assert s.imbalance_cv.mean == pytest.approx(math.sqrt(3))
    assert s.max_over_mean.mean == pytest.approx(4.0)
    # capacity ceil(8 * 1 / 4) = 2: 6 of 8 slots dropped, and with k = 1 a dropped slot is a dropped token
    assert s.capacity_at(1.0).assignment_overflow_rate.mean == 0.75
    assert s.capacity_at(1.0).dropped_token_rate.mean == 0.75


def test_known_skew():
    p = np.array([0.4, 0.3, 0.2, 0.1])
    # counts per expert: 0 -> 6, 1 -> 3, 2 -> 2, 3 -> 1 (12 slots over 6 tokens)
    ids = [[0, 1], [0, 1], [0, 1], [0, 2], [0, 2], [0, 3]]
    probs = np.tile(p, (6, 1))
    s = response_stats(one(ids, probs))
    shares = np.array([6, 3, 2, 1]) / 12
    assert s.utilization[0] == pytest.approx(tuple(shares))
    assert s.utilization_entropy.mean == pytest.approx(-(shares * np.log(shares)).sum() / math.log(4))
    assert s.router_entropy.mean == pytest.approx(-(p * np.log(p)).sum() / math.log(4))  # 0.9232...
    # mass of the chosen pair: 3 tokens {0,1} = 0.7, 2 tokens {0,2} = 0.6, 1 token {0,3} = 0.5
    assert s.top_k_mass.mean == pytest.approx((3 * 0.7 + 2 * 0.6 + 0.5) / 6)
    # counts (6,3,2,1): mean 3, variance (9 + 0 + 1 + 4) / 4 = 3.5
    assert s.imbalance_cv.mean == pytest.approx(math.sqrt(3.5) / 3)
    assert s.max_over_mean.mean == pytest.approx(2.0)


def test_capacity_first_come_first_served_hand_worked():
    # E = 4, k = 2, T = 6 tokens -> 12 slots.
    #   token: slot0 slot1
    #   t0:    0     1
    #   t1:    1     0
    #   t2:    0     1
    #   t3:    0     1
    #   t4:    2     0
    #   t5:    3     2
    # Arrival order is token order, slot order within a token.
    # factor 1.0: capacity = ceil(1.0 * 6 * 2 / 4) = 3.
    #   expert 0 arrivals: t0s0, t1s1, t2s0 (3 = full), t3s0 DROP, t4s1 DROP
    #   expert 1 arrivals: t0s1, t1s0, t2s1 (full), t3s1 DROP
    #   expert 2: t4s0, t5s1; expert 3: t5s0 -> fine
    #   dropped slots 3 / 12 = 0.25; t3 lost both slots -> dropped tokens 1 / 6.
    #   (Slot-major order, GShard's "top-1 first", would drop t1s1, t4s1, t3s1 instead: also 3
    #   slots but no token with both dropped, so the dropped-token rate pins the order down.)
    # factor 1.25: capacity = ceil(3.75) = 4: expert 0's 5th arrival (t4s1) is dropped, expert 1
    #   gets exactly 4 -> 1 / 12 slots, 0 tokens.
    # factor 1.5: capacity = ceil(4.5) = 5 >= every count (5, 4, 2, 1): nothing dropped. Same at 2.0.
    ids = np.array([[0, 1], [1, 0], [0, 1], [0, 1], [2, 0], [3, 2]])
    c = simulate_capacity(ids, E, 1.0)
    assert (c.capacity, c.dropped_slots, c.dropped_tokens) == (3, 3, 1)
    c = simulate_capacity(ids, E, 1.25)
    assert (c.capacity, c.dropped_slots, c.dropped_tokens) == (4, 1, 0)
    for f in (1.5, 2.0):
        assert simulate_capacity(ids, E, f).dropped_slots == 0
    s = response_stats(one(ids))
    assert s.capacity_at(1.0).assignment_overflow_rate.mean == 0.25
    assert s.capacity_at(1.0).dropped_token_rate.mean == pytest.approx(1 / 6)
    assert s.capacity_at(1.25).assignment_overflow_rate.mean == pytest.approx(1 / 12)
    assert s.capacity_at(1.25).dropped_token_rate.mean == 0.0
    assert s.router_entropy.mean is None and s.top_k_mass.mean is None  # no probabilities given


def test_capacity_is_exact_for_decimal_factors():
    assert math.ceil(1.1 * 100 * 2 / 4) == 56  # float: 55.00000000000001
    assert capacity_per_expert(1.1, 100, 4, 2) == 55  # (factor, tokens, E, k)
    assert capacity_per_expert(1.25, 10, 4, 2) == 7  # ceil(6.25)


def test_pooling_sums_counts_not_shares():
    r1 = one([[0, 1]], np.array([[0.5, 0.5, 0, 0]]), source="a")  # 1 token, entropy log 2
    r2 = one([[2, 3]] * 3, np.full((3, 4), 0.25), source="b")  # 3 tokens, entropy log 4
    g = aggregate([r1, r2], source="route/cohort")
    assert g.responses == 2 and g.tokens == 4 and g.source == "route/cohort"
    # pooled counts (1, 1, 3, 3) / 8, not the mean of per-response shares (0.25 each)
    assert g.utilization[0] == (1 / 8, 1 / 8, 3 / 8, 3 / 8)
    # per-token mean: (1 * log 2 + 3 * log 4) / 4 tokens / log 4
    assert g.router_entropy.mean == pytest.approx((math.log(2) + 3 * math.log(4)) / 4 / math.log(4))
    assert g.top_k_mass.mean == pytest.approx((1.0 + 3 * 0.5) / 4)
    # capacity runs per response: r1 capacity ceil(2/4) = 1, nothing dropped; r2 capacity
    # ceil(3 * 2 / 4) = 2, experts 2 and 3 drop token 2 -> 2 slots and 1 token; pooled 2/8, 1/4.
    assert g.capacity_at(1.0).assignment_overflow_rate.mean == pytest.approx(2 / 8)
    assert g.capacity_at(1.0).dropped_token_rate.mean == pytest.approx(1 / 4)
    # missing probabilities anywhere in a group -> undefined for the group
    r3 = one([[0, 1]])
    assert aggregate([r1, r3]).router_entropy.mean is None
    assert aggregate([r1, r3]).top_k_mass.layers == (None,)


def test_layer_means():
    a = (np.array([[0, 1], [0, 1]]), None)  # layer 0: (2, 2, 0, 0)
    b = (np.array([[0, 1], [2, 3]]), None)  # layer 1: (1, 1, 1, 1)
    s = response_stats(response_record([a, b], num_experts=E, top_k=K))
    assert s.utilization == ((0.5, 0.5, 0.0, 0.0), (0.25, 0.25, 0.25, 0.25))
    assert s.utilization_mean == (0.375, 0.375, 0.125, 0.125)
    assert s.utilization_entropy.layers == pytest.approx((0.5, 1.0))
    assert s.utilization_entropy.mean == pytest.approx(0.75)  # mean of layer entropies
    assert s.imbalance_cv.layers == pytest.approx((1.0, 0.0))
    assert s.max_over_mean.mean == pytest.approx(1.5)
    # layer 0 capacity ceil(2*2/4) = 1: experts 0 and 1 drop token 1 -> 2/4 slots, 1/2 tokens; layer 1 none
    assert s.capacity_at(1.0).assignment_overflow_rate.layers == (0.5, 0.0)
    assert s.capacity_at(1.0).assignment_overflow_rate.mean == 0.25
    assert s.capacity_at(1.0).dropped_token_rate.mean == 0.25


def test_record_round_trip_and_json_shape():
    probs = np.tile([0.4, 0.3, 0.2, 0.1], (3, 1))
    r = response_record([(np.array([[0, 1]] * 3), probs), (np.array([[1, 2]] * 3), probs)],
                        num_experts=E, top_k=K, source="resp-1")
    back = ResponseRecord.from_dict(json.loads(json.dumps(r.to_dict())))
    assert back == r
    merged = merge_records([r, back])
    assert merged.tokens == 6 and merged.layers[0].counts == (6, 6, 0, 0)
    j = json.loads(json.dumps(response_stats(r).to_json()))
    assert {"source", "tokens", "utilization", "router_entropy", "utilization_entropy", "top_k_mass",
            "imbalance_cv", "max_over_mean", "capacity"} <= set(j)
    assert j["source"] == "resp-1" and j["tokens"] == 3
    assert len(j["utilization"]["layers"]) == 2 and len(j["utilization"]["mean"]) == E
    assert set(j["capacity"]) == {"1.0", "1.25", "1.5", "2.0"}
    assert set(j["capacity"]["1.0"]) == {"assignment_overflow_rate", "dropped_token_rate"}
    assert j["capacity"]["1.0"]["assignment_overflow_rate"]["mean"] is not None


def test_capacity_factors_of_a_group_are_those_all_records_have():
    r1 = one([[0, 1]], factors=(1.0, 1.5))
    r2 = one([[0, 1]], factors=(1.5, 2.0))
    assert [c.factor for c in aggregate([r1, r2]).capacity] == [1.5]


@pytest.mark.parametrize("ids, probs, match", [
    ([[0, 1, 2]], None, "top-k ids must be"),
    ([[0, 4]], None, "expert ids must be in"),
    ([[0.0, 1.0]], None, "integers"),
    ([[0, 1]], [[0.5, 0.5, 0.5, 0.0]], "summing to 1"),
    ([[0, 1]], [[0.5, 0.5]], "router probabilities must be"),
])
def test_invalid_inputs(ids, probs, match):
    with pytest.raises(ValueError, match=match):
        one(ids, probs)


def test_mismatched_records_and_empty_groups():
    with pytest.raises(ValueError, match="differ in E"):
        aggregate([one([[0, 1]]), one([[0, 1]], num_experts=8)])
    with pytest.raises(ValueError, match="no tokens"):
        aggregate([one(np.zeros((0, 2), dtype=int))])
    with pytest.raises(ValueError, match="same tokens"):
        response_record([(np.array([[0, 1]]), None), (np.array([[0, 1], [2, 3]]), None)], num_experts=E, top_k=K)


def _naive_capacity(ids, num_experts, factor):
    """The definition as a loop: token order, slot order, a slot beyond its expert's capacity dropped."""
    T, k = len(ids), len(ids[0])
    cap = math.ceil(factor * T * k / num_experts - 1e-9)
    load = [0] * num_experts
    slots = tokens = 0
    for row in ids:
        lost = 0
        for e in row:
            if load[e] < cap:
                load[e] += 1
            else:
                lost += 1
        slots += lost
        tokens += lost == k
    return cap, slots, tokens


@pytest.mark.parametrize("seed", range(20))
def test_capacity_simulation_matches_a_loop_on_random_skewed_routers(seed):
    rng = np.random.default_rng(seed)
    num_experts, k = int(rng.choice([4, 8])), int(rng.choice([1, 2]))
    T = int(rng.integers(1, 60))
    weights = rng.dirichlet(np.full(num_experts, 0.3))  # skewed
    ids = np.array([rng.choice(num_experts, size=k, replace=False, p=weights) for _ in range(T)])
    for f in (0.5, 1.0, 1.25, 1.5, 2.0):
        c = simulate_capacity(ids, num_experts, f)
        assert (c.capacity, c.dropped_slots, c.dropped_tokens) == _naive_capacity(ids.tolist(), num_experts, f)


def test_agreement_between_sources_is_the_largest_gap():
    """Live vs probe on the same cohorts: the largest share difference over layers and experts, and
    the metric differences (second source minus the most trusted one), None where either lacks it."""
    from harness.experts.panel import agreement_line, agreements, gap_text

    def row(cohort, source, util, ent, router):
        return {"route": "moe", "cohort": cohort, "source": source, "tokens": 100, "utilization": util,
                "metrics": {"utilization_entropy": ent, "router_entropy": router, "max_over_mean": 1.0}}

    panel = [
        row("a", "probe", [[0.5, 0.5], [0.25, 0.75]], 0.9, 0.8),
        row("a", "live", [[0.5, 0.5], [0.20, 0.80]], 0.95, None),  # live listed second: still the reference
        row("b", "probe", [[0.6, 0.4], [0.5, 0.5]], 0.7, 0.6),
        row("b", "live", [[0.58, 0.42], [0.5, 0.5]], 0.72, 0.65),
        row("c", "probe", [[1.0, 0.0], [1.0, 0.0]], 0.0, 0.0),      # one source only: not compared
    ]
    found = {a.cohort: a for a in agreements(panel)}
    assert set(found) == {"a", "b"}
    assert found["a"].sources == ("live", "probe")
    assert found["a"].utilization_max_abs == pytest.approx(0.05)
    assert found["a"].diffs["utilization_entropy"] == pytest.approx(-0.05) and found["a"].diffs["router_entropy"] is None
    assert found["b"].utilization_max_abs == pytest.approx(0.02)
    line = agreement_line("moe", list(found.values()))
    assert line == ("moe: live vs probe over 2 cohort rows: utilisation shares within 0.050 (largest in a), "
                    "utilisation entropy within 0.050, router entropy within 0.050, max/mean within 0.000")
    assert agreement_line("dense", list(found.values())) is None
    assert [gap_text(v) for v in (0.0, 0.05, 0.0005, 6.11e-05)] == ["0.000", "0.050", "0.001", "6.1e-05"]
