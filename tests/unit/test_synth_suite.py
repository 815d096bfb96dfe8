"""The synthetic spatio-temporal suite: schema, determinism, balance, idempotence, and ground truth that matches
the decoded pixels of the mp4 files."""

import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from scipy import ndimage

from rlctl.data_synth import synth as synth_command
from services.common.config import MediaConfig
from services.common.dataset import load_rows
from services.common.frames import frame_indices, smart_nframes
from services.data import synth_scene as scene
from services.data import synth_suite as ss
from services.embedded.synth import DIRECTIONS, decode_video, read_jsonl

N_TRAIN, N_EVAL, SEED = 4, 3, 5
TASK_TYPES = {"direction": "mcq", "order": "mcq", "count": "numeric", "distance": "numeric", "when": "temporal",
              "where": "bbox", "layout": "mcq", "route": "route", "camera": "mcq"}


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    return ss.make_suite(tmp_path_factory.mktemp("suite") / "out", "all", N_TRAIN, N_EVAL, seed=SEED, progress=False)


@pytest.fixture(scope="module")
def rows(suite):
    """Every row with its decoded frames, both splits."""
    out = []
    for path in (suite.train, suite.eval):
        for row in read_jsonl(path):
            out.append((row, decode_video(path.parent / row["video"])))
    return out


def _of(rows, task):
    return [(r, f) for r, f in rows if r["extra"]["synth_task"] == task]


def _classify(frame: np.ndarray) -> np.ndarray:
    """Per pixel: the palette colour name it is nearest to, or "" for background and grid lines."""
    bg = np.median(frame.reshape(-1, 3), axis=0)
    names = ["", ""] + list(ss.PALETTE)
    refs = np.array([bg, bg + scene.GRID_LIFT] + list(ss.PALETTE.values()), float)
    dist = ((frame[:, :, None, :].astype(float) - refs[None, None]) ** 2).sum(-1)
    return np.array(names, object)[dist.argmin(-1)]


def _pixels_of(frame: np.ndarray, color: str) -> np.ndarray:
    """Mask of the shapes of `color`: blobs of at least 20 pixels (an 8 px triangle has 36), so that the odd edge
    pixel of another shape, which chroma subsampling tints, does not count."""
    blobs, _ = ndimage.label(_classify(frame) == color)
    big = np.flatnonzero(np.bincount(blobs.ravel()) >= 20)
    return np.isin(blobs, big[big > 0])


def _bbox(mask: np.ndarray) -> np.ndarray | None:
    ys, xs = np.nonzero(mask)
    return None if len(xs) == 0 else np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], float)


def _color(name: str) -> str:
    return name.split()[0]


def test_rows_follow_the_schema(suite, rows):
    assert len(rows) == len(ss.TASKS) * (N_TRAIN + N_EVAL)
    assert len({r["id"] for r, _ in rows}) == len(rows)
    for row, frames in rows:
        task = row["extra"]["synth_task"]
        assert row["task"] == TASK_TYPES[task]
        assert not Path(row["video"]).is_absolute() and row["video"].startswith("videos/")
        assert frames.shape[1:] == (64, 64, 3) and len(frames) in (16, 32)
        assert ("options" in row) == (row["task"] == "mcq")
        if row["task"] == "mcq":
            assert row["answer"] in ss.LETTERS[: len(row["options"])]
            assert len(set(row["options"])) == len(row["options"]) >= 3
        if row["task"] == "numeric":
            assert row["answer"].isdigit() and "Answer with a number." in row["question"]
    assert {r["split"] for r, _ in rows} == {"train", "eval"}
    for path in (suite.train, suite.eval):  # the loader resolves the relative video paths
        assert all(Path(r.video).is_file() for r in load_rows(path))


