"""Numeric-answer rewards: VSI-Bench's Mean Relative Accuracy, exact match and relative accuracy.

Invariants this module keeps (on top of those in ``registry``):

- The prediction is read strictly: the answer region (``text.answer_region``: the last ``<answer>``
  block, else the text after ``</think>``, else everything) must hold exactly one number. Words around it
  are fine ("3.5 meters", "about 12"), a second number is not ("about 3 or 4", "3-4", "2 m 30 cm",
  "10 m²" is fine since "²" is not a decimal digit). A number is an optional sign, then digits with an
  optional decimal part (".5" too) or comma-grouped thousands ("1,234.5"), then an optional exponent;
  any other comma or a second decimal point ("3,4", "1.2.3") makes the answer ambiguous. Any Unicode
  decimal digit counts (float() reads them) and U+2212 is a minus sign. No number, two numbers, an
  ambiguous one, a non-finite one or an answer region cut to its tail scores 0: a wrong answer, never
  "unscorable".
- The target is ``sample.answer``, a number written the same way; anything else raises ``ValueError``.
- ``y == 0`` has no relative error (the reference divides by it and fails); here the relative error is
  taken as 0 when ``ŷ == 0`` and infinite otherwise, so every numeric reward is then exact match. A
  negative ``y`` divides by ``|y|`` (the reference divides by ``y`` itself, which would make every
  prediction right; VSI-Bench targets are all positive, where the two agree).
"""

from __future__ import annotations

import math
import re

import numpy as np

from services.reward.registry import Sample, register
from services.reward.text import answer_region

# What a number token looks like before it is judged: a broad net, so "3,4" and "1.2.3" are caught as one
# (ambiguous) token rather than read as two numbers or as 3.
_TOKEN = re.compile(r"[-+]?(?:\d+(?:[.,]\d+)*|\.\d+)(?:[eE][-+]?\d+)?")
_STRICT = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)(?:[eE][-+]?\d+)?")

# The reference (lmms-eval vsibench utils, MRA:.5:.95:.05) builds its thresholds as
# np.linspace(.5, .95, int((.95 - .5) / .05 + 2)) == np.linspace(.5, .95, 10) and counts a prediction at θ
# when abs(pred - gt) / gt <= 1 - θ. The bounds 1 - θ are kept exactly as float64 computes them
# (1 - 0.8 == 0.19999999999999996), so a relative error of exactly 0.2 does not count at θ = 0.8.
MRA_THRESHOLDS = np.linspace(0.5, 0.95, 10)
_MRA_BOUNDS = tuple(float(b) for b in 1.0 - MRA_THRESHOLDS)


def parse_number(token: str) -> float | None:
    """The value of one number token written as described in the module docstring, else None.

    >>> parse_number("1,234.5"), parse_number("−2e3"), parse_number("3,4"), parse_number("1.2.3")
    (1234.5, -2000.0, None, None)
    """
    token = token.strip().replace("\u2212", "-")
    if not _STRICT.fullmatch(token):
        return None
    return float(token.replace(",", ""))


def single_number(text: str) -> float | None:
    """The one finite number in ``text``; None when there is none, more than one, or it is ambiguous.

    >>> single_number("about 3.5 m"), single_number("about 3 or 4"), single_number("1e999")
    (3.5, None, None)
    """
    tokens = []
    for match in _TOKEN.finditer(text.replace("\u2212", "-")):
        tokens.append(match.group())
        if len(tokens) > 1:
            return None
    if len(tokens) != 1:
        return None
    value = parse_number(tokens[0])
    return value if value is not None and math.isfinite(value) else None


def _prediction(completion: str) -> float | None:
    text, cut = answer_region(completion)
    return None if cut else single_number(text)


def _target(sample: Sample) -> float:
    value = parse_number(str(sample.answer))
    if value is None or not math.isfinite(value):
        raise ValueError(f"numeric sample answer must be one finite number, got {sample.answer!r}")
    return value


def relative_error(pred: float, gt: float) -> float:
    """``|pred - gt| / |gt|`` in float64 as the reference computes it; 0/0 is 0 and x/0 is infinite.

    >>> relative_error(8.0, 10.0), relative_error(0.0, 0.0), relative_error(1.0, 0.0)
    (0.2, 0.0, inf)
    """
    if gt == 0.0:
        return 0.0 if pred == 0.0 else math.inf
    return abs(pred - gt) / abs(gt)


def mean_relative_accuracy(pred: float, gt: float) -> float:
    """VSI-Bench MRA of one prediction: the share of the 10 thresholds at which it counts.

    >>> mean_relative_accuracy(9.0, 10.0), mean_relative_accuracy(8.0, 10.0)
    (0.9, 0.6)
    """
    rel = relative_error(pred, gt)
    return sum(rel <= bound for bound in _MRA_BOUNDS) / len(_MRA_BOUNDS)


@register("numeric_mra")
def numeric_mra_reward(completion: str, sample: Sample) -> float:
    """VSI-Bench Mean Relative Accuracy of the one number in the answer against ``sample.answer``.

    MRA = (1/10) · Σ_{θ ∈ {0.50, 0.55, …, 0.95}} 1[|ŷ − y| / |y| ≤ 1 − θ], in float64 with numpy's
    linspace thresholds (so ŷ = 8 for y = 10 scores 0.6, not 0.7: 0.2 ≤ 1 − 0.8 is false in float64).

    >>> s = Sample(task="vsi_abs_distance", answer="10")
    >>> numeric_mra_reward("<think>…</think><answer>9.5 m</answer>", s)
    1.0
    >>> numeric_mra_reward("<answer>8</answer>", s), numeric_mra_reward("<answer>about 9 or 10</answer>", s)
    (0.6, 0.0)
    """
    gt = _target(sample)
    pred = _prediction(completion)
    return 0.0 if pred is None else mean_relative_accuracy(pred, gt)


@register("numeric_exact")
def numeric_exact_reward(completion: str, sample: Sample) -> float:
    """1.0 if the one number in the answer equals ``sample.answer`` as float64 ("3.0" equals "3"), else 0.0.

    >>> s = Sample(task="count", answer="3")
    >>> numeric_exact_reward("<answer>3.0</answer>", s), numeric_exact_reward("<answer>3 or 4</answer>", s)
    (1.0, 0.0)
    """
    gt = _target(sample)
    pred = _prediction(completion)
    return 1.0 if pred is not None and pred == gt else 0.0


@register("numeric_relative")
def numeric_relative_reward(completion: str, sample: Sample) -> float:
    """``1 − min(1, |ŷ − y| / |y|)``: relative accuracy, linear in the error and 0 from 100 % off.

    >>> s = Sample(task="size", answer="4")
    >>> numeric_relative_reward("<answer>3</answer>", s), numeric_relative_reward("<answer>9</answer>", s)
    (0.75, 0.0)
    """
    gt = _target(sample)
    pred = _prediction(completion)
    return 0.0 if pred is None else 1.0 - min(1.0, relative_error(pred, gt))
