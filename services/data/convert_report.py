"""What `rlctl data convert` did with every input record: rows written, records skipped (by reason, with the first
few examples), records ignored on purpose, and warnings (ends clipped to the video's length, videos that point
nowhere, columns not understood); how many rows had their absolute video paths remapped under --video-root.

Invariant: every record read is counted once, as converted, skipped or ignored (`accounted`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

EXAMPLES = 3   # messages kept per reason


class ConvertError(ValueError):
    """A record (or the input) cannot be converted; `reason` groups it in the report (e.g. "field 'Answer'")."""

    def __init__(self, message: str, reason: str = "malformed record"):
        super().__init__(message)
        self.reason = reason


@dataclass
class Report:
    source: str
    inp: str = ""
    out: str = ""
    split: str = "train"
    split_from: str = "--split"
    records: int = 0                                             # input records read
    converted: int = 0                                           # records that gave rows
    written: int = 0                                             # rows written (a record may give several)
    skipped: dict[str, int] = field(default_factory=dict)        # reason -> records
    ignored: dict[str, int] = field(default_factory=dict)        # reason -> records left out on purpose
    warnings: dict[str, int] = field(default_factory=dict)       # kind -> rows (clipped, missing video, ...)
    remapped: int = 0                                            # rows whose absolute video path was remapped
    examples: dict[str, list[str]] = field(default_factory=dict)  # reason or kind -> first messages

    def skip(self, e: ConvertError) -> None:
        self.skipped[e.reason] = self.skipped.get(e.reason, 0) + 1
        self._example(e.reason, str(e))

    def ignore(self, reason: str) -> None:
        self.ignored[reason] = self.ignored.get(reason, 0) + 1

    def warn(self, kind: str, message: str) -> None:
        self.warnings[kind] = self.warnings.get(kind, 0) + 1
        self._example(kind, message)

    def _example(self, key: str, message: str) -> None:
        kept = self.examples.setdefault(key, [])
        if len(kept) < EXAMPLES:
            kept.append(message)

    @property
    def accounted(self) -> bool:
        return self.records == self.converted + sum(self.skipped.values()) + sum(self.ignored.values())

    def reasons(self) -> str:
        """The skipped reasons, each with its count and first examples (also the error when nothing converted)."""
        lines = []
        for reason, n in sorted(self.skipped.items(), key=lambda kv: -kv[1]):
            lines.append(f"  skipped {n} x {reason}, e.g.:")
            lines += [f"    {m}" for m in self.examples.get(reason, [])]
        return "\n".join(lines)

    def summary(self) -> str:
        n_skip, n_ign = sum(self.skipped.values()), sum(self.ignored.values())
        lines = [f"{self.source}: {self.records} records read: {self.converted} converted into {self.written} rows, "
                 f"{n_skip} skipped, {n_ign} ignored; split {self.split} ({self.split_from})"]
        lines += [f"  ignored {n} x {reason}" for reason, n in self.ignored.items()]
        if self.remapped:
            lines.append(f"  {self.remapped} rows: absolute video path remapped under --video-root")
        for kind, n in self.warnings.items():
            lines.append(f"  warning: {n} rows {kind}, e.g.:")
            lines += [f"    {m}" for m in self.examples.get(kind, [])]
        if n_skip:
            lines.append(self.reasons())
        return "\n".join(lines)

    def to_json(self) -> str:
        return json.dumps(asdict(self) | {"accounted": self.accounted}, indent=1)
