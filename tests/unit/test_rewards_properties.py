"""Property tests over every registered reward: whatever the completion, no exception escapes and the value
is in [0, 1] or NaN ("unscorable"). Completions: arbitrary unicode, tag soup (nested, unbalanced, repeated),
numbers and JSON fragments, broken JSON graphs, and megabyte texts."""

import json
import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.reward import catalogue as rewards

MB = 1 << 20
GRAPH = {
    "nodes": [{"id": "n1", "name": "red square", "pos": [0, 0]}, {"id": "n2", "name": "blue circle", "pos": [4, 0]},
              {"id": "n3", "name": "green triangle", "pos": [0, 3]}],
    "edges": [{"src": "n1", "dst": "n2", "rel": "left of"}, {"src": "n1", "dst": "n3", "rel": "below"}],
    "keyframes": [{"t": 0.5, "nodes": [{"id": "n1", "pos": [0, 0]}, {"id": "n2", "pos": [3, 1]}]}],
}

# Valid samples for each registered reward (several where a reward has several target shapes).
MCQ = rewards.Sample(task="mcq", answer="B", options=("turn left", "turn right", "go straight", "stop"))
SAMPLES: dict[str, list[rewards.Sample]] = {
    "format": [MCQ],
    "answer_format": [MCQ],
    "mcq": [MCQ, rewards.Sample(task="mcq", answer="c", extra={"num_options": 3})],
    "numeric_mra": [rewards.Sample(task="n", answer="10"), rewards.Sample(task="n", answer="0")],
    "numeric_exact": [rewards.Sample(task="n", answer="3")],
    "numeric_relative": [rewards.Sample(task="n", answer="-2.5"), rewards.Sample(task="n", answer="0")],
    "temporal_iou": [rewards.Sample(task="t", answer="", extra={"segment": [10, 20], "duration": 60}),
                     rewards.Sample(task="t", answer="", extra={"segments": [[0, 5], [10, 20]], "duration": 60})],
    "temporal_iou_time_r1": [rewards.Sample(task="t", answer="", extra={"segment": [10, 20], "duration": 60}),
                             rewards.Sample(task="t", answer="", extra={"segments": [[0, 0], [1, 2]], "duration": 3})],
    "bbox_iou": [rewards.Sample(task="b", answer="", extra={"box": [0, 0, 10, 10]}),
                 rewards.Sample(task="b", answer="", extra={"boxes": [[0, 0, 1, 1], [0, 0, 2, 2], [5, 5, 5, 5]]})],
    "graph": [rewards.Sample(task="g", answer="A", extra={"graph": GRAPH}),
              rewards.Sample(task="g", answer="A", extra={"graph": {"nodes": GRAPH["nodes"][:1]}})],
}
NAMES = sorted(rewards.REGISTRY)

PIECES = ["<think>", "</think>", "<answer>", "</answer>", "<think", "answer>", "</", "<", ">", "/", "(", ")", "[",
          "]", "{", "}", ",", ".", ":", "-", "−", " ", "\n", "\t", "A", "b", "B)", "Answer:", "option", "10", "8",
          "9.5", "1,234", "3,4", "1e999", "0:10", "1:02:03", "nan", "inf", "-0", ".5", "²", "３", "\x00", "\u200b",
          "\ud800", "🎥", "é", '"nodes"', '"pos"', '"id"', '"name"', '"edges"', '"src"', '"dst"', '"keyframes"',
          "null", "true", "NaN", "Infinity", '{"nodes": [', '{"id": "n1", "name": "red square", "pos": [0, 0]}',
          '{"src": "n1", "dst": "ghost"}', "[0, 0, 10, 10]", "[10, 20]", "9" * 400]
soup = st.lists(st.sampled_from(PIECES), max_size=60).map("".join)
mixed = st.lists(st.one_of(st.sampled_from(PIECES), st.text(max_size=8)), max_size=40).map("".join)


@st.composite
def broken_graphs(draw):
    """A valid graph JSON (or one holding a random value) in a think block, then cut, spliced or corrupted."""
    base = draw(st.sampled_from([GRAPH, {"scene_graph": GRAPH}, {"nodes": GRAPH["nodes"]}]))
    text = json.dumps(base)
    if draw(st.booleans()):
        value = draw(st.recursive(st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=5),
                                  lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=6), c,
                                                                                      max_size=4), max_leaves=12))
        text = text.replace('[0, 0]', json.dumps(value), 1) if draw(st.booleans()) else json.dumps(
            {"nodes": value, "edges": value})
    cut = draw(st.integers(min_value=0, max_value=len(text)))
    action = draw(st.sampled_from(["cut", "drop", "dup", "insert", "keep"]))
    if action == "cut":
        text = text[:cut]
    elif action == "drop":
        text = text[:cut] + text[cut + 1 :]
    elif action == "dup":
        text = text[:cut] + text[cut:] * 2
    elif action == "insert":
        text = text[:cut] + draw(st.sampled_from(PIECES)) + text[cut:]
    wrap = draw(st.sampled_from(["<think>{}</think><answer>A</answer>", "<think>{}", "{}", "<answer>{}</answer>"]))
    return wrap.replace("{}", text)


def check(name: str, completion: str) -> None:
    fn = rewards.get(name)
    for sample in SAMPLES[name]:
        value = fn(completion, sample)
        assert isinstance(value, float), (name, type(value))
        assert math.isnan(value) or 0.0 <= value <= 1.0, (name, value, completion[:200])


def test_every_registered_reward_has_property_samples():
    missing = sorted(set(rewards.REGISTRY) - set(SAMPLES))
    assert not missing, f"add samples for {missing} to SAMPLES so the property tests cover them"


@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=200, deadline=None)
@given(completion=st.text())
def test_arbitrary_unicode(name, completion):
    check(name, completion)


@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=200, deadline=None)
@given(completion=st.one_of(soup, mixed))
def test_tag_soup_numbers_and_fragments(name, completion):
    check(name, completion)


@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=150, deadline=None)
@given(completion=broken_graphs())
def test_broken_json(name, completion):
    check(name, completion)


@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(unit=st.one_of(soup, st.text(min_size=1, max_size=20)).filter(bool), layout=st.sampled_from(range(6)))
def test_megabyte_completions(name, unit, layout):
    body = unit * (MB // len(unit) + 1)
    completion = [
        body,
        f"<think>{body}</think><answer>{unit}</answer>",
        f"<think>x</think><answer>{body}</answer>",
        f"<think>{body}",
        "<think>" * (MB // 7) + body[:1000],
        "<answer>" + "{" * MB,
    ][layout]
    check(name, completion)


@pytest.mark.parametrize("name", NAMES)
def test_fixed_nasty_inputs(name):
    nasty = [
        "",
        "\ud800\udfff",
        bytes(range(256)).decode("latin-1"),
        "<think>" * 1000 + "</think>" * 999 + "<answer>" * 3,
        "</answer></think><answer><think>",
        '<think>{"nodes": ' + "[" * 5000 + "</think>",
        '<think>{"a":' * 20000 + "</think>",
        "<answer>" + "1:" * 20000 + "</answer>",
        "<answer>" + "9" * 100_000 + "</answer>",
        "<answer>[" + "1," * 30_000 + "]</answer>",
        "<answer>" + "(" * MB + "</answer>",
        json.dumps({"nodes": [{"id": i, "name": "x", "pos": [i, i]} for i in range(500)]}),  # too many nodes
    ]
    for completion in nasty:
        check(name, completion)
