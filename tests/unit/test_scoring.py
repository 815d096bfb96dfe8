"""Composite rewards per task type: config shape and validation, gating, weights, NaN handling and metrics."""

import asyncio
import json
import math
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from services.common.config import ConfigError, load_config
from services.common.pb.videorl.v1 import rollout_pb2 as pb
from services.common.reward_config import RewardConfig
from services.reward.judge import JudgeClient
from services.reward.scoring import Scorer

DEFAULT_YAML = Path(__file__).parents[2] / "rlctl" / "configs" / "default.yaml"
OPTIONS = ["up", "down", "left", "right"]
RIGHT, WRONG = "<think>it goes down</think><answer>B</answer>", "<think>hm</think><answer>A</answer>"
RIGHT_BARE, WRONG_BARE = "B", "A"


def _prompt(task="mcq", answer="B", truth=None, question="Which way?"):
    return pb.Prompt(prompt_id="p", task=task, question=question, options=OPTIONS, answer=answer,
                     truth=truth or pb.GroundTruth())


def _cfg(**reward):
    return RewardConfig.model_validate(reward)


def _score(scorer, texts, **prompt):
    return asyncio.run(scorer.score(_prompt(**prompt), texts))


def _write(tmp_path, text):
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return path


# ------------------------------------------------------------------------------------------- config


def test_default_config_is_unchanged_and_scores_as_before():
    cfg = load_config(DEFAULT_YAML)
    assert cfg.reward == RewardConfig() and cfg.reward.tasks == {}
    assert [(c.name, c.weight) for c in cfg.reward.components] == [("mcq", 1.0), ("answer_format", 0.1)]
    score = _score(Scorer(cfg.reward), ["<answer>B</answer>", "<answer>A</answer>", "B", "Direction: left"])
    assert [round(t, 3) for t in score.totals] == [1.1, 0.1, 1.0, 0.0]
    assert score.weights == {"mcq": 1.0, "answer_format": 0.1} and score.errors == []


def test_a_flat_component_list_still_builds_a_scorer():
    score = _score(Scorer(RewardConfig().components), [RIGHT_BARE])
    assert score.totals == [1.0]


def test_yaml_with_tasks_gates_labels_and_judge_loads(tmp_path):
    cfg = load_config(_write(tmp_path, """
reward:
  components: [{name: mcq}]
  tasks:
    spatial:
      - {name: mcq, weight: 0}
      - {name: format, weight: 0.5, gate: mcq, gate_min: 1.0}
    route:
      - {name: judge, rubric: route}
      - {name: judge, rubric: reference, label: judge_ref, weight: 0.5}
  judge: {base_url: "http://127.0.0.1:9/v1", model: qwen-judge, timeout_s: 5, retries: 1, max_concurrency: 8}
"""))
    route = cfg.reward.tasks["route"]
    assert [c.key for c in route] == ["judge", "judge_ref"] and route[1].rubric == "reference"
    assert cfg.reward.tasks["spatial"][1].gate == "mcq" and cfg.reward.judge.model == "qwen-judge"


@pytest.mark.parametrize("yaml_text,field", [
    ("reward: {tasks: {t: [{name: format, gate: mcq}, {name: mcq}]}}", "tasks.t[0].gate"),      # gate later
    ("reward: {tasks: {t: [{name: format, gate: nope}]}}", "tasks.t[0].gate"),
    ("reward: {tasks: {t: [{name: format, gate: format}]}}", "tasks.t[0].gate"),               # itself
    ("reward: {tasks: {t: [{name: mcq}, {name: mcq}]}}", "tasks.t[1]: duplicate component 'mcq'"),
    ("reward: {tasks: {t: []}}", "tasks.t: needs at least one component"),
    ("reward: {tasks: {t: [{name: judge, rubric: route}]}}", "judge.model: required"),
    ("reward: {tasks: {t: [{name: judge}]}, judge: {model: m}}", "rubric: the judge reward needs a rubric"),
    ("reward: {components: [{name: mcq, rubric: route}]}", "rubric: only the judge reward"),
    ("reward: {tasks: {t: [{name: judge, rubric: vibes}]}, judge: {model: m}}", "rubric"),
    ("reward: {components: [{name: mcq, gate_min: 2}]}", "gate_min"),
    ("reward: {components: [{name: mcq, wieght: 2}]}", "wieght"),
    ("reward: {judge: {model: m, api_key: sk-123}}", "judge.api_key"),                        # no secrets
    ("reward: {judge: {model: m, timeout_s: 0}}", "judge.timeout_s"),
    ("reward: {judge: {model: m, max_concurrency: 0}}", "judge.max_concurrency"),
])
def test_config_errors_name_the_field(tmp_path, yaml_text, field):
    with pytest.raises(ConfigError) as err:
        load_config(_write(tmp_path, yaml_text))
    assert field in str(err.value)


def test_an_unknown_reward_name_fails_at_build_naming_the_field():
    with pytest.raises(ConfigError, match=r"reward.tasks.t\[1\].name: unknown reward 'mcqq'"):
        Scorer(_cfg(tasks={"t": [{"name": "mcq"}, {"name": "mcqq"}]}))


# ------------------------------------------------------------------------------------------ scoring


def test_task_picks_its_components_and_others_use_the_default():
    scorer = Scorer(_cfg(components=[{"name": "mcq"}],
                         tasks={"strict": [{"name": "mcq"}, {"name": "format", "weight": 0.25}]}))
    strict = _score(scorer, [RIGHT, RIGHT_BARE], task="strict")
    other = _score(scorer, [RIGHT, RIGHT_BARE], task="anything_else")
    assert strict.totals == [1.25, 1.0] and set(strict.components) == {"mcq", "format"}
    assert other.totals == [1.0, 1.0] and set(other.components) == {"mcq"}


