import subprocess
import sys

from click.testing import CliRunner

from rlctl.cli import main


def test_help_does_not_import_torch_or_vllm():
    code = ("import sys\nfrom click.testing import CliRunner\nfrom rlctl.cli import main\n"
            "r = CliRunner().invoke(main, ['--help'])\nassert r.exit_code == 0, r.output\n"
            "r = CliRunner().invoke(main, ['run', '--help'])\nassert r.exit_code == 0, r.output\n"
            "heavy = sorted(m for m in ('torch', 'vllm', 'ray', 'deepspeed', 'transformers') if m in sys.modules)\n"
            "print(','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "", f"--help imported {out.stdout.strip()}"


def test_run_rejects_a_bad_config_with_the_field_named(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("group_size: 1\n")
    r = CliRunner().invoke(main, ["run", str(bad)])
    assert r.exit_code != 0 and "group_size: Input should be greater" in r.output
    r = CliRunner().invoke(main, ["run", "--set", "learner.stepz=3"])
    assert r.exit_code != 0 and "learner.stepz" in r.output


def test_sft_is_registered_and_rejects_a_bad_config_field(tmp_path):
    r = CliRunner().invoke(main, ["sft", "--help"])
    assert r.exit_code == 0 and "--out" in r.output
    r = CliRunner().invoke(main, ["sft", "--set", "sft.stepz=3"])
    assert r.exit_code != 0 and "sft.stepz" in r.output
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "config.json").write_text("{}")
    r = CliRunner().invoke(main, ["sft", "--out", str(taken)])
    assert r.exit_code != 0 and "already holds a model" in r.output


def test_an_actor_stuck_loading_past_the_start_timeout_fails_the_run_with_its_name():
    import time

    import pytest

    from rlctl.local import LocalRun
    from services.common.config import RunConfig
    from services.common.control import ActorInfo

    class Control:
        def actors(self):
            return [ActorInfo("rollout-0", -1, time.time(), "loading", {}),
                    ActorInfo("rollout-1", 3, time.time(), "running", {})]

    run = LocalRun(RunConfig(rollout={"faults": {"start_timeout_s": 60}}))
    run.control, run.actors = Control(), {"rollout-0": object(), "rollout-1": object()}
    placed = run.supervisor.placement.placed_at   # timed from when Ray placed them (tests/unit/test_placement_watch.py)
    placed.update({"rollout-0": time.monotonic() - 30, "rollout-1": time.monotonic() - 61})
    run.supervisor.check()                                  # within the timeout: fine
    placed["rollout-0"] = time.monotonic() - 61
    with pytest.raises(RuntimeError, match=r"rollout-0 still loading .* 60s \(rollout.faults.start_timeout_s\)"):
        run.supervisor.check()
