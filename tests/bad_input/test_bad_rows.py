"""Malformed dataset rows (bad_corpus.BAD_ROWS) through services/common/dataset.py: every error names the
file, the line and the field; read with an error list, a file mixing good and bad rows gives all the good
rows and one error per bad line (what `rlctl run` does by default: it skips and names them); read strictly
(data.skip_bad_rows=false) it stops at the first bad line, naming it, before any work is done."""

from __future__ import annotations

import json

import pytest
from bad_corpus import BAD_ROWS, GOOD_ROWS, dataset_file

from services.common.dataset import DatasetError, load_rows


@pytest.mark.parametrize("name", sorted(BAD_ROWS))
def test_a_bad_row_is_refused_naming_file_line_and_field(tmp_path, name):
    path = tmp_path / "one.jsonl"  # a good row (whose id the duplicate repeats), a blank line, the bad row
    path.write_bytes(json.dumps(GOOD_ROWS[0]).encode() + b"\n\n" + BAD_ROWS[name].line + b"\n")
    with pytest.raises(DatasetError) as info:
        load_rows(path)
    assert str(info.value).startswith(f"{path}:3: ")  # blank lines count: line numbers are the editor's
    assert BAD_ROWS[name].error in str(info.value)


def test_a_mixed_file_loads_every_good_row_and_reports_every_bad_line(tmp_path, summary):
    path, where = dataset_file(tmp_path / "mixed.jsonl")
    errors: list[DatasetError] = []
    rows = load_rows(path, errors)
    assert [r.id for r in rows] == [r["id"] for r in GOOD_ROWS]
    assert len(errors) == len(BAD_ROWS)
    for (name, bad), error in zip(BAD_ROWS.items(), errors, strict=True):
        assert str(error).startswith(f"{path}:{where[name]}: ") and bad.error in str(error), name
    # strict (data.skip_bad_rows=false): the first bad line stops the load, named
    first = min(where, key=where.get)
    with pytest.raises(DatasetError, match=rf"mixed\.jsonl:{where[first]}: "):
        load_rows(path)
    summary(f"dataset rows: {len(BAD_ROWS)} bad lines, {len(errors)} reported as file:line: field, "
            f"{len(rows)} good rows loaded between them; strict load stops at line {where[first]}")


def test_a_file_of_only_bad_rows_names_the_first_one(tmp_path):
    path = tmp_path / "bad.jsonl"
    bad = [b.line for name, b in BAD_ROWS.items() if name != "duplicate_id"]  # alone, that one is a good row
    path.write_bytes(b"\n".join(bad) + b"\n")
    errors: list[DatasetError] = []
    with pytest.raises(DatasetError, match=rf"bad\.jsonl: no rows \({len(bad)} bad lines, first: .*bad\.jsonl:1: "):
        load_rows(path, errors)
    assert len(errors) == len(bad)


def test_rlctl_run_skips_bad_lines_naming_each_or_stops_when_told(tmp_path, summary):
    """What `rlctl run` loads (rlctl.assets.prepare_assets): by default the good rows, each malformed line named as
    file:line: why; with data.skip_bad_rows=false the first malformed line stops the run before it starts."""
    from rich.console import Console

    from rlctl.assets import prepare_assets
    from services.common.config import RunConfig

    path, where = dataset_file(tmp_path / "mixed.jsonl")
    data = {"train": path, "eval": path}
    assets = prepare_assets(RunConfig(model={"path": tmp_path}, data=data), Console(quiet=True))
    assert {r.id for r in assets.train} >= {r["id"] for r in GOOD_ROWS}
    assert len(assets.skipped) == 2 * len(BAD_ROWS)  # train and eval: the same file
    assert sorted({int(s.split(":")[1]) for s in assets.skipped}) == sorted(where.values())
    with pytest.raises(DatasetError, match=rf"mixed\.jsonl:{min(where.values())}: "):
        prepare_assets(RunConfig(model={"path": tmp_path}, data={**data, "skip_bad_rows": False}), Console(quiet=True))
    summary(f"rlctl run's data load: {len(assets.skipped) // 2} malformed lines skipped and named per split, "
            f"{len(assets.train)} train rows kept; data.skip_bad_rows=false stops at line {min(where.values())}")
