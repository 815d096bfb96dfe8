"""numeric_mra, numeric_exact and numeric_relative: values worked out from the VSI-Bench reference.

The reference is lmms-eval's VSI-Bench task (tasks/vsibench/utils.py, metric "MRA:.5:.95:.05"):
    conf_intervs = np.linspace(.5, .95, int((.95 - .5) / .05 + 2))   # (.95-.5)/.05+2 = 10.999… -> 10 points
    accuracy = abs(pred - target) / target <= 1 - conf_intervs
    return accuracy.mean()
In float64 the bounds 1 - θ are
    0.5, 0.44999999999999996, 0.4, 0.35, 0.30000000000000004, 0.25, 0.19999999999999996,
    0.15000000000000002, 0.10000000000000009, 0.050000000000000044
and each expected value below is (number of bounds >= the relative error) / 10.
"""

import doctest
import math

import numpy as np
import pytest

from services.reward import numeric
from services.reward.numeric import (
    mean_relative_accuracy,
    numeric_exact_reward,
    numeric_mra_reward,
    numeric_relative_reward,
    parse_number,
    single_number,
)
from services.reward.registry import Sample

TEN = Sample(task="vsi_abs_distance", answer="10")
MB = 1 << 20


def test_docstring_examples_hold():
    assert doctest.testmod(numeric).failed == 0


def test_thresholds_are_the_references():
    # int((0.95 - 0.5) / 0.05 + 2) is int(10.999999999999998) == 10
    assert int((0.95 - 0.5) / 0.05 + 2) == 10
    assert numeric.MRA_THRESHOLDS.tolist() == np.linspace(0.5, 0.95, 10).tolist()
    assert numeric.MRA_THRESHOLDS[6] == 0.8 and 1 - numeric.MRA_THRESHOLDS[6] == 0.19999999999999996


def _reference(pred: float, gt: float) -> float:
    """The lmms-eval computation, verbatim in behaviour, for gt > 0."""
    conf = np.linspace(0.5, 0.95, int((0.95 - 0.5) / 0.05 + 2))
    return float((abs(pred - gt) / gt <= 1 - conf).mean())


@pytest.mark.parametrize(
    ("pred", "gt", "expected", "why"),
    [
        (10, 10, 1.0, "rel 0 counts at all 10 thresholds"),
        (9.5, 10, 1.0, "rel 0.05 <= 0.050000000000000044 (θ=.95): all 10"),
        (10.5, 10, 1.0, "rel 0.05, same as 9.5"),
        (9, 10, 0.9, "rel 0.1 <= 0.10000000000000009 (θ=.9) but > 0.0500…044 (θ=.95): 9"),
        (11, 10, 0.9, "rel 0.1 (abs(11-10)/10 == 0.1 exactly): 9"),
        (1.1, 1, 0.9, "rel 0.10000000000000009 <= 0.10000000000000009: still counts at θ=.9: 9"),
        (0.9, 1, 0.9, "rel 0.09999999999999998: 9"),
        (8, 10, 0.6, "rel 0.2 > 0.19999999999999996: NOT at θ=.8, so θ∈{.5,.55,.6,.65,.7,.75}: 6 (naively 7)"),
        (12, 10, 0.6, "rel 0.2, same boundary as 8"),
        (7.5, 10, 0.6, "rel 0.25 <= 0.25 (θ=.75 counts exactly): 6"),
        (3, 4, 0.6, "rel 0.25: 6"),
        (7, 10, 0.5, "rel 0.3 <= 0.30000000000000004 (θ=.7 counts): 5"),
        (13, 10, 0.5, "rel 0.3: 5"),
        (2, 3, 0.4, "rel 0.333…: θ∈{.5,.55,.6,.65}: 4"),
        (6, 10, 0.3, "rel 0.4 <= 0.4 (θ=.6 counts exactly): 3"),
        (5, 10, 0.1, "rel 0.5 <= 0.5 (θ=.5 only): 1"),
        (15, 10, 0.1, "rel 0.5: 1"),
        (4, 10, 0.0, "rel 0.6 > 0.5: 0"),
        (1, 3, 0.0, "rel 0.666…: 0"),
        (-10, 10, 0.0, "rel 2: 0"),
    ],
)
def test_mra_matches_hand_derived_values(pred, gt, expected, why):
    assert mean_relative_accuracy(float(pred), float(gt)) == expected, why
    assert _reference(float(pred), float(gt)) == expected, why  # and the reference agrees
    assert numeric_mra_reward(f"<answer>{pred}</answer>", Sample(task="n", answer=str(gt))) == expected, why


def test_mra_equals_the_reference_on_a_grid():
    for gt in (0.5, 1.0, 3.0, 4.2, 10.0, 37.5, 1000.0):
        for k in range(-30, 31):
            pred = gt * (1 + k / 40)
            assert mean_relative_accuracy(pred, gt) == _reference(pred, gt), (pred, gt)


