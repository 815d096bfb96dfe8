"""Converters from published video-QA annotation formats to videorl dataset rows (services/common/dataset.py).

Formats read (field names as the datasets publish them; where a publication left a detail open, the
assumption is named):

ego-st      Ego-ST Bench / ST-R1 (github.com/WPR001/Ego-ST). Two shapes, told apart by content:
            (a) the benchmark JSON: an object keyed by sample id, each value with "video" (a file name under the
                part's video folder), route QA "question" + "forward_answer" and/or "reverse_answer", and MCQ
                blocks "forward_mcq" / "reverse_mcq" = {"question", "options": ["A. ...", ...], "answer"}.
                Assumed: the MCQ block's correct letter is under "answer" (the published inference scripts
                never read it); an answer given as a list of steps is joined with ", ".
                Each block becomes its own row: <stem>-<key>-route / -route-back (task route, the answer also
                as the judge's reference) and -mcq / -mcq-back (task mcq). Ego-ST's "reverse" questions ask
                for the way back on the unreversed video, so they are plain rows, not reverse-time variants.
            (b) the ST-R1 training JSONL (ST-R1/r1_data/*.jsonl): "problem" (question, then "Options: A. x, B. y"
                and "Instructions: ..."), "solution" ("<think>..</think> <answer>D</answer>"), "video",
                "original_question", "original_answer". Options are split out of the problem text; "video" is
                an absolute path on the publishers' machine (/vi-lab/Ego-ST-bench/r1_video/...), found under
                --video-root by its tail.
vsi-bench   VSI-Bench (huggingface nyu-visionx/VSI-Bench, test parquet or its JSON/JSONL export): "id",
            "dataset", "scene_name", "question_type", "question", "options" (["A. chair", ...] or null),
            "ground_truth". The video is <dataset>/<scene_name>.mp4 under --video-root, as in the published
            zips. Rows with options are mcq (ground_truth a letter, or an option's text, mapped to its letter);
            rows without are numeric. The debiased release's "pruned" flag is kept in extra; --debiased leaves
            the pruned rows out (VSI-Bench-Debiased).
sti-bench   STI-Bench (huggingface MINT-SJTU/STI-Bench qa.parquet, as read by its opensource_test.py): "ID",
            "Video" (file under the video folder), "Task", "Question", "Candidates" ({"A": ..., ...} or that as
            a JSON string), "Answer" (a letter), "time_start", "time_end" (seconds the question is about;
            put in front of the question as the published script does, and kept in extra["window"]). IDs are
            numbered per video (the published evaluation keys results by (Video, ID)): ids are
            sti-<video stem>-<ID>. Null candidates may only come last and are left out.
video-r1    Video-R1-260k (huggingface Video-R1/Video-R1-data, Video-R1-260k.json): a JSON list of "problem_id",
            "problem", "data_type" (image rows are ignored, not errors), "problem_type" (multiple choice -> mcq,
            numerical/regression -> numeric, OCR/free-form -> open with the answer as reference), "options"
            (["A. ...", ...]), "solution" ("<answer>..</answer>"), "path" (relative to the data folder),
            "data_source", and in the CoT release (Video-R1-COT-165k.json) "process" ("<think>..</think>"),
            kept as the row's `reasoning` for `rlctl sft`. Ids are video-r1-<index in the list>: published
            problem_ids repeat across sources.
charades-sta Charades-STA (github.com/jiyanggao/TALL) charades_sta_{train,test}.txt: lines
            "VIDEOID start end##sentence" (a fourth number before ## is read and ignored, with a warning). The
            txt carries no video length, so task temporal needs --durations (Charades_v1_{train,test}.csv with
            columns id and length, or a JSON {video id: seconds}) or else the video <VIDEOID>.mp4 under
            --video-root is probed with PyAV. An end past the video's length (15% of the published lines) is
            clipped to the length, with a warning in the report.

Each converter maps one record to its rows ([] = left out on purpose, counted as ignored) and names the field of a
bad record (ConvertError); services/data/convert.py drives them.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from services.common.dataset import LETTERS
from services.data.convert_report import ConvertError, Report
from services.data.records import Record

SOURCES = ("ego-st", "vsi-bench", "sti-bench", "video-r1", "charades-sta")


@dataclass(frozen=True)
class Context:
    stem: str
    video_root: Path | None
    split: str
    durations: dict[str, float] = field(default_factory=dict)
    report: Report = field(default_factory=lambda: Report(""))
    strict: bool = False
    debiased: bool = False
    remapped: set[str] = field(default_factory=set)   # video paths found under --video-root by their tail

    def warn(self, rec: Record, kind: str, message: str) -> None:
        """A row kept with a caveat (counted in the report); with --strict, an error instead."""
        if self.strict:
            raise ConvertError(f"{rec.where}: {message} (--strict)", kind)
        self.report.warn(kind, f"{rec.where}: {message}")


# ---- field helpers -----------------------------------------------------------------------------------


def _bad(rec: Record, name: str, msg: str) -> ConvertError:
    return ConvertError(f"{rec.where}: field {name!r}: {msg}", f"field {name!r}")


def _obj(rec: Record) -> dict:
    if not isinstance(rec.value, dict):
        raise ConvertError(f"{rec.where}: expected an object, got {type(rec.value).__name__}", "not an object")
    return rec.value


def _text(rec: Record, obj: dict, name: str) -> str:
    v = obj.get(name)
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return str(v)
    if not isinstance(v, str) or not v.strip():
        raise _bad(rec, name, "missing or not a non-empty string" if v is None else f"expected a string, got {v!r}")
    return v.strip()


def _seconds(rec: Record, obj: dict, name: str) -> float:
    v = obj.get(name)
    try:
        return float(v if isinstance(v, (int, float, str)) else "")
    except ValueError:
        raise _bad(rec, name, f"expected seconds, got {v!r}") from None


_LABEL = re.compile(r"^\s*\(?([A-Z])\s*[.):]\s*")


def _bare_options(rec: Record, name: str, options: object) -> list[str]:
    """Option texts without their "A. " / "(A) " labels. Labels are stripped only when every option has one,
    so an unlabelled text that happens to start like "D.C. ..." is kept; labels must then run A, B, C ..."""
    if not isinstance(options, list) or not all(isinstance(o, str) for o in options):
        raise _bad(rec, name, f"expected a list of strings, got {options!r}")
    if len(options) > len(LETTERS):
        raise _bad(rec, name, f"{len(options)} options, more than the {len(LETTERS)} letters")
    marks = [_LABEL.match(o) for o in options]
    if not all(marks):
        return [o.strip() for o in options]
    for i, m in enumerate(marks):
        if m and m.group(1) != LETTERS[i]:
            raise _bad(rec, name, f"option {i} is labelled {m.group(1)!r}, expected {LETTERS[i]!r}")
    return [o[m.end():].strip() for o, m in zip(options, marks, strict=True) if m]


def _letter(rec: Record, name: str, answer: str, options: list[str]) -> str:
    """The answer as an option letter: "B", "(B)", "B. text", or an option's own text."""
    m = re.match(r"^\s*\(?([A-Z])\)?(?:[.:)\s]|$)", answer)
    if m and m.group(1) in LETTERS[: len(options)]:
        return m.group(1)
    if answer.strip() in options:
        return LETTERS[options.index(answer.strip())]
    raise _bad(rec, name, f"{answer!r} is neither an option letter A..{LETTERS[len(options) - 1]} nor an option")


