"""Box IoU reward for grounding (one box) and tracking (one box per frame) answers.

Invariants this module keeps (on top of those in ``registry``):

- Boxes are ``[x1, y1, x2, y2]`` in continuous coordinates (pixels or normalised: the prediction must use
  the target's); a box with ``x2 < x1`` or ``y2 < y1`` is invalid. Targets live in ``sample.extra``:
  ``"box"`` (one box) or ``"boxes"`` (one per frame, in frame order; ``None`` = the object is not in that frame),
  read by the ground-truth rules of services/common/ground_truth.py; a malformed target raises ``ValueError``.
- A predicted box is four numbers inside brackets or parentheses separated by commas: "[10, 20, 110, 220]",
  "(10.5,20,110,220)"; numbers may carry a sign and a decimal part. With a ``box`` target the prediction is
  the first such group; when the answer has no bracketed group but exactly four stand-alone numbers
  ("0.1 0.2 0.5 0.6", "x1=10, y1=20, x2=110, y2=220": the digits of "x1" or "1e3" are not stand-alone)
  those are the box. With ``boxes`` the prediction is every bracketed group, in order: the i-th is frame
  i's box, a frame without one scores 0, groups beyond the last frame are ignored.
- Tracking answers are long, so the answer region is read up to ``BOX_CHARS`` (64 KiB) with linear,
  non-backtracking patterns; a longer answer region is cut and scores 0 (its first frames are gone).
- The value is the IoU (for ``boxes``, the mean over the frames that hold the object; a predicted box for a
  frame without it is ignored); an invalid or non-finite predicted box scores 0 for its frame. Two boxes of zero
  area have IoU 0.
"""

from __future__ import annotations

import math
import re

from services.common.ground_truth import Box, GroundTruthError, check_box, check_boxes
from services.reward.registry import Sample, register
from services.reward.text import answer_region

BOX_CHARS = 1 << 16

_NUM = r"\s*([-+]?(?:\d+(?:\.\d+)?|\.\d+))\s*"
_GROUP = re.compile(r"[\[(]" + ",".join([_NUM] * 4) + r"[\])]")
# A number not glued to a word on either side, so the "1" of "x1=10" is a name and "1e308" is not 1.
_ANY_NUMBER = re.compile(r"(?<![\w.])[-+]?(?:\d+(?:\.\d+)?|\.\d+)(?!\.?\w)")


def box_iou(a: Box, b: Box) -> float:
    """IoU of two boxes; 0 when either is invalid or the union is empty or not finite.

    >>> box_iou((0, 0, 10, 10), (5, 0, 15, 10))
    0.3333333333333333
    """
    if a[2] < a[0] or a[3] < a[1] or b[2] < b[0] or b[3] < b[1]:
        return 0.0
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    if not union > 0.0 or not math.isfinite(union) or not math.isfinite(inter):
        return 0.0
    return min(1.0, max(0.0, inter / union))


def read_boxes(text: str, limit: int) -> list[Box]:
    """The first ``limit`` bracketed four-number groups in ``text``.

    >>> read_boxes("frame 1: [1, 2, 3, 4]; frame 2: (5,6,7,8.5)", limit=5)
    [(1.0, 2.0, 3.0, 4.0), (5.0, 6.0, 7.0, 8.5)]
    """
    boxes = []
    for match in _GROUP.finditer(text):
        x1, y1, x2, y2 = (float(g) for g in match.groups())
        boxes.append((x1, y1, x2, y2))
        if len(boxes) >= limit:
            break
    return boxes


@register("bbox_iou")
def bbox_iou_reward(completion: str, sample: Sample) -> float:
    """IoU of the predicted box with ``extra["box"]``, or the mean per-frame IoU against ``extra["boxes"]``.

    >>> s = Sample(task="grounding", answer="", extra={"box": [0, 0, 10, 10]})
    >>> bbox_iou_reward("<think>…</think><answer>[5, 0, 15, 10]</answer>", s)
    0.3333333333333333
    >>> t = Sample(task="tracking", answer="", extra={"boxes": [[0, 0, 10, 10], [0, 0, 10, 10]]})
    >>> bbox_iou_reward("<answer>[[0, 0, 10, 10]]</answer>", t)  # the second frame is missing
    0.5
    """
    if "boxes" not in sample.extra and "box" not in sample.extra:
        raise ValueError("bbox sample needs extra['box'] = [x1, y1, x2, y2] or extra['boxes'] = [[...], ...]")
    targets: list[Box | None]
    try:
        if "boxes" in sample.extra:
            targets = list(check_boxes(sample.extra["boxes"]))
        else:
            targets = [check_box(sample.extra["box"])]
    except GroundTruthError as e:
        raise ValueError(f"bbox target {e}") from None
    text, cut = answer_region(completion, BOX_CHARS)
    if cut:
        return 0.0
    predicted = read_boxes(text, len(targets))
    if not predicted and "boxes" not in sample.extra:
        numbers = []
        for match in _ANY_NUMBER.finditer(text):
            numbers.append(float(match.group()))
            if len(numbers) > 4:
                break
        if len(numbers) == 4:
            predicted = [(numbers[0], numbers[1], numbers[2], numbers[3])]
    total = math.fsum(box_iou(p, t) for p, t in zip(predicted, targets, strict=False) if t is not None)
    return total / sum(t is not None for t in targets)
