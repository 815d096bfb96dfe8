import math
from collections import Counter

from services.learner.difficulty import DifficultySampler

IDS = [f"r{i}" for i in range(10)]


def test_pass_rate_is_the_share_reaching_pass_reward_smoothed_over_groups():
    s = DifficultySampler(IDS, pass_reward=1.0, ema=0.5)
    assert s.observe("r0", [1.1, 0.1, 0.1, float("nan")]) == 1 / 3      # NaN left out: 1 pass of 3 scored
    assert s.observe("r0", [1.1, 1.1, 1.1, 1.1]) == 0.5 * (1 / 3) + 0.5 * 1.0
    assert s.observe("unknown", [1.0]) is None and s.observe("r1", [float("nan")]) is None
    assert "r1" not in s.pass_rate


def test_uniform_visits_every_row_once_per_epoch():
    s = DifficultySampler(IDS, rule="uniform", seed=3)
    assert sorted(s.next_index() for _ in IDS) == list(range(10))


def test_filter_keeps_rows_with_0_lt_p_le_0_7_and_unseen_rows():
    s = DifficultySampler(IDS, rule="filter", explore=0.0, ema=1.0)
    for i in range(8):                      # r0..r3 solved (p=1), r4..r5 hopeless (p=0), r6..r7 p=0.5
        s.observe(IDS[i], [1.0] * 4 if i < 4 else [0.0] * 4 if i < 6 else [1.0, 1.0, 0.0, 0.0])
    picked = Counter(IDS[s.next_index()] for _ in range(400))
    assert set(picked) == {"r6", "r7", "r8", "r9"}          # r8, r9 never measured: still eligible


def test_filter_with_nothing_eligible_falls_back_to_uniform_and_counts_it():
    s = DifficultySampler(IDS[:2], rule="filter", explore=0.0, ema=1.0)
    s.observe("r0", [1.0]), s.observe("r1", [1.0])
    assert {s.next_index() for _ in range(20)} == {0, 1} and s.fallbacks == 20


def test_explore_draws_ignore_the_rule():
    s = DifficultySampler(IDS[:2], rule="filter", explore=0.5, ema=1.0, seed=1)
    s.observe("r0", [1.0])                  # solved: only explore draws may return it
    share = sum(s.next_index() == 0 for _ in range(2000)) / 2000
    assert 0.2 < share < 0.3                # half the draws explore, half of those pick r0


def test_target_weights_rows_near_the_target_difficulty():
    s = DifficultySampler(IDS[:3], rule="target", target=0.5, width=0.1, explore=0.0, ema=1.0)
    s.observe("r0", [1.0, 1.0, 0.0, 0.0])   # p = 0.5: weight 1
    s.observe("r1", [1.0, 1.0, 1.0, 1.0])   # p = 1.0: weight exp(-12.5)
    s.observe("r2", [1.0, 0.0, 0.0, 0.0])   # p = 0.25: weight exp(-3.125) = 0.044
    picked = Counter(s.next_index() for _ in range(2000))
    assert picked[1] < 5 and 40 < picked[2] < 150 and picked[0] > 1800


def test_same_seed_same_draws_and_summary():
    a, b = DifficultySampler(IDS, rule="filter", seed=7), DifficultySampler(IDS, rule="filter", seed=7)
    for s in (a, b):
        s.observe("r0", [1.0])
    assert [a.next_index() for _ in range(50)] == [b.next_index() for _ in range(50)]
    summary = a.summary()
    assert summary["measured"] == 1 and summary["eligible_share"] == 0.9 and not math.isnan(summary["pass_rate_mean"])