def _tagged_answer(text: str) -> str:
    m = re.search(r"<answer>(.*?)</answer>", text, re.DOTALL)
    return (m.group(1) if m else text).strip()


def _video(ctx: Context, rel: str) -> str:
    """`rel` under --video-root; an absolute path that does not exist (the publisher's machine) is looked for under
    the root by its tail, longest first: /vi-lab/Ego-ST-bench/r1_video/x.mp4 -> ROOT/Ego-ST-bench/r1_video/x.mp4,
    ROOT/r1_video/x.mp4, ROOT/x.mp4. A path found nowhere is kept (the report counts it as missing)."""
    if "://" in rel or ctx.video_root is None:
        return rel
    path = Path(rel)
    if not path.is_absolute():
        return str(ctx.video_root / rel)
    if path.exists():
        return rel
    for i in range(1, len(path.parts)):
        found = ctx.video_root.joinpath(*path.parts[i:])
        if found.is_file():
            ctx.remapped.add(str(found))
            return str(found)
    return rel


def _row(ctx: Context, **fields: Any) -> dict:
    return {"split": ctx.split, **{k: v for k, v in fields.items() if v not in (None, {}, [])}}


# ---- one function per source: (record, context) -> rows ([] = not applicable, counted as ignored) -------


def from_vsi_bench(rec: Record, ctx: Context) -> list[dict]:
    o = _obj(rec)
    qtype = _text(rec, o, "question_type")
    video = _video(ctx, f"{_text(rec, o, 'dataset')}/{_text(rec, o, 'scene_name')}.mp4")
    pruned = o.get("pruned")
    if pruned is not None and not isinstance(pruned, bool):
        raise _bad(rec, "pruned", f"expected true or false, got {pruned!r}")
    if pruned and ctx.debiased:
        return []   # not in VSI-Bench-Debiased (counted as ignored)
    common = dict(id=f"vsi-{_text(rec, o, 'id')}", video=video, question=_text(rec, o, "question"),
                  extra={"question_type": qtype, "source": o["dataset"],
                         **({"pruned": pruned} if pruned is not None else {})})
    truth = _text(rec, o, "ground_truth")
    if o.get("options"):
        options = _bare_options(rec, "options", o["options"])
        return [_row(ctx, task="mcq", options=options, answer=_letter(rec, "ground_truth", truth, options), **common)]
    try:
        float(truth)
    except ValueError:
        raise _bad(rec, "ground_truth", f"{qtype} has no options, so it needs a number, got {truth!r}") from None
    return [_row(ctx, task="numeric", answer=truth, **common)]


