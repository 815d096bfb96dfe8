"""Which rollout actors Ray has placed on a node, and a line saying so while some cannot be placed.

In a cluster each rollout actor asks for its worker group's resource (rlctl/cluster.py: one `videorl_rollout`). While
the alive nodes offer too little of it (the group has not scaled up yet, or its node was lost and the supervisor's
replacements wait for a new one) Ray keeps the actors pending without a word. The watch says so, at most once every
SAY_EVERY_S, as

    waiting for a node offering videorl_rollout: 2 rollout actors cannot be placed (pending: rollout-2, rollout-3; ...)

and records when each actor was placed, so that rollout.faults.start_timeout_s times the engine's loading from then,
not the wait for a node (rlctl/supervisor.py).

Placed: the actor's process runs. Its `__ray_ready__` call (Ray's own, answered once __init__ returned; a
RolloutActor's is light, its engine loads in run()) came back, or failed because the actor died (the supervisor
replaces it). Whether the pending ones can be placed at all is judged by capacity: how many processes of their shape
the alive nodes hold in total (`ray.cluster_resources()`), against how many actors are live. A resource they share
with other processes (GPUs with the learner ranks) is counted as theirs alone, so there the line may come late, never
while they can be placed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

from rlctl.cluster import Placement

log = logging.getLogger("videorl.rlctl")
SAY_EVERY_S = 20.0    # between two waiting lines
LOOK_EVERY_S = 2.0    # between two looks at the cluster's resources while actors are pending


def demand(placement: Placement) -> dict[str, float]:
    """What one process placed so asks of the cluster: custom resources, GPUs, CPUs, its placement group's bundles."""
    need: dict[str, float] = {}
    opts = placement.options
    for name, amount in [*opts.get("resources", {}).items(), ("GPU", opts.get("num_gpus") or 0),
                         ("CPU", opts.get("num_cpus") or 0), *(kv for b in placement.bundles for kv in b.items())]:
        if amount:
            need[name] = need.get(name, 0.0) + amount
    return need


def capacity(need: Mapping[str, float], total: Mapping[str, float]) -> int | None:
    """How many processes asking `need` the resources `total` hold; None when they ask for nothing (no limit).

    >>> capacity({"videorl_rollout": 1}, {"videorl_rollout": 2.0, "CPU": 4.0}), capacity({"GPU": 2}, {"CPU": 4.0})
    (2, 0)
    """
    counts = [int(total.get(name, 0.0) // amount) for name, amount in need.items()]
    return min(counts) if counts else None


class PlacementWatch:
    """Rollout actors pending placement and when each was placed; `update()` once per supervisor look."""

    def __init__(self, say_every_s: float = SAY_EVERY_S):
        self.say_every_s = say_every_s
        self.pending: dict[str, tuple[Any, float]] = {}   # actor id -> (its __ray_ready__ ref, monotonic time seen)
        self.placed_at: dict[str, float] = {}             # actor id -> monotonic time its process was found running
        self.said: set[str] = set()                       # pending actors a waiting line named
        self.last_said = self.last_looked = float("-inf")

    def update(self, actors: Mapping[str, Any]) -> None:
        """Watch the live actors (`actors`: id -> handle): new ones from now, placed ones noted, gone ones forgotten."""
        import ray

        now = time.monotonic()
        for gone in (self.pending.keys() | self.placed_at.keys()) - actors.keys():
            self.pending.pop(gone, None)
            self.placed_at.pop(gone, None)
        for a, handle in actors.items():
            if a not in self.pending and a not in self.placed_at:
                self.pending[a] = (handle.__ray_ready__.remote(), now)
        if not self.pending:
            return
        refs = [ref for ref, _ in self.pending.values()]
        ready = set(ray.wait(refs, num_returns=len(refs), timeout=0)[0])
        for a, (ref, since) in list(self.pending.items()):
            if ref in ready:
                del self.pending[a]
                self.placed_at[a] = now
                if a in self.said:
                    log.warning("rollout actor %s was placed after waiting %.0fs for a node", a, now - since)

    def due(self) -> bool:
        """Actors are pending, the last look at the cluster is LOOK_EVERY_S old and the last line SAY_EVERY_S."""
        now = time.monotonic()
        return (bool(self.pending) and now - self.last_looked >= LOOK_EVERY_S
                and now - self.last_said >= self.say_every_s)

    def say(self, live: int, need: Mapping[str, float], total: Mapping[str, float]) -> str | None:
        """The waiting line (logged, and returned) when the alive nodes hold fewer than the `live` actors asking `need`
        each, given the cluster's `total` resources; None while the pending ones can be placed."""
        self.last_looked = time.monotonic()
        room = capacity(need, total)
        if room is None or room >= live:
            return None
        pending = sorted(self.pending)
        short = [name for name, amount in need.items() if total.get(name, 0.0) < amount * live]
        offers = ", ".join(f"{name} {total.get(name, 0.0):g} of the {need[name] * live:g} they need" for name in short)
        n = min(len(pending), live - room)
        line = (f"waiting for a node offering {' and '.join(short)}: {n} rollout actor{'s' if n > 1 else ''} cannot "
                f"be placed (pending: {', '.join(pending)}; the cluster offers {offers})")
        log.warning("%s", line)
        self.last_said = self.last_looked
        self.said.update(pending)
        return line


def wait_placed(handle: Any, what: str, count: int, need: Mapping[str, float],
                say_every_s: float = SAY_EVERY_S) -> None:
    """Block until Ray placed the actor of `handle` (one of `count` processes asking `need` each, e.g. the learner's
    ranks), saying every `say_every_s` while the alive nodes hold fewer than `count`: in a cluster its worker group's
    node may still be joining, or be replaced after it was lost. An actor Ray fails to create fails on the next call."""
    import ray

    ready, said = handle.__ray_ready__.remote(), float("-inf")
    while not ray.wait([ready], timeout=LOOK_EVERY_S)[0]:
        total = ray.cluster_resources()
        room = capacity(need, total)
        if room is None or room >= count or time.monotonic() - said < say_every_s:
            continue
        short = [name for name, amount in need.items() if total.get(name, 0.0) < amount * count]
        log.warning("waiting for a node offering %s: %s cannot be placed (the cluster offers %s)", " and ".join(short),
                    what, ", ".join(f"{name} {total.get(name, 0.0):g} of the {need[name] * count:g} needed"
                                    for name in short))
        said = time.monotonic()
