"""`rlctl rewards`: score saved completions offline with the rewards the service uses.

Input lines are ``{"reward": NAME, "completion": TEXT, "target": {...}}``; each gives exactly one output
line ``{"reward": FLOAT_OR_NULL, "error": NULL_OR_TEXT}``, in order, so output line k answers input line k
(blank lines included). A malformed line, an unknown reward or a target the reward rejects gets its error
and the rest go on; an "unscorable" (NaN) value is ``null`` with error ``"unscorable"``.

The target becomes the reward's ``Sample``: ``answer`` (written as text) and ``options`` come from the keys
of those names, every key is also in ``extra``. Targets per reward: mcq ``{"answer": "B", "num_options": 4}``
(or ``"options": [...]``); numeric_* ``{"answer": 10.0}``; temporal_iou ``{"segment": [s, e], "duration":
T}``; bbox_iou ``{"box": [x1, y1, x2, y2]}``; graph ``{"graph": {...}}`` (schema in
services/reward/graph.py); format ``{}``.
"""

from __future__ import annotations

import json
import math
import sys
from typing import IO, Any

import click


def _sample(name: str, target: dict[str, Any]) -> Any:
    from services.reward.catalogue import Sample

    answer = target.get("answer", "")
    options = target.get("options", ())
    if not isinstance(options, list | tuple) or not all(isinstance(o, str) for o in options):
        raise ValueError("target options must be a list of strings")
    return Sample(task=name, answer=answer if isinstance(answer, str) else json.dumps(answer),
                  options=tuple(options), extra=dict(target))


def score_line(line: str) -> dict[str, Any]:
    """The output object for one input line; never raises.

    >>> score_line('{"reward": "numeric_mra", "completion": "<answer>8</answer>", "target": {"answer": 10}}')
    {'reward': 0.6, 'error': None}
    >>> score_line('[1, 2]')
    {'reward': None, 'error': 'a line must be a JSON object'}
    """
    from services.reward import catalogue

    try:
        row = json.loads(line)
    except (ValueError, RecursionError) as e:
        return {"reward": None, "error": f"not JSON: {e}"}
    if not isinstance(row, dict):
        return {"reward": None, "error": "a line must be a JSON object"}
    name, completion, target = row.get("reward"), row.get("completion"), row.get("target", {})
    if not isinstance(name, str):
        return {"reward": None, "error": "'reward' must be a reward name"}
    if not isinstance(completion, str):
        return {"reward": None, "error": "'completion' must be a string"}
    if not isinstance(target, dict):
        return {"reward": None, "error": "'target' must be an object"}
    try:
        fn = catalogue.get(name)
    except KeyError as e:
        return {"reward": None, "error": str(e.args[0])}
    try:
        value = float(fn(completion, _sample(name, target)))
    except Exception as e:  # noqa: BLE001 - one bad row is reported on its own line; the rest go on
        return {"reward": None, "error": f"{type(e).__name__}: {e}"}
    if math.isnan(value):
        return {"reward": None, "error": "unscorable"}
    return {"reward": value, "error": None}


def score_stream(lines: IO[str], out: IO[str]) -> tuple[int, int]:
    """Score every line of ``lines`` onto ``out``; returns (lines read, lines with an error)."""
    count = errors = 0
    for raw in lines:
        line = raw.rstrip("\r\n")
        result = score_line(line) if line.strip() else {"reward": None, "error": "empty line"}
        out.write(json.dumps(result, allow_nan=False) + "\n")
        count += 1
        errors += result["error"] is not None
    return count, errors


@click.group()
def rewards() -> None:
    """Score completions offline with the registered rewards."""


@rewards.command()
@click.argument("file", type=click.File("r", encoding="utf-8", errors="surrogateescape"))
def score(file: IO[str]) -> None:
    """Score FILE.jsonl (or - for stdin): one {"reward", "completion", "target"} object per line in, one
    {"reward": FLOAT_OR_NULL, "error": NULL_OR_TEXT} per line out to stdout, in order."""
    count, errors = score_stream(file, sys.stdout)
    click.echo(f"scored {count} lines, {errors} with an error", err=True)


if __name__ == "__main__":
    rewards()
