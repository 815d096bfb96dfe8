"""services/common/dataset.py: the JSONL schema, its errors (file:line: field), typed ground truth on the wire,
and reverse-time expansion."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from services.common.dataset import DatasetError, Reverse, Row, load_rows, parse_row, rows_with_reverse
from services.common.ground_truth import GroundTruth
from services.common.pb.videorl.v1 import rollout_pb2 as pb

BASE = {"id": "a", "video": "v.mp4", "task": "mcq", "question": "Which way?", "options": ["left", "right"],
        "answer": "B"}


def write(tmp_path: Path, *rows: dict | str) -> Path:
    f = tmp_path / "d.jsonl"
    f.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return f


def one(tmp_path: Path, **fields) -> Row:
    (row,) = load_rows(write(tmp_path, {**BASE, **fields}))
    return row


def fails(tmp_path: Path, pattern: str, line: int = 1, **fields) -> None:
    rows = [BASE | {"id": f"ok{i}"} for i in range(line - 1)] + [{**BASE, **fields}]
    with pytest.raises(DatasetError, match=rf"d\.jsonl:{line}: .*{pattern}"):
        load_rows(write(tmp_path, *rows))


def truth_of(row: Row) -> GroundTruth:
    """The row's ground truth as an actor and the reward service read it from the wire."""
    return GroundTruth.from_proto(row.to_prompt("p1").truth)


def extra_of(row: Row) -> dict:
    """What rewards see of the row: its ground truth after the wire (Prompt.truth), as Sample.extra."""
    return GroundTruth.from_proto(row.to_prompt("p1").truth).target()


# ---- backward compatibility -------------------------------------------------------------------------


def test_existing_rows_and_constructors_still_work(tmp_path):
    row = one(tmp_path, split="eval", extra={"k": 1})
    assert (row.id, row.task, row.options, row.answer, row.split) == ("a", "mcq", ("left", "right"), "B", "eval")
    assert row.video == str(tmp_path / "v.mp4")  # relative to the JSONL's folder
    assert extra_of(row) == {"num_options": 2} and row.extra == {"k": 1}  # the row keeps its own extra
    positional = Row("r", "/v.mp4", "mcq", "q", "A", ("x", "y"))  # as tests/unit/test_learner_driver.py builds it
    assert positional.segment is None and positional.reverse is None and extra_of(positional) == {"num_options": 2}
    assert Row("r", "/v.mp4", "open", "q", "a").to_prompt("p").truth == pb.GroundTruth()


def test_answer_given_as_number_is_kept_as_text(tmp_path):
    assert one(tmp_path, task="numeric", options=[], answer=2.5).answer == "2.5"


def test_video_forms(tmp_path):
    assert one(tmp_path, video="/abs/v.webm").video == "/abs/v.webm"
    assert one(tmp_path, video="s3://bucket/v.mp4").video == "s3://bucket/v.mp4"  # a URI is kept verbatim
    assert one(tmp_path, video="frames/clip1").video == str(tmp_path / "frames/clip1")  # a folder of frames


# ---- errors name line and field ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "fields, pattern",
    [
        ({"task": "graph"}, "field 'task': 'graph' is not one of mcq, numeric, temporal, bbox, open, route"),
        ({"id": ""}, "field 'id' must be a non-empty string"),
        ({"options": "x"}, "'options' must be a list"),
        ({"options": ["only"]}, "field 'options': task mcq needs 2..26 options, got 1"),
        ({"options": [str(i) for i in range(27)]}, "needs 2..26 options, got 27"),
        ({"answer": "C"}, r"field 'answer': 'C' is not an option letter A..B"),
        ({"answer": "left"}, "field 'answer'"),
        ({"task": "numeric", "answer": "two"}, "field 'answer': task numeric needs a finite number"),
        ({"task": "numeric", "answer": "nan"}, "task numeric needs a finite number"),
        ({"task": "temporal", "duration": 10}, "field 'segment': task temporal needs"),
        ({"task": "temporal", "segment": [1, 2]}, "field 'duration': task temporal needs"),
        ({"task": "bbox"}, "field 'box': task bbox needs"),
        ({"segment": [3, 1]}, r"field 'segment' must have 0 <= start <= end"),
        ({"segment": [-1, 1]}, "0 <= start"),
        ({"segment": [0, float("inf")]}, "field 'segment' must be \\[start, end\\]"),
        ({"segment": [0, 1, 2]}, "field 'segment' must be"),
        ({"segments": []}, "field 'segments' must be a non-empty list"),
        ({"segments": [[0, 1], [2, "x"]]}, r"field 'segments\[1\]'"),
        ({"segment": [0, 11], "duration": 10}, "end 11.0 is past duration 10.0"),
        ({"duration": 0}, "field 'duration' must be a finite number of seconds > 0"),
        ({"box": [0, 0, 1]}, "field 'box' must be \\[x1, y1, x2, y2\\]"),
        ({"box": [5, 0, 1, 1]}, "x1 <= x2"),
        ({"boxes": [None, None]}, "at least one box"),
        ({"boxes": [[0, 0, 1, 1], [0, 0, True, 1]]}, r"field 'boxes\[1\]'"),
        ({"reference": 3}, "field 'reference' must be a string"),
        ({"extra": []}, "field 'extra' must be an object"),
        ({"extra": {"segment": [2, 1]}}, "field 'extra.segment'"),  # ground truth inside extra is checked too
        ({"split": 3}, "field 'split' must be a string"),
        ({"reverse": "x"}, "field 'reverse' must be an object"),
        ({"reverse": {"question": "q"}}, "field 'reverse.answer' must be a non-empty string"),
        ({"reverse": {"question": "q", "answer": "C"}}, "field 'reverse.answer': 'C' is not an option letter"),
        ({"reverse": {"question": "q", "answer": "A", "options": ["x"]}}, "field 'reverse.options'"),
    ],
)
def test_field_errors(tmp_path, fields, pattern):
    fails(tmp_path, pattern, line=2, **fields)


