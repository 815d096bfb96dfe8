"""The Video-STR graph-topology reward: extraction, schema, invariance under similarity transforms, ranking."""

import doctest
import json
import math

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from services.reward import graph
from services.reward.graph import find_graph, graph_reward, graph_score, parse_graph
from services.reward.registry import Sample

MB = 1 << 20
NAMES = ["red square", "blue circle", "green triangle", "yellow star", "purple hexagon", "orange diamond"]

GT = {
    "nodes": [
        {"id": "n1", "name": "red square", "pos": [0, 0]},
        {"id": "n2", "name": "blue circle", "pos": [4, 0]},
        {"id": "n3", "name": "green triangle", "pos": [0, 3]},
        {"id": "n4", "name": "yellow star", "pos": [5, 4]},
    ],
    "edges": [
        {"src": "n1", "dst": "n2", "rel": "left of"},
        {"src": "n1", "dst": "n3", "rel": "below"},
        {"src": "n3", "dst": "n4", "rel": "left of"},
    ],
}
SAMPLE = Sample(task="graph", answer="A", extra={"graph": GT})


def think(obj) -> str:
    return f"<think>The objects: {json.dumps(obj)} so it turns left.</think><answer>A</answer>"


def with_positions(g: dict, positions: list[list[float]]) -> dict:
    return {**g, "nodes": [{**n, "pos": p} for n, p in zip(g["nodes"], positions, strict=True)]}


def similarity(points, angle: float, scale: float, dx: float, dy: float) -> list[list[float]]:
    c, s = math.cos(angle), math.sin(angle)
    return [[scale * (c * x - s * y) + dx, scale * (s * x + c * y) + dy] for x, y in points]


def test_docstring_examples_hold():
    assert doctest.testmod(graph).failed == 0


def test_the_true_graph_scores_one():
    assert graph_reward(think(GT), SAMPLE) == pytest.approx(1.0)
    # node order and ids do not matter, names and positions do
    renamed = {
        "nodes": [{**n, "id": f"x{i}"} for i, n in reversed(list(enumerate(GT["nodes"])))],
        "edges": [{"src": "x0", "dst": "x1", "rel": "left of"}, {"src": "x0", "dst": "x2", "rel": "below"},
                  {"src": "x2", "dst": "x3", "rel": "left of"}],
    }
    assert graph_reward(think(renamed), SAMPLE) == pytest.approx(1.0)


def test_rotated_moved_and_scaled_layout_scores_one():
    points = [n["pos"] for n in GT["nodes"]]
    moved = with_positions(GT, similarity(points, angle=2.0, scale=37.0, dx=-500.0, dy=12.5))
    assert graph_reward(think(moved), SAMPLE) == pytest.approx(1.0)


def test_wrong_layouts_score_lower():
    points = [n["pos"] for n in GT["nodes"]]
    mirrored = with_positions(GT, [[-x, y] for x, y in points])  # a mirror image is no rotation
    swapped = with_positions(GT, [points[1], points[0], points[2], points[3]])
    collapsed = with_positions(GT, [[0, 0], [1, 0], [2, 0], [3, 0]])
    wrong_rel = {**GT, "edges": [{**e, "rel": "far from"} for e in GT["edges"]]}
    reversed_edges = {**GT, "edges": [{**e, "src": e["dst"], "dst": e["src"]} for e in GT["edges"]]}
    wrong_names = {**GT, "nodes": [{**n, "name": "thing"} for n in GT["nodes"]]}
    perfect = graph_reward(think(GT), SAMPLE)
    for name, wrong in [("mirrored", mirrored), ("swapped", swapped), ("collapsed", collapsed),
                        ("wrong relations", wrong_rel), ("reversed edges", reversed_edges),
                        ("wrong names", wrong_names)]:
        value = graph_reward(think(wrong), SAMPLE)
        assert 0.0 <= value < perfect - 0.05, name