def test_a_gated_component_counts_only_where_its_gate_passed():
    scorer = Scorer(_cfg(components=[{"name": "mcq"}, {"name": "format", "weight": 0.5, "gate": "mcq"}]))
    score = _score(scorer, [RIGHT, WRONG, RIGHT_BARE, WRONG_BARE])
    assert score.components["mcq"] == [1.0, 0.0, 1.0, 0.0]
    assert score.components["format"] == [1.0, 0.0, 0.0, 0.0]   # WRONG is well formed but gated off
    assert score.totals == [1.5, 0.0, 1.0, 0.0]


def test_a_weight_zero_gate_is_logged_but_not_counted():
    scorer = Scorer(_cfg(components=[{"name": "mcq", "weight": 0}, {"name": "format", "gate": "mcq"}]))
    score = _score(scorer, [RIGHT, WRONG])
    assert score.totals == [1.0, 0.0] and score.components["mcq"] == [1.0, 0.0]


def test_an_unscorable_gate_makes_the_gated_component_and_total_unscorable_not_zero():
    scorer = Scorer(_cfg(components=[{"name": "mcq"}, {"name": "format", "gate": "mcq"}]))
    score = _score(scorer, [RIGHT, WRONG], answer="Z")          # a data bug: mcq raises for the row
    assert all(math.isnan(v) for v in score.components["mcq"] + score.components["format"] + score.totals)
    assert len(score.errors) == 1 and score.errors[0].startswith("mcq: ValueError")


def test_ground_truth_that_breaks_the_rules_is_unscorable_not_fatal():
    """What a foreign writer of the prompts stream could send; the dataset reader never produces it."""
    inverted = pb.GroundTruth(segments=[pb.Segment(start=5, end=2)], single_segment=True)
    no_box = pb.GroundTruth(boxes=[pb.FrameBox(), pb.FrameBox()])
    for bad, field in ((inverted, "segment[0]"), (no_box, "boxes")):
        score = _score(Scorer(RewardConfig()), [RIGHT, WRONG], truth=bad)
        assert all(math.isnan(t) for t in score.totals) and score.errors[0].startswith(f"truth: field '{field}'")
        assert set(score.components) == {"mcq", "answer_format"}


def test_metrics_per_component():
    registry = CollectorRegistry()
    scorer = Scorer(_cfg(components=[{"name": "mcq"}, {"name": "format", "gate": "mcq"}]), registry)
    _score(scorer, [RIGHT, WRONG, RIGHT_BARE, WRONG_BARE])
    _score(scorer, [RIGHT] * 4, answer="Z")

    def value(name, component):
        return registry.get_sample_value(name, {"component": component})

    assert value("videorl_reward_component_completions_total", "mcq") == 8
    assert value("videorl_reward_component_unscorable_total", "mcq") == 4
    assert value("videorl_reward_component_unscorable_total", "format") == 4
    assert value("videorl_reward_component_gated_total", "format") == 2
    assert value("videorl_reward_component_errors_total", "mcq") == 1
    assert value("videorl_reward_component_seconds_count", "mcq") == 2
    assert value("videorl_reward_component_mean_value", "mcq") == 0.5          # over scorable values only
    assert value("videorl_reward_component_std_value", "mcq") == 0.5


def test_judge_component_scores_through_the_client_and_skips_gated_answers():
    asked = []

    async def post(url, data, headers):
        user = json.loads(data)["messages"][1]["content"]
        asked.append(user)
        good = "door" in user.split("<<<CANDIDATE", 1)[1]
        content = {"direction": 5, "landmark": 5, "logic": 5} if good else {"direction": 1, "landmark": 1, "logic": 1}
        return 200, json.dumps({"choices": [{"message": {"content": json.dumps(content)}}]}).encode()

    cfg = _cfg(tasks={"route": [{"name": "format", "weight": 0},
                                {"name": "judge", "rubric": "route", "gate": "format"}]},
               judge={"model": "m"})
    registry = CollectorRegistry()
    scorer = Scorer(cfg, registry, judge=JudgeClient(cfg.judge, registry, post=post))
    texts = ["<think>t</think><answer>left at the door</answer>", "<think>t</think><answer>right</answer>",
             "left at the door (no tags)"]
    score = _score(scorer, texts, task="route", answer="turn left at the door", question="Route back?")
    assert score.totals == [1.0, 0.2, 0.0] and score.components["judge"] == [1.0, 0.2, 0.0]
    assert len(asked) == 2 and all("Route back?" in u and "turn left at the door" in u for u in asked)


def test_the_reference_comes_from_extra_when_the_row_has_one():
    seen = []

    async def post(url, data, headers):
        seen.append(json.loads(data)["messages"][1]["content"])
        return 200, json.dumps({"choices": [{"message": {"content": '{"score": 3}'}}]}).encode()

    cfg = _cfg(components=[{"name": "judge", "rubric": "reference"}], judge={"model": "m"})
    scorer = Scorer(cfg, judge=JudgeClient(cfg.judge, post=post))
    score = _score(scorer, ["an answer"], truth=pb.GroundTruth(reference="the long reference"))
    assert score.totals == [pytest.approx(0.3)] and "REFERENCE ANSWER:\nthe long reference" in seen[0]
