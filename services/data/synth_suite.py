"""Synthetic spatio-temporal task suite: coloured shapes on a dark plane, rendered to real mp4 files, with exact
ground truth for nine tasks (direction, order, count, distance, when, where, layout, route, camera).

Invariants this module keeps:
- Determinism: the same (task, split, index, seed, pan) gives the same row and the same decoded pixels, whatever
  other tasks or sizes are asked for: each clip draws from its own generator seeded by (seed, task code, split
  code, index), and each (task, split) shuffles its balanced labels with its own generator.
- Balance: each (task, split) cycles through its label list (MCQ answer letters cycle fastest, then the
  question variant), then shuffles; so answer letters, counts, distances and variants differ by at most one.
- Every shape stays wholly inside the 64x64 frame while visible (render refuses otherwise) and contrasts with the
  background: background channels <= 40, grid lines <= 60, every palette colour has a channel >= 200.
- Time: 8 fps, clips of 16 or 32 frames. The default media config samples 2 fps, which takes exactly one frame
  from every block of 4 frames (0.5 s); so every event (appearing, starting or stopping, turning, a named time)
  happens on a 0.5 s block boundary. A "visible" segment [s, e] means frames s*8 .. e*8-1 show the shape; a
  "moves" segment means its position changes from frame s*8 to frame e*8 and nowhere else.
- Space: boxes and positions are fractions of the frame width and height, origin at the top-left corner;
  a box [x1, y1, x2, y2] runs from the left/top edge of the shape's first pixel column/row to the right/bottom edge
  of its last (so x2 - x1 = size / 64). A layout node's pos is the centre of that box.
- Distance is measured in grid cells (8 px, the spacing of the grid lines drawn on the ground plane): the grid
  moves with the ground when the camera pans, so distances are world distances, not screen distances.
- Rows: id, video (relative to the JSONL's folder), task, question, options (MCQ only), answer, split, optional
  ground truth (segment, duration, box, graph, reference, reverse) and extra.synth_task. A route row's reverse
  variant is meant for the same video played backwards (services/common/dataset.rows_with_reverse and the media
  pipeline do that): same question, legs reversed and flipped as the answer. An output dir is
  complete only with its build_once marker (the build parameters).
- Reasoning (`reasoning=True`, for CoT-SFT): each row also gets a short `reasoning` text (and a route row's reverse
  variant its own), stated from the clip's ground truth only, so it is exactly true. It costs no random draws:
  with it off, rows, videos and build markers are byte for byte what they were before it existed.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from services.common.synth_tasks import TASKS, parse_tasks
from services.data.synth_scene import (
    BLOCK,
    BLOCK_S,
    CELL,
    FPS,
    KINDS,
    LETTERS,
    MARGIN,
    PALETTE,
    SIZE,
    Item,
    Scene,
    Sprite,
    backdrop,
    box_at,
    fit_start,
    fmt,
    mcq_options,
    parked,
    place,
    random_looks,
    render,
    sprite_of,
)
from services.embedded import synth

_SPLIT_CODES = {"train": 0, "eval": 1}
_STEP = {"up": (0, -1), "down": (0, 1), "left": (-1, 0), "right": (1, 0)}  # (dx, dy); image y points down
_FLIP = {"up": "down", "down": "up", "left": "right", "right": "left"}
_ORDINALS = ("first", "second", "last")
_RELATIONS = ("left of", "right of", "above", "below")
_ROUTE_FORMAT = "using up, down, left and right, like: moves up, then left."
# Bump when rendering or row content changes, so markers written by older code no longer match.
_VERSION = 1


class Suite(NamedTuple):
    train: Path
    eval: Path
    built: bool  # False when the output dir already held this build


def make_suite(out_dir: Path, tasks: str | Sequence[str], n_train: int, n_eval: int, seed: int = 0,
               pan: bool = True, progress: bool = True, reasoning: bool = False) -> Suite:
    """Render `n_train` train and `n_eval` eval clips per task into `out_dir` (train.jsonl, eval.jsonl, videos/),
    unless it already holds this build. `pan` lets the camera pan in half of the distance and where clips;
    `reasoning` writes each row's `reasoning` text too."""
    names = parse_tasks(tasks)
    if n_train < 0 or n_eval < 0:
        raise ValueError(f"clip counts must be >= 0, got n_train={n_train}, n_eval={n_eval}")
    out_dir = Path(out_dir).resolve()
    params = {"suite": names, "n_train": n_train, "n_eval": n_eval, "seed": seed, "pan": pan,
              "version": _VERSION, "size": SIZE, "fps": FPS}
    if reasoning:  # only when on, so that builds made without it keep matching their markers
        params["reasoning"] = True

    def build(tmp: Path) -> None:
        (tmp / "videos").mkdir()
        with _progress((n_train + n_eval) * len(names), progress) as advance:
            for split, n in (("train", n_train), ("eval", n_eval)):
                rows = [row for task in names
                        for row in _render_split(tmp, task, split, n, seed, pan, advance, reasoning)]
                with open(tmp / f"{split}.jsonl", "w") as f:
                    f.writelines(json.dumps(row) + "\n" for row in rows)

    built = synth.build_once(out_dir, params, build)
    return Suite(out_dir / "train.jsonl", out_dir / "eval.jsonl", built)


