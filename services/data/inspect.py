"""`rlctl data inspect FILE`: what a videorl dataset holds, before training on it: the task mix, the answers, the
options per question, which video paths exist, and the longest prompt (as the actors render it)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from services.common.dataset import DatasetError, Row, iter_rows
from services.common.prompts import user_text

MISSING_SHOWN = 5


@dataclass
class Inspection:
    path: str
    rows: int = 0
    bad_lines: list[str] = field(default_factory=list)
    splits: Counter = field(default_factory=Counter)
    tasks: Counter = field(default_factory=Counter)
    answers: dict[str, Counter] = field(default_factory=dict)       # task -> answer -> rows
    options: Counter = field(default_factory=Counter)               # options per question -> rows
    videos_found: int = 0
    videos_missing: list[str] = field(default_factory=list)         # distinct paths that do not exist
    videos: int = 0                                                 # distinct paths
    with_reasoning: int = 0
    longest: tuple[int, str] = (0, "")                              # characters of the user prompt, row id

    def lines(self) -> list[str]:
        out = [f"{self.path}: {self.rows} rows" + (f", {len(self.bad_lines)} bad lines" if self.bad_lines else "")]
        out += [f"  bad: {b}" for b in self.bad_lines[:MISSING_SHOWN]]
        out.append("splits: " + _counts(self.splits))
        out.append("tasks: " + _counts(self.tasks))
        for task, answers in sorted(self.answers.items()):
            top = answers.most_common(8)
            more = f" (+{len(answers) - len(top)} other answers)" if len(answers) > len(top) else ""
            out.append(f"answers ({task}): " + ", ".join(f"{a!r} {n}" for a, n in top) + more)
        if self.options:
            out.append("options per question: " + ", ".join(f"{k}: {n}" for k, n in sorted(self.options.items())))
        out.append(f"videos: {self.videos} distinct, {self.videos_found} found, {len(self.videos_missing)} missing"
                   + "".join(f"\n  missing: {p}" for p in self.videos_missing[:MISSING_SHOWN])
                   + (f"\n  ... and {len(self.videos_missing) - MISSING_SHOWN} more"
                      if len(self.videos_missing) > MISSING_SHOWN else ""))
        out.append(f"rows with reasoning (for rlctl sft): {self.with_reasoning}")
        out.append(f"longest prompt: {self.longest[0]} characters (row {self.longest[1]})")
        return out


def _counts(c: Counter) -> str:
    return ", ".join(f"{k} {n} ({n / max(1, sum(c.values())):.0%})" for k, n in c.most_common())


def inspect(path: Path) -> Inspection:
    """Read every row of `path` (bad lines are listed, not fatal) and describe them."""
    errors: list[DatasetError] = []
    ins = Inspection(str(path))
    seen: dict[str, bool] = {}
    for row in iter_rows(Path(path), errors):
        _add(ins, row, seen)
    ins.bad_lines = [str(e) for e in errors]
    ins.videos = len(seen)
    ins.videos_found = sum(seen.values())
    ins.videos_missing = [p for p, ok in seen.items() if not ok]
    return ins


def _add(ins: Inspection, row: Row, seen: dict[str, bool]) -> None:
    ins.rows += 1
    ins.splits[row.split] += 1
    ins.tasks[row.task] += 1
    ins.answers.setdefault(row.task, Counter())[row.answer] += 1
    if row.options:
        ins.options[len(row.options)] += 1
    if row.video not in seen:
        seen[row.video] = "://" in row.video or Path(row.video).exists()
    ins.with_reasoning += bool(row.reasoning)
    chars = len(user_text(row.question, row.options))
    if chars > ins.longest[0]:
        ins.longest = (chars, row.id)
