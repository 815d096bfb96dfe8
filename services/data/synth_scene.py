"""The synthetic suite's drawing board: coloured shapes (sprites) on a dark plane under a camera, rendered to
frames, and the helpers every task sampler uses (placement, looks, boxes, MCQ options). See
services/data/synth_suite.py for the tasks and the invariants of what is drawn.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from services.embedded import synth

SIZE, FPS = synth.SIZE, synth.FPS  # 64 px, 8 fps
BLOCK = 4  # frames per 0.5 s: one sampled frame per block at the default 2 fps
BLOCK_S = BLOCK / FPS
CELL = 8  # px: one distance unit, the spacing of the grid lines
MARGIN = 8  # px: centres this far apart along an axis make a spatial relation ("left of", "above")
GRID_LIFT = 20
LETTERS = "ABCD"
PALETTE = {
    "red": (230, 50, 50), "green": (50, 205, 80), "blue": (70, 110, 255), "yellow": (240, 220, 50),
    "cyan": (50, 220, 230), "magenta": (230, 60, 220), "white": (235, 235, 235),
}
KINDS = ("square", "disc", "triangle")


@dataclass
class Sprite:
    kind: str
    color: str
    size: int
    xy: np.ndarray  # (T, 2) int: world position of the top-left pixel in each frame
    visible: np.ndarray  # (T,) bool

    @property
    def name(self) -> str:
        return f"{self.color} {self.kind}"


@dataclass
class Scene:
    background: tuple[int, int, int]
    sprites: list[Sprite]  # drawn in this order: later ones on top
    camera: np.ndarray  # (T, 2) int: world position of the frame's top-left pixel
    grid: bool = False

    def image_xy(self, sprite: Sprite) -> np.ndarray:
        return sprite.xy - self.camera


@dataclass
class Item:
    frames: np.ndarray  # (T, SIZE, SIZE, 3) uint8
    row: dict[str, Any] = field(default_factory=dict)  # task, question, [options], answer, [ground truth]
    reasoning: str = ""  # an exact chain of thought for the answer, from the ground truth
    reverse_reasoning: str = ""  # the same for the reverse-time variant (route rows)


# ---- rendering -------------------------------------------------------------------------------------------------


def render(scene: Scene) -> np.ndarray:
    """(T, SIZE, SIZE, 3) uint8 frames. Raises ValueError if a visible shape leaves the frame."""
    n_frames = len(scene.camera)
    frames = np.empty((n_frames, SIZE, SIZE, 3), np.uint8)
    line = tuple(c + GRID_LIFT for c in scene.background)
    masks = [_mask(s.kind, s.size) for s in scene.sprites]
    ramp = np.arange(SIZE)
    for t in range(n_frames):
        frame = frames[t]
        frame[:] = scene.background
        if scene.grid:
            cx, cy = scene.camera[t]
            frame[:, (ramp + cx) % CELL == 0] = line
            frame[(ramp + cy) % CELL == 0, :] = line
        for sprite, mask in zip(scene.sprites, masks, strict=True):
            if not sprite.visible[t]:
                continue
            x, y = (int(v) for v in sprite.xy[t] - scene.camera[t])
            if not (0 <= x <= SIZE - sprite.size and 0 <= y <= SIZE - sprite.size):
                raise ValueError(f"{sprite.name} leaves the frame at frame {t}: top-left ({x}, {y})")
            frame[y : y + sprite.size, x : x + sprite.size][mask] = PALETTE[sprite.color]
    return frames


def _mask(kind: str, size: int) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size] + 0.5  # pixel centres
    r = size / 2
    if kind == "disc":
        return (yy - r) ** 2 + (xx - r) ** 2 <= r * r
    if kind == "triangle":  # apex up: one or two pixels wide on the top row, full width on the bottom row
        return np.abs(xx - r) <= (yy + 0.5) / 2
    return np.ones((size, size), bool)


def backdrop(rng: np.random.Generator) -> tuple[int, int, int]:
    """A dark background colour (every channel <= 40), so every palette colour stands out."""
    r, g, b = (int(c) for c in rng.integers(0, 41, 3))
    return r, g, b


def parked(xy: tuple[int, int], n_frames: int) -> np.ndarray:
    """(T, 2) positions of something standing still at `xy` for `n_frames` frames."""
    return np.tile(np.array(xy, np.int64), (n_frames, 1))


def sprite_of(kind: str, color: str, size: int, xy: np.ndarray, visible: np.ndarray | None = None) -> Sprite:
    """A sprite at positions `xy` (T, 2), visible in every frame unless told otherwise."""
    return Sprite(kind, color, size, xy, np.ones(len(xy), bool) if visible is None else visible)


def random_looks(rng: np.random.Generator, k: int, lo: int = 8, hi: int = 12) -> list[tuple[str, str, int]]:
    """k (kind, colour, size) with distinct colours, so "colour kind" names one shape."""
    colors = rng.choice(list(PALETTE), size=k, replace=False)
    return [(KINDS[int(rng.integers(len(KINDS)))], str(c), int(rng.integers(lo, hi + 1))) for c in colors]


def place(rng: np.random.Generator, sizes: Sequence[int], bounds: Sequence[tuple[int, int, int, int]] | None = None,
           gap: int = 2) -> list[tuple[int, int]]:
    """Top-left corners for shapes of `sizes`, at least `gap` px apart; bounds[i] = (xlo, xhi, ylo, yhi)."""
    placed: list[tuple[int, int, int]] = []
    for i, s in enumerate(sizes):
        xlo, xhi, ylo, yhi = bounds[i] if bounds else (0, SIZE - s, 0, SIZE - s)
        for _ in range(2000):
            x, y = int(rng.integers(xlo, xhi + 1)), int(rng.integers(ylo, yhi + 1))
            if all(x + s + gap <= px or px + ps + gap <= x or y + s + gap <= py or py + ps + gap <= y
                   for px, py, ps in placed):
                placed.append((x, y, s))
                break
        else:
            raise RuntimeError(f"no room for {len(sizes)} shapes of sizes {list(sizes)}")
    return [(x, y) for x, y, _ in placed]


def fit_start(rng: np.random.Generator, rel: np.ndarray, size: int) -> np.ndarray | None:
    """A start point p with p + rel[t] inside the frame for all t, drawn uniformly; None if there is none."""
    lo, hi = -rel.min(axis=0), SIZE - size - rel.max(axis=0)
    if (lo > hi).any():
        return None
    return np.array([int(rng.integers(lo[0], hi[0] + 1)), int(rng.integers(lo[1], hi[1] + 1))])


def fmt(x: float) -> str:
    """A number as questions and reasoning write it: 1.5, 2 (no trailing .0)."""
    return f"{x:g}"


def box_at(scene: Scene, sprite: Sprite, t: int) -> list[float]:
    """The sprite's box in frame `t` as fractions of the frame, [x1, y1, x2, y2] from the top-left corner."""
    x, y = (int(v) for v in scene.image_xy(sprite)[t])
    return [x / SIZE, y / SIZE, (x + sprite.size) / SIZE, (y + sprite.size) / SIZE]


def mcq_options(rng: np.random.Generator, target: str, others: Sequence[str], letter: int) -> tuple[list[str], str]:
    """Options with `target` at `letter` and the others shuffled around it."""
    options = [others[i] for i in rng.permutation(len(others))]
    options.insert(letter, target)
    return options, LETTERS[letter]
