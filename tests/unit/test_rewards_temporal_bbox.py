"""temporal_iou, temporal_iou_time_r1 and bbox_iou: hand-derived values and edge cases."""

import doctest

import pytest

from services.reward import bbox, temporal
from services.reward.bbox import bbox_iou_reward, box_iou
from services.reward.registry import Sample
from services.reward.temporal import read_times, segments_iou, temporal_iou_reward, temporal_iou_time_r1_reward

MB = 1 << 20
SEG = Sample(task="tvg", answer="", extra={"segment": [10.0, 20.0], "duration": 100.0})


def test_docstring_examples_hold():
    assert doctest.testmod(temporal).failed == 0
    assert doctest.testmod(bbox).failed == 0


# --------------------------------------------------------------------------------------------- temporal


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ("10 - 20", 1.0),
        ("[10.0, 20.0]", 1.0),
        ("from 10s to 20s", 1.0),
        ("0:10 to 0:20", 1.0),  # clock times
        ("15 to 25", 5 / 15),  # inter [15,20] = 5, union [10,25] = 15
        ("12.5-20", 0.75),  # a range, not 12.5 and -20: inter 7.5 / union 10
        ("12.5 20", 0.75),  # "start end", as the synthetic suite's questions ask
        ("0 to 40", 10 / 40),  # the prediction contains the truth
        ("12 to 18", 6 / 10),  # the truth contains the prediction
        ("20 to 30", 0.0),  # touching: no overlap
        ("30 to 40", 0.0),
        ("20 to 10", 0.0),  # ends before it starts
        ("15 to 15", 0.0),  # zero length
        ("10 to 20 and then 50 to 60", 1.0),  # one target segment: only the first two times count
        ("15", 0.0),  # one time is no segment
        ("", 0.0),
        ("ten to twenty", 0.0),
    ],
)
def test_temporal_iou_values(answer, expected):
    assert temporal_iou_reward(f"<think>t</think><answer>{answer}</answer>", SEG) == pytest.approx(expected, abs=1e-12)


def test_clock_times():
    assert read_times("1:05, 1:02:03.5 and .5") == [65.0, 3723.5, 0.5]


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        # Time-R1: tIoU · (1 − |s−s'|/T) · (1 − |e−e'|/T), T = 100, truth [10, 20]
        ("10 to 20", 1.0),
        ("12 to 20", 0.8 * 0.98 * 1.0),
        ("15 to 25", (5 / 15) * 0.95 * 0.95),
        ("5 to 25", 0.5 * 0.95 * 0.95),
        ("30 to 40", 0.0),  # no overlap: tIoU 0
    ],
)
def test_time_r1_values(answer, expected):
    assert temporal_iou_time_r1_reward(f"<answer>{answer}</answer>", SEG) == pytest.approx(expected, abs=1e-12)


def test_time_r1_prefers_closer_boundaries_at_equal_iou():
    long = Sample(task="tvg", answer="", extra={"segment": [40, 60], "duration": 100})
    # both have IoU 0.5 (overlap 10 / union 20 for a 10 s shift), but penalties differ with offset size
    shifted = temporal_iou_time_r1_reward("<answer>45 to 65</answer>", long)  # IoU 15/25 = 0.6
    inside = temporal_iou_time_r1_reward("<answer>45 to 55</answer>", long)  # IoU 10/20 = 0.5
    assert shifted == pytest.approx(0.6 * 0.95 * 0.95)
    assert inside == pytest.approx(0.5 * 0.95 * 0.95)
    wide = Sample(task="tvg", answer="", extra={"segment": [10, 20], "duration": 20})
    far = temporal_iou_time_r1_reward("<answer>0 to 40</answer>", wide)  # end 20 s off = T: factor clipped at 0
    assert far == 0.0


