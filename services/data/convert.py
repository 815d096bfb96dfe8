"""`rlctl data convert`'s driver: reads a published annotation file record by record, converts each with its
format's converter (services/data/formats.py, which documents every format), validates every row against the
dataset schema and writes OUT with its report (OUT.report.json, services/data/convert_report.py).

Invariants: JSONL, txt and parquet input is read record by record (a .json file is parsed whole, then converted
one record at a time); OUT is written to a temporary file and renamed, so it is complete or absent; every row
written passes dataset.parse_row; every record read is counted once (converted, skipped or ignored); an error
names the input file, line / index / key, and field. With skip_bad a bad record is counted by reason and skipped,
otherwise it stops the conversion; with strict, every warning (an end clipped, a video found nowhere, a column not
understood) is an error.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from services.common.dataset import DatasetError, parse_row
from services.data.convert_report import ConvertError, Report
from services.data.formats import CONVERTERS, SOURCES, Context, read_durations
from services.data.records import Record, read_records

__all__ = ["SOURCES", "ConvertError", "Report", "convert", "split_of"]


IGNORED = {"video-r1": "image rows (videorl trains on video)", "vsi-bench": "pruned rows (--debiased)"}


def split_of(path: Path) -> str:
    """The split a file's name says: eval for *test* / *val* / *eval* / *dev*, else train.

    >>> split_of(Path("charades_sta_test.txt")), split_of(Path("Video-R1-260k.json")), split_of(Path("latest.json"))
    ('eval', 'train', 'train')
    """
    words = re.split(r"[^a-z]+", path.stem.lower())
    return "eval" if {"test", "val", "eval", "dev", "validation"} & set(words) else "train"


def convert(source: str, inp: Path, out: Path, *, video_root: Path | None = None, skip_bad: bool = False,
            durations: Path | None = None, split: str | None = None, strict: bool = False,
            debiased: bool = False) -> Report:
    """Convert `inp` (in `source`'s published format) to the videorl JSONL `out`, with the report beside it
    (OUT.report.json); see the module docstring. `split` None: from the file's name (split_of)."""
    if source not in CONVERTERS:
        raise ConvertError(f"unknown source {source!r}; one of {', '.join(SOURCES)}")
    inp, out = Path(inp), Path(out)
    report = Report(source, str(inp), str(out), split or split_of(inp), "--split" if split else "from the file name")
    ctx = Context(stem=inp.stem, video_root=Path(video_root).resolve() if video_root else None, split=report.split,
                  durations=read_durations(Path(durations)) if durations else {}, report=report, strict=strict,
                  debiased=debiased)
    seen: set[str] = set()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        with tmp.open("w", encoding="utf-8") as f:
            for rec in read_records(inp, text_lines=source == "charades-sta"):
                report.records += 1
                try:
                    rows = _checked(CONVERTERS[source](rec, ctx), rec, out, seen)
                    for row in rows:
                        if ctx.video_root is not None and not Path(row["video"]).exists():
                            ctx.warn(rec, "pointing at no video", f"{row['video']} does not exist")
                except ConvertError as e:
                    if not skip_bad:
                        raise
                    report.skip(e)
                    continue
                if not rows:
                    report.ignore(IGNORED[source])
                report.converted += bool(rows)
                for row in rows:
                    f.write(json.dumps(row, ensure_ascii=False) + "\n")
                    seen.add(row["id"])
                    report.written += 1
                    report.remapped += row["video"] in ctx.remapped
        if not report.written:
            raise ConvertError(f"{inp}: no rows converted ({report.records} records: "
                               f"{sum(report.skipped.values())} skipped, {sum(report.ignored.values())} ignored)"
                               + (f"\n{report.reasons()}" if report.skipped else ""))
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    out.with_name(out.name + ".report.json").write_text(report.to_json() + "\n")
    return report


def _checked(rows: list[dict], rec: Record, out: Path, seen: set[str]) -> list[dict]:
    """The rows of one record, each validated against the dataset schema; a record is kept whole or not at all."""
    ids = set()
    for row in rows:
        try:
            parse_row(row, rec.where, out.parent)
        except DatasetError as e:
            raise ConvertError(f"converted row is invalid: {e}", "invalid row") from None
        if row["id"] in seen or row["id"] in ids:
            raise ConvertError(f"{rec.where}: field 'id': duplicate id {row['id']!r}", "duplicate id")
        ids.add(row["id"])
    return rows
