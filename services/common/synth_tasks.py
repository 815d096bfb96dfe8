"""The synthetic suite's task names, known to the config (it validates `data.synth_tasks`) and to the renderer
(services/data/synth_suite.py)."""

from __future__ import annotations

from collections.abc import Sequence

# Append only: a task's index is part of every clip's seed.
TASKS = ("direction", "order", "count", "distance", "when", "where", "layout", "route", "camera")


def parse_tasks(tasks: str | Sequence[str]) -> list[str]:
    """Task names from "a,b,c" or a list ("all" = every task), in the given order without repeats."""
    names = [t.strip() for t in (tasks.split(",") if isinstance(tasks, str) else tasks) if t.strip()]
    if names == ["all"]:
        return list(TASKS)
    unknown = [t for t in names if t not in TASKS]
    if unknown or not names:
        raise ValueError(f"unknown synthetic task(s) {', '.join(map(repr, unknown)) or '(none given)'}; "
                         f"known: {', '.join(TASKS)} (or 'all')")
    return list(dict.fromkeys(names))
