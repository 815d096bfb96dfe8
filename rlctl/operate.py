"""Operating a running local run from another terminal: `rlctl status`, `rlctl scale rollout N`, `rlctl stop`,
`rlctl logs`.

Invariants this module keeps:
- A run is found by its run record, RUN_DIR/run.json, which `rlctl run` writes once every service has started
  (run id, Redis URL, the pid of the `rlctl run` process, each service's pid and the Ray logs folder) and marks
  finished when it stops. Without RUN_DIR, the newest record under ./runs is used.
- status, scale and stop go through the run's control API (rlctl/api.py; its URL in run.json, its token in
  RUN_DIR/api-token), which only records the operator's intent (the desired actor count, a stop request) in Redis:
  the run's own process starts and stops actors (rlctl.local.LocalRun.scale), so there is one owner of every
  process.
- A finished run (its embedded Redis gone) still gets a status, from stats.jsonl and summary.json.
"""

from __future__ import annotations

import json
import os
import time
from collections import deque
from pathlib import Path

import click
from rich.console import Console, Group
from rich.table import Table

from rlctl.api_client import ApiClient, client_for, learner_text, learner_view, serving, wait_serving
from services.common.records import read_stats

RECORD = "run.json"


def write_record(run_dir: Path, **fields: object) -> None:
    """Create or update RUN_DIR/run.json atomically (readers never see half a file)."""
    path = Path(run_dir) / RECORD
    record = json.loads(path.read_text()) if path.exists() else {}
    record.update(fields)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=1))
    tmp.replace(path)


def find_run(run_dir: Path | None) -> tuple[Path, dict]:
    """The run's folder and record: RUN_DIR's, else the newest under ./runs that has one."""
    if run_dir is None:
        found = sorted(Path("runs").glob(f"*/{RECORD}"), key=lambda p: p.stat().st_mtime)
        if not found:
            raise click.ClickException("no run record (runs/*/run.json) here; give the run folder: RUN_DIR")
        run_dir = found[-1].parent
    path = Path(run_dir) / RECORD
    if not path.exists():
        raise click.ClickException(f"{path}: no run record; is {run_dir} a run folder of `rlctl run`?")
    return Path(run_dir), json.loads(path.read_text())


def is_live(record: dict) -> bool:
    """True while the run's `rlctl run` process exists and has not marked the record finished."""
    if record.get("finished"):
        return False
    try:
        os.kill(int(record["pid"]), 0)
    except (ProcessLookupError, KeyError, ValueError):
        return False
    except PermissionError:
        return True
    return True


def _control(record: dict):
    from services.common.control import ControlPlane

    # An operator's command answers in seconds: a run whose Redis is gone is reported, not waited for a minute.
    return ControlPlane(record["redis_url"], record["run_id"], reconnect_s=3)


def _live_run(run_dir: Path | None) -> tuple[Path, dict]:
    run_dir, record = find_run(run_dir)
    if not is_live(record):
        raise click.ClickException(f"run {record.get('run_id')} in {run_dir} is not running "
                                   f"({'finished' if record.get('finished') else 'its process is gone'})")
    return run_dir, record


# -- status ---------------------------------------------------------------------------------------------------------
def status_view(st: dict, heartbeat_s: float) -> Group:
    """Versions per actor, queue depths, throughput, staleness and recent rewards of a live run (GET /v1/status)."""
    lines = [f"run [cyan]{st['run_id']}[/]  policy v{st['policy_version']}  desired rollout actors "
             f"{st['desired_actors']}" + ("  [yellow]stopping[/]" if st["stop_requested"] else ""),
             f"prompts queued {st['prompts_queued']}  groups written {st['groups_written']} (queued for the learner "
             f"{st['groups_queued']})  completions {st['completions']}"]
    if (lv := st.get("learner")) is not None:
        lines.append(learner_text(lv))
    t = Table(box=None, show_header=True, header_style="bold")
    for col in ("actor", "state", "version", "tok/s", "groups"):
        t.add_column(col)
    now = time.time()
    for a in st["actors"]:
        state = a["state"] if now - a["heartbeat"] <= 5 * heartbeat_s else "silent"
        t.add_row(a["actor_id"], state, str(a["loaded_version"]), str(a["tokens_per_s"] or "-"),
                  str(a["groups_sent"] if a["groups_sent"] is not None else "-"))
    return Group(*lines, t)


