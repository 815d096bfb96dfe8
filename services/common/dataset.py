"""Dataset rows (JSONL) and their validation. One row per line:

  {"id": "dir-0001", "video": "videos/0001.mp4", "task": "mcq", "question": "Which way ...?",
   "options": ["up", "down", "left", "right"], "answer": "B", "split": "train"}

Required: id, video, task, question, answer. Optional: options (list of str), split, extra (object of
task-specific ground truth). A relative `video` path is resolved against the JSONL file's folder.
Errors name the file, the line and the field.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from services.common.pb.videorl.v1 import rollout_pb2 as pb

_REQUIRED = ("id", "video", "task", "question", "answer")


class DatasetError(ValueError):
    pass


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

    def to_prompt(self, prompt_id: str) -> pb.Prompt:
        return pb.Prompt(prompt_id=prompt_id, sample_id=self.id, task=self.task, video_uri=self.video,
                         question=self.question, options=list(self.options), answer=self.answer, split=self.split,
                         extra_json=json.dumps(self.extra) if self.extra else "")


def parse_row(obj: object, where: str, base: Path) -> Row:
    if not isinstance(obj, dict):
        raise DatasetError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    for k in _REQUIRED:
        if k not in obj:
            raise DatasetError(f"{where}: missing field {k!r}")
        if not isinstance(obj[k], str) or not obj[k].strip():
            raise DatasetError(f"{where}: field {k!r} must be a non-empty string")
    options = obj.get("options", [])
    if not isinstance(options, list) or not all(isinstance(o, str) for o in options):
        raise DatasetError(f"{where}: field 'options' must be a list of strings")
    extra = obj.get("extra", {})
    if not isinstance(extra, dict):
        raise DatasetError(f"{where}: field 'extra' must be an object")
    video = Path(obj["video"])
    video = video if video.is_absolute() or "://" in obj["video"] else (base / video)
    return Row(id=obj["id"], video=str(video), task=obj["task"], question=obj["question"], answer=obj["answer"],
               options=tuple(options), split=str(obj.get("split", "train")), extra=extra)


def load_rows(path: Path) -> list[Row]:
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except OSError as e:
        raise DatasetError(f"{path}: cannot read dataset: {e}") from e
    rows = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DatasetError(f"{path}:{i}: not valid JSON: {e.msg}") from None
        rows.append(parse_row(obj, f"{path}:{i}", path.parent))
    if not rows:
        raise DatasetError(f"{path}: no rows")
    return rows
