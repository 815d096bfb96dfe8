"""The served judge's settings (services/judge/serve.py) as vLLM and Ray Serve get them, and `rlctl judge serve`'s
bad input; the real server is tests/integration/test_judge_serve.py."""

from pathlib import Path

import pytest
from click.testing import CliRunner
from pydantic import ValidationError

from rlctl.cli import main
from services.common.config import RunConfig
from services.common.reward_config import JudgeServeConfig


def test_engine_and_deployment_settings_follow_the_config():
    from services.judge.serve import ROUTES, deployment_options, engine_args

    cfg = JudgeServeConfig(model=Path("/m/judge"), min_replicas=1, max_replicas=3, target_ongoing_requests=2,
                           kv_cache_mib=64, num_gpus=1)
    cpu = engine_args(cfg, "j", "cpu")
    assert cpu["model"] == "/m/judge" and cpu["served_model_name"] == ["j"] and cpu["enforce_eager"]
    assert cpu["limit_mm_per_prompt"] == {"video": 0, "image": 0} and cpu["kv_cache_memory_bytes"] == 64 << 20
    gpu = engine_args(cfg.model_copy(update={"kv_cache_mib": None}), "j", "gpu")
    assert not gpu["enforce_eager"] and gpu["gpu_memory_utilization"] == 0.85 and "kv_cache_memory_bytes" not in gpu
    with pytest.raises(ValueError, match="kv_cache_mib"):
        engine_args(cfg.model_copy(update={"kv_cache_mib": None}), "j", "cpu")
    opts = deployment_options(cfg)
    auto = opts["autoscaling_config"]
    assert (auto["min_replicas"], auto["max_replicas"], auto["initial_replicas"]) == (1, 3, 1)
    assert auto["target_ongoing_requests"] == 2 and opts["ray_actor_options"] == {"num_cpus": 1.0, "num_gpus": 1}
    assert "/v1/chat/completions" in ROUTES and not [r for r in ROUTES if "scale" in r or "generate" in r]


def test_a_run_config_names_the_served_judge_and_bad_values_are_named():
    cfg = RunConfig.model_validate({"reward": {"judge": {"model": "j", "serve": {"model": "/m", "max_replicas": 2}}}})
    assert cfg.reward.judge.serve is not None and cfg.reward.judge.serve.max_replicas == 2
    with pytest.raises(ValidationError, match="max_replicas: 1 is below min_replicas"):
        JudgeServeConfig(model=Path("/m"), min_replicas=2)
    with pytest.raises(ValidationError, match="serve.wat"):
        RunConfig.model_validate({"reward": {"judge": {"serve": {"model": "/m", "wat": 1}}}})


def test_rlctl_judge_serve_explains_itself_and_names_bad_input(tmp_path):
    r = CliRunner().invoke(main, ["judge", "serve", "--help"])
    assert r.exit_code == 0
    for word in ("--replicas", "MIN:MAX", "/v1/chat/completions", "reward.judge.base_url", "--kv-cache-mib"):
        assert word in r.output, word
    r = CliRunner().invoke(main, ["judge", "serve", "--model", str(tmp_path), "--replicas", "two"])
    assert r.exit_code == 2 and "'two' is not MIN:MAX" in r.output
    r = CliRunner().invoke(main, ["judge", "serve", "--model", str(tmp_path), "--replicas", "3:1"])
    assert r.exit_code == 2 and "--max-replicas" not in r.output and "below min_replicas" in r.output
    r = CliRunner().invoke(main, ["judge", "serve", "--model", str(tmp_path / "nope")])
    assert r.exit_code == 2 and "does not exist" in r.output


def test_a_replica_that_cannot_start_is_reported_by_its_own_error():
    from services.judge.serve import last_exception

    recorded = """Failed to update the deployments ['JudgeReplica'].
Traceback (most recent call last):
  File "ray/serve/_private/replica.py", line 1290, in initialize_and_get_metadata
    raise RuntimeError(traceback.format_exc()) from None
RuntimeError: Traceback (most recent call last):
  File "vllm/config/model.py", line 633, in __post_init__
pydantic_core._pydantic_core.ValidationError: 1 validation error for ModelConfig
  Value error, User-specified max_model_len (4096) is greater than the derived max_model_len (2048.0).
    For further information visit https://errors.pydantic.dev/2.14/v/value_error"""
    assert last_exception(recorded) == (
        "pydantic_core._pydantic_core.ValidationError: 1 validation error for ModelConfig Value error, "
        "User-specified max_model_len (4096) is greater than the derived max_model_len (2048.0).")
    assert last_exception("") is None and last_exception("deploying") is None


def test_the_tiny_judges_lessons_are_the_clients_own_requests_with_replies_it_parses():
    import random

    from services.judge.tiny import _example
    from services.reward.judge import RUBRICS, parse_reply

    rng = random.Random(0)
    for rubric in RUBRICS.values():
        for _ in range(20):
            messages, reply = _example(rng, rubric)
            assert [m["role"] for m in messages] == ["system", "user"]
            assert rubric.reply_shape() in messages[0]["content"] and "<<<CANDIDATE " in messages[1]["content"]
            assert 0.0 <= parse_reply(rubric, reply) <= 1.0