def finished_view(run_dir: Path, record: dict) -> Group:
    stats = run_dir / "stats.jsonl"
    recs = read_stats(stats) if stats.exists() else []
    state = "finished" if record.get("finished") else "not running (its process is gone)"
    lines = [f"run [cyan]{record['run_id']}[/] {state}; {len(recs)} learner steps in {stats}"]
    if (lv := learner_view(recs)) is not None:
        lines.append(learner_text(lv.model_dump()))
    return Group(*lines)


def _api_options(f):
    f = click.option("--run-id", default=None, help="The run_id of the Kubernetes run (its config's run_id).")(f)
    f = click.option("-n", "--namespace", default=None,
                     help="A run on Kubernetes (started by `rlctl submit`) in this namespace, reached through the API "
                          "server's service proxy with the current kubeconfig; needs --run-id.")(f)
    f = click.option("--token-file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
                     help="File holding the API's bearer token (default: RUN_DIR/api-token, or VIDEORL_API_TOKEN "
                          "with --api).")(f)
    return click.option("--api", default=None, metavar="URL",
                        help="The run's control API (default: the one in the run's record, run.json).")(f)


def _api(run_dir: Path | None, api: str | None, token_file: Path | None, namespace: str | None = None,
         run_id: str | None = None) -> tuple[ApiClient, dict | None]:
    """The client of the live run's API: on Kubernetes (--namespace and --run-id), --api as given, else through the
    run's record."""
    if (k8s := _on_k8s(namespace, run_id)) is not None:
        from rlctl.k8s_api import connect_api

        return connect_api(*k8s), None
    if api is not None:
        return client_for(None, None, api, token_file), None
    run_dir, record = _live_run(run_dir)
    return client_for(record, run_dir, None, token_file), record


def _on_k8s(namespace: str | None, run_id: str | None) -> tuple[str, str] | None:
    """(namespace, run_id) of a run on Kubernetes, None for a local one."""
    if (namespace is None) != (run_id is None):
        raise click.UsageError("a run on Kubernetes is named by both --namespace and --run-id")
    return (namespace, run_id) if namespace is not None and run_id is not None else None


@click.command()
@click.argument("run_dir", required=False, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--watch", "watch_s", type=float, default=None, metavar="SECONDS",
              help="Refresh every SECONDS until Ctrl-C.")
@click.option("--json", "as_json", is_flag=True, help="Print the live run's state as one JSON object (for scripts).")
@_api_options
def status(run_dir: Path | None, watch_s: float | None, as_json: bool, api: str | None, token_file: Path | None,
           namespace: str | None, run_id: str | None) -> None:
    """Show a run: policy version per actor, queue depths, learner throughput, staleness, recent rewards and
    held-out accuracy, through the run's control API (GET /v1/status). RUN_DIR defaults to the newest run under
    ./runs; a finished run is shown from its files."""
    console = Console()
    if api is None and _on_k8s(namespace, run_id) is None:
        run_dir, record = find_run(run_dir)
        if not is_live(record):
            if as_json:
                raise click.ClickException(f"run {record.get('run_id')} in {run_dir} is not running")
            console.print(finished_view(run_dir, record))
            return
    client, found = _api(run_dir, api, token_file, namespace, run_id)
    heartbeat_s = float((found or {}).get("heartbeat_s", 2.0))
    if as_json:
        click.echo(json.dumps(client.get("/v1/status")))
        return
    if watch_s is None:
        console.print(status_view(client.get("/v1/status"), heartbeat_s))
        return
    from rich.live import Live

    with Live(console=console, refresh_per_second=2) as live:
        try:
            while True:
                live.update(status_view(client.get("/v1/status"), heartbeat_s))
                time.sleep(watch_s)
        except KeyboardInterrupt:
            pass


# -- scale ----------------------------------------------------------------------------------------------------------
@click.group()
def scale() -> None:
    """Change the capacity of a running run."""