def make_item(task: str, split: str, index: int, n: int, seed: int, pan: bool = True) -> Item:
    """Clip `index` of the (task, split) of `n` clips: its frames and its row fields."""
    sampler, labels = _TASK_SPECS[task]
    code = [seed, TASKS.index(task), _SPLIT_CODES[split]]
    order = np.random.default_rng(code).permutation(n)
    return sampler(np.random.default_rng([*code, index]), labels[int(order[index]) % len(labels)], pan)


def _render_split(tmp: Path, task: str, split: str, n: int, seed: int, pan: bool,
                  advance: Callable[[], None], reasoning: bool = False) -> list[dict[str, Any]]:
    rows = []
    for i in range(n):
        item = make_item(task, split, i, n, seed, pan)
        clip_id = f"{task}-{split}-{i:05d}"
        synth.encode_mp4(item.frames, tmp / "videos" / f"{clip_id}.mp4", fps=FPS)
        rows.append({"id": clip_id, "video": f"videos/{clip_id}.mp4", **item.row, "split": split,
                     "extra": {"synth_task": task}})
        if reasoning:
            rows[-1]["reasoning"] = item.reasoning
            if item.reverse_reasoning:
                rows[-1]["reverse"] = {**rows[-1]["reverse"], "reasoning": item.reverse_reasoning}
        advance()
    return rows


@contextmanager
def _progress(total: int, enabled: bool) -> Iterator[Callable[[], None]]:
    if not enabled or total <= 8:
        yield lambda: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (TextColumn("rendering synthetic videos"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True)) as bar:
        job = bar.add_task("render", total=total)
        yield lambda: bar.advance(job)


# ---- tasks: each sampler maps (rng, balanced label, pan) to an Item ---------------------------------------------


def _direction(rng: np.random.Generator, direction: str, pan: bool) -> Item:
    clip = synth.sample_clip(rng, direction)
    return Item(synth.render_frames(clip), {"task": "mcq", "question": synth.QUESTION,
                                            "options": list(synth.DIRECTIONS),
                                            "answer": LETTERS[synth.DIRECTIONS.index(direction)]},
                synth.direction_reasoning(clip))


_ORDER_STARTS = [c for c in itertools.combinations(range(7), 3) if c[1] - c[0] >= 2 and c[2] - c[1] >= 2]


def _order(rng: np.random.Generator, label: tuple[str, int], pan: bool) -> Item:
    ordinal, letter = label
    n_frames = 32
    starts = _ORDER_STARTS[int(rng.integers(len(_ORDER_STARTS)))]  # blocks; two apart, last visible for 1 s
    looks = random_looks(rng, 3)
    corners = place(rng, [s for _, _, s in looks])
    ts = np.arange(n_frames)
    sprites = [sprite_of(k, c, s, parked(xy, n_frames), ts >= BLOCK * b)
               for (k, c, s), xy, b in zip(looks, corners, starts, strict=True)]
    target = sprites[_ORDINALS.index(ordinal)]
    options, answer = mcq_options(rng, target.name, [s.name for s in sprites if s is not target], letter)
    frames = render(Scene(backdrop(rng), sprites, parked((0, 0), n_frames)))
    question = f"Three shapes appear one after another. Which shape appears {ordinal}?"
    (a, ta), (b, tb), (c, tc) = ((sp.name, fmt(t * BLOCK_S)) for sp, t in zip(sprites, starts, strict=True))
    reasoning = (f"The {a} appears at {ta} s, the {b} at {tb} s and the {c} at {tc} s, "
                 f"so the {ordinal} to appear is the {target.name}.")
    return Item(frames, {"task": "mcq", "question": question, "options": options, "answer": answer}, reasoning)


