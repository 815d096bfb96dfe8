"""Synthetic video MCQ data: one coloured shape moving up, down, left or right; rendered to real mp4 files.

Invariants this module keeps:
- Determinism: the same (seed, n_train, n_eval) gives the same rows and the same decoded pixels. Each clip is
  drawn from its own generator seeded by (seed, split, index), so growing one split leaves the others alone.
- Balance: a split's directions are a shuffled repeat of the four directions (counts differ by at most one).
- The shape stays wholly inside the 64x64 frame in all 16 frames, and always contrasts with the background
  (background channels < 64, shape channels >= 96), so the direction is recoverable from the pixels.
- Rows follow one schema: id, absolute video path, task "mcq", the fixed question, options in the fixed order
  up/down/left/right, answer = letter of the true direction, split; with `reasoning=True` also a `reasoning` text
  derived from the clip (`direction_reasoning`), which changes nothing else (no extra random draws).
- Idempotence: an output dir is complete only if its `.complete` marker (the build parameters as JSON) is there.
  Builds happen in a sibling temp dir that is renamed into place after the marker is written, so readers never
  see a half-written dir; a dir without a matching marker is rebuilt from scratch.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import numpy as np

from services.common.atomic import atomic_dir

MARKER = ".complete"
FRAMES = 16
SIZE = 64
FPS = 8
DIRECTIONS = ("up", "down", "left", "right")
LETTERS = ("A", "B", "C", "D")
QUESTION = "Which way does the shape move?"
# Bump when rendering changes, so markers written by older code no longer match.
_VERSION = 2
_SPLIT_CODES = {"train": 0, "eval": 1}
_STEP = {"up": (0, -1), "down": (0, 1), "left": (-1, 0), "right": (1, 0)}  # (dx, dy), image y points down


@dataclass(frozen=True)
class Clip:
    direction: str
    shape: str  # "square" | "disc"
    color: tuple[int, int, int]
    background: tuple[int, int, int]
    size: int  # side or diameter in pixels
    x0: int  # top-left corner in frame 0
    y0: int
    speed: int  # pixels per frame


def build_once(out_dir: Path, params: dict[str, Any], build: Callable[[Path], None]) -> bool:
    """Make `out_dir` hold what `build(tmp_dir)` writes, unless it already holds a build with `params`.

    Returns True when it built. `build` writes into a fresh temp dir next to `out_dir`; the marker goes in last,
    then the temp dir replaces `out_dir`. A stale or half-written `out_dir` is deleted.
    """
    out_dir = Path(out_dir).resolve()
    if read_marker(out_dir) == params:
        return False
    # A concurrent builder with the same params may finish meanwhile: then its output stays (readers may already
    # hold paths into it) and ours is dropped.
    other_built: list[bool] = []

    def built_meanwhile() -> bool:
        other_built.append(read_marker(out_dir) == params)
        return other_built[-1]

    with atomic_dir(out_dir, replace=True, discard_if=built_meanwhile) as tmp:
        tmp.chmod(0o755)  # mkdtemp makes it private, but the result is shared with other processes and users
        build(tmp)
        for path in tmp.rglob("*"):  # some writers (safetensors) create owner-only files; results are shared
            path.chmod(0o755 if path.is_dir() else 0o644)
        (tmp / MARKER).write_text(json.dumps(params, sort_keys=True))
    return not other_built[-1]


def read_marker(out_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((Path(out_dir) / MARKER).read_text())
    except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError):
        return None


def make_direction_dataset(
    out_dir: Path, n_train: int, n_eval: int, seed: int = 0, reasoning: bool = False
) -> tuple[Path, Path]:
    """Render the train and eval splits into `out_dir`; return the paths of train.jsonl and eval.jsonl.

    Rows point at `out_dir/videos/<id>.mp4` by absolute path, so `out_dir` must not move after the build.
    `reasoning` adds each row's `reasoning` text (for CoT-SFT); off, the output is what it always was.
    """
    out_dir = Path(out_dir).resolve()
    params = {
        "n_train": n_train,
        "n_eval": n_eval,
        "seed": seed,
        "version": _VERSION,
        "frames": FRAMES,
        "size": SIZE,
        "fps": FPS,
    }
    if reasoning:  # only when on: existing builds (reasoning off) keep matching their markers
        params["reasoning"] = True

    def build(tmp: Path) -> None:
        (tmp / "videos").mkdir()
        for split, n in (("train", n_train), ("eval", n_eval)):
            rows = _render_split(tmp, out_dir, split, n, seed, reasoning)
            with open(tmp / f"{split}.jsonl", "w") as f:
                f.writelines(json.dumps(row) + "\n" for row in rows)

    build_once(out_dir, params, build)
    return out_dir / "train.jsonl", out_dir / "eval.jsonl"


def _render_split(tmp: Path, final_dir: Path, split: str, n: int, seed: int,
                  reasoning: bool = False) -> list[dict[str, Any]]:
    code = _SPLIT_CODES[split]
    directions = [DIRECTIONS[i % 4] for i in range(n)]
    order = np.random.default_rng([seed, code]).permutation(n)
    rows = []
    for i in range(n):
        clip = sample_clip(np.random.default_rng([seed, code, i]), directions[order[i]])
        clip_id = f"{split}-{i:05d}"
        encode_mp4(render_frames(clip), tmp / "videos" / f"{clip_id}.mp4")
        rows.append(
            {
                "id": clip_id,
                "video": str(final_dir / "videos" / f"{clip_id}.mp4"),
                "task": "mcq",
                "question": QUESTION,
                "options": list(DIRECTIONS),
                "answer": LETTERS[DIRECTIONS.index(clip.direction)],
                "split": split,
                "extra": {"synth_task": "direction"},  # as the suite's rows: evaluation reports per synthetic task
            }
        )
        if reasoning:
            rows[-1]["reasoning"] = direction_reasoning(clip)
    return rows


# Where the shape is in the first and in the last frame, for each direction of motion (image y points down).
_ENDS = {"up": ("lower", "higher"), "down": ("higher", "lower"), "left": ("further right", "further left"),
         "right": ("further left", "further right")}


def direction_reasoning(clip: Clip) -> str:
    """A short, exact chain of thought for the clip's answer, from its ground truth.

    >>> direction_reasoning(Clip("down", "disc", (200, 0, 0), (0, 0, 0), 12, 5, 3, 2))
    'The disc is higher in the first frame and lower in the last frame, so it moves down.'
    """
    first, last = _ENDS[clip.direction]
    return f"The {clip.shape} is {first} in the first frame and {last} in the last frame, so it moves {clip.direction}."


def sample_clip(rng: np.random.Generator, direction: str) -> Clip:
    size = int(rng.integers(10, 17))
    speed = int(rng.integers(2, 4))
    travel = speed * (FRAMES - 1)  # <= 45, and 16 + 45 < 64, so a start position always exists
    dx, dy = _STEP[direction]

    def start(step: int) -> int:
        if step == 0:
            return int(rng.integers(0, SIZE - size + 1))
        lo, hi = (0, SIZE - size - travel) if step > 0 else (travel, SIZE - size)
        return int(rng.integers(lo, hi + 1))

    x0, y0 = start(dx), start(dy)
    return Clip(
        direction=direction,
        shape=("square", "disc")[int(rng.integers(0, 2))],
        color=_rgb(rng.integers(96, 256, 3)),
        background=_rgb(rng.integers(0, 64, 3)),
        size=size,
        x0=x0,
        y0=y0,
        speed=speed,
    )


def _rgb(values: np.ndarray) -> tuple[int, int, int]:
    r, g, b = (int(v) for v in values)
    return r, g, b


def render_frames(clip: Clip) -> np.ndarray:
    """(FRAMES, SIZE, SIZE, 3) uint8 frames of the clip."""
    frames = np.empty((FRAMES, SIZE, SIZE, 3), np.uint8)
    frames[:] = clip.background
    yy, xx = np.mgrid[0 : clip.size, 0 : clip.size]
    r = clip.size / 2
    if clip.shape == "disc":
        mask = (yy + 0.5 - r) ** 2 + (xx + 0.5 - r) ** 2 <= r * r
    else:
        mask = np.ones((clip.size, clip.size), bool)
    dx, dy = _STEP[clip.direction]
    for t in range(FRAMES):
        x, y = clip.x0 + dx * clip.speed * t, clip.y0 + dy * clip.speed * t
        frames[t, y : y + clip.size, x : x + clip.size][mask] = clip.color
    return frames


def encode_mp4(frames: np.ndarray, path: Path, fps: int = FPS) -> None:
    """Write (T, H, W, 3) uint8 frames as yuv420p mp4: H.264 when PyAV has libx264, else MPEG-4 part 2."""
    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        assert isinstance(stream, av.VideoStream)  # for the type checker: a video codec gives a video stream
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        # One encoder thread: multi-threaded encoders may pick different decisions run to run, and the pixels
        # must be reproducible. Near-lossless quality keeps the shape's colour edges crisp at 64x64.
        if codec == "libx264":
            stream.options = {"crf": "12", "threads": "1"}
        else:
            stream.options = {"qscale": "2", "threads": "1"}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def decode_video(path: str | Path) -> np.ndarray:
    """All frames of a video file as a (T, H, W, 3) uint8 RGB array."""
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]