def test_multi_segment_union_iou():
    multi = Sample(task="tvg", answer="", extra={"segments": [[0, 10], [20, 30]], "duration": 60})
    assert temporal_iou_reward("<answer>[0, 10], [20, 30]</answer>", multi) == 1.0
    assert temporal_iou_reward("<answer>[20, 30], [0, 10]</answer>", multi) == 1.0  # order is free
    # one of two: inter 10 / union 20
    assert temporal_iou_reward("<answer>[0, 10]</answer>", multi) == 0.5
    # one segment covering both: inter 20 / union 30
    assert temporal_iou_reward("<answer>[0, 30]</answer>", multi) == pytest.approx(2 / 3)
    # overlapping predicted segments are merged: [0, 12] ∪ [5, 10] = [0, 12]; inter 10 / union 22
    assert temporal_iou_reward("<answer>[0, 12], [5, 10]</answer>", multi) == pytest.approx(10 / 22)
    assert temporal_iou_reward("<answer>[0, 10], [20]</answer>", multi) == 0.0  # odd count of times
    assert temporal_iou_reward("<answer>[0, 10], [30, 20]</answer>", multi) == 0.0  # a reversed segment
    # Time-R1 over several segments uses the earliest start and the latest end
    value = temporal_iou_time_r1_reward("<answer>[0, 10], [20, 36]</answer>", multi)
    assert value == pytest.approx((20 / 26) * 1.0 * (1 - 6 / 60))


def test_segments_iou_direct():
    assert segments_iou([(0.0, 0.0)], [(0.0, 0.0)]) == 0.0  # empty union
    assert segments_iou([(0.0, 1e308), (-1e308, 0.0)], [(0.0, 1.0)]) == pytest.approx(1 / 2e308, abs=1e-300)


@pytest.mark.parametrize(
    "extra",
    [
        {},
        {"segment": [20, 10]},
        {"segment": [1, 2, 3]},
        {"segment": "10-20"},
        {"segment": [float("nan"), 2]},
        {"segment": [True, 2]},
        {"segments": []},
        {"segments": [[0, 1], [5]]},
    ],
)
def test_malformed_temporal_target_raises(extra):
    with pytest.raises(ValueError, match="temporal"):
        temporal_iou_reward("<answer>0 to 1</answer>", Sample(task="tvg", answer="", extra=extra))


@pytest.mark.parametrize("duration", [None, 0, -5, float("inf"), "60"])
def test_time_r1_needs_a_duration(duration):
    with pytest.raises(ValueError, match="duration"):
        temporal_iou_time_r1_reward("<answer>0 to 1</answer>", Sample(task="t", answer="", extra={"segment": [0, 1],
                                                                                           "duration": duration}))