def _count(rng: np.random.Generator, label: tuple[int, str], pan: bool) -> Item:
    k, by = label
    n_frames, distractors = 16, int(rng.integers(1, 7 - k))
    colors = list(PALETTE)
    if by == "color":
        want = colors[int(rng.integers(len(colors)))]
        rest = [c for c in colors if c != want]
        looks = [(str(rng.choice(KINDS)), want) for _ in range(k)]
        looks += [(str(rng.choice(KINDS)), str(rng.choice(rest))) for _ in range(distractors)]
        question = f"How many {want} shapes are in the video? Answer with a number."
    else:
        want = KINDS[int(rng.integers(len(KINDS)))]
        rest = [kind for kind in KINDS if kind != want]
        looks = [(want, str(rng.choice(colors))) for _ in range(k)]
        looks += [(str(rng.choice(rest)), str(rng.choice(colors))) for _ in range(distractors)]
        question = f"How many {want}s are in the video? Answer with a number."
    sizes = [int(rng.integers(8, 11)) for _ in looks]
    corners = place(rng, sizes)
    sprites = [sprite_of(kind, c, s, parked(xy, n_frames))
               for (kind, c), s, xy in zip(looks, sizes, corners, strict=True)]
    frames = render(Scene(backdrop(rng), sprites, parked((0, 0), n_frames)))
    seen = ", ".join(f"a {s.name}" for s in sorted(sprites, key=lambda s: (int(s.xy[0][0]), int(s.xy[0][1]))))
    which = want if by == "color" else (f"a {want}" if k == 1 else f"{want}s")
    reasoning = (f"From left to right I see {seen}. {k} of them {'is' if k == 1 else 'are'} {which}, "
                 f"so the answer is {k}.")
    return Item(frames, {"task": "numeric", "question": question, "answer": str(k)}, reasoning)


def _distance(rng: np.random.Generator, label: tuple[int, bool], pan: bool) -> Item:
    cells, panning = label
    n_frames = 16
    (kind, color, size), = random_looks(rng, 1, 8, 10)
    direction = synth.DIRECTIONS[int(rng.integers(4))]
    frac = np.arange(n_frames)[:, None] / (n_frames - 1)
    move = np.rint(frac * np.array(_STEP[direction]) * cells * CELL).astype(np.int64)  # world, from the start
    start, pan_dir = None, ""
    while start is None:  # a pan that the shape can stay in frame under; no pan always fits (40 + 10 < 64)
        shift = np.zeros(2, np.int64)
        if pan and panning:
            pan_dir = synth.DIRECTIONS[int(rng.integers(4))]
            shift = np.array(_STEP[pan_dir]) * int(rng.choice([8, 12, 16]))
        cam = np.rint(frac * shift).astype(np.int64)
        start = fit_start(rng, move - cam, size)
    origin = rng.integers(0, CELL, 2)  # grid phase
    xy = start + origin + move
    scene = Scene(backdrop(rng), [sprite_of(kind, color, size, xy)], origin + cam, grid=True)
    question = (f"The background grid is fixed to the ground. How many grid cells does the {color} {kind} move? "
                "Answer with a number.")
    reasoning = (f"Against the grid lines the {color} {kind} moves {direction} by {cells} cell{'s' * (cells > 1)}"
                 + (f"; the camera pans {pan_dir}, which shifts the whole picture but not the distance on the ground"
                    if pan_dir else "") + f", so the answer is {cells}.")
    return Item(render(scene), {"task": "numeric", "question": question, "answer": str(cells)}, reasoning)


def _segments() -> list[tuple[float, float]]:
    blocks = 32 // BLOCK
    return [(a * BLOCK_S, b * BLOCK_S) for a in range(blocks) for b in range(a + 2, min(a + 6, blocks) + 1)
            if (a, b) != (0, blocks)]


_SEGMENTS = _segments()  # 32-frame clips: 1 to 3 s long, never the whole 4 s


