"""services/common/ground_truth.py: typed ground truth survives the wire, and the dataset reader and the rewards
refuse exactly the same targets (one set of rules)."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.common.dataset import DatasetError, parse_row
from services.common.ground_truth import GraphEdge, GraphNode, GroundTruth, Keyframe, SceneGraph
from services.reward.catalogue import Sample, get

FULL = GroundTruth(
    segments=((1.0, 2.5), (4.0, 6.0)), duration=8.0, box=(0.0, 0.1, 0.5, 0.6), boxes=((0, 0, 1, 1), None),
    graph=SceneGraph((GraphNode("a", "red cube", (0.0, 1.0)), GraphNode("7", "blue ball", (2.0, 1.0))),
                     (GraphEdge("a", "7", "left of"),), (Keyframe(1.5, (("a", (0.5, 1.0)),)),)),
    reference="left, then right", num_options=4, reverse_time=True, synth_task="route")


def test_every_field_survives_the_wire():
    assert GroundTruth.from_proto(FULL.to_proto()) == FULL
    single = GroundTruth(segments=((1.0, 2.0),), single_segment=True, duration=3.0)
    assert GroundTruth.from_proto(single.to_proto()).target() == {"segment": [1.0, 2.0], "duration": 3.0}
    assert GroundTruth.from_proto(GroundTruth().to_proto()) == GroundTruth()


ROW = {"id": "r", "video": "v.mp4", "question": "q", "answer": "x", "options": []}
GRAPH_NODE = {"id": "a", "name": "cube", "pos": [0, 0]}
# (row task, reward, target): each target breaks one rule
BAD = [
    ("temporal", "temporal_iou", {"segment": [3, 1], "duration": 5}),
    ("temporal", "temporal_iou", {"segment": [-1, 1], "duration": 5}),
    ("temporal", "temporal_iou", {"segments": [[0, 1], [2, float("inf")]], "duration": 5}),
    ("temporal", "temporal_iou_time_r1", {"segment": [1, 2], "duration": 0}),
    ("bbox", "bbox_iou", {"box": [1, 0, 0, 1]}),
    ("bbox", "bbox_iou", {"boxes": [None]}),
    ("open", "graph", {"graph": {"nodes": [{"id": "a", "name": "cube"}]}}),
    ("open", "graph", {"graph": {"nodes": [GRAPH_NODE], "edges": [{"src": "a", "dst": "b", "rel": "on"}]}}),
    ("open", "graph", {"graph": {"nodes": [GRAPH_NODE, GRAPH_NODE]}}),
]


@pytest.mark.parametrize("task, reward, target", BAD, ids=[f"{r}-{i}" for i, (_, r, _) in enumerate(BAD)])
def test_the_dataset_and_the_rewards_refuse_the_same_targets(task, reward, target):
    with pytest.raises(DatasetError, match=r"d.jsonl:1: field '"):
        parse_row({**ROW, "task": task, **target}, "d.jsonl:1", Path("."))
    with pytest.raises(ValueError, match="field '"):
        get(reward)("<answer>1 2</answer>", Sample(task=task, answer="", extra=target))


def test_a_target_the_dataset_accepts_scores():
    graph = {"nodes": [GRAPH_NODE, {"id": 2, "name": "ball", "pos": [1, 0]}], "edges": [{"src": "a", "dst": 2,
                                                                                         "rel": "left of"}]}
    for task, reward, target in [("temporal", "temporal_iou", {"segment": [0, 2], "duration": 4}),
                                 ("bbox", "bbox_iou", {"boxes": [[0, 0, 1, 1], None]}),
                                 ("open", "graph", {"graph": graph})]:
        row = parse_row({**ROW, "task": task, **target}, "d.jsonl:1", Path("."))
        sent = GroundTruth.from_proto(row.to_prompt("p").truth).target()
        assert 0.0 <= get(reward)("<answer>[0, 0, 1, 1]</answer>", Sample(task=task, answer="", extra=sent)) <= 1.0
