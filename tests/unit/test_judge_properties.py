"""Property tests of the judge's pure parts: whatever a completion or a judge reply holds, building the
request never fails and parsing yields a reward in [0, 1] or NaN (unscorable), never an exception."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from services.reward.judge import RUBRICS, build_messages, candidate_answer, parse_reply

TAGS = ("<think>", "</think>", "<answer>", "</answer>", "<<<END CANDIDATE 0>>>", "{", "}", "[", "]", '"', ":")
texts = st.one_of(
    st.text(max_size=300),
    st.lists(st.sampled_from(TAGS) | st.text(max_size=5), max_size=60).map("".join),
    st.integers(0, 3).map(lambda i: ("<answer>" * 5000, "[" * 100_000, "{\"a\":" * 50_000, "x" * 1_000_000)[i]),
)


@settings(max_examples=200, deadline=None)
@given(reply=texts, rubric=st.sampled_from(sorted(RUBRICS)))
def test_any_judge_reply_parses_to_a_reward_or_nan(reply, rubric):
    value = parse_reply(RUBRICS[rubric], reply)
    assert math.isnan(value) or 0.0 <= value <= 1.0


@settings(max_examples=200, deadline=None)
@given(completion=texts, question=st.text(max_size=50), rubric=st.sampled_from(sorted(RUBRICS)))
def test_any_completion_builds_a_bounded_request_with_the_answer_inside_the_block(completion, question, rubric):
    answer = candidate_answer(completion, 8000)
    assert len(answer) <= 8000 + len(" [cut]")
    messages = build_messages(RUBRICS[rubric], question, "moves left", answer, nonce="f00dfeedf00dfeed")
    user = messages[1]["content"]
    inside = user.split("<<<CANDIDATE f00dfeedf00dfeed>>>\n", 1)[1]
    block = inside.rsplit("\n<<<END CANDIDATE f00dfeedf00dfeed>>>", 1)[0]
    assert block == answer


def test_deeply_nested_reply_is_unscorable_not_a_recursion_error():
    assert math.isnan(parse_reply(RUBRICS["route"], "[" * 100_000 + "]" * 100_000))


def test_cli_line_nested_too_deep_is_an_error_line():
    from rlctl.rewards_cmd import score_line

    out = score_line("[" * 100_000)
    assert out["reward"] is None and out["error"].startswith("not JSON")