def test_temporal_on_megabyte_completions():
    filler = "at 3.5 s the cup moves, at 7 s it stops. " * (MB // 41)
    assert temporal_iou_reward(f"<think>{filler}</think><answer>10 to 20</answer>", SEG) == 1.0
    assert temporal_iou_reward(f"<answer>{filler} 10 to 20</answer>", SEG) == 0.0  # cut: beginning lost
    assert temporal_iou_reward("<answer>" + "9" * MB + " 20</answer>", SEG) == 0.0
    assert temporal_iou_time_r1_reward("<answer>" + "1:" * (MB // 2) + "</answer>", SEG) == 0.0


# ------------------------------------------------------------------------------------------------- bbox

BOX = Sample(task="grounding", answer="", extra={"box": [0, 0, 10, 10]})


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ("[0, 0, 10, 10]", 1.0),
        ("(0,0,10,10)", 1.0),
        ('{"bbox_2d": [0.0, 0.0, 10.0, 10.0], "label": "cup"}', 1.0),
        ("[5, 0, 15, 10]", 50 / 150),  # inter 5x10 = 50, union 100 + 100 - 50
        ("[5, 5, 15, 15]", 25 / 175),
        ("[0, 0, 5, 5]", 25 / 100),  # inside
        ("[-10, -10, 20, 20]", 100 / 900),  # around
        ("[10, 0, 20, 10]", 0.0),  # touching edge
        ("[10, 10, 0, 0]", 0.0),  # x2 < x1: invalid
        ("[0, 0, 0, 10]", 0.0),  # zero width
        ("x1=0, y1=0, x2=5, y2=10", 0.5),  # no brackets but exactly four numbers
        ("0 0.0 5 10.", 0.5),  # "x1 y1 x2 y2", as the synthetic suite's questions ask
        ("1e1 0 5 10", 0.0),  # "1e1" is not a stand-alone number: three numbers only
        ("0 0 5 10 or 1 1 5 5", 0.0),  # no brackets and eight numbers
        ("[0, 0, 10]", 0.0),
        ("", 0.0),
    ],
)
def test_bbox_iou_values(answer, expected):
    assert bbox_iou_reward(f"<think>b</think><answer>{answer}</answer>", BOX) == pytest.approx(expected, abs=1e-12)


def test_tracking_averages_over_frames_and_missing_frames_count_zero():
    track = Sample(task="tracking", answer="", extra={"boxes": [[0, 0, 10, 10], [10, 0, 20, 10], [20, 0, 30, 10]]})
    assert bbox_iou_reward("<answer>[[0,0,10,10],[10,0,20,10],[20,0,30,10]]</answer>", track) == 1.0
    # frame 2 half off: (1 + 1/3 + 1) / 3
    assert bbox_iou_reward("<answer>[0,0,10,10] [15,0,25,10] [20,0,30,10]</answer>", track) == pytest.approx(7 / 9)
    # only two frames answered: (1 + 1 + 0) / 3
    assert bbox_iou_reward("<answer>[0,0,10,10] [10,0,20,10]</answer>", track) == pytest.approx(2 / 3)
    # extra boxes are ignored
    assert bbox_iou_reward("<answer>[0,0,10,10] [10,0,20,10] [20,0,30,10] [0,0,1,1]</answer>", track) == 1.0
    # the four-number fallback is for a single box only
    assert bbox_iou_reward("<answer>0 0 10 10</answer>", track) == 0.0


def test_box_iou_never_overflows_into_nan():
    huge = (-1e308, -1e308, 1e308, 1e308)
    assert box_iou(huge, (0.0, 0.0, 1.0, 1.0)) == 0.0
    assert bbox_iou_reward("<answer>[-1e308, 0, 1e308, 1]</answer>", BOX) == 0.0
    assert bbox_iou_reward("<answer>[0, 0, " + "9" * 400 + ", 10]</answer>", BOX) == 0.0


@pytest.mark.parametrize(
    "extra",
    [{}, {"box": [0, 0, 1]}, {"box": [1, 1, 0, 0]}, {"box": "0 0 1 1"}, {"box": [0, 0, 1, float("nan")]},
     {"boxes": []}, {"boxes": [None, None]}],
)
def test_malformed_bbox_target_raises(extra):
    with pytest.raises(ValueError, match="bbox"):
        bbox_iou_reward("<answer>[0, 0, 1, 1]</answer>", Sample(task="g", answer="", extra=extra))


def test_bbox_on_megabyte_completions():
    filler = "the cup at [1, 2, 3, 4] moves. " * (MB // 31)
    assert bbox_iou_reward(f"<think>{filler}</think><answer>[0, 0, 10, 10]</answer>", BOX) == 1.0
    assert bbox_iou_reward(f"<answer>{filler}</answer>", BOX) == 0.0  # longer than BOX_CHARS: cut
    assert bbox_iou_reward("<answer>" + "[" * MB + "0, 0, 10, 10]</answer>", BOX) == 0.0


def test_frames_without_the_object_are_left_out_of_the_tracking_mean():
    """A null box (the object is not in that frame) is valid ground truth, as the dataset reader accepts it: the mean
    IoU is over the frames that hold the object, and a box predicted for an empty frame is ignored."""
    s = Sample(task="tracking", answer="", extra={"boxes": [[0, 0, 10, 10], None, [0, 0, 10, 10]]})
    assert bbox_iou_reward("<answer>[0, 0, 10, 10] [5, 5, 6, 6] [0, 0, 10, 10]</answer>", s) == 1.0
    assert bbox_iou_reward("<answer>[0, 0, 10, 10]</answer>", s) == 0.5
