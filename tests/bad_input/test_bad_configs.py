"""Bad configs (bad_corpus.BAD_CONFIGS): wrong types, unknown fields, impossible values, broken overrides.
A config is checked before anything starts, so "the run continues" means here: nothing starts on a bad
config, and one ConfigError names the file and every bad field path at once (with a did-you-mean for a
misspelt field), never a raw pydantic, YAML or Python error."""

from __future__ import annotations

import pytest
from bad_corpus import BAD_CONFIGS, CONFIG_KINDS, UNKNOWN_REWARD_CONFIG
from click.testing import CliRunner

from rlctl import local as rlctl_local
from rlctl.cli import main as rlctl
from services.common.config import ConfigError, load_config
from services.reward.scoring import Scorer


def _file(tmp_path, name: str) -> object:
    text = BAD_CONFIGS[name].yaml_text
    if not text:
        return None
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("name", sorted(BAD_CONFIGS))
def test_a_bad_config_is_one_error_naming_each_bad_field(tmp_path, name):
    bad, path = BAD_CONFIGS[name], _file(tmp_path, name)
    with pytest.raises(ConfigError) as info:
        load_config(path, bad.overrides)
    message = str(info.value)
    broken_override = any(says.startswith("override") for says in bad.says)
    assert message.startswith("override" if broken_override else str(path) if path else "config")
    for says in bad.says:
        assert says in message, f"{says!r} not in {message!r}"


def test_every_mistake_is_reported_at_once(tmp_path, summary):
    name = "five_mistakes_at_once"
    with pytest.raises(ConfigError) as info:
        load_config(_file(tmp_path, name))
    lines = str(info.value).splitlines()[1:]
    assert len(lines) == len(BAD_CONFIGS[name].says)
    assert sorted(n for names in CONFIG_KINDS.values() for n in names) == sorted(BAD_CONFIGS)
    suggested = sum("did you mean" in says for bad in BAD_CONFIGS.values() for says in bad.says)
    summary(f"configs: {len(BAD_CONFIGS)} bad configs ({', '.join(f'{k}: {len(v)}' for k, v in CONFIG_KINDS.items())})"
            f", each one ConfigError naming the file or override and the field path "
            f"({sum(len(b.says) for b in BAD_CONFIGS.values())} messages checked, {suggested} did-you-mean); "
            f"{len(lines)} mistakes in one file -> {len(lines)} lines at once; `rlctl run` exits before starting")


def test_an_unknown_reward_name_stops_the_reward_service_at_start(tmp_path):
    """The schema takes any reward name; the scorer, built when the service starts, names the bad one."""
    path = tmp_path / "reward.yaml"
    path.write_text(UNKNOWN_REWARD_CONFIG)
    cfg = load_config(path)
    with pytest.raises(ConfigError, match=r"reward\.components\[1\]\.name: unknown reward 'mcqq'; known rewards: "):
        Scorer(cfg.reward)


def test_rlctl_run_refuses_a_bad_config_before_starting_anything(tmp_path, monkeypatch):
    monkeypatch.setattr(rlctl_local, "run_local", lambda *a, **k: pytest.fail("a run started on a bad config"))
    path = _file(tmp_path, "five_mistakes_at_once")
    result = CliRunner().invoke(rlctl, ["run", str(path)])
    assert result.exit_code != 0
    assert "group_size:" in result.output and "did you mean 'steps'?" in result.output
    assert "Traceback" not in result.output