def from_sti_bench(rec: Record, ctx: Context) -> list[dict]:
    o = _obj(rec)
    cands = o.get("Candidates")
    if isinstance(cands, str):
        try:
            cands = json.loads(cands)
        except json.JSONDecodeError:
            raise _bad(rec, "Candidates", "not a JSON object") from None
    if not isinstance(cands, dict) or sorted(cands) != list(LETTERS[: len(cands)]):
        raise _bad(rec, "Candidates", f"expected an object keyed A, B, C ..., got {cands!r}")
    options = _candidates(rec, [cands[k] for k in LETTERS[: len(cands)]])
    answer = _text(rec, o, "Answer")
    if answer in LETTERS[len(options): len(cands)]:
        raise _bad(rec, "Answer", f"{answer!r} names a candidate that is null")
    question = _text(rec, o, "Question")
    extra: dict[str, Any] = {"task_name": _text(rec, o, "Task")}
    if o.get("time_start") is not None and o.get("time_end") is not None:
        start, end = _seconds(rec, o, "time_start"), _seconds(rec, o, "time_end")
        question, extra["window"] = f"From {start:g} s to {end:g} s. {question}", [start, end]
    video = _text(rec, o, "Video")
    # IDs are numbered per video (STI-Bench's own evaluation keys results by (Video, ID)), so the id holds both.
    ident = f"{Path(video).stem}-{_text(rec, o, 'ID')}" if o.get("ID") is not None else rec.key
    extra["ID"] = o.get("ID")
    return [_row(ctx, id=f"sti-{ident}", video=_video(ctx, video), task="mcq", question=question,
                 options=options, answer=_letter(rec, "Answer", answer, options), extra=extra)]


def _candidates(rec: Record, values: list[object]) -> list[str]:
    """Option texts A, B, ... of STI-Bench's Candidates; null (or empty) ones may only come last, and are left out."""
    texts = ["" if v is None else str(v).strip() for v in values]
    n = next((i for i, t in enumerate(texts) if not t), len(texts))
    if any(texts[n:]):
        raise _bad(rec, "Candidates", f"candidate {LETTERS[n]} is null but a later one is not: {values!r}")
    if n < 2:
        raise _bad(rec, "Candidates", f"{n} non-null candidates; a multiple-choice row needs at least 2")
    return texts[:n]


_R1_TYPES = {"multiple choice": "mcq", "numerical": "numeric", "regression": "numeric", "OCR": "open",
             "free-form": "open"}


