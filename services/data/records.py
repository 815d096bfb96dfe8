"""Reading the records of a published annotation file for `rlctl data convert`: text or JSONL lines, a JSON list or
object, or parquet rows; each record with where it came from (file:line, file[index], file['key']) for messages."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

from services.data.convert_report import ConvertError


class Record(NamedTuple):
    where: str  # "file:line", "file[index]" or "file['key']", for messages
    key: str  # the line number, list index or object key, for ids
    value: Any


def read_records(path: Path, text_lines: bool = False) -> Iterator[Record]:
    """Records of `path`: txt lines, JSONL lines, parquet rows, or the items of a JSON list / object."""
    try:
        if text_lines or path.suffix == ".jsonl":
            yield from _read_lines(path, parse_json=not text_lines)
        elif path.suffix == ".parquet":
            yield from _read_parquet(path)
        else:
            yield from _read_json(path)
    except OSError as e:
        raise ConvertError(f"{path}: cannot read: {e}") from e


def _read_lines(path: Path, parse_json: bool) -> Iterator[Record]:
    with path.open("rb") as f:
        for i, raw in enumerate(f, 1):
            where = f"{path}:{i}"
            try:
                line = raw.decode("utf-8").strip()
            except UnicodeDecodeError as e:
                raise ConvertError(f"{where}: not UTF-8 text: {e.reason}") from None
            if not line:
                continue
            if not parse_json:
                yield Record(where, str(i), line)
                continue
            try:
                yield Record(where, str(i), json.loads(line))
            except json.JSONDecodeError as e:
                raise ConvertError(f"{where}: not valid JSON: {e.msg}") from None


def _read_json(path: Path) -> Iterator[Record]:
    try:
        data = json.loads(path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConvertError(f"{path}: not valid JSON: {e}") from None
    if isinstance(data, list):
        for i, v in enumerate(data):
            yield Record(f"{path}[{i}]", str(i), v)
    elif isinstance(data, dict):
        for k, v in data.items():
            yield Record(f"{path}[{k!r}]", str(k), v)
    else:
        raise ConvertError(f"{path}: expected a JSON list or object of records, got {type(data).__name__}")


def _read_parquet(path: Path) -> Iterator[Record]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ConvertError(f"{path}: reading parquet needs pyarrow (pip install pyarrow), "
                           "or export the rows to JSONL first") from None
    i = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=1024):
        for v in batch.to_pylist():
            yield Record(f"{path}[row {i}]", str(i), v)
            i += 1