def _when(rng: np.random.Generator, variant: str, pan: bool) -> Item:
    n_frames = 32
    s, e = _SEGMENTS[int(rng.integers(len(_SEGMENTS)))]
    f0, f1 = int(s * FPS), int(e * FPS)
    looks = random_looks(rng, 1 + int(rng.integers(1, 3)), 8, 10)
    ts = np.arange(n_frames)
    (kind, color, size), others = looks[0], looks[1:]
    if variant == "visible":
        target_rel = np.zeros((n_frames, 2), np.int64)
        visible = (ts >= f0) & (ts < f1)
        question = (f"When is the {color} {kind} visible? Answer with the start and end time in seconds, "
                    "as two numbers: start end.")
        reasoning = f"The {color} {kind} is first seen at {fmt(s)} s and is gone from {fmt(e)} s on."
    else:  # moves between frames f0 and f1 (2 px per frame, 1 if that took it over 24 px), still before and after
        way = synth.DIRECTIONS[int(rng.integers(4))]
        step = np.array(_STEP[way]) * (2 if f1 - f0 <= 12 else 1)
        end = f"until {fmt(e)} s, then stands still again" if f1 < n_frames else "until the end"
        reasoning = (f"The {color} {kind} " + (f"stands still until {fmt(s)} s, then " if f0 else "")
                     + f"moves {way} {end}.")
        target_rel = np.clip(ts - f0, 0, f1 - f0)[:, None] * step
        visible = np.ones(n_frames, bool)
        question = (f"When does the {color} {kind} move? Answer with the start and end time of its motion in "
                    "seconds, as two numbers: start end.")
    span = target_rel.max(axis=0) - target_rel.min(axis=0)  # the target's path is placed as one big box
    corners = place(rng, [size + int(span.max())] + [sz for _, _, sz in others])
    start = np.array(corners[0]) - target_rel.min(axis=0)
    # Centre the path's box on the placed square along the shorter side.
    start += (int(span.max()) - span) // 2
    sprites = [sprite_of(k, c, sz, parked(xy, n_frames)) for (k, c, sz), xy in zip(others, corners[1:], strict=True)]
    sprites.append(sprite_of(kind, color, size, start + target_rel, visible))
    frames = render(Scene(backdrop(rng), sprites, parked((0, 0), n_frames)))
    return Item(frames, {"task": "temporal", "question": question, "answer": f"{fmt(s)} {fmt(e)}",
                         "segment": [s, e], "duration": n_frames / FPS}, reasoning)


def _where(rng: np.random.Generator, label: tuple[int, bool], pan: bool) -> Item:
    block, panning = label
    n_frames = 16
    looks = random_looks(rng, 1 + int(rng.integers(1, 3)), 8, 12)
    held = np.arange(n_frames)[:, None] // BLOCK  # positions change only at block boundaries
    step = np.zeros(2, np.int64)
    while not step.any():
        step = rng.choice([-8, -4, 0, 4, 8], size=2)
    cam_step = np.array(_STEP[synth.DIRECTIONS[int(rng.integers(4))]]) * 4 if pan and panning else np.zeros(2, int)
    cam = held * cam_step
    (kind, color, size), others = looks[0], looks[1:]
    start = fit_start(rng, held * step - cam, size)
    assert start is not None  # at most 3 * (8 + 4) = 36 px of travel, 36 + 12 < 64
    # Distractors stand still on the ground, so they slide with the pan; keep their whole slide in frame.
    bounds = [(int(cam[:, 0].max()), SIZE - s + int(cam[:, 0].min()), int(cam[:, 1].max()),
               SIZE - s + int(cam[:, 1].min())) for _, _, s in others]
    corners = place(rng, [s for _, _, s in others], bounds)
    sprites = [sprite_of(k, c, s, parked(xy, n_frames)) for (k, c, s), xy in zip(others, corners, strict=True)]
    target = sprite_of(kind, color, size, start + held * step)
    sprites.append(target)  # drawn last: never hidden by a distractor
    scene = Scene(backdrop(rng), sprites, cam, grid=bool(cam_step.any()))
    box = box_at(scene, target, block * BLOCK)
    question = (f"Where is the {color} {kind} at {fmt(block * BLOCK_S)} s? Answer with its bounding box "
                "x1 y1 x2 y2 as fractions of the frame width and height (0 0 is the top-left corner, 1 1 the "
                "bottom-right).")
    x1, y1, x2, y2 = map(fmt, box)
    reasoning = (f"At {fmt(block * BLOCK_S)} s the {color} {kind} spans x from {x1} to {x2} and y from {y1} to {y2} "
                 "of the frame.")
    return Item(render(scene), {"task": "bbox", "question": question, "answer": " ".join(map(fmt, box)),
                                "box": box}, reasoning)