def test_same_seed_gives_same_rows_bytes_and_pixels_whatever_the_task_list(tmp_path, suite):
    again = ss.make_suite(tmp_path / "again", list(reversed(ss.TASKS)), N_TRAIN, N_EVAL, seed=SEED, progress=False)
    for first, second in ((suite.train, again.train), (suite.eval, again.eval)):
        by_id = {r["id"]: r for r in read_jsonl(second)}
        for row in read_jsonl(first):
            assert by_id[row["id"]] == row
            a, b = first.parent / row["video"], second.parent / row["video"]
            _same_video(a, b)
    for task in ss.TASKS:                              # the rendered pixels themselves are exact
        np.testing.assert_array_equal(ss.make_item(task, "train", 1, 4, seed=SEED).frames,
                                      ss.make_item(task, "train", 1, 4, seed=SEED).frames)


def _same_video(a, b):
    """Two encodings of the same rendered frames. Usually byte-identical, but libx264 was seen (2 of ~6 full unit
    runs, on 2 loaded cores) to encode a clip slightly differently: a few hundred pixels off by <= 10 levels. So
    the files are compared by their decoded frames, within what such an encoder choice can change."""
    if a.read_bytes() == b.read_bytes():
        return
    x, y = decode_video(a).astype(int), decode_video(b).astype(int)
    assert x.shape == y.shape and np.abs(x - y).mean() < 0.5 and np.abs(x - y).max() <= 32


def test_other_seed_gives_other_clips():
    a, b = ss.make_item("where", "train", 0, 4, seed=1), ss.make_item("where", "train", 0, 4, seed=2)
    assert a.row != b.row or not np.array_equal(a.frames, b.frames)


def test_build_once_is_idempotent_and_keyed_by_params(tmp_path):
    out = tmp_path / "s"
    first = ss.make_suite(out, "count", 2, 1, seed=0, progress=False)
    stamp = first.train.stat().st_mtime_ns
    assert first.built and not ss.make_suite(out, ["count"], 2, 1, seed=0, progress=False).built
    assert first.train.stat().st_mtime_ns == stamp
    assert ss.make_suite(out, "count", 3, 1, seed=0, progress=False).built
    assert len(read_jsonl(out / "train.jsonl")) == 3


@pytest.mark.parametrize("task,n,key,expected", [
    ("direction", 12, "answer", {"A": 3, "B": 3, "C": 3, "D": 3}),
    ("order", 12, "answer", {"A": 4, "B": 4, "C": 4}),
    ("layout", 13, "answer", {"A": 5, "B": 4, "C": 4}),
    ("count", 8, "answer", {"1": 2, "2": 2, "3": 2, "4": 2}),
    ("distance", 10, "answer", {"1": 2, "2": 2, "3": 2, "4": 2, "5": 2}),
    ("route", 9, "legs", {2: 3, 3: 3, 4: 3}),
    ("where", 8, "time", {"0": 2, "0.5": 2, "1": 2, "1.5": 2}),
    ("when", 6, "variant", {"visible": 3, "move": 3}),
    ("camera", 8, "answer", {"A": 2, "B": 2, "C": 2, "D": 2}),
])
def test_answers_are_balanced(task, n, key, expected):
    def value(row):
        if key == "legs":
            return row["answer"].count(",") + 1
        if key == "time":
            return re.search(r" at ([\d.]+) s\?", row["question"]).group(1)
        if key == "variant":
            return "visible" if "visible" in row["question"] else "move"
        return row[key]

    for split in ("train", "eval"):
        got = Counter(value(ss.make_item(task, split, i, n, seed=7).row) for i in range(n))
        assert sorted(got.values()) == sorted(expected.values()) and set(got) == set(expected)


