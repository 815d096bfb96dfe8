"""rlctl status / scale / logs against run records, with a real Redis where a live run is needed."""

import os
import time

from click.testing import CliRunner
from step_records import step_record

from rlctl.api import ApiServer
from rlctl.cli import main
from rlctl.operate import find_run, is_live, service_logs, write_record
from services.common.control import ControlPlane
from services.common.redis_server import EmbeddedRedis


def test_the_record_is_found_updated_and_marked_finished(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    old, new = tmp_path / "runs" / "a", tmp_path / "runs" / "b"
    for d in (old, new):
        d.mkdir(parents=True)
        write_record(d, run_id=d.name, redis_url="redis://127.0.0.1:1/0", pid=os.getpid())
        time.sleep(0.01)
    assert find_run(None)[1]["run_id"] == "b"                 # the newest record under ./runs
    assert is_live(find_run(old)[1])
    write_record(old, finished=time.time())
    assert not is_live(find_run(old)[1]) and find_run(old)[1]["run_id"] == "a"   # updated, not replaced


def test_a_dead_or_finished_run_is_reported_not_contacted(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    write_record(run, run_id="gone", redis_url="redis://127.0.0.1:1/0", pid=2**22 + 12345)   # no such pid
    (run / "stats.jsonl").write_text(step_record(1, reward_mean=0.5, time=1.0).model_dump_json() + "\n")
    r = CliRunner().invoke(main, ["status", str(run)])
    assert r.exit_code == 0 and "gone" in r.output and "1 learner steps" in r.output and "process is gone" in r.output
    r = CliRunner().invoke(main, ["scale", "rollout", "3", "--run", str(run)])
    assert r.exit_code != 0 and "is not running" in r.output
    r = CliRunner().invoke(main, ["scale", "rollout", "0", "--run", str(run)])
    assert r.exit_code != 0 and "0" in r.output                           # N >= 1
    r = CliRunner().invoke(main, ["status", str(tmp_path)])
    assert r.exit_code != 0 and "no run record" in r.output


def test_scale_sets_the_desired_count_and_status_reads_the_live_run(tmp_path):
    with EmbeddedRedis() as redis:
        control = ControlPlane(redis.url, "r1")
        control.ensure_streams()
        control.set_desired_actors(1)
        control.heartbeat("rollout-0", 3, "running", tokens_per_s=120.0, groups_sent=7)
        control.record_step(step_record(4, reward_mean=0.25, staleness_max=1))
        run = tmp_path / "run"
        run.mkdir()
        api = ApiServer(redis.url, "r1", run)   # as `rlctl run` serves it: the CLI goes through it
        write_record(run, run_id="r1", redis_url=redis.url, pid=os.getpid(), heartbeat_s=2.0, api=api.url)
        r = CliRunner().invoke(main, ["scale", "rollout", "3", "--run", str(run), "--no-wait"])
        assert r.exit_code == 0 and "rollout actors 1 -> 3" in r.output
        assert control.desired_actors() == 3
        r = CliRunner().invoke(main, ["scale", "rollout", "3", "--run", str(run), "--timeout", "0.5"])
        assert r.exit_code != 0 and "1 of 3 actors serve" in r.output      # only rollout-0 is running
        r = CliRunner().invoke(main, ["status", str(run)])
        assert r.exit_code == 0, r.output
        for text in ("r1", "rollout-0", "learner step 4", "desired rollout actors 3", "prompts queued 0"):
            assert text in r.output, text
        r = CliRunner().invoke(main, ["stop", str(run), "--no-wait"])
        assert r.exit_code == 0 and "stopping" in r.output and control.stop_requested() is not None
        api.stop()
        control.close()


def test_logs_maps_each_service_to_its_ray_worker_files(tmp_path):
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "worker-abc-ffff-111.out").write_text("".join(f"line {i}\n" for i in range(100)))
    (logs / "worker-abc-ffff-111.err").write_text("boom\n")
    run = tmp_path / "run"
    run.mkdir()
    write_record(run, run_id="r", redis_url="redis://127.0.0.1:1/0", pid=2**22 + 7,
                 pids={"learner": 111, "reward": 222}, ray_logs=str(logs))
    files = service_logs(find_run(run)[1])
    assert [p.name for p in files["learner"][1]] == ["worker-abc-ffff-111.out", "worker-abc-ffff-111.err"]
    assert files["reward"] == (222, [])
    r = CliRunner().invoke(main, ["logs", str(run), "--service", "learner", "-n", "3"])
    assert r.exit_code == 0 and "line 99" in r.output and "line 96" not in r.output and "boom" in r.output
    r = CliRunner().invoke(main, ["logs", str(run), "--service", "rollout-9"])
    assert r.exit_code != 0 and "known: learner, reward" in r.output
