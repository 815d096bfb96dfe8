"""The live view of a run: one line per learner step (printed, so it stays in logs and CI output) and a
status panel under it (step, version per actor, reward, accuracy, tokens/s, queue depths)."""

from __future__ import annotations

import time

from rich.console import Console, Group
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
from rich.progress import Progress as Bar
from rich.table import Table

from services.common.config import RunConfig
from services.common.control import GROUPS, ControlPlane
from services.common.records import StepRecord


def step_line(rec: StepRecord) -> str:
    s, ev, m = rec.seconds, rec.eval, rec.train
    acc = ""
    if ev:
        tasks = ev.per_task
        detail = " (" + ", ".join(f"{t} {a:.2f}" for t, a in tasks.items()) + ")" if len(tasks) > 1 else ""
        acc = f" held-out {ev.accuracy:.3f}{detail} [round {ev.round} @v{max(ev.versions)}]"
    pub = f" -> published v{rec.published}" if rec.published else ""
    return (f"step {rec.step:>3}  v{rec.version}  reward {m.reward_mean:.3f}  loss {m.loss:+.4f}  "
            f"clip {m.clip_frac:.2f}  stale<={rec.staleness_max}  wait {s.get('wait', 0):.2f}s  "
            f"train {s.get('train', 0):.2f}s{acc}{pub}")


class Progress:
    def __init__(self, control: ControlPlane, cfg: RunConfig, console: Console):
        self.control, self.cfg, self.console = control, cfg, console
        self.seen = 0
        self.bar = Bar(TextColumn("learner"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                       console=console)
        self.task = self.bar.add_task("steps", total=cfg.learner.steps)
        # A live panel only on a terminal: elsewhere (CI logs, pipes) rich would hold every line until the end.
        self.live = Live(console=console, refresh_per_second=4, transient=True) if console.is_terminal else None

    def __enter__(self) -> Progress:
        if self.live:
            self.live.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self.live:
            self.live.__exit__(*exc)

    def tick(self) -> None:
        for rec in self.control.step_records(self.seen):
            self.seen += 1
            self.console.print(step_line(rec), soft_wrap=True)
            self.bar.update(self.task, completed=rec.step)
        if self.live:
            self.live.update(Group(self.bar, self._table()))

    def _table(self) -> Table:
        t = actors_table(self.control, self.cfg.rollout.heartbeat_s)
        t.caption = queues_line(self.control)
        return t


def actors_table(control: ControlPlane, heartbeat_s: float) -> Table:
    """One row per actor: state ("silent" when its heartbeat is 5 periods old), loaded version, tok/s, groups."""
    t = Table(box=None, show_header=True, header_style="bold")
    for col in ("actor", "state", "version", "tok/s", "groups"):
        t.add_column(col)
    now = time.time()
    for a in control.actors():
        state = a.state if a.alive(5 * heartbeat_s, now) else "silent"
        t.add_row(a.actor_id, state, str(a.loaded_version), a.fields.get("tokens_per_s", "-"),
                  a.fields.get("groups_sent", "-"))
    return t


def queues_line(control: ControlPlane) -> str:
    c = control.counters()
    return (f"policy v{control.current_version()}  prompts queued {control.prompts_queued()}  "
            f"groups written {c.get('groups_written', 0)} (stream {control.stream_len(GROUPS)}, "
            f"queued for the learner {control.groups_queued()})  completions {c.get('completions_received', 0)}")