def from_video_r1(rec: Record, ctx: Context) -> list[dict]:
    o = _obj(rec)
    if o.get("data_type") != "video":
        if o.get("data_type") == "image":
            return []
        raise _bad(rec, "data_type", f"expected 'video' or 'image', got {o.get('data_type')!r}")
    ptype = _text(rec, o, "problem_type")
    if ptype not in _R1_TYPES:
        raise _bad(rec, "problem_type", f"{ptype!r} is not one of {', '.join(_R1_TYPES)}")
    answer = _tagged_answer(_text(rec, o, "solution"))
    row = _row(ctx, id=f"video-r1-{rec.key}", video=_video(ctx, _text(rec, o, "path").removeprefix("./")),
               task=_R1_TYPES[ptype], question=_text(rec, o, "problem"), answer=answer,
               reasoning=_think(rec, o.get("process")),
               extra={"problem_id": o.get("problem_id"), "source": o.get("data_source"), "problem_type": ptype})
    if ptype == "multiple choice":
        row["options"] = _bare_options(rec, "options", o.get("options"))
        row["answer"] = _letter(rec, "solution", answer, row["options"])
    elif _R1_TYPES[ptype] == "open":
        row["reference"] = answer
    return [row]


def _think(rec: Record, process: object) -> str | None:
    """The chain of thought of Video-R1's CoT release ("process": "<think>...</think>") for SFT's `reasoning`."""
    if process is None:
        return None
    if not isinstance(process, str):
        raise _bad(rec, "process", f"expected a string, got {process!r}")
    m = re.search(r"<think>(.*?)</think>", process, re.DOTALL)
    return (m.group(1) if m else process).strip() or None


def from_charades_sta(rec: Record, ctx: Context) -> list[dict]:
    head, sep, sentence = str(rec.value).partition("##")
    parts = head.split()
    if not sep or len(parts) not in (3, 4) or not sentence.strip():
        raise _bad(rec, "line", f"expected 'VIDEOID start end##sentence', got {rec.value!r}")
    if len(parts) == 4:   # several moment-retrieval repositories ship a fourth number; nothing here needs it
        ctx.warn(rec, "with a 4th column (ignored)", f"column 4 {parts[3]!r} ignored")
    vid = parts[0]
    try:
        start, end = float(parts[1]), float(parts[2])
    except ValueError:
        raise _bad(rec, "start/end", f"not numbers: {parts[1]!r} {parts[2]!r}") from None
    if not 0 <= start <= end:
        raise _bad(rec, "start/end", f"need 0 <= start <= end, got {start:g} {end:g}")
    duration = ctx.durations.get(vid) or _probe_duration(rec, ctx, vid)
    if start >= duration:
        raise _bad(rec, "start", f"{start:g} is not before the video's end ({duration:g} s)")
    if end > duration:
        ctx.warn(rec, "clipped to the video's length", f"end {end:g} s is past {vid}'s length {duration:g} s: "
                 f"clipped to {duration:g}")
        end = duration
    sentence = sentence.strip().rstrip(".")
    return [_row(ctx, id=f"charades-{vid}-{rec.key}", video=_video(ctx, f"{vid}.mp4"), task="temporal",
                 question=f'During which seconds of the video does this happen: "{sentence}"?',
                 answer=f"{start:g}-{end:g}", segment=[start, end], duration=duration)]


def _probe_duration(rec: Record, ctx: Context, vid: str) -> float:
    if ctx.video_root is None:
        raise ConvertError(f"{rec.where}: field 'duration': no --durations entry for {vid!r} and no --video-root "
                           "to probe the video", "no duration")
    path = ctx.video_root / f"{vid}.mp4"
    import av  # only this source needs it, and only without --durations

    try:
        with av.open(str(path)) as c:
            if c.duration:
                return c.duration / 1_000_000  # av.time_base
            s = c.streams.video[0]
            if s.duration and s.time_base:
                return float(s.duration * s.time_base)
    except (av.error.FFmpegError, OSError, IndexError) as e:
        raise ConvertError(f"{rec.where}: field 'duration': cannot probe {path}: {e}", "no duration") from None
    raise ConvertError(f"{rec.where}: field 'duration': {path} states no duration", "no duration")


