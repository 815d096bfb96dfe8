"""Dataset rows (JSONL) and their validation. One JSON object per line, e.g.

  {"id": "dir-0001", "video": "videos/0001.mp4", "task": "mcq", "question": "Which way ...?",
   "options": ["up", "down", "left", "right"], "answer": "B", "split": "train"}

Fields (all strings non-empty unless said otherwise):
  id        required; unique within a file
  video     required; a file path (mp4/webm/avi...), a folder of frames (jpg/png, sorted by name), or a URI.
            A relative path is resolved against the JSONL file's folder.
  task      required; one of mcq, numeric, temporal, bbox, open, route
  question  required
  answer    required; a string (a JSON number is accepted and kept as its text)
  options   list of str, the bare option texts in letter order A, B, ... (default [])
  split     str (default "train")
  extra     object, kept with the row (default {}); `extra.synth_task` names a synthetic task (per-task accuracy),
            `extra.reverse_time` plays the video backwards; rewards see only the typed ground truth below
  reasoning str, optional: a worked chain of thought for the answer (CoT-SFT, services/learner/sft.py trains on
            `<think>{reasoning}</think><answer>{answer}</answer>`); non-empty when given, never seen by rewards
Optional ground truth (top level; for backward compatibility also read from `extra` when absent at top level),
checked by the rules of services/common/ground_truth.py, the same the rewards read their targets with:
  segment   [s, e] seconds, finite, 0 <= s <= e (<= duration when duration is given)
  segments  [[s, e], ...], each as `segment`
  duration  seconds > 0
  box       [x1, y1, x2, y2], finite, x1 <= x2, y1 <= y2 (pixel or normalised coordinates: rewards decide)
  boxes     [[x1, y1, x2, y2] or null, ...], one per frame, at least one box
  graph     {"nodes": [{"id", "name", "pos": [x, y]}], "edges": [{"src", "dst", "rel"}], "keyframes": [...]}:
            node ids (str or int) unique, names str, pos two finite numbers, every edge names declared ids, rel a str
  reference str, a reference answer for the LLM judge
  reverse   {"question": str, "answer": str, "options": [str] (optional, default: the row's options),
            "reasoning": str (optional)}: the ST-R1 reverse-time variant, expanded into its own row by
            `rows_with_reverse`
Per task: mcq needs 2..26 options and an answer letter among them (also the reverse variant's);
numeric needs an answer that parses as a finite float; temporal needs segment or segments, and duration;
bbox needs box or boxes. Scene-layout rows are mcq or open rows carrying a graph.

Invariants: every error is a DatasetError naming the file, the line and the field
("data.jsonl:12: field 'segment': ..."); a Row's ground truth reaches the actors and rewards as the typed
`Prompt.truth` (`Row.to_prompt`), checked here once.
"""

from __future__ import annotations

import json
import math
import string
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from services.common.ground_truth import (
    Box,
    GroundTruth,
    GroundTruthError,
    SceneGraph,
    Segment,
    check_box,
    check_boxes,
    check_duration,
    check_graph,
    check_segment,
    check_segments,
    finite,
)
from services.common.pb.videorl.v1 import rollout_pb2 as pb

TASKS = ("mcq", "numeric", "temporal", "bbox", "open", "route")
GROUND_TRUTH_KEYS = ("segment", "segments", "duration", "box", "boxes", "graph", "reference")
LETTERS = string.ascii_uppercase
MAX_OPTIONS = len(LETTERS)
REVERSE_SUFFIX = "-rev"
_REQUIRED = ("id", "video", "task", "question", "answer")



class DatasetError(ValueError):
    pass


@dataclass(frozen=True)
class Reverse:
    """The reverse-time variant of a row (ST-R1): the same video played backwards, its own question."""

    question: str
    answer: str
    options: tuple[str, ...] = ()
    reasoning: str = ""


@dataclass(frozen=True)
class Row:
    id: str
    video: str
    task: str
    question: str
    answer: str
    options: tuple[str, ...] = ()
    split: str = "train"
    extra: dict = field(default_factory=dict)
    segment: Segment | None = None
    segments: tuple[Segment, ...] = ()
    duration: float | None = None
    box: Box | None = None
    boxes: tuple[Box | None, ...] = ()
    graph: SceneGraph | None = None
    reference: str = ""
    reverse: Reverse | None = None
    reasoning: str = ""  # "" = none (the JSON field is absent or null)

    def ground_truth(self) -> GroundTruth:
        """The row's ground truth as rewards and actors see it (`segments` wins over `segment` when both are given,
        as the temporal rewards read them)."""
        segments = self.segments or ((self.segment,) if self.segment is not None else ())
        synth_task = self.extra.get("synth_task")
        return GroundTruth(segments=segments, single_segment=not self.segments and self.segment is not None,
                           duration=self.duration, box=self.box, boxes=self.boxes, graph=self.graph,
                           reference=self.reference, num_options=len(self.options) if self.task == "mcq" else 0,
                           reverse_time=self.extra.get("reverse_time") is True,
                           synth_task=synth_task if isinstance(synth_task, str) else "")

    def to_prompt(self, prompt_id: str) -> pb.Prompt:
        return pb.Prompt(prompt_id=prompt_id, sample_id=self.id, task=self.task, video_uri=self.video,
                         question=self.question, options=list(self.options), answer=self.answer, split=self.split,
                         truth=self.ground_truth().to_proto())


