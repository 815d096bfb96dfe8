"""Temporal grounding rewards: temporal IoU (TVG-R1 style) and the Time-R1 boundary-penalised variant.

Invariants this module keeps (on top of those in ``registry``):

- Targets live in ``sample.extra``: ``"segment": [s, e]`` (one ground-truth segment) or ``"segments":
  [[s, e], …]`` (several; their union is the target), in seconds, and ``"duration": T`` (seconds, > 0),
  needed by the Time-R1 variant only; read by the ground-truth rules of services/common/ground_truth.py
  (0 <= s <= e). A malformed target raises ``ValueError``.
- The prediction is read from the answer region (``text.answer_region``, at most ``TAIL_CHARS``). Times
  are unsigned decimals ("12.5", ".5") or clock times ("1:05" = 65 s, "1:02:03.5" = 3723.5 s); anything
  between them is ignored, so "[12.5, 20.3]", "12.5s - 20.3s" and "from 12.5 to 20.3 seconds" all read
  as (12.5, 20.3). A sign is never read: "12.5-20.3" is a range, not 12.5 and −20.3.
  With a ``segment`` target the prediction is the first two times; with ``segments`` it is every time,
  read in pairs, as a list of segments.
- A prediction with no segment, a segment that ends before it starts, an odd count of times (multi-segment)
  or an answer region cut to its tail scores 0 (a wrong answer, never "unscorable").

IoU of two unions of intervals P and G is |P ∩ G| / |P ∪ G| (lengths of merged intervals); for one segment
each this is the usual tIoU. Two zero-length segments have an empty union: IoU 0.
"""

from __future__ import annotations

import math
import re

from services.common.ground_truth import GroundTruthError, Segment, check_duration, check_segment, check_segments
from services.reward.registry import Sample, register
from services.reward.text import answer_region

_TIME = re.compile(r"\d+(?::\d+){0,2}(?:\.\d+)?|\.\d+")


def _seconds(token: str) -> float:
    value = 0.0
    for part in token.split(":"):  # "1:02:03.5" -> ((1 * 60) + 2) * 60 + 3.5
        value = value * 60.0 + float(part)
    return value


def read_times(text: str, limit: int | None = None) -> list[float]:
    """The times written in ``text`` (at most ``limit``), as seconds.

    >>> read_times("from 1:05 to 70.5s"), read_times("[3, 4.25]", limit=1)
    ([65.0, 70.5], [3.0])
    """
    times = []
    for match in _TIME.finditer(text):
        times.append(_seconds(match.group()))
        if limit is not None and len(times) >= limit:
            break
    return times


def _targets(sample: Sample) -> tuple[list[Segment], bool]:
    """The ground-truth segments, and whether the task lists several (``segments``) or one (``segment``)."""
    try:
        if "segments" in sample.extra:
            return list(check_segments(sample.extra["segments"])), True
        if "segment" in sample.extra:
            return [check_segment(sample.extra["segment"])], False
    except GroundTruthError as e:
        raise ValueError(f"temporal target {e}") from None
    raise ValueError("temporal sample needs extra['segment'] = [s, e] or extra['segments'] = [[s, e], ...]")


def _prediction(completion: str, multi: bool) -> list[Segment] | None:
    text, cut = answer_region(completion)
    if cut:
        return None
    times = read_times(text, None if multi else 2)
    if not times or len(times) % 2:
        return None
    segments = [(times[i], times[i + 1]) for i in range(0, len(times), 2)]
    return None if any(e < s for s, e in segments) else segments


def _merged(segments: list[Segment]) -> list[Segment]:
    out: list[Segment] = []
    for start, end in sorted(segments):
        if out and start <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((start, end))
    return out


def segments_iou(pred: list[Segment], gt: list[Segment]) -> float:
    """IoU of the union of ``pred`` with the union of ``gt`` (lengths on the time line).

    >>> segments_iou([(0.0, 10.0)], [(5.0, 15.0)]), segments_iou([(0.0, 2.0), (4.0, 6.0)], [(0.0, 6.0)])
    (0.3333333333333333, 0.6666666666666666)
    """
    a, b = _merged(pred), _merged(gt)
    inter, i, j = 0.0, 0, 0
    while i < len(a) and j < len(b):  # two-pointer sweep over both sorted, disjoint lists
        inter += max(0.0, min(a[i][1], b[j][1]) - max(a[i][0], b[j][0]))
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    union = sum(e - s for s, e in a) + sum(e - s for s, e in b) - inter
    if not union > 0.0 or not math.isfinite(union):
        return 0.0
    return min(1.0, max(0.0, inter / union))


@register("temporal_iou")
def temporal_iou_reward(completion: str, sample: Sample) -> float:
    """Temporal IoU of the predicted segment(s) with the ground truth (TVG-R1's IoU reward).

    >>> s = Sample(task="tvg", answer="", extra={"segment": [10, 20], "duration": 60})
    >>> temporal_iou_reward("<think>…</think><answer>12.5 - 20.0 seconds</answer>", s)
    0.75
    >>> temporal_iou_reward("<answer>[20, 10]</answer>", s)  # ends before it starts
    0.0
    """
    gt, multi = _targets(sample)
    pred = _prediction(completion, multi)
    return 0.0 if pred is None else segments_iou(pred, gt)


def _duration(sample: Sample) -> float:
    try:
        return check_duration(sample.extra.get("duration"))
    except GroundTruthError as e:
        raise ValueError(f"temporal target {e}") from None


@register("temporal_iou_time_r1")
def temporal_iou_time_r1_reward(completion: str, sample: Sample) -> float:
    """Time-R1's timestamp-aware IoU: ``tIoU · (1 − |s − s'| / T) · (1 − |e − e'| / T)``.

    As defined in Time-R1 (Wang et al., "Time-R1: Post-Training Large Vision Language Model for Temporal
    Video Grounding", arXiv:2503.13377, the r_tIoU reward): s, e are the predicted start and end, s', e'
    the ground truth and T the video duration, so of two predictions with the same IoU the one whose
    boundaries are closer scores higher. Each factor is clipped at 0 (a boundary more than T off). With
    several segments, s and e are the earliest start and latest end of each side.

    >>> s = Sample(task="tvg", answer="", extra={"segment": [10, 20], "duration": 100})
    >>> round(temporal_iou_time_r1_reward("<answer>12 to 20</answer>", s), 6)  # 0.8 * (1 - 2/100) * 1
    0.784
    """
    gt, multi = _targets(sample)
    duration = _duration(sample)
    pred = _prediction(completion, multi)
    if pred is None:
        return 0.0
    iou = segments_iou(pred, gt)
    start_off = abs(min(s for s, _ in pred) - min(s for s, _ in gt)) / duration
    end_off = abs(max(e for _, e in pred) - max(e for _, e in gt)) / duration
    value = iou * max(0.0, 1.0 - start_off) * max(0.0, 1.0 - end_off)
    return value if math.isfinite(value) else 0.0
