"""`rlctl run --resume RUN_DIR` wiring: the run dir and the resume flag reach the local run, and a resumed local
run makes the newest published version on disk current again (a fresh embedded Redis starts empty)."""

import pytest
from click.testing import CliRunner

import rlctl.local as local
from rlctl.cli import main
from services.common.config import RunConfig
from services.learner import checkpoint


def test_resume_flag_reaches_the_local_run(tmp_path, monkeypatch):
    seen = {}

    def fake_run_local(cfg, console, resume=False):
        seen.update(run_dir=cfg.run_dir, resume=resume)
        raise KeyboardInterrupt  # stop before the summary

    monkeypatch.setattr(local, "run_local", fake_run_local)
    result = CliRunner().invoke(main, ["run", "--resume", str(tmp_path), "--set", "learner.steps=3"])
    assert result.exit_code == 130 and seen == {"run_dir": tmp_path, "resume": True}
    CliRunner().invoke(main, ["run", "--set", "learner.steps=3"])
    assert seen["resume"] is False and seen["run_dir"] != tmp_path
    assert CliRunner().invoke(main, ["run", "--resume", str(tmp_path / "missing")]).exit_code == 2


def test_resumed_run_makes_the_newest_version_on_disk_current(control, tmp_path):
    run = local.LocalRun(RunConfig(run_id=control.run_id, run_dir=tmp_path), resume=True)
    run.control = control
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        run._resume_version()
    checkpoint.save(tmp_path / "checkpoints", 4, {"version": 2}, lambda d: d.mkdir())
    for v in (1, 2, 3):
        (tmp_path / "weights" / f"v{v:06d}").mkdir(parents=True)
        (tmp_path / "weights" / f"v{v:06d}" / "model.safetensors").write_bytes(b"w%d" % v)
    run._resume_version()
    assert control.current_version() == 3 and control.manifest(3).uri.endswith("v000003")
    run._resume_version()  # already current: nothing to do
    assert control.current_version() == 3
