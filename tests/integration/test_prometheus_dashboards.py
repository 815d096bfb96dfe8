"""Every Grafana panel's query returns data from a real Prometheus scraping a real local run.

A Prometheus (the Debian package) on a free loopback port scrapes, once a second, the exporters the run records in
Redis (written as a file_sd list with the `run` and `namespace` target labels the dashboards filter on). After a
short run (1 actor, a few steps, a version published every step, the scripted judge of judge_server.py as a
weight-0 reward component so the judge panels have traffic) each panel's expression, with the dashboard variables
filled in and `$__rate_interval` widened to the whole run, goes to /api/v1/query and must return at least one
series with a finite value; each `namespace` / `run` variable must offer this run's value.
"""

import json
import math
import re
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from rich.console import Console

from rlctl.local import LocalRun
from services.common.config import load_config
from services.common.metrics import file_sd_targets
from services.common.processes import free_port, stop_process

pytestmark = pytest.mark.integration

DASHBOARDS = Path(__file__).resolve().parents[2] / "deploy" / "k8s" / "base" / "dashboards"
PROMETHEUS = "/usr/bin/prometheus"
NAMESPACE = "local"


class LocalPrometheus:
    """A Prometheus on 127.0.0.1 scraping the targets in `targets.json` every second; stopped by its pid."""

    def __init__(self, workdir: Path):
        self.workdir, self.port = workdir, free_port()
        self.targets = workdir / "targets.json"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout_s: float = 30.0) -> "LocalPrometheus":
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.write_targets([])
        config = {"global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
                  "scrape_configs": [{"job_name": "videorl", "file_sd_configs": [
                      {"files": [str(self.targets)], "refresh_interval": "1s"}]}]}
        (self.workdir / "prometheus.yml").write_text(json.dumps(config))  # JSON is YAML
        log = open(self.workdir / "prometheus.log", "ab")  # noqa: SIM115 - owned by the child
        self.proc = subprocess.Popen(
            [PROMETHEUS, f"--config.file={self.workdir / 'prometheus.yml'}",
             f"--storage.tsdb.path={self.workdir / 'tsdb'}", f"--web.listen-address=127.0.0.1:{self.port}",
             "--log.level=warn"], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"prometheus exited with {self.proc.returncode}; see {self.workdir}/prometheus.log")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=1) as r:
                    if r.status == 200:
                        return self
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"prometheus not ready on port {self.port} within {timeout_s}s")

    def write_targets(self, entries: list[dict]) -> None:
        tmp = self.targets.with_suffix(".tmp")
        tmp.write_text(json.dumps(entries))
        tmp.replace(self.targets)  # atomic: Prometheus never reads half a file

    def api(self, path: str, **params: str) -> list[dict]:
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        with urllib.request.urlopen(url, timeout=10) as r:
            body = json.load(r)
        assert body["status"] == "success", body
        return body["data"]["result"] if path == "query" else body["data"]

    def query(self, expr: str) -> list[dict]:
        return self.api("query", query=expr)

    def stop(self) -> None:
        stop_process(self.proc, term_timeout_s=10)


@pytest.fixture
def judge_url(judge_server):
    return judge_server + "/v1"


def _wait_for(condition, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.5)


def _fill(expr: str, run_id: str, window_s: int) -> str:
    """The expression as Grafana would send it for this run, with every rate window covering the whole run."""
    out = (expr.replace("$__rate_interval", f"{window_s}s").replace("$namespace", NAMESPACE)
           .replace("$run", run_id))  # a run id's only regex character is '.', which matches itself
    assert "$" not in out, f"an unfilled variable in {out}"
    return out


def _panels() -> list[tuple[str, str, str, str]]:
    """(dashboard, panel title, refId, expression) of every target of every dashboard."""
    return [(path.stem, p["title"], t["refId"], t["expr"])
            for path in sorted(DASHBOARDS.glob("*.json")) for p in json.loads(path.read_text())["panels"]
            for t in p["targets"]]


@pytest.mark.skipif(not shutil.which(PROMETHEUS), reason="needs Debian's prometheus (scripts/setup.sh)")
def test_every_panel_query_returns_data_from_a_real_scrape_of_a_local_run(tiny_assets, tmp_path, judge_url):
    steps = 4
    cfg = load_config(None, [f"learner.steps={steps}", "learner.publish_every=1", "learner.eval_every=2",
                             "rollout.num_actors=1", f"run_dir={tmp_path / 'run'}", "data.synth_eval=4",
                             "reward.components=[{name: mcq}, {name: answer_format, weight: 0.1},"
                             " {name: judge, weight: 0, rubric: reference}]",
                             f"reward.judge.base_url={judge_url}", "reward.judge.model=naive-judge"])
    prom = LocalPrometheus(tmp_path / "prometheus").start()
    run = LocalRun(cfg, Console(quiet=True))
    started = time.time()
    try:
        control = run.start()

        def publish_targets() -> None:
            prom.write_targets(file_sd_targets(control.exporters(), cfg.run_id, NAMESPACE))

        records = run.wait(on_tick=publish_targets)
        publish_targets()
        assert len(records) == steps and any(r.eval for r in records), "a held-out round completed"
        exporters = control.exporters()
        assert set(exporters) == {"reward", "learner", "rollout:rollout-0"}
        sel = f'{{run="{cfg.run_id}", namespace="{NAMESPACE}"}}'

        def scraped_to_the_end() -> bool:
            up = prom.query(f"sum(up{sel})")
            done = prom.query(f"max(videorl_learner_steps_total{sel})")
            return bool(up and done) and float(up[0]["value"][1]) == len(exporters) \
                and float(done[0]["value"][1]) == steps

        _wait_for(scraped_to_the_end, 30, "every exporter up and the last step scraped")
        window_s = int(time.time() - started) + 30

        def scrapes() -> float:   # the fewest scrapes of any of the run's targets so far
            got = prom.query(f"min(count_over_time(up{sel}[{window_s}s]))")
            return float(got[0]["value"][1]) if got else 0.0

        # Two more scrapes of every target: a series that first appeared in the last scrape (a short run can end
        # between two scrapes) then has the two samples rate() needs, as it would on any dashboard a moment later.
        enough = scrapes() + 2
        _wait_for(lambda: scrapes() >= enough, 30, "two more scrapes of every target")
        failures, panels = [], _panels()
        assert len({board for board, *_ in panels}) == 4
        for board, title, ref, expr in panels:
            result = prom.query(_fill(expr, cfg.run_id, window_s))
            values = [float(s["value"][1]) for s in result]
            if not any(math.isfinite(v) for v in values):
                failures.append(f"{board} / {title} / {ref}: {values or 'no series'} for {expr}")
        assert not failures, "panels without data:\n" + "\n".join(failures)
        for board in sorted(DASHBOARDS.glob("*.json")):
            for var in json.loads(board.read_text())["templating"]["list"]:
                if var["type"] != "query":
                    continue
                metric, label = re.fullmatch(r"label_values\((.+), (\w+)\)", var["definition"]).groups()
                series = prom.api("series", **{"match[]": _fill(metric, cfg.run_id, window_s)})
                expected = {"namespace": NAMESPACE, "run": cfg.run_id}[label]
                assert expected in {s.get(label) for s in series}, f"{board.stem}: no {var['name']} for this run"
    finally:
        run.close()
        prom.stop()