def test_missing_and_extra_nodes_and_edges_cost():
    fewer = {"nodes": GT["nodes"][:2], "edges": GT["edges"][:1]}
    more = {"nodes": GT["nodes"] + [{"id": "n9", "name": "orange diamond", "pos": [9, 9]}], "edges": GT["edges"]}
    no_edges = {"nodes": GT["nodes"]}
    extra_edges = {**GT, "edges": GT["edges"] + [{"src": "n2", "dst": "n4", "rel": "below"}]}
    for g in (fewer, more, no_edges, extra_edges):
        assert graph_reward(think(g), SAMPLE) < 0.95
    # no edges at all: the edge part is 0, the node part perfect
    assert graph_reward(think(no_edges), SAMPLE) == pytest.approx(0.5)
    # one extra edge of four: edge part 3/4
    assert graph_reward(think(extra_edges), SAMPLE) == pytest.approx((1 + 3 / 4) / 2)


def test_broken_parts_score_zero_for_that_part_only():
    undeclared = {**GT, "edges": GT["edges"] + [{"src": "n1", "dst": "ghost", "rel": "near"}]}
    assert graph_reward(think(undeclared), SAMPLE) == pytest.approx(0.5)  # nodes perfect, edges 0
    malformed_edge = {**GT, "edges": [*GT["edges"], "n1 -> n2"]}
    assert graph_reward(think(malformed_edge), SAMPLE) == pytest.approx(0.5)
    for nodes in (
        [{"id": "n1", "name": "red square"}],  # no pos
        [{"id": "n1", "name": "red square", "pos": [0]}],
        [{"id": "n1", "name": "red square", "pos": [0, "1"]}],
        [{"id": "n1", "name": "a", "pos": [0, 0]}, {"id": "n1", "name": "b", "pos": [1, 1]}],  # duplicate id
        [{"id": None, "name": "a", "pos": [0, 0]}],
        [{"id": "n1", "name": 3, "pos": [0, 0]}],
        [],
        "n1 n2",
    ):
        assert graph_reward(think({"nodes": nodes, "edges": []}), SAMPLE) == 0.0, nodes


@pytest.mark.parametrize(
    "completion",
    [
        "",
        "<think></think><answer>A</answer>",
        '<think>{"nodes": [</think><answer>A</answer>',
        '<think>{"nodes": [{"id": "n1", "name": "red square", "pos": [0, 0]},]}</think>',  # trailing comma
        "<think>{'nodes': []}</think>",  # python, not JSON
        '<think>{"nodes": NaN}</think>',
        '<think>{"nodes": [{"id": "n1", "name": "red square", "pos": [NaN, 0]}]}</think>',
        '<think>{"nodes": [{"id": "n1", "name": "red square", "pos": [' + "9" * 5000 + ", 0]}]}</think>",
        # an integer JSON parses but no float holds (found by test_rewards_properties)
        '<think>{"nodes": [{"id": "n1", "name": "red square", "pos": [0, ' + "9" * 400 + "]}]}</think>",
        "<think>" + '{"a":' * 100_000 + "</think>",
        "<think>" + "{" * MB + "</think>",
        "<think>" + '{"nodes": [' * 50_000 + "</think>",
        '{"nodes": [{"id": "n1", "name": "red square", "pos": [0, 0]}' + "]" * MB,
    ],
)
def test_broken_json_scores_zero(completion):
    assert graph_reward(completion, SAMPLE) == 0.0


def test_keyframes_at_a_time_no_float_holds_are_dropped_and_the_rest_is_scored():
    nodes = '{"nodes": [{"id": "n1", "name": "red square", "pos": [0, 0]}]'
    keyframes = ', "keyframes": [{"t": ' + "9" * 400 + ', "nodes": [{"id": "n1", "pos": [0, 0]}]}]'
    plain = graph_reward(f"<think>{nodes}}}</think>", SAMPLE)
    assert graph_reward(f"<think>{nodes}{keyframes}}}</think>", SAMPLE) == plain > 0.0


def test_extraction_finds_the_last_top_level_graph():
    early = {"nodes": [{"id": "z", "name": "orange diamond", "pos": [0, 0]}]}
    text = f"<think>first guess {json.dumps(early)}; better: ```json\n{json.dumps(GT)}\n```</think><answer>A</answer>"
    assert find_graph(text) == GT
    # a keyframe object has a nodes key too, but it sits inside the graph
    with_kf = {**GT, "keyframes": [{"t": 1.0, "nodes": [{"id": "n1", "pos": [0, 0]}]}]}
    assert find_graph(think(with_kf)) == with_kf
    # a wrapper one level up is looked through
    assert find_graph(think({"scene_graph": GT})) == GT
    # no think block: anywhere in the text
    assert find_graph(f"graph: {json.dumps(GT)} answer A") == GT
    # a graph in the answer block is not in the thinking
    assert find_graph(f"<think>none</think><answer>{json.dumps(GT)}</answer>") is None
    # an unclosed think block ends at <answer>
    assert find_graph(f"<think>{json.dumps(GT)} <answer>{json.dumps(early)}</answer>") == GT


