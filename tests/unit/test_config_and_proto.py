import math

import pytest

from rlctl.cli import DEFAULT_CONFIG
from services.common.config import ConfigError, load_config
from services.common.dataset import DatasetError, load_rows
from services.common.pb.videorl.v1 import rollout_pb2 as pb


def test_shipped_default_config_loads():
    cfg = load_config(DEFAULT_CONFIG)
    assert cfg.learner.steps >= 20 and cfg.learner.steps // cfg.learner.publish_every >= 5
    assert cfg.redis.url is None and cfg.reward.host == "127.0.0.1"


def test_overrides_and_clear_errors(tmp_path):
    cfg = load_config(None, ["learner.steps=3", "rollout.num_actors=1"])
    assert cfg.learner.steps == 3 and cfg.rollout.num_actors == 1
    with pytest.raises(ConfigError, match="learner.steps"):
        load_config(None, ["learner.steps=0"])
    with pytest.raises(ConfigError, match="rollout.groupsize"):
        load_config(None, ["rollout.groupsize=4"])      # unknown field: a typo fails loudly
    bad = tmp_path / "bad.yaml"
    bad.write_text("learner: [1, 2")
    with pytest.raises(ConfigError, match="bad.yaml"):
        load_config(bad)
    with pytest.raises(ConfigError, match="min_pixels"):
        load_config(None, ["media.min_pixels=9000", "media.max_pixels=4000"])


def test_completion_round_trip_keeps_every_field():
    c = pb.Completion(run_id="r", prompt_id="p", group_id="p/v3", sample_index=2, group_size=4, policy_version=3,
                      prompt_token_ids=[1, 2, 3], completion_token_ids=[7, 8], logprobs=[-0.25, -1.5], text="é<answer>",
                      finish_reason="stop", actor_id="a0",
                      prompt=pb.Prompt(prompt_id="p", options=["up", "down"], answer="B", video_uri="/v.mp4"))
    back = pb.Completion.FromString(c.SerializeToString())
    assert back == c and list(back.logprobs) == [-0.25, -1.5] and back.prompt.options == ["up", "down"]


def test_scored_group_carries_nan_rewards():
    g = pb.ScoredGroup(group_id="g", rewards=[1.0, float("nan")],
                       components=[pb.RewardComponent(name="mcq", weight=1.0, values=[1.0, float("nan")])])
    back = pb.ScoredGroup.FromString(g.SerializeToString())
    assert back.rewards[0] == 1.0 and math.isnan(back.rewards[1])


def test_dataset_errors_name_line_and_field(tmp_path):
    f = tmp_path / "d.jsonl"
    ok = '{"id": "a", "video": "v.mp4", "task": "mcq", "question": "q?", "answer": "A", "options": ["x", "y"]}\n'
    f.write_text(ok + '{"id": "b"}\n')
    with pytest.raises(DatasetError, match=r"d.jsonl:2: missing field 'video'"):
        load_rows(f)
    f.write_text(ok + "not json\n")
    with pytest.raises(DatasetError, match=r"d.jsonl:2: not valid JSON"):
        load_rows(f)
    f.write_text('{"id": "a", "video": "v.mp4", "task": "mcq", "question": "q?", "answer": "A", "options": "x"}\n')
    with pytest.raises(DatasetError, match="'options' must be a list"):
        load_rows(f)
    f.write_text(ok)
    (row,) = load_rows(f)
    assert row.video == str(tmp_path / "v.mp4")      # relative to the JSONL's folder