def rows_with_reverse(rows: Iterable[Row]) -> Iterator[Row]:
    """Each row, followed by its reverse-time variant when it has one: id + "-rev", the same video (the media
    pipeline plays it backwards because extra["reverse_time"] is true), the reverse question, answer and
    options. Time-indexed ground truth is mirrored to match: a segment [s, e] becomes [d - e, d - s] when the
    duration d is known (else it is dropped), and per-frame boxes are listed in reverse order."""
    for row in rows:
        yield row
        if row.reverse is None:
            continue
        d = row.duration
        yield replace(
            row, id=row.id + REVERSE_SUFFIX, question=row.reverse.question, answer=row.reverse.answer,
            options=row.reverse.options or row.options, extra={**row.extra, "reverse_time": True}, reverse=None,
            reasoning=row.reverse.reasoning,  # the forward reasoning describes the forward video: never reused
            segment=_mirror(row.segment, d) if row.segment is not None and d else None,
            segments=tuple(_mirror(s, d) for s in row.segments) if d else (),
            boxes=tuple(reversed(row.boxes)))


def _mirror(s: Segment, duration: float) -> Segment:
    return (duration - s[1], duration - s[0])


# ---- parsing -----------------------------------------------------------------------------------------


def _string(obj: dict, k: str, where: str, default: str = "") -> str:
    v = obj.get(k, default)
    if not isinstance(v, str):
        raise DatasetError(f"{where}: field {k!r} must be a string")
    return v


def _reasoning(obj: dict, where: str, prefix: str = "") -> str:
    """The optional reasoning text: absent or null -> "", else a non-empty string."""
    v = obj.get("reasoning")
    if v is None:
        return ""
    if not isinstance(v, str) or not v.strip():
        raise DatasetError(f"{where}: field {prefix + 'reasoning'!r} must be a non-empty string when given")
    return v


def _options(v: object, where: str, name: str) -> tuple[str, ...]:
    if not isinstance(v, list) or not all(isinstance(o, str) for o in v):
        raise DatasetError(f"{where}: field {name!r} must be a list of strings")
    return tuple(v)


def _check_letter(answer: str, options: tuple[str, ...], where: str, prefix: str) -> None:
    if not 2 <= len(options) <= MAX_OPTIONS:
        raise DatasetError(f"{where}: field {prefix + 'options'!r}: task mcq needs 2..{MAX_OPTIONS} options, "
                           f"got {len(options)}")
    if len(answer) != 1 or answer not in LETTERS[: len(options)]:
        raise DatasetError(f"{where}: field {prefix + 'answer'!r}: {answer!r} is not an option letter "
                           f"A..{LETTERS[len(options) - 1]}")


def _ground_truth(obj: dict, extra: dict, where: str) -> dict[str, Any]:
    """The optional ground-truth fields, typed (services/common/ground_truth.py's rules); a key missing at top level
    is looked up in `extra`."""
    def get(k: str) -> tuple[object, str] | None:
        if k in obj:
            return obj[k], k
        if k in extra:
            return extra[k], f"extra.{k}"
        return None

    gt: dict[str, Any] = {}
    try:
        if (g := get("duration")) is not None:
            gt["duration"] = check_duration(*g)
        if (g := get("segment")) is not None:
            gt["segment"] = check_segment(g[0], g[1], gt.get("duration"))
        if (g := get("segments")) is not None:
            gt["segments"] = check_segments(g[0], g[1], gt.get("duration"))
        if (g := get("box")) is not None:
            gt["box"] = check_box(*g)
        if (g := get("boxes")) is not None:
            gt["boxes"] = check_boxes(*g)
        if (g := get("graph")) is not None:
            gt["graph"] = check_graph(*g)
        if (g := get("reference")) is not None:
            if not isinstance(g[0], str):
                raise GroundTruthError(g[1], "must be a string")
            gt["reference"] = g[0]
    except GroundTruthError as e:
        raise DatasetError(f"{where}: {e}") from None
    return gt