def test_extraction_reads_only_the_tail_of_a_huge_thinking():
    filler = "the red square slides left. " * (MB // 28)
    assert graph_reward(f"<think>{filler}{json.dumps(GT)}</think><answer>A</answer>", SAMPLE) == pytest.approx(1.0)
    assert graph_reward(f"<think>{json.dumps(GT)}{filler}</think><answer>A</answer>", SAMPLE) == 0.0


def test_keyframes():
    kf_gt = {**GT, "keyframes": [
        {"t": 0.0, "nodes": [{"id": "n1", "pos": [0, 0]}, {"id": "n2", "pos": [4, 0]}, {"id": "n3", "pos": [0, 3]}]},
        {"t": 2.0, "nodes": [{"id": "n1", "pos": [1, 0]}, {"id": "n2", "pos": [4, 1]}, {"id": "n3", "pos": [0, 5]}]},
    ]}
    sample = Sample(task="graph", answer="A", extra={"graph": kf_gt})
    assert graph_reward(think(kf_gt), sample) == pytest.approx(1.0)
    # each keyframe may be moved, rotated and scaled on its own
    moved = {**kf_gt, "keyframes": [
        {"t": k["t"], "nodes": [{"id": n["id"], "pos": p} for n, p in zip(
            k["nodes"], similarity([n["pos"] for n in k["nodes"]], 1.0 + i, 3.0, 7.0, -2.0), strict=True)]}
        for i, k in enumerate(kf_gt["keyframes"])]}
    assert graph_reward(think(moved), sample) == pytest.approx(1.0)
    # keyframes missing: K = 0 -> (1 + 1 + 0) / 3
    assert graph_reward(think(GT), sample) == pytest.approx(2 / 3)
    # one of two keyframes: K = 1/2
    half = {**kf_gt, "keyframes": kf_gt["keyframes"][:1]}
    assert graph_reward(think(half), sample) == pytest.approx((1 + 1 + 0.5) / 3)
    # a keyframe node that was never declared breaks the keyframe part only
    ghost = {**kf_gt, "keyframes": [{"t": 0.0, "nodes": [{"id": "ghost", "pos": [0, 0]}]}]}
    assert graph_reward(think(ghost), sample) == pytest.approx(2 / 3)
    # ground truth without keyframes ignores the predicted ones
    assert graph_reward(think(kf_gt), SAMPLE) == pytest.approx(1.0)


@pytest.mark.parametrize(
    "bad",
    [None, {}, {"nodes": []}, {"nodes": "x"}, {**GT, "edges": [{"src": "n1", "dst": "nope", "rel": "x"}]},
     {**GT, "keyframes": "x"}, {"nodes": [{"id": "a", "name": "b", "pos": [0, float("inf")]}]}],
)
def test_malformed_ground_truth_raises(bad):
    with pytest.raises(ValueError, match="invalid graph"):
        graph_reward(think(GT), Sample(task="graph", answer="A", extra={"graph": bad}))


# ------------------------------------------------------------------------------------ invariance (hypothesis)

coords = st.floats(min_value=-10.0, max_value=10.0, allow_nan=False)
points_st = st.lists(st.tuples(coords, coords), min_size=2, max_size=len(NAMES))


def _spread(points) -> bool:
    """Points far enough apart, and far enough from degenerate, that matching has no near-ties."""
    for i, (x1, y1) in enumerate(points):
        for x2, y2 in points[i + 1 :]:
            if math.hypot(x1 - x2, y1 - y2) < 0.5:
                return False
    return True


def _similar(a, b) -> bool:
    """Whether some rotation, uniform scale and translation maps the points ``a`` onto ``b`` (least squares)."""
    za, zb = [complex(x, y) for x, y in a], [complex(x, y) for x, y in b]
    ca, cb = sum(za) / len(za), sum(zb) / len(zb)
    za, zb = [z - ca for z in za], [z - cb for z in zb]
    k = sum(x.conjugate() * y for x, y in zip(za, zb, strict=True)) / sum(abs(x) ** 2 for x in za)
    residual = sum(abs(y - k * x) ** 2 for x, y in zip(za, zb, strict=True))
    return residual < 1e-3 * sum(abs(y) ** 2 for y in zb)


@st.composite
def graphs(draw, points=None):
    pts = points if points is not None else draw(points_st)
    names = draw(st.permutations(NAMES))[: len(pts)]
    nodes = [{"id": f"n{i}", "name": names[i], "pos": list(p)} for i, p in enumerate(pts)]
    pairs = [(i, j) for i in range(len(pts)) for j in range(len(pts)) if i != j]
    chosen = draw(st.lists(st.sampled_from(pairs), max_size=8, unique=True))
    rels = ["left of", "right of", "above", "below", "near"]
    edges = [{"src": f"n{i}", "dst": f"n{j}", "rel": draw(st.sampled_from(rels))} for i, j in chosen]
    return {"nodes": nodes, "edges": edges}


transforms = st.tuples(
    st.floats(min_value=-math.pi, max_value=math.pi),  # angle
    st.floats(min_value=0.01, max_value=100.0),  # scale
    st.floats(min_value=-1000.0, max_value=1000.0),  # dx
    st.floats(min_value=-1000.0, max_value=1000.0),  # dy
)


@settings(max_examples=150, deadline=None)
@given(truth=graphs(), pred=graphs(), transform=transforms)
def test_score_is_invariant_under_similarity_transforms(truth, pred, transform):
    pred_points = [n["pos"] for n in pred["nodes"]]
    assume(_spread(pred_points) and _spread([n["pos"] for n in truth["nodes"]]))
    moved = with_positions(pred, similarity(pred_points, *transform))
    sample = Sample(task="graph", answer="A", extra={"graph": truth})
    before, after = graph_reward(think(pred), sample), graph_reward(think(moved), sample)
    assert 0.0 <= before <= 1.0
    assert after == pytest.approx(before, abs=1e-6)


@settings(max_examples=100, deadline=None)
@given(truth=graphs(), transform=transforms, data=st.data())
def test_a_transformed_truth_scores_one_and_a_shuffled_layout_lower(truth, transform, data):
    points = [n["pos"] for n in truth["nodes"]]
    assume(_spread(points))
    sample = Sample(task="graph", answer="A", extra={"graph": truth})
    moved = with_positions(truth, similarity(points, *transform))
    assert graph_reward(think(moved), sample) == pytest.approx(1.0, abs=1e-9)
    # the same names on a different layout: positions (and edge geometry) no longer agree
    order = data.draw(st.permutations(range(len(points))))
    assume(not _similar(points, [points[i] for i in order]))  # e.g. swapping two nodes is a 180° turn
    shuffled = with_positions(truth, [points[i] for i in order])
    assert graph_reward(think(shuffled), sample) < 1.0 - 1e-6


def test_a_symmetric_tie_is_broken_the_same_way_after_a_transform():
    # Two nodes, no name in common: both matchings cost the same, and only one makes the edge line up.
    # Rounding error once broke the tie differently for the rotated layout (0.75 vs 0.25).
    truth = {"nodes": [{"id": "n0", "name": "green triangle", "pos": [0.0, 0.0]},
                       {"id": "n1", "name": "yellow star", "pos": [0.0, 1.0]}],
             "edges": [{"src": "n0", "dst": "n1", "rel": "left of"}]}
    pred = {"nodes": [{"id": "n0", "name": "red square", "pos": [1.0, 4.0]},
                      {"id": "n1", "name": "blue circle", "pos": [2.0, -1.0]}],
            "edges": [{"src": "n0", "dst": "n1", "rel": "left of"}]}
    sample = Sample(task="graph", answer="A", extra={"graph": truth})
    moved = with_positions(pred, similarity([n["pos"] for n in pred["nodes"]], 1.25, 76.0625, 0.0, 0.0))
    assert graph_reward(think(moved), sample) == pytest.approx(graph_reward(think(pred), sample))


def test_score_directly_on_parsed_graphs():
    gt, pred = parse_graph(GT), parse_graph(with_positions(GT, [[0, 0], [0, 4], [-3, 0], [-4, 5]]))  # rotated 90°
    assert graph_score(gt, pred) == pytest.approx(1.0)
