"""services/data/convert.py and `rlctl data convert`: small hand-written files in each dataset's published
format -> rows that load with services.common.dataset; bad records are named (file, line/index, field) and
either stop the conversion or are skipped and counted."""

from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
import pytest
from click.testing import CliRunner

from rlctl import data_convert
from services.common.dataset import load_rows
from services.data import convert as conv
from services.data.convert import ConvertError, convert


def jsonl(path: Path, *records) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def rows_of(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def tiny_mp4(path: Path, seconds: int = 3, fps: int = 4) -> Path:
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width = stream.height = 32
        stream.pix_fmt = "yuv420p"
        for _ in range(seconds * fps):
            out.mux(stream.encode(av.VideoFrame.from_ndarray(np.zeros((32, 32, 3), np.uint8), format="rgb24")))
        out.mux(stream.encode())
    return path


# ---- one test per published format ------------------------------------------------------------------

VSI = [
    {"id": 1, "dataset": "arkitscenes", "scene_name": "41069025", "question_type": "object_rel_direction_easy",
     "question": "If I am standing by the sofa and facing the tv, is the lamp to my left or right?",
     "options": ["A. left", "B. right"], "ground_truth": "B"},
    {"id": 2, "dataset": "scannet", "scene_name": "scene0011_00", "question_type": "object_counting",
     "question": "How many chair(s) are in this room?", "options": None, "ground_truth": "4"},
    {"id": 3, "dataset": "scannetpp", "scene_name": "0a5c013435", "question_type": "obj_appearance_order",
     "question": "Which order?", "options": ["A. chair, table", "B. table, chair", "C. bed, chair"],
     "ground_truth": "table, chair"},  # an option's text rather than its letter
    {"id": 4, "dataset": "scannet", "scene_name": "scene0011_00", "question_type": "room_size_estimation",
     "question": "How big is this room (in square meters)?", "options": [], "ground_truth": "23.5"},
]


def test_vsi_bench(tmp_path):
    out = tmp_path / "out" / "vsi.jsonl"
    report = convert("vsi-bench", jsonl(tmp_path / "test.jsonl", *VSI), out, video_root=tmp_path / "videos",
                     split="eval")
    assert (report.written, report.skipped, report.warnings) == (4, {}, {"pointing at no video": 4})
    rows = load_rows(out)
    assert [(r.id, r.task, r.answer) for r in rows] == [
        ("vsi-1", "mcq", "B"), ("vsi-2", "numeric", "4"), ("vsi-3", "mcq", "B"), ("vsi-4", "numeric", "23.5")]
    assert rows[0].options == ("left", "right") and rows[2].options == ("chair, table", "table, chair", "bed, chair")
    assert rows[0].video == str(tmp_path / "videos" / "arkitscenes" / "41069025.mp4")
    assert rows[1].extra == {"question_type": "object_counting", "source": "scannet"} and rows[1].split == "eval"
    unlabelled = {**VSI[0], "options": ["D.C. area", "Paris"], "ground_truth": "Paris"}
    convert("vsi-bench", jsonl(tmp_path / "u.jsonl", unlabelled), tmp_path / "u_out.jsonl")
    ((options, answer),) = [(r.options, r.answer) for r in load_rows(tmp_path / "u_out.jsonl")]
    assert options == ("D.C. area", "Paris") and answer == "B"  # labels are stripped only when all options have one
    # the same rows as one JSON list (what a parquet export to .json gives)
    (tmp_path / "test.json").write_text(json.dumps(VSI))
    assert convert("vsi-bench", tmp_path / "test.json", tmp_path / "b.jsonl").written == 4
    assert rows_of(tmp_path / "b.jsonl")[0]["video"] == "arkitscenes/41069025.mp4"  # no root: kept relative


def test_vsi_bench_parquet(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    pq.write_table(pa.Table.from_pylist(VSI[:2]), tmp_path / "test.parquet")
    assert convert("vsi-bench", tmp_path / "test.parquet", tmp_path / "o.jsonl").written == 2


def test_parquet_without_pyarrow_says_what_to_do(tmp_path, monkeypatch):
    import builtins

    real = builtins.__import__
    monkeypatch.setattr(builtins, "__import__",
                        lambda name, *a, **k: (_ for _ in ()).throw(ImportError()) if name.startswith("pyarrow")
                        else real(name, *a, **k))
    (tmp_path / "t.parquet").write_bytes(b"PAR1")
    with pytest.raises(ConvertError, match="needs pyarrow"):
        convert("vsi-bench", tmp_path / "t.parquet", tmp_path / "o.jsonl")


STI = [
    {"ID": 0, "Video": "scene0000_00.mp4", "Source": "ScanNet", "Task": "Displacement & Path Length",
     "Question": "How far did the camera move?", "Candidates": {"A": "1.2 m", "B": "2.5 m", "C": "4.0 m"},
     "Answer": "B", "time_start": 0.0, "time_end": 12.5},
    {"ID": 1, "Video": "camera_front_000.mp4", "Task": "Ego-Centric Orientation", "Question": "Which way did it turn?",
     "Candidates": json.dumps({"A": "left", "B": "right", "C": "none", "D": "u-turn", "E": "both"}), "Answer": "(D)",
     "time_start": 3, "time_end": 8},
]


def test_sti_bench(tmp_path):
    out = tmp_path / "sti.jsonl"
    convert("sti-bench", jsonl(tmp_path / "qa.jsonl", *STI), out, video_root=tmp_path)
    a, b = load_rows(out)
    assert (a.id, a.task, a.options, a.answer) == ("sti-scene0000_00-0", "mcq", ("1.2 m", "2.5 m", "4.0 m"), "B")
    assert a.question == "From 0 s to 12.5 s. How far did the camera move?"
    assert a.extra == {"task_name": "Displacement & Path Length", "window": [0.0, 12.5], "ID": 0}
    assert (b.options[-1], b.answer, b.video) == ("both", "D", str(tmp_path / "camera_front_000.mp4"))


def test_sti_bench_ids_are_per_video_and_null_candidates_are_left_out(tmp_path):
    """STI-Bench numbers ID per video: the same ID in two videos is two rows. Candidates may end in nulls."""
    rows = [STI[0], {**STI[0], "Video": "scene0001_00.mp4", "Candidates": {"A": "1 m", "B": "2 m", "C": None,
                                                                           "D": None}}]
    report = convert("sti-bench", jsonl(tmp_path / "qa.jsonl", *rows), tmp_path / "sti.jsonl")
    a, b = load_rows(tmp_path / "sti.jsonl")
    assert (a.id, b.id) == ("sti-scene0000_00-0", "sti-scene0001_00-0") and report.written == 2
    assert b.options == ("1 m", "2 m") and b.answer == "B"
    for cands, answer, pattern in (({"A": "1 m", "B": "2 m", "C": None}, "C", r"'C' names a candidate that is null"),
                                   ({"A": "1 m", "B": None, "C": "3 m"}, "A", r"candidate B is null but a later"),
                                   ({"A": "1 m", "B": None}, "A", r"1 non-null candidates; .* at least 2")):
        bad = jsonl(tmp_path / "bad.jsonl", {**STI[0], "Candidates": cands, "Answer": answer})
        with pytest.raises(ConvertError, match=pattern):
            convert("sti-bench", bad, tmp_path / "o.jsonl")


VIDEO_R1 = [
    {"problem_id": 1, "problem": "What direction is the car turning?", "data_type": "video",
     "problem_type": "multiple choice", "options": ["A. left", "B. right", "C. straight", "D. back"],
     "process": "<think>...</think>", "solution": "<answer>B</answer>",
     "path": "./LLaVA-Video-178K/liwei_youtube_videos/videos/youtube_video_2024/ytb_x.mp4",
     "data_source": "LLaVA-Video-178K"},
    {"problem_id": 1, "problem": "How many cups?", "data_type": "video", "problem_type": "numerical",
     "options": [], "solution": "<answer>3</answer>", "path": "./STAR/Charades_v1_480/A1B2C.mp4",
     "data_source": "STAR"},
    {"problem_id": 2, "problem": "Read the sign.", "data_type": "image", "problem_type": "OCR", "options": [],
     "solution": "<answer>STOP</answer>", "path": "./TextVQA/x.jpg", "data_source": "TextVQA"},
    {"problem_id": 3, "problem": "Describe what happens.", "data_type": "video", "problem_type": "free-form",
     "options": [], "solution": "<answer>A man opens a door.</answer>", "path": "./PerceptionTest/v.mp4",
     "data_source": "PerceptionTest"},
    {"problem_id": 4, "problem": "How long is it?", "data_type": "video", "problem_type": "regression",
     "options": [], "solution": "<answer>12.5</answer>", "path": "./x/v.mp4", "data_source": "x"},
]


def test_video_r1(tmp_path):
    (tmp_path / "Video-R1-260k.json").write_text(json.dumps(VIDEO_R1))
    report = convert("video-r1", tmp_path / "Video-R1-260k.json", tmp_path / "r1.jsonl", video_root=tmp_path)
    assert (report.written, report.ignored, report.skipped) == (4, {"image rows (videorl trains on video)": 1}, {})
    rows = load_rows(tmp_path / "r1.jsonl")
    assert [(r.id, r.task, r.answer) for r in rows] == [
        ("video-r1-0", "mcq", "B"), ("video-r1-1", "numeric", "3"), ("video-r1-3", "open", "A man opens a door."),
        ("video-r1-4", "numeric", "12.5")]
    assert rows[0].options == ("left", "right", "straight", "back")
    assert rows[0].video == str(tmp_path / "LLaVA-Video-178K/liwei_youtube_videos/videos/youtube_video_2024/ytb_x.mp4")
    assert rows[2].reference == "A man opens a door."
    assert rows[1].extra == {"problem_id": 1, "source": "STAR", "problem_type": "numerical"}
    # The CoT release's chain of thought becomes the row's reasoning (rlctl sft trains on it).
    assert rows[0].reasoning == "..." and rows[1].reasoning == ""


EGO_ST_BENCH = {
    "12": {"video": "sun3d_15.mp4",
           "question": "Based on this video, what directions do you need to go through to get to your destination?",
           "forward_answer": ["Go straight", "turn right", "turn left"],
           "forward_mcq": {"question": "Which directions get you to your destination?",
                           "options": ["A. turn left", "B. go straight, turn right, turn left", "C. turn around"],
                           "answer": "B"},
           "reverse_mcq": {"question": "Which directions get you back to the start?",
                           "options": ["A. turn right, turn left, go back", "B. go straight"], "answer": "A"}},
    "13": {"video": "sun3d_16.mp4", "question": "How do you get back to the starting point?",
           "reverse_answer": "Turn around, walk straight", "forward_mcq": {"question": "q", "options": []}},
}


def test_ego_st_bench_json(tmp_path):
    (tmp_path / "Part1_mcq.json").write_text(json.dumps(EGO_ST_BENCH))
    report = convert("ego-st", tmp_path / "Part1_mcq.json", tmp_path / "e.jsonl", video_root=tmp_path / "part1")
    assert report.written == 4
    rows = {r.id: r for r in load_rows(tmp_path / "e.jsonl")}
    assert sorted(rows) == ["Part1_mcq-12-mcq", "Part1_mcq-12-mcq-back", "Part1_mcq-12-route",
                            "Part1_mcq-13-route-back"]
    route = rows["Part1_mcq-12-route"]
    assert (route.task, route.answer, route.reference) == ("route", "Go straight, turn right, turn left",
                                                           "Go straight, turn right, turn left")
    assert route.video == str(tmp_path / "part1" / "sun3d_15.mp4")
    mcq = rows["Part1_mcq-12-mcq"]
    assert mcq.options == ("turn left", "go straight, turn right, turn left", "turn around") and mcq.answer == "B"
    assert rows["Part1_mcq-12-mcq-back"].extra == {"direction": "mcq-back"}
    assert rows["Part1_mcq-13-route-back"].answer == "Turn around, walk straight"


EGO_ST_R1 = {
    "problem": "Please take a egocentric view to understand the following questions. Based on this video, what "
               "directions do you need to go through to get to starting point ? Options: A. Turn right continue down "
               "the road., B. Turn left approach the endpoint, C. Turn right continue on the new path, D. Walk "
               "straight return to the starting point\n\nInstructions: Please select the most appropriate answer "
               "from the options above and return only the option number (e.g. A, B, C or D).",
    "solution": "<think>forward first, then back. Hence, the correct answer is D</think> <answer>D</answer>",
    "video": "/vi-lab/Ego-ST-bench/r1_video/sun3d_15.mp4",
    "original_question": "...", "original_answer": "D",
}


def test_ego_st_r1_jsonl(tmp_path):
    no_original = {k: v for k, v in EGO_ST_R1.items() if k != "original_answer"}
    convert("ego-st", jsonl(tmp_path / "total_test_mcq_63.jsonl", EGO_ST_R1, no_original), tmp_path / "e.jsonl")
    a, b = load_rows(tmp_path / "e.jsonl")
    assert a.id == "total_test_mcq_63-1" and a.task == "mcq" and a.answer == b.answer == "D"
    assert a.options == ("Turn right continue down the road.", "Turn left approach the endpoint",
                         "Turn right continue on the new path", "Walk straight return to the starting point")
    assert a.question.endswith("to get to starting point ?") and "Options" not in a.question
    assert a.video == "/vi-lab/Ego-ST-bench/r1_video/sun3d_15.mp4"  # absolute paths are kept


CHARADES = ("AO8RW 0.0 6.9##a person is putting a book on a shelf.\n"
            "AO8RW 2.5 40.0##person begins to play on a phone.\n"
            "\n"
            "Y6R7T 1.0 2.0##a person opens a door.\n")


def test_charades_sta_with_durations_csv(tmp_path):
    (tmp_path / "charades_sta_test.txt").write_text(CHARADES)
    (tmp_path / "Charades_v1_test.csv").write_text(
        "id,subject,scene,quality,relevance,verified,script,objects,descriptions,actions,length\n"
        'AO8RW,S1,Kitchen,6,7,Yes,"a script","book;shelf","d","c092 0.0 6.9",33.67\n'
        'Y6R7T,S2,Hall,5,6,Yes,"s","door","d","",12.0\n')
    report = convert("charades-sta", tmp_path / "charades_sta_test.txt", tmp_path / "c.jsonl", video_root=tmp_path,
                     durations=tmp_path / "Charades_v1_test.csv")
    a, b, c = load_rows(tmp_path / "c.jsonl")
    assert (a.id, a.task, a.segment, a.duration, a.answer) == ("charades-AO8RW-1", "temporal", (0.0, 6.9), 33.67,
                                                               "0-6.9")
    assert 'a person is putting a book on a shelf' in a.question
    assert b.segment == (2.5, 33.67)  # the end past the video's length is clipped to it, and said so
    assert report.warnings["clipped to the video's length"] == 1
    assert "end 40 s is past AO8RW's length 33.67 s" in report.examples["clipped to the video's length"][0]
    assert report.split == "eval" and report.split_from == "from the file name"   # charades_sta_test.txt
    assert c.id == "charades-Y6R7T-4" and c.video == str(tmp_path / "Y6R7T.mp4")


def test_charades_sta_probes_video_length(tmp_path):
    tiny_mp4(tmp_path / "AB12C.mp4", seconds=3)
    (tmp_path / "sta.txt").write_text("AB12C 0.5 1.5##a person sits down.\n")
    convert("charades-sta", tmp_path / "sta.txt", tmp_path / "c.jsonl", video_root=tmp_path)
    (row,) = load_rows(tmp_path / "c.jsonl")
    assert row.duration == pytest.approx(3.0, abs=0.3) and row.segment == (0.5, 1.5)
    (tmp_path / "d.json").write_text(json.dumps({"AB12C": 9.5}))
    convert("charades-sta", tmp_path / "sta.txt", tmp_path / "c.jsonl", durations=tmp_path / "d.json")
    assert load_rows(tmp_path / "c.jsonl")[0].duration == 9.5


# ---- bad records ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "source, name, content, pattern",
    [
        ("vsi-bench", "t.jsonl", [{**VSI[0], "ground_truth": "E"}],
         r"t\.jsonl:1: field 'ground_truth': 'E' is neither"),
        ("vsi-bench", "t.jsonl", [VSI[1], {**VSI[1], "ground_truth": "many"}],
         r"t\.jsonl:2: field 'ground_truth': object_counting has no options, so it needs a number"),
        ("vsi-bench", "t.jsonl", [{k: v for k, v in VSI[0].items() if k != "scene_name"}],
         r"t\.jsonl:1: field 'scene_name': missing"),
        ("vsi-bench", "t.jsonl", [{**VSI[0], "options": ["A. x", "C. y"]}], r"field 'options': option 1 is labelled"),
        ("vsi-bench", "t.jsonl", [VSI[0], VSI[0]], r"t\.jsonl:2: field 'id': duplicate id 'vsi-1'"),
        ("sti-bench", "t.jsonl", [{**STI[0], "Candidates": {"A": "x", "C": "y"}}], r"field 'Candidates'"),
        ("sti-bench", "t.jsonl", [{**STI[0], "Candidates": "{oops"}], r"field 'Candidates': not a JSON object"),
        ("sti-bench", "t.jsonl", [{**STI[0], "time_end": "soon"}], r"field 'time_end': expected seconds"),
        ("video-r1", "t.json", [VIDEO_R1[2], {**VIDEO_R1[0], "problem_type": "ranking"}],
         r"t\.json\[1\]: field 'problem_type': 'ranking' is not one of"),
        ("video-r1", "t.json", [{**VIDEO_R1[0], "solution": "<answer>Z</answer>"}], r"t\.json\[0\]: field 'solution'"),
        ("video-r1", "t.json", [{**VIDEO_R1[0], "data_type": "audio"}], r"field 'data_type'"),
        ("video-r1", "t.json", [{**VIDEO_R1[1], "solution": "<answer>lots</answer>"}],
         r"converted row is invalid: .*t\.json\[0\]: field 'answer': task numeric"),
        ("ego-st", "t.json", {"7": {"video": "v.mp4", "question": "q"}}, r"t\.json\['7'\]: no forward_answer"),
        ("ego-st", "t.json", {"7": {"video": "v.mp4", "forward_mcq": {"question": "q", "options": ["A. x", "B. y"],
                                                                      "answer": "Q"}}},
         r"field 'forward_mcq.answer'"),
        ("ego-st", "t.jsonl", [{**EGO_ST_R1, "problem": "no list here"}],
         r"t\.jsonl:1: field 'problem': no 'Options:'"),
        ("ego-st", "t.json", "[1, 2]", r"t\.json\[0\]: expected an object"),
        ("charades-sta", "t.txt", "AO8RW 0.0 6.9 a person\n", r"t\.txt:1: field 'line': expected 'VIDEOID start end"),
        ("charades-sta", "t.txt", "AO8RW x 6.9##a person\n", r"field 'start/end': not numbers"),
        ("charades-sta", "t.txt", "AO8RW 5 2##a person\n", r"field 'start/end': need 0 <= start <= end"),
        ("charades-sta", "t.txt", "AO8RW 0 2##a person\n", r"field 'duration': no --durations entry for 'AO8RW'"),
        ("vsi-bench", "t.jsonl", "{not json\n", r"t\.jsonl:1: not valid JSON"),
        ("vsi-bench", "t.json", "{not json", r"t\.json: not valid JSON"),
        ("vsi-bench", "t.json", "3", r"expected a JSON list or object"),
    ],
)
def test_bad_records_name_place_and_field(tmp_path, source, name, content, pattern):
    path = tmp_path / name
    if isinstance(content, str):
        path.write_text(content)
    elif name.endswith(".jsonl"):
        jsonl(path, *content)
    else:
        path.write_text(json.dumps(content))
    out = tmp_path / "out.jsonl"
    with pytest.raises(ConvertError, match=pattern):
        convert(source, path, out)
    assert not out.exists() and not list(tmp_path.glob(".out.jsonl*"))  # nothing half-written


def test_charades_probe_failure_is_named(tmp_path):
    (tmp_path / "sta.txt").write_text("NOPE1 0 2##a person\n")
    with pytest.raises(ConvertError, match=r"sta\.txt:1: field 'duration': cannot probe .*NOPE1\.mp4"):
        convert("charades-sta", tmp_path / "sta.txt", tmp_path / "o.jsonl", video_root=tmp_path)


def test_bad_durations_file(tmp_path):
    (tmp_path / "sta.txt").write_text(CHARADES)
    (tmp_path / "d.csv").write_text("video,seconds\nAO8RW,3\n")
    with pytest.raises(ConvertError, match="expected CSV columns 'id' and 'length'"):
        convert("charades-sta", tmp_path / "sta.txt", tmp_path / "o.jsonl", durations=tmp_path / "d.csv")


def test_skip_bad_counts_and_reports(tmp_path):
    bad = [{**VSI[0], "id": 10 + i, "ground_truth": "Z"} for i in range(25)]
    path = jsonl(tmp_path / "t.jsonl", VSI[0], *bad, VSI[1])
    report = convert("vsi-bench", path, tmp_path / "o.jsonl", skip_bad=True)
    assert (report.written, report.skipped) == (2, {"field 'ground_truth'": 25}) and report.accounted
    examples = report.examples["field 'ground_truth'"]
    assert len(examples) == 3 and "t.jsonl:2: field 'ground_truth'" in examples[0]
    assert "skipped 25 x field 'ground_truth', e.g.:" in report.summary()
    assert [r.id for r in load_rows(tmp_path / "o.jsonl")] == ["vsi-1", "vsi-2"]
    saved = json.loads((tmp_path / "o.jsonl.report.json").read_text())
    assert saved["records"] == 27 and saved["skipped"] == {"field 'ground_truth'": 25} and saved["accounted"]
    # Everything bad: the error itself says why, with examples, instead of only a count.
    with pytest.raises(ConvertError, match=r"no rows converted \(25 records: 25 skipped, 0 ignored\)\n"
                                           r"  skipped 25 x field 'ground_truth', e.g.:\n    .*all_bad\.jsonl:1"):
        convert("vsi-bench", jsonl(tmp_path / "all_bad.jsonl", *bad), tmp_path / "o2.jsonl", skip_bad=True)


def test_unknown_source(tmp_path):
    with pytest.raises(ConvertError, match="unknown source"):
        convert("kinetics", jsonl(tmp_path / "t.jsonl", {}), tmp_path / "o.jsonl")


# ---- the CLI command --------------------------------------------------------------------------------


def test_cli_converts_and_reports(tmp_path):
    jsonl(tmp_path / "vsi.jsonl", VSI[0], {**VSI[1], "ground_truth": "many"}, VSI[3])
    runner = CliRunner()
    args = ["--from", "vsi-bench", str(tmp_path / "vsi.jsonl"), str(tmp_path / "o.jsonl"),
            "--video-root", str(tmp_path), "--split", "eval"]
    result = runner.invoke(data_convert.convert, args)
    assert result.exit_code == 1 and "vsi.jsonl:2: field 'ground_truth'" in result.output
    result = runner.invoke(data_convert.convert, [*args, "--skip-bad"])
    assert result.exit_code == 0, result.output
    assert "3 records read: 2 converted into 2 rows, 1 skipped, 0 ignored; split eval (--split)" in result.output
    assert "vsi.jsonl:2" in result.output and "warning: 2 rows pointing at no video" in result.output
    assert (tmp_path / "o.jsonl.report.json").exists() and "report: " in result.stdout
    assert {r.split for r in load_rows(tmp_path / "o.jsonl")} == {"eval"}


def test_cli_arguments(tmp_path):
    runner = CliRunner()
    result = runner.invoke(data_convert.convert, ["--from", "nope", "a", "b"])
    assert result.exit_code == 2 and "nope" in result.output
    result = runner.invoke(data_convert.convert, ["--from", "vsi-bench", str(tmp_path / "absent"), "b"])
    assert result.exit_code == 2 and "does not exist" in result.output
    assert data_convert.SOURCES == conv.SOURCES == tuple(conv.CONVERTERS)


def test_cli_module_is_light():
    import subprocess
    import sys

    code = "import sys, rlctl.data_convert; assert not any(m.startswith('services.data') for m in sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[2])


# ---- what the published files hold that hand-written ones did not ---------------------------------


def test_charades_sta_four_column_variant_is_read_and_the_extra_column_named(tmp_path):
    (tmp_path / "sta.txt").write_text("3MSZA 24.3 30.4 0##person turn a light on.\n"
                                      "3MSZA 24.3 30.4##person flipped the light switch.\n")
    (tmp_path / "d.json").write_text(json.dumps({"3MSZA": 31.0}))
    report = convert("charades-sta", tmp_path / "sta.txt", tmp_path / "c.jsonl", durations=tmp_path / "d.json")
    assert report.written == 2 and report.warnings == {"with a 4th column (ignored)": 1}
    assert [r.segment for r in load_rows(tmp_path / "c.jsonl")] == [(24.3, 30.4)] * 2
    with pytest.raises(ConvertError, match=r"sta\.txt:1: column 4 '0' ignored \(--strict\)"):
        convert("charades-sta", tmp_path / "sta.txt", tmp_path / "s.jsonl", durations=tmp_path / "d.json",
                strict=True)


def test_strict_refuses_a_clipped_end_and_a_video_found_nowhere(tmp_path):
    (tmp_path / "sta.txt").write_text("AO8RW 2.5 40.0##person plays on a phone.\n")
    (tmp_path / "d.json").write_text(json.dumps({"AO8RW": 33.67}))
    with pytest.raises(ConvertError, match=r"end 40 s is past AO8RW's length 33.67 s.*\(--strict\)"):
        convert("charades-sta", tmp_path / "sta.txt", tmp_path / "o.jsonl", durations=tmp_path / "d.json",
                strict=True)
    with pytest.raises(ConvertError, match=r"vsi\.jsonl:1: .*41069025\.mp4 does not exist \(--strict\)"):
        convert("vsi-bench", jsonl(tmp_path / "vsi.jsonl", VSI[0]), tmp_path / "o.jsonl", video_root=tmp_path,
                strict=True)


def test_absolute_video_paths_are_found_under_video_root_by_their_tail(tmp_path):
    root = tmp_path / "ego"
    (root / "r1_video").mkdir(parents=True)
    (root / "r1_video" / "sun3d_15.mp4").write_bytes(b"")
    rows = [EGO_ST_R1, {**EGO_ST_R1, "video": "/vi-lab/Ego-ST-bench/r1_video/sun3d_99.mp4"}]
    report = convert("ego-st", jsonl(tmp_path / "r1.jsonl", *rows), tmp_path / "o.jsonl", video_root=root)
    a, b = load_rows(tmp_path / "o.jsonl")
    assert a.video == str(root / "r1_video" / "sun3d_15.mp4") and b.video == rows[1]["video"]
    assert report.remapped == 1 and report.warnings == {"pointing at no video": 1}
    assert "1 rows: absolute video path remapped under --video-root" in report.summary()


def test_a_single_option_question_is_named_as_such(tmp_path):
    one = {**EGO_ST_R1, "problem": "Which landmarks did you pass? Options: A. wooden door wooden door\n\n"
                                   "Instructions: Please select the most appropriate answer."}
    with pytest.raises(ConvertError, match=r"field 'problem': the question lists a single option \('A\. wooden door"):
        convert("ego-st", jsonl(tmp_path / "r1.jsonl", one), tmp_path / "o.jsonl")


def test_vsi_bench_debiased_leaves_the_pruned_rows_out(tmp_path):
    """VSI-Bench's debiased release marks the questions it removed with `pruned` (its dataset card)."""
    path = jsonl(tmp_path / "test_debiased.jsonl", {**VSI[0], "pruned": True}, {**VSI[1], "pruned": False})
    everything = convert("vsi-bench", path, tmp_path / "all.jsonl")
    assert everything.written == 2 and load_rows(tmp_path / "all.jsonl")[0].extra["pruned"] is True
    debiased = convert("vsi-bench", path, tmp_path / "d.jsonl", debiased=True)
    assert debiased.written == 1 and debiased.ignored == {"pruned rows (--debiased)": 1} and debiased.accounted
    with pytest.raises(ConvertError, match=r"field 'pruned': expected true or false, got 'yes'"):
        convert("vsi-bench", jsonl(tmp_path / "p.jsonl", {**VSI[0], "pruned": "yes"}), tmp_path / "o.jsonl")


def test_the_split_follows_the_file_name_unless_given(tmp_path):
    for name, split in (("charades_sta_test.txt", "eval"), ("total_val_mcq.jsonl", "eval"), ("train.jsonl", "train"),
                        ("Video-R1-260k.jsonl", "train"), ("latest.jsonl", "train")):
        assert conv.split_of(Path(name)) == split, name
    report = convert("vsi-bench", jsonl(tmp_path / "vsi_test.jsonl", VSI[0]), tmp_path / "o.jsonl")
    assert (report.split, load_rows(tmp_path / "o.jsonl")[0].split) == ("eval", "eval")
    report = convert("vsi-bench", jsonl(tmp_path / "vsi_test.jsonl", VSI[0]), tmp_path / "o.jsonl", split="train")
    assert (report.split, report.split_from) == ("train", "--split")
