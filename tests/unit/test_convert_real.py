"""`rlctl data convert` and `rlctl data inspect` on excerpts of the real published files (tests/data/real, with
their sources and licences): every valid row is written and the report accounts for every input record."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from rlctl import data_convert
from services.common.dataset import load_rows
from services.data.convert import ConvertError, convert
from services.data.inspect import inspect

REAL = Path(__file__).resolve().parents[1] / "data" / "real"


def test_charades_sta_test_excerpt_with_its_csv_clips_the_ends_past_the_video_and_says_so(tmp_path):
    d = REAL / "charades_sta"
    report = convert("charades-sta", d / "charades_sta_test.txt", tmp_path / "c.jsonl",
                     durations=d / "Charades_v1_test.csv")
    rows = load_rows(tmp_path / "c.jsonl")
    assert report.records == report.converted == report.written == len(rows) == 41 and report.accounted
    assert report.split == "eval"                                   # from the file name
    assert report.warnings == {"clipped to the video's length": 5}   # lines 20, 28, 30, 31 and 35 (README)
    assert [e.split(":")[1] for e in report.examples["clipped to the video's length"]] == ["20", "28", "30"]
    by_id = {r.id: r for r in rows}
    assert by_id["charades-AKO6M-20"].segment == (12.7, 18.58) and by_id["charades-AKO6M-20"].duration == 18.58
    assert "a person puts a cup into a  cupboard" in by_id["charades-D7W4E-41"].question


def test_charades_sta_train_excerpt_skips_the_four_inverted_segments_by_reason(tmp_path):
    txt = REAL / "charades_sta" / "charades_sta_train.txt"
    # Charades_v1_train.csv is not in the excerpt: every video is given a length past every end.
    lengths = {line.split()[0]: 1000.0 for line in txt.read_text().splitlines()}
    (tmp_path / "len.json").write_text(json.dumps(lengths))
    with pytest.raises(ConvertError, match=r"charades_sta_train\.txt:21: field 'start/end': need 0 <= start <= end, "
                                           r"got 8 7"):
        convert("charades-sta", txt, tmp_path / "c.jsonl", durations=tmp_path / "len.json")
    report = convert("charades-sta", txt, tmp_path / "c.jsonl", durations=tmp_path / "len.json", skip_bad=True)
    assert (report.records, report.written, report.skipped) == (24, 20, {"field 'start/end'": 4}) and report.accounted
    assert report.split == "train" and len(load_rows(tmp_path / "c.jsonl")) == 20


def test_st_r1_jsonl_finds_its_absolute_video_paths_under_video_root_and_names_the_single_option_row(tmp_path):
    src = REAL / "ego_st" / "total_test_mcq_630.jsonl"
    videos = sorted({Path(json.loads(line)["video"]).name for line in src.read_text().splitlines()})
    root = tmp_path / "Ego-ST-bench"
    (root / "r1_video").mkdir(parents=True)
    for name in videos[::2]:   # half of the videos downloaded
        (root / "r1_video" / name).write_bytes(b"")
    with pytest.raises(ConvertError, match=r"total_test_mcq_630\.jsonl:22: field 'problem': the question lists a "
                                           r"single option \('A\. wooden door wooden door"):
        convert("ego-st", src, tmp_path / "e.jsonl", video_root=root)
    report = convert("ego-st", src, tmp_path / "e.jsonl", video_root=root, skip_bad=True)
    rows = load_rows(tmp_path / "e.jsonl")
    assert (report.records, report.written, report.skipped) == (22, 21, {"field 'problem'": 1}) and report.accounted
    found = [r for r in rows if Path(r.video).exists()]
    assert report.remapped == len(found) > 0 and all(r.video.startswith(str(root / "r1_video")) for r in found)
    assert report.warnings == {"pointing at no video": 21 - len(found)}
    assert report.split == "eval"                                   # total_test_...
    assert [r.answer for r in rows[-3:]] == ["B", "C", "D"] and {len(r.options) for r in rows} <= {2, 3, 4}
    assert rows[0].options == ("toy birdhouse", "ornamental birdfeeder", "two-story treehouse")


def test_video_r1_excerpt_converts_every_record_as_open_questions_with_their_reference(tmp_path):
    report = convert("video-r1", REAL / "video_r1" / "Video-R1-Videos.json", tmp_path / "r.jsonl",
                     video_root=tmp_path / "Video-R1-data")
    rows = load_rows(tmp_path / "r.jsonl")
    assert report.records == report.written == len(rows) == 17 and report.accounted
    assert {r.task for r in rows} == {"open"} and all(r.reference == r.answer and r.answer for r in rows)
    assert rows[0].id == "video-r1-0" and rows[0].extra["problem_id"] == 186710
    assert rows[0].video == str(tmp_path / "Video-R1-data" / "LLaVA-Video-178K/academic_source/activitynet/"
                                "v_ripbruSSD8w.mp4")


def test_inspect_describes_a_converted_real_file(tmp_path):
    convert("ego-st", REAL / "ego_st" / "total_test_mcq_630.jsonl", tmp_path / "e.jsonl", skip_bad=True)
    bad = tmp_path / "with_bad.jsonl"
    shutil.copy(tmp_path / "e.jsonl", bad)
    with bad.open("a") as f:
        f.write('{"id": "x", "video": "v.mp4", "task": "mcq"}\n')
    ins = inspect(bad)
    assert (ins.rows, ins.tasks, ins.splits) == (21, {"mcq": 21}, {"eval": 21})
    assert ins.answers["mcq"] == {"A": 18, "B": 1, "C": 1, "D": 1}
    assert sum(ins.options.values()) == 21 and ins.videos_found == 0 and len(ins.videos_missing) == ins.videos
    assert len(ins.bad_lines) == 1 and "with_bad.jsonl:22" in ins.bad_lines[0]
    result = CliRunner().invoke(data_convert.inspect, [str(bad)])
    assert result.exit_code == 0, result.output
    for text in ("21 rows, 1 bad lines", "tasks: mcq 21 (100%)", "answers (mcq): 'A' 18", "options per question:",
                 "0 found", "missing: /vi-lab/Ego-ST-bench/r1_video/", "longest prompt:"):
        assert text in result.output, text