NODE = {"id": "a", "name": "red cube", "pos": [0, 0]}


@pytest.mark.parametrize(
    "graph, pattern",
    [
        ([], "field 'graph' must be an object"),
        ({"edges": []}, "field 'graph' must be an object"),
        ({"nodes": []}, r"field 'graph.nodes' must hold 1 to 64 nodes"),
        ({"nodes": [{"name": "a", "pos": [0, 0]}]}, r"field 'graph.nodes\[0\].id' must be a string or an integer"),
        ({"nodes": [NODE | {"id": 1}, NODE | {"id": 1}]}, r"field 'graph.nodes\[1\].id': duplicate node id '1'"),
        ({"nodes": [NODE | {"pos": [0]}]}, r"graph.nodes\[0\].pos"),
        ({"nodes": [{"id": "a", "name": "cube"}]}, r"field 'graph.nodes\[0\].pos' must be \[x, y\]"),  # the reward
        ({"nodes": [NODE | {"name": 5}]}, r"graph.nodes\[0\].name"),                            # needs both
        ({"nodes": [{"id": "a", "pos": [0, 0]}]}, r"field 'graph.nodes\[0\].name' must be a string"),
        ({"nodes": [NODE], "edges": [{"src": "a", "dst": "b", "rel": "left_of"}]},
         r"field 'graph.edges\[0\].dst': 'b' is not a declared node id"),
        ({"nodes": [NODE], "edges": [{"src": "a", "dst": "a"}]}, r"graph.edges\[0\].rel"),
        ({"nodes": [NODE], "keyframes": [{"t": 1, "nodes": [{"id": "z", "pos": [0, 0]}]}]},
         r"graph.keyframes\[0\].nodes\[0\]' must name a declared node"),
    ],
)
def test_graph_errors(tmp_path, graph, pattern):
    fails(tmp_path, pattern, graph=graph)


def test_file_level_errors(tmp_path):
    with pytest.raises(DatasetError, match=r"d\.jsonl:2: not valid JSON"):
        load_rows(write(tmp_path, BASE, "{nope"))
    with pytest.raises(DatasetError, match=r"d\.jsonl:2: field 'id': duplicate id 'a' \(first on line 1\)"):
        load_rows(write(tmp_path, BASE, BASE))
    with pytest.raises(DatasetError, match=r"d\.jsonl:1: expected a JSON object"):
        load_rows(write(tmp_path, "[1, 2]"))
    with pytest.raises(DatasetError, match="no rows"):
        load_rows(write(tmp_path, ""))
    with pytest.raises(DatasetError, match="cannot read"):
        load_rows(tmp_path / "absent.jsonl")
    (tmp_path / "bin.jsonl").write_bytes(b'{"id": "\xff"}\n')
    with pytest.raises(DatasetError, match=r"bin\.jsonl:1: not UTF-8"):
        load_rows(tmp_path / "bin.jsonl")


# ---- ground truth reaches rewards -------------------------------------------------------------------

GRAPH = {"nodes": [{"id": "n1", "name": "red cube", "pos": [0.1, 0.2]},
                   {"id": "n2", "name": "blue ball", "pos": [1, 2]}],
         "edges": [{"src": "n1", "dst": "n2", "rel": "left_of"}]}


def test_ground_truth_reaches_rewards_typed_under_fixed_keys(tmp_path):
    temporal = one(tmp_path, task="temporal", options=[], answer="2-4", segment=[2, 4], segments=[[2, 4], [6, 7.5]],
                   duration=8, extra={"fps": 2})
    # both given: the list wins, as the temporal rewards read it; the row's own extra stays with the row
    assert extra_of(temporal) == {"segments": [[2.0, 4.0], [6.0, 7.5]], "duration": 8.0}
    single = one(tmp_path, task="temporal", options=[], answer="2-4", segment=[2, 4], duration=8)
    assert extra_of(single) == {"segment": [2.0, 4.0], "duration": 8.0}
    bbox = one(tmp_path, task="bbox", options=[], answer="box", box=[1, 2, 3, 4], boxes=[None, [0, 0, 1, 1]])
    assert extra_of(bbox) == {"box": [1.0, 2.0, 3.0, 4.0], "boxes": [None, [0.0, 0.0, 1.0, 1.0]]}
    layout = one(tmp_path, graph=GRAPH, reference="the cube is left of the ball")
    assert extra_of(layout) == {"graph": GRAPH, "reference": "the cube is left of the ball", "num_options": 2}
    assert one(tmp_path, task="open", options=[], answer="x", graph=GRAPH).graph.as_json() == GRAPH
    route = one(tmp_path, task="route", options=[], answer="left, then right", reference="left, then right")
    assert extra_of(route) == {"reference": "left, then right"}