def read_durations(path: Path) -> dict[str, float]:
    """Video lengths from a Charades_v1_*.csv (columns id, length) or a JSON object {video id: seconds}."""
    try:
        if path.suffix == ".json":
            data = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(data, dict):
                raise ConvertError(f"{path}: expected a JSON object of video id -> seconds")
            return {str(k): float(v) for k, v in data.items()}
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames or not {"id", "length"} <= set(reader.fieldnames):
                raise ConvertError(f"{path}: expected CSV columns 'id' and 'length', got {reader.fieldnames}")
            return {r["id"]: float(r["length"]) for r in reader}
    except (OSError, ValueError, TypeError) as e:
        if isinstance(e, ConvertError):
            raise
        raise ConvertError(f"{path}: cannot read durations: {e}") from None


_R1_OPTIONS = re.compile(r"(?:^|,\s*)([A-Z])\.\s")


def from_ego_st(rec: Record, ctx: Context) -> list[dict]:
    o = _obj(rec)
    if "problem" in o:
        return [_ego_st_r1(rec, o, ctx)]
    base = f"{ctx.stem}-{rec.key}"
    video = _video(ctx, _text(rec, o, "video"))
    rows = []
    for answer_field, suffix in (("forward_answer", "route"), ("reverse_answer", "route-back")):
        if o.get(answer_field):
            answer = _steps(rec, answer_field, o[answer_field])
            rows.append(_row(ctx, id=f"{base}-{suffix}", video=video, task="route", question=_text(rec, o, "question"),
                             answer=answer, reference=answer, extra={"direction": suffix}))
    for block, suffix in (("forward_mcq", "mcq"), ("reverse_mcq", "mcq-back")):
        mcq = o.get(block)
        if mcq is None or (isinstance(mcq, dict) and not mcq.get("options")):
            continue  # the published files hold blocks with empty options; their own scripts skip them too
        if not isinstance(mcq, dict):
            raise _bad(rec, block, "expected an object with question, options and answer")
        sub = Record(rec.where, rec.key, mcq)
        options = _bare_options(sub, f"{block}.options", mcq["options"])
        rows.append(_row(ctx, id=f"{base}-{suffix}", video=video, task="mcq", question=_text(sub, mcq, "question"),
                         options=options, answer=_letter(sub, f"{block}.answer", _text(sub, mcq, "answer"), options),
                         extra={"direction": suffix}))
    if not rows:
        raise ConvertError(f"{rec.where}: no forward_answer, reverse_answer, forward_mcq or reverse_mcq to convert",
                           "nothing to convert")
    return rows


def _steps(rec: Record, name: str, v: object) -> str:
    if isinstance(v, list) and v and all(isinstance(x, str) for x in v):
        return ", ".join(x.strip() for x in v)
    if isinstance(v, str) and v.strip():
        return v.strip()
    raise _bad(rec, name, f"expected a string or a list of strings, got {v!r}")


def _ego_st_r1(rec: Record, o: dict, ctx: Context) -> dict:
    problem = _text(rec, o, "problem")
    head, sep, rest = problem.partition("Options:")
    if not sep:
        raise _bad(rec, "problem", "no 'Options:' list in the problem text")
    listing = rest.split("Instructions:", 1)[0].strip()
    marks = list(_R1_OPTIONS.finditer(listing))
    if [m.group(1) for m in marks] != list(LETTERS[: len(marks)]) or not marks:
        raise _bad(rec, "problem", f"options are not labelled A., B., C. ...: {listing[:80]!r}")
    if len(marks) < 2:
        raise _bad(rec, "problem", f"the question lists a single option ({listing[:60]!r}); a multiple-choice row "
                   "needs at least 2")
    options = [listing[m.end(): marks[i + 1].start() if i + 1 < len(marks) else len(listing)].strip().rstrip(",")
               for i, m in enumerate(marks)]
    if o.get("original_answer"):
        answer, name = _text(rec, o, "original_answer"), "original_answer"
    else:
        answer, name = _tagged_answer(_text(rec, o, "solution")), "solution"
    return _row(ctx, id=f"{ctx.stem}-{rec.key}", video=_video(ctx, _text(rec, o, "video")), task="mcq",
                question=head.strip(), options=options, answer=_letter(rec, name, answer, options))


CONVERTERS: dict[str, Callable[[Record, Context], list[dict]]] = {
    "ego-st": from_ego_st, "vsi-bench": from_vsi_bench, "sti-bench": from_sti_bench, "video-r1": from_video_r1,
    "charades-sta": from_charades_sta,
}