def test_zero_target_is_exact_match():
    zero = Sample(task="count", answer="0")
    assert numeric_mra_reward("<answer>0</answer>", zero) == 1.0
    assert numeric_mra_reward("<answer>0.0</answer>", zero) == 1.0
    assert numeric_mra_reward("<answer>0.001</answer>", zero) == 0.0
    assert numeric_relative_reward("<answer>0</answer>", zero) == 1.0
    assert numeric_relative_reward("<answer>1</answer>", zero) == 0.0
    assert numeric_exact_reward("<answer>-0</answer>", zero) == 1.0


def test_negative_target_divides_by_its_magnitude():
    minus = Sample(task="delta", answer="-10")
    assert numeric_mra_reward("<answer>-9</answer>", minus) == 0.9
    assert numeric_mra_reward("<answer>9</answer>", minus) == 0.0
    assert numeric_relative_reward("<answer>-7.5</answer>", minus) == 0.75


@pytest.mark.parametrize(
    ("answer", "value"),
    [
        ("9.5", 9.5),
        (" 9.5 m ", 9.5),
        ("about 9.5 meters", 9.5),
        ("The distance is 9.5m.", 9.5),
        ("**9.5**", 9.5),
        ("9.5 m²", 9.5),  # "²" is no decimal digit
        (".5", 0.5),
        ("+3", 3.0),
        ("−3", -3.0),  # U+2212 minus
        ("1,234.5", 1234.5),
        ("1,234,567", 1234567.0),
        ("2e3", 2000.0),
        ("1.5E-2", 0.015),
        ("３", 3.0),  # full-width digit: float() reads any Unicode decimal digit
        ("٣", 3.0),  # Arabic-Indic three
    ],
)
def test_one_number_is_read(answer, value):
    assert single_number(answer) == value
    assert numeric_exact_reward(f"<answer>{answer}</answer>", Sample(task="n", answer=repr(value))) == 1.0


@pytest.mark.parametrize(
    "answer",
    [
        "",
        "ten",  # words are not numbers
        "about 3 or 4",  # two numbers: ambiguous
        "3-4",
        "between 9 and 11",
        "2 m 30 cm",
        "3,4",  # a comma that is no thousands separator
        "12,34",
        "1.2.3",
        "1e999",  # not finite
        "9.5 (or 10)",
        "nan",
        "inf",
    ],
)
def test_no_single_number_scores_zero(answer):
    completion = f"<think>x</think><answer>{answer}</answer>"
    for fn in (numeric_mra_reward, numeric_exact_reward, numeric_relative_reward):
        assert fn(completion, TEN) == 0.0, (fn.__name__, answer)


def test_the_answer_region_is_the_last_answer_block():
    assert numeric_mra_reward("<think>maybe 3 or 4 or 10</think><answer>10</answer>", TEN) == 1.0
    assert numeric_mra_reward("<answer>3</answer> no wait <answer>10</answer>", TEN) == 1.0
    assert numeric_mra_reward("<think>12 frames</think> 10", TEN) == 1.0  # after </think>
    assert numeric_mra_reward("10", TEN) == 1.0  # no tags at all
    assert numeric_mra_reward("<think>hmm</think><answer>10", TEN) == 1.0  # unclosed answer


def test_exact_and_relative():
    s = Sample(task="n", answer="4.0")
    assert numeric_exact_reward("<answer>4</answer>", s) == 1.0
    assert numeric_exact_reward("<answer>4.0000001</answer>", s) == 0.0
    assert numeric_relative_reward("<answer>3</answer>", s) == 0.75  # 1 - |3-4|/4
    assert numeric_relative_reward("<answer>5</answer>", s) == 0.75
    assert numeric_relative_reward("<answer>8</answer>", s) == 0.0  # 100 % off: clipped
    assert numeric_relative_reward("<answer>100</answer>", s) == 0.0
    assert numeric_relative_reward("<answer>-4</answer>", s) == 0.0


@pytest.mark.parametrize("answer", ["", "ten", "3 or 4", "nan", "inf", "1e999", "1,2"])
def test_a_malformed_target_raises(answer):
    with pytest.raises(ValueError, match="numeric sample answer"):
        numeric_mra_reward("<answer>3</answer>", Sample(task="n", answer=answer))


def test_target_written_as_float_or_with_separators():
    assert numeric_mra_reward("<answer>10</answer>", Sample(task="n", answer="10.0")) == 1.0
    assert numeric_exact_reward("<answer>1234</answer>", Sample(task="n", answer="1,234")) == 1.0
    assert parse_number(" 7 ") == 7.0


def test_megabyte_completions_are_cheap_and_strict():
    filler = "I count 3 chairs and 4 tables. " * (MB // 31)
    assert numeric_mra_reward(f"<think>{filler}</think><answer>10</answer>", TEN) == 1.0
    # an answer region longer than TAIL_CHARS lost its beginning: one number cannot be verified
    assert numeric_mra_reward(f"<answer>{'x ' * MB}10</answer>", TEN) == 0.0
    assert numeric_mra_reward("<answer>" + "9" * MB + "</answer>", TEN) == 0.0
    assert numeric_mra_reward(f"{filler} so 10", TEN) == 0.0
    assert not math.isnan(numeric_relative_reward("\x00" * MB, TEN))