def test_ground_truth_in_extra_is_accepted_and_normalised(tmp_path):
    row = one(tmp_path, task="temporal", options=[], answer="1-2", extra={"segment": [1, 2], "duration": 5})
    assert row.segment == (1.0, 2.0) and row.duration == 5.0
    assert extra_of(row) == {"segment": [1.0, 2.0], "duration": 5.0}


def test_prompt_fields(tmp_path):
    p = one(tmp_path, split="eval").to_prompt("p7")
    assert (p.prompt_id, p.sample_id, p.task, p.answer, list(p.options), p.split) == (
        "p7", "a", "mcq", "B", ["left", "right"], "eval")


# ---- reverse-time variants --------------------------------------------------------------------------


def test_rows_with_reverse_expands_and_mirrors_time(tmp_path):
    rows = load_rows(write(
        tmp_path,
        {**BASE, "id": "plain"},
        {**BASE, "id": "mcq", "reverse": {"question": "Backwards, which way?", "answer": "A"}},
        {"id": "seg", "video": "v.mp4", "task": "temporal", "question": "When?", "answer": "1-3", "segment": [1, 3],
         "segments": [[1, 3]], "duration": 10, "boxes": [[0, 0, 1, 1], None], "extra": {"k": "v"},
         "reverse": {"question": "When, backwards?", "answer": "7-9"}},
        {**BASE, "id": "opts", "reverse": {"question": "q", "answer": "C", "options": ["a", "b", "c"]}},
    ))
    out = list(rows_with_reverse(rows))
    assert [r.id for r in out] == ["plain", "mcq", "mcq-rev", "seg", "seg-rev", "opts", "opts-rev"]
    mcq_rev = out[2]
    assert (mcq_rev.question, mcq_rev.answer, mcq_rev.options, mcq_rev.video) == (
        "Backwards, which way?", "A", ("left", "right"), rows[1].video)
    assert mcq_rev.reverse is None and extra_of(mcq_rev) == {"num_options": 2} and truth_of(mcq_rev).reverse_time
    seg_rev = out[4]
    assert seg_rev.segment == (7.0, 9.0) and seg_rev.segments == ((7.0, 9.0),) and seg_rev.duration == 10.0
    assert seg_rev.boxes == (None, (0.0, 0.0, 1.0, 1.0))
    assert truth_of(seg_rev).reverse_time is True and seg_rev.extra == {"k": "v", "reverse_time": True}
    assert not truth_of(out[3]).reverse_time and out[3].extra == {"k": "v"}  # the forward row is untouched
    assert out[6].options == ("a", "b", "c") and out[6].answer == "C"
    assert out[1].reverse == Reverse("Backwards, which way?", "A")


def test_parse_row_is_usable_directly():
    row = parse_row({**BASE, "video": "x.mp4"}, "mem:1", Path("/data"))
    assert row.video == "/data/x.mp4"
    with pytest.raises(DatasetError, match=re.escape("mem:1: missing field 'question'")):
        parse_row({k: v for k, v in BASE.items() if k != "question"}, "mem:1", Path("/data"))


# ---- reasoning (CoT-SFT) ----------------------------------------------------------------------------


def test_reasoning_is_optional_and_non_empty_when_given(tmp_path):
    assert one(tmp_path).reasoning == "" and one(tmp_path, reasoning=None).reasoning == ""
    row = one(tmp_path, reasoning="The cup moves left.")
    assert row.reasoning == "The cup moves left."
    assert "reasoning" not in str(row.to_prompt("p").truth)  # rewards never see it
    fails(tmp_path, "field 'reasoning' must be a non-empty string", reasoning="  ")
    fails(tmp_path, "field 'reasoning' must be a non-empty string", line=2, reasoning=["a"])
    fails(tmp_path, "field 'reverse.reasoning'", reverse={"question": "q", "answer": "A", "reasoning": ""})


def test_reverse_rows_take_their_own_reasoning_never_the_forward_one(tmp_path):
    rows = load_rows(write(
        tmp_path,
        {**BASE, "id": "own", "reasoning": "fwd", "reverse": {"question": "q", "answer": "A", "reasoning": "back"}},
        {**BASE, "id": "none", "reasoning": "fwd", "reverse": {"question": "q", "answer": "A"}},
    ))
    out = {r.id: r.reasoning for r in rows_with_reverse(rows)}
    assert out == {"own": "fwd", "own-rev": "back", "none": "fwd", "none-rev": ""}