def test_each_half_second_block_holds_one_sampled_frame():
    media = MediaConfig()
    for n_frames in (16, 32):
        n = smart_nframes(n_frames, ss.FPS, fps=media.fps, min_frames=media.min_frames, max_frames=media.max_frames)
        assert sorted(frame_indices(n_frames, n) // ss.BLOCK) == list(range(n_frames // ss.BLOCK))
    for s, e in ss._SEGMENTS:
        assert (s / ss.BLOCK_S).is_integer() and (e / ss.BLOCK_S).is_integer() and 1 <= e - s <= 3


def test_where_box_matches_the_pixels_at_the_named_time(rows):
    for row, frames in _of(rows, "where"):
        t = float(re.search(r" at ([\d.]+) s\?", row["question"]).group(1))
        color = _color(re.search(r"Where is the (\w+ \w+)", row["question"]).group(1))
        assert row["answer"] == " ".join(f"{v:g}" for v in row["box"])
        for f in range(int(t * ss.FPS), int(t * ss.FPS) + ss.BLOCK):  # the whole block: one of them is sampled
            got = _bbox(_pixels_of(frames[f], color))
            np.testing.assert_allclose(got, np.array(row["box"]) * 64, atol=1)


def test_layout_graph_and_answer_match_the_pixels(rows):
    for row, frames in _of(rows, "layout"):
        centres = {}
        for node in row["graph"]["nodes"]:
            box = _bbox(_pixels_of(frames[8], _color(node["name"])))
            centres[node["id"]] = (box[:2] + box[2:]) / 2
            np.testing.assert_allclose(centres[node["id"]], np.array(node["pos"]) * 64, atol=1)
        for edge in row["graph"]["edges"]:
            axis = 0 if edge["rel"] == "left of" else 1
            assert edge["rel"] in ("left of", "above")
            assert centres[edge["dst"]][axis] - centres[edge["src"]][axis] >= ss.MARGIN - 1
        rel = re.search(r"Which shape is (?:to the )?(left of|right of|above|below) the (\w+ \w+)\?", row["question"])
        by_name = {n["name"]: centres[n["id"]] for n in row["graph"]["nodes"]}
        anchor = by_name[rel.group(2)]
        axis, sign = {"left of": (0, -1), "right of": (0, 1), "above": (1, -1), "below": (1, 1)}[rel.group(1)]
        holds = [sign * (by_name[opt][axis] - anchor[axis]) >= ss.MARGIN - 1 for opt in row["options"]]
        assert holds == [letter == row["answer"] for letter in ss.LETTERS[: len(holds)]]


def test_when_segment_matches_the_pixels(rows):
    for row, frames in _of(rows, "when"):
        s, e = row["segment"]
        assert row["duration"] == len(frames) / ss.FPS and row["answer"] == f"{s:g} {e:g}"
        color = _color(re.search(r"(?:is|does) the (\w+ \w+)", row["question"]).group(1))
        boxes = [_bbox(_pixels_of(f, color)) for f in frames]
        if "visible" in row["question"]:
            seen = [b is not None for b in boxes]
            assert seen == [s * ss.FPS <= t < e * ss.FPS for t in range(len(frames))]
        else:
            moved = [not np.array_equal(boxes[t], boxes[t - 1]) for t in range(1, len(frames))]
            assert moved == [s * ss.FPS < t <= e * ss.FPS for t in range(1, len(frames))]


def test_order_answer_matches_first_appearances(rows):
    for row, frames in _of(rows, "order"):
        first = {opt: next(t for t, f in enumerate(frames) if _pixels_of(f, _color(opt)).any())
                 for opt in row["options"]}
        ranked = sorted(row["options"], key=first.get)
        ordinal = re.search(r"appears (first|second|last)\?", row["question"]).group(1)
        assert ranked[("first", "second", "last").index(ordinal)] == row["options"][ss.LETTERS.index(row["answer"])]
        assert all(first[opt] % ss.BLOCK == 0 for opt in row["options"])  # on a block boundary


def test_count_answer_matches_connected_blobs(rows):
    colour_rows = [(r, f) for r, f in _of(rows, "count") if "shapes are" in r["question"]]
    assert colour_rows
    for row, frames in colour_rows:
        color = re.search(r"How many (\w+) shapes", row["question"]).group(1)
        assert ndimage.label(_pixels_of(frames[0], color))[1] == int(row["answer"])


def _grid_phase(frame: np.ndarray, axis: int) -> int:
    # Lines are brighter than the background; shapes are brighter still but cover few pixels, so use the median.
    profile = np.median(frame.astype(float).sum(-1), axis=axis)  # per column (axis 0) or per row (axis 1)
    return int(np.argmax([profile[p::ss.CELL].mean() for p in range(ss.CELL)]))


def test_distance_is_measured_on_the_ground_grid(rows):
    for row, frames in _of(rows, "distance"):
        color = _color(re.search(r"does the (\w+ \w+) move", row["question"]).group(1))
        start, end = (_bbox(_pixels_of(frames[t], color)) for t in (0, -1))
        camera = np.zeros(2)  # follow the grid frame to frame: it never shifts by more than 2 px at once
        for t in range(1, len(frames)):
            for axis in (0, 1):
                d = _grid_phase(frames[t - 1], axis) - _grid_phase(frames[t], axis)
                camera[axis] += (d + 4) % ss.CELL - 4
        world = (end - start)[:2] + camera
        assert abs(np.abs(world).sum() - ss.CELL * int(row["answer"])) <= 1
        assert min(np.abs(world)) <= 1  # along one axis


def test_camera_answer_is_the_opposite_of_how_the_picture_slides(rows):
    """Every shape and the grid slide the same way on screen; the camera moved the other way."""
    for row, frames in _of(rows, "camera"):
        colors = [c for c in ss.PALETTE if _pixels_of(frames[0], c).any()]
        assert len(colors) >= 2
        moves = [(_bbox(_pixels_of(frames[-1], c)) - _bbox(_pixels_of(frames[0], c)))[:2] for c in colors]
        slides = set()
        for dx, dy in moves:                           # 15-30 px along one axis, within a pixel on the other
            assert max(abs(dx), abs(dy)) >= 14 and min(abs(dx), abs(dy)) <= 1, (dx, dy)
            slides.add(("right" if dx > 0 else "left") if abs(dx) > abs(dy) else ("down" if dy > 0 else "up"))
        assert len(slides) == 1, slides                # the whole picture slides together
        slide, = slides
        dx, dy = {"right": (1, 0), "left": (1, 0), "down": (0, 1), "up": (0, 1)}[slide]
        camera = row["options"][ss.LETTERS.index(row["answer"])]
        assert camera == {"up": "down", "down": "up", "left": "right", "right": "left"}[slide]
        for axis in (0, 1):                            # and the grid slides with them
            phase = [_grid_phase(f, axis) for f in (frames[0], frames[-1])]
            assert (phase[0] != phase[1]) == bool((dx, dy)[axis])


def _legs_from_pixels(frames: np.ndarray, color: str) -> list[str]:
    centres = [(b[:2] + b[2:]) / 2 for b in (_bbox(_pixels_of(f, color)) for f in frames)]
    legs: list[str] = []
    for a, b in zip(centres, centres[1:], strict=False):
        dx, dy = b - a
        move = ("right" if dx > 0 else "left") if abs(dx) > abs(dy) else ("down" if dy > 0 else "up")
        if not legs or legs[-1] != move:
            legs.append(move)
    return legs


def test_route_reference_and_reverse_match_the_pixels(rows):
    for row, frames in _of(rows, "route"):
        color = _color(re.search(r"route of the (\w+ \w+)\.", row["question"]).group(1))
        legs = _legs_from_pixels(frames, color)
        assert row["answer"] == row["reference"] == ss.route_text(legs)
        assert 2 <= len(legs) <= 4
        assert row["reverse"]["answer"] == ss.route_text(_legs_from_pixels(frames[::-1], color))
        assert row["reverse"]["question"] == row["question"]  # the reverse row shows the video played backwards


def test_reverse_route_flips_and_reverses():
    assert ss.reverse_route(["right", "up", "left"]) == ["right", "down", "left"]
    assert ss.route_text(ss.reverse_route(["up", "left"])) == "moves right, then down"
    for legs in (["up", "right"], ["left", "down", "right", "up"]):
        assert ss.reverse_route(ss.reverse_route(legs)) == legs


def test_unknown_task_names_the_known_ones(tmp_path):
    with pytest.raises(ValueError, match="'bogus'.*known: direction, order, count, distance, when, where, layout"):
        ss.parse_tasks("direction,bogus")
    with pytest.raises(ValueError, match="known"):
        ss.make_suite(tmp_path / "x", ["nope"], 1, 1)
    assert ss.parse_tasks(" when , where,when ") == ["when", "where"]
    assert not (tmp_path / "x").exists()


def test_render_refuses_a_shape_outside_the_frame():
    xy = np.array([[60, 0]])
    scene = ss.Scene((0, 0, 0), [ss.Sprite("square", "red", 8, xy, np.ones(1, bool))], np.zeros((1, 2), int))
    with pytest.raises(ValueError, match="red square leaves the frame"):
        ss.render(scene)


def test_cli_writes_the_suite_and_rejects_unknown_tasks(tmp_path):
    out = tmp_path / "cli"
    args = ["--tasks", "direction,route", "--n", "2", "--eval-n", "1", "--seed", "3", "--out", str(out)]
    first = CliRunner().invoke(synth_command, args)
    assert first.exit_code == 0, first.output
    assert "wrote 2 train + 1 eval clips per task (direction, route)" in first.output
    rows = [json.loads(line) for line in (out / "train.jsonl").read_text().splitlines()]
    assert [r["extra"]["synth_task"] for r in rows] == ["direction", "direction", "route", "route"]
    assert all((out / r["video"]).is_file() for r in rows)
    again = CliRunner().invoke(synth_command, args)
    assert again.exit_code == 0 and "already built" in again.output
    bad = CliRunner().invoke(synth_command, ["--tasks", "direction,flying", "--out", str(tmp_path / "bad")])
    assert bad.exit_code == 2 and "'flying'" in bad.output and "layout, route" in bad.output


def test_reasoning_flag_adds_exact_reasoning_and_changes_nothing_else(tmp_path, suite):
    with_r = ss.make_suite(tmp_path / "r", "all", N_TRAIN, N_EVAL, seed=SEED, progress=False, reasoning=True)
    assert json.loads((with_r.train.parent / ".complete").read_text())["reasoning"] is True
    assert "reasoning" not in json.loads((suite.train.parent / ".complete").read_text())  # old builds stay valid
    for plain_path, r_path in ((suite.train, with_r.train), (suite.eval, with_r.eval)):
        for plain, row in zip(read_jsonl(plain_path), read_jsonl(r_path), strict=True):
            text = row.pop("reasoning")
            if "reverse" in row:
                back = row["reverse"].pop("reasoning")
                assert back.endswith(f"so it {row['reverse']['answer']}.")
            assert row == plain
            _same_video(plain_path.parent / plain["video"], r_path.parent / row["video"])
            task = row["extra"]["synth_task"]
            if task == "direction":
                assert text.endswith(f"so it moves {DIRECTIONS[ss.LETTERS.index(row['answer'])]}.")
            elif task in ("count", "distance"):
                assert text.endswith(f"so the answer is {row['answer']}.")
            elif task == "route":
                assert text.endswith(f"so it {row['answer']}.")
            elif task in ("order", "layout"):
                assert row["options"][ss.LETTERS.index(row["answer"])] in text
            elif task == "when":
                s, e = row["answer"].split()
                assert (f"{s} s" in text or s == "0") and (f"{e} s" in text or e == "4")  # 0 s and 4 s go unsaid
            elif task == "where":
                assert all(v in text for v in row["answer"].split())
    rows = load_rows(with_r.train)
    assert all(r.reasoning for r in rows)


def test_cli_reasoning_flag(tmp_path):
    out = tmp_path / "cli"
    r = CliRunner().invoke(synth_command, ["--tasks", "route", "--n", "1", "--eval-n", "0", "--reasoning",
                                           "--out", str(out)])
    assert r.exit_code == 0, r.output
    (row,) = [json.loads(line) for line in (out / "train.jsonl").read_text().splitlines()]
    assert row["reasoning"].startswith("The ") and row["reverse"]["reasoning"].startswith("The ")