def _layout(rng: np.random.Generator, label: tuple[str, int], pan: bool) -> Item:
    relation, letter = label
    n_frames = 16
    looks = random_looks(rng, 4, 8, 10)
    # Build it as "target left of anchor, the other two right of it", then mirror/transpose for the relation asked.
    sizes = [s for _, _, s in looks]
    ax = int(rng.integers(16, SIZE - 16 - sizes[0] + 1))
    cxa = ax + sizes[0] / 2
    free = [(0, SIZE - s) for s in sizes]
    bounds = [(ax, ax, *free[0]), (0, int(np.floor(cxa - MARGIN - sizes[1] / 2)), *free[1])]
    bounds += [(int(np.ceil(cxa + MARGIN - s / 2)), SIZE - s, *f) for s, f in zip(sizes[2:], free[2:], strict=True)]
    corners = np.array(place(rng, sizes, bounds))
    if relation in ("above", "below"):
        corners = corners[:, ::-1]
    if relation in ("right of", "below"):
        axis = 0 if relation == "right of" else 1
        corners[:, axis] = SIZE - np.array(sizes) - corners[:, axis]
    sprites = [sprite_of(k, c, s, parked(tuple(xy), n_frames)) for (k, c, s), xy in zip(looks, corners, strict=True)]
    anchor, target, others = sprites[0], sprites[1], sprites[2:]
    options, answer = mcq_options(rng, target.name, [s.name for s in others], letter)
    frames = render(Scene(backdrop(rng), sprites, parked((0, 0), n_frames)))
    phrase = {"left of": "to the left of", "right of": "to the right of"}.get(relation, relation)
    reasoning = (f"The {target.name} is {phrase} the {anchor.name}; the {others[0].name} and the {others[1].name} "
                 "are not.")
    return Item(frames, {"task": "mcq", "question": f"Which shape is {phrase} the {anchor.name}?",
                         "options": options, "answer": answer, "graph": _graph(sprites, rng)}, reasoning)


def _graph(sprites: Sequence[Sprite], rng: np.random.Generator) -> dict[str, Any]:
    """Nodes (centre positions in frame fractions) and canonical edges: "left of" and "above" only, each between
    centres at least MARGIN px apart along its axis."""
    order = [sprites[i] for i in rng.permutation(len(sprites))]
    centres = [s.xy[0] + s.size / 2 for s in order]
    nodes = [{"id": f"n{i + 1}", "name": s.name, "pos": [float(c[0]) / SIZE, float(c[1]) / SIZE]}
             for i, (s, c) in enumerate(zip(order, centres, strict=True))]
    edges = []
    for i, j in itertools.permutations(range(len(order)), 2):
        for axis, rel in ((0, "left of"), (1, "above")):
            if centres[j][axis] - centres[i][axis] >= MARGIN:
                edges.append({"src": f"n{i + 1}", "dst": f"n{j + 1}", "rel": rel})
    return {"nodes": nodes, "edges": edges}


_LEG_BLOCKS: dict[int, list[tuple[int, ...]]] = {
    2: [(4, 4)], 3: [c for c in itertools.product((2, 3, 4), repeat=3) if sum(c) == 8], 4: [(2, 2, 2, 2)],
}


def route_text(legs: Sequence[str]) -> str:
    """The route answer text.

    >>> route_text(["right", "up"])
    'moves right, then up'
    """
    return "moves " + ", then ".join(legs)


def reverse_route(legs: Sequence[str]) -> list[str]:
    """The legs seen when the video plays backwards: last leg first, each direction flipped.

    >>> reverse_route(["right", "up", "left"])
    ['right', 'down', 'left']
    """
    return [_FLIP[d] for d in reversed(legs)]