@scale.command("rollout")
@click.argument("n", type=click.IntRange(1, 1024))
@click.option("--run", "run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="The run folder (default: the newest running run under ./runs).")
@click.option("--wait/--no-wait", default=True, show_default=True,
              help="Wait until N actors serve the current policy version.")
@click.option("--timeout", "timeout_s", type=float, default=300.0, show_default=True,
              help="Seconds to wait with --wait.")
@_api_options
def scale_rollout(n: int, run_dir: Path | None, wait: bool, timeout_s: float, api: str | None,
                  token_file: Path | None, namespace: str | None, run_id: str | None) -> None:
    """Set the number of rollout actors of a running run to N. New actors load the current policy version
    before they take a prompt; removed actors finish and send the prompts they hold first, so no prompt is lost
    or generated twice, and the learner keeps training meanwhile.

    Through the run's control API (POST /v1/scale); on Kubernetes (--namespace, --run-id) also through the
    RayCluster's `rollout` worker group: pods are added before actors, and removed after their actors retired.

    An actor adds throughput only with compute of its own (a GPU, or cores nothing else uses). Locally every actor
    shares the machine: on 2 cores one actor and the learner already use both, and 3 actors give fewer groups/s."""
    if (k8s := _on_k8s(namespace, run_id)) is not None:
        from rlctl.k8s_scale import connect_k8s

        connect_k8s(*k8s).scale(n, timeout_s, click.echo)
        return
    client, _ = _api(run_dir, api, token_file)
    answer = client.post("/v1/scale", {"rollout": n})
    click.echo(f"run {client.get('/v1/status')['run_id']}: {answer['detail']}")
    if wait:
        st = wait_serving(client, n, timeout_s)
        click.echo(f"{n} actors serve v{st['policy_version']}: {', '.join(sorted(serving(st)))}")


# -- stop -----------------------------------------------------------------------------------------------------------
@click.command()
@click.argument("run_dir", required=False, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--wait/--no-wait", default=True, show_default=True, help="Wait until the run has stopped.")
@click.option("--timeout", "timeout_s", type=float, default=600.0, show_default=True,
              help="Seconds to wait with --wait.")
@_api_options
def stop(run_dir: Path | None, wait: bool, timeout_s: float, api: str | None, token_file: Path | None,
         namespace: str | None, run_id: str | None) -> None:
    """Stop a running run gracefully (POST /v1/stop): the learner finishes its step and writes a checkpoint, the
    actors finish and send what they hold, every process ends. `rlctl run CONFIG --resume RUN_DIR` continues it."""
    client, record = _api(run_dir, api, token_file, namespace, run_id)
    click.echo(client.post("/v1/stop")["detail"])
    if not wait or record is None:
        return
    run_dir, _ = find_run(run_dir)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not is_live(find_run(run_dir)[1]):
            click.echo(f"stopped; resume with: rlctl run CONFIG --resume {run_dir}")
            return
        time.sleep(0.5)
    raise click.ClickException(f"after {timeout_s:.0f}s the run is still stopping; see `rlctl logs {run_dir}`")


# -- logs -----------------------------------------------------------------------------------------------------------
@click.command()
@click.argument("run_dir", required=False, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--service", "service", default=None, metavar="NAME",
              help="One service's log: learner, reward or an actor id like rollout-0 (default: list them all).")
@click.option("-n", "--lines", default=40, show_default=True, help="Lines from the end of the log.")
def logs(run_dir: Path | None, service: str | None, lines: int) -> None:
    """Where each service of a run writes its log, or the last lines of one (--service). Services run as Ray
    workers: stdout and stderr go to RAY_LOGS/worker-*-<pid>.out/.err."""
    run_dir, record = find_run(run_dir)
    files = service_logs(record)
    if service is None:
        t = Table(box=None)
        for col in ("service", "pid", "log files"):
            t.add_column(col)
        for name, (pid, paths) in sorted(files.items()):
            t.add_row(name, str(pid), "\n".join(str(p) for p in paths) or "(none found)")
        Console().print(t)
        click.echo(f"learner steps: {run_dir / 'stats.jsonl'}")
        return
    if service not in files:
        raise click.ClickException(f"no service {service!r} in run {record['run_id']}; "
                                   f"known: {', '.join(sorted(files))}")
    for path in files[service][1]:
        click.echo(f"==> {path} <==")
        with open(path, errors="replace") as f:
            click.echo("".join(deque(f, maxlen=lines)), nl=False)


def service_logs(record: dict) -> dict[str, tuple[int, list[Path]]]:
    """service name -> (pid, its Ray worker log files). Actors' pids come from their heartbeats when the run is
    live, else from the record."""
    pids = dict(record.get("pids", {}))
    if is_live(record):
        import redis

        try:
            pids.update({a.actor_id: int(a.fields["pid"]) for a in _control(record).actors() if "pid" in a.fields})
        except redis.RedisError:
            pass   # the run is stopping: the record's pids are what is left
    folder = Path(record.get("ray_logs", "/tmp/videorl-ray/session_latest/logs"))
    return {name: (pid, sorted(folder.glob(f"worker-*-{pid}.out")) + sorted(folder.glob(f"worker-*-{pid}.err")))
            for name, pid in pids.items()}