def _reverse(v: object, where: str, task: str, options: tuple[str, ...]) -> Reverse:
    if not isinstance(v, dict):
        raise DatasetError(f"{where}: field 'reverse' must be an object with 'question' and 'answer'")
    for k in ("question", "answer"):
        if not isinstance(v.get(k), str) or not v[k].strip():
            raise DatasetError(f"{where}: field 'reverse.{k}' must be a non-empty string")
    rev = Reverse(v["question"], v["answer"], _options(v.get("options", []), where, "reverse.options"),
                  _reasoning(v, where, "reverse."))
    if task == "mcq":
        _check_letter(rev.answer, rev.options or options, where, "reverse.")
    return rev


def _check_task(row: Row, where: str) -> None:
    if row.task == "mcq":
        _check_letter(row.answer, row.options, where, "")
    elif row.task == "numeric":
        try:
            ok = math.isfinite(float(row.answer))
        except ValueError:
            ok = False
        if not ok:
            raise DatasetError(f"{where}: field 'answer': task numeric needs a finite number, got {row.answer!r}")
    elif row.task == "temporal":
        if row.segment is None and not row.segments:
            raise DatasetError(f"{where}: field 'segment': task temporal needs 'segment' or 'segments'")
        if row.duration is None:
            raise DatasetError(f"{where}: field 'duration': task temporal needs the video's duration")
    elif row.task == "bbox" and row.box is None and not row.boxes:
        raise DatasetError(f"{where}: field 'box': task bbox needs 'box' or 'boxes'")


def parse_row(obj: object, where: str, base: Path) -> Row:
    if not isinstance(obj, dict):
        raise DatasetError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    obj = dict(obj)
    if finite(obj.get("answer")):
        obj["answer"] = str(obj["answer"])
    for k in _REQUIRED:
        if k not in obj:
            raise DatasetError(f"{where}: missing field {k!r}")
        if not isinstance(obj[k], str) or not obj[k].strip():
            raise DatasetError(f"{where}: field {k!r} must be a non-empty string")
    if obj["task"] not in TASKS:
        raise DatasetError(f"{where}: field 'task': {obj['task']!r} is not one of {', '.join(TASKS)}")
    options = _options(obj.get("options", []), where, "options")
    extra = obj.get("extra", {})
    if not isinstance(extra, dict):
        raise DatasetError(f"{where}: field 'extra' must be an object")
    gt = _ground_truth(obj, extra, where)
    reverse = _reverse(obj["reverse"], where, obj["task"], options) if obj.get("reverse") is not None else None
    raw = obj["video"]
    video = Path(raw)
    video = video if video.is_absolute() or "://" in raw else (base / video)
    row = Row(id=obj["id"], video=raw if "://" in raw else str(video), task=obj["task"], question=obj["question"],
              answer=obj["answer"], options=options, split=_string(obj, "split", where, "train"), extra=extra,
              reverse=reverse, reasoning=_reasoning(obj, where), **gt)
    _check_task(row, where)
    return row


def iter_rows(path: Path, errors: list[DatasetError] | None = None) -> Iterator[Row]:
    """Rows of a JSONL file, read one line at a time; ids must be unique within the file.

    A bad line raises its DatasetError, unless `errors` is a list: then the error is appended there and the
    line skipped, so one pass reports every bad line (a file that cannot be opened still raises)."""
    path = Path(path)
    seen: dict[str, int] = {}
    try:
        f = path.open("rb")
    except OSError as e:
        raise DatasetError(f"{path}: cannot read dataset: {e}") from e
    with f:
        for i, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                row = _parse_line(raw, f"{path}:{i}", path.parent)
                if row.id in seen:
                    raise DatasetError(f"{path}:{i}: field 'id': duplicate id {row.id!r} "
                                       f"(first on line {seen[row.id]})")
            except DatasetError as e:
                if errors is None:
                    raise
                errors.append(e)
                continue
            seen[row.id] = i
            yield row


def _parse_line(raw: bytes, where: str, base: Path) -> Row:
    try:
        obj = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise DatasetError(f"{where}: not UTF-8 text: {e.reason}") from None
    except json.JSONDecodeError as e:
        raise DatasetError(f"{where}: not valid JSON: {e.msg}") from None
    except RecursionError:  # the C parser gives up on arrays or objects nested some thousands deep
        raise DatasetError(f"{where}: not valid JSON: nested too deeply") from None
    return parse_row(obj, where, base)


def load_rows(path: Path, errors: list[DatasetError] | None = None) -> list[Row]:
    """Every row of `path` (see iter_rows for `errors`); a file without a single good row is an error."""
    rows = list(iter_rows(path, errors))
    if not rows:
        raise DatasetError(f"{path}: no rows" + (f" ({len(errors)} bad lines, first: {errors[0]})" if errors else ""))
    return rows