def _route(rng: np.random.Generator, n_legs: int, pan: bool) -> Item:
    n_frames = 32
    splits = _LEG_BLOCKS[n_legs]  # blocks per leg: each leg spans >= 2 sampled frames
    blocks = splits[int(rng.integers(len(splits)))]
    legs = [synth.DIRECTIONS[int(rng.integers(4))]]
    while len(legs) < n_legs:  # every turn is a right angle
        legs.append(str(rng.choice([d for d in synth.DIRECTIONS if d not in (legs[-1], _FLIP[legs[-1]])])))
    block_leg = np.repeat(np.arange(n_legs), blocks)  # (8,) leg index of each block
    steps = np.array([_STEP[legs[block_leg[t // BLOCK]]] for t in range(n_frames - 1)]) * 2  # 2 px per frame
    rel = np.vstack([np.zeros((1, 2), np.int64), np.cumsum(steps, axis=0)])
    (kind, color, size), = random_looks(rng, 1, 8, 10)
    start = fit_start(rng, rel, size)
    assert start is not None  # at most 48 px along an axis, 48 + 10 < 64
    frames = render(Scene(backdrop(rng), [sprite_of(kind, color, size, start + rel)], parked((0, 0), n_frames)))
    forward, backward = route_text(legs), route_text(reverse_route(legs))
    question = f"Describe the route of the {color} {kind}. Answer with its moves in order, {_ROUTE_FORMAT}"
    # The reverse-time row shows this video played backwards (the media pipeline reverses the frames), so it asks
    # the same question; only the answer changes.
    turns = np.cumsum(blocks)[:-1] * BLOCK_S  # seconds at which each next leg begins
    return Item(frames, {"task": "route", "question": question, "answer": forward, "reference": forward,
                         "reverse": {"question": question, "answer": backward}},
                _route_reasoning(f"{color} {kind}", legs, turns.tolist()),
                _route_reasoning(f"{color} {kind}", reverse_route(legs), [n_frames / FPS - t for t in turns[::-1]]))


def _route_reasoning(name: str, legs: Sequence[str], turns: Sequence[float]) -> str:
    """
    >>> _route_reasoning("red disc", ["right", "up"], [2.0])
    'The red disc starts moving right and turns up at 2 s, so it moves right, then up.'
    """
    steps = " and".join([f" turns {leg} at {fmt(t)} s" for leg, t in zip(legs[1:], turns, strict=True)])
    return f"The {name} starts moving {legs[0]} and{steps}, so it {route_text(legs)}."


# Labels: MCQ answer letters cycle fastest, so every prefix of the cycle is balanced in letters.
def _camera(rng: np.random.Generator, direction: str, pan: bool) -> Item:
    """Ego-motion: shapes stand still on a gridded ground while the camera moves; on screen everything, grid
    included, slides the opposite way. Always pans (the pan is the task), whatever `pan` says."""
    n_frames = 16
    cam = np.arange(n_frames)[:, None] * np.array(_STEP[direction]) * int(rng.integers(1, 3))  # 1 or 2 px a frame
    looks = random_looks(rng, int(rng.integers(2, 4)), 8, 10)
    # Still shapes slide by -cam on screen: keep the whole slide in frame.
    bounds = [(int(cam[:, 0].max()), SIZE - s + int(cam[:, 0].min()), int(cam[:, 1].max()),
               SIZE - s + int(cam[:, 1].min())) for _, _, s in looks]
    corners = place(rng, [s for _, _, s in looks], bounds)
    sprites = [sprite_of(k, c, s, parked(xy, n_frames)) for (k, c, s), xy in zip(looks, corners, strict=True)]
    frames = render(Scene(backdrop(rng), sprites, cam, grid=True))
    reasoning = (f"Everything in the picture, the grid lines included, slides {_FLIP[direction]}, so the camera "
                 f"moves {direction}.")
    return Item(frames, {"task": "mcq", "question": "The shapes stand still on the ground. Which way does the camera "
                                                    "move?",
                         "options": list(synth.DIRECTIONS), "answer": LETTERS[synth.DIRECTIONS.index(direction)]},
                reasoning)


_TASK_SPECS: dict[str, tuple[Callable[[np.random.Generator, Any, bool], Item], list[Any]]] = {
    "direction": (_direction, list(synth.DIRECTIONS)),
    "order": (_order, [(o, letter) for o in _ORDINALS for letter in range(3)]),
    "count": (_count, [(k, by) for by in ("color", "kind") for k in range(1, 5)]),
    "distance": (_distance, [(d, p) for p in (False, True) for d in range(1, 6)]),
    "when": (_when, ["visible", "moves"]),
    "where": (_where, [(b, p) for p in (False, True) for b in range(4)]),
    "layout": (_layout, [(r, letter) for r in _RELATIONS for letter in range(3)]),
    "route": (_route, [2, 3, 4]),
    "camera": (_camera, list(synth.DIRECTIONS)),
}
