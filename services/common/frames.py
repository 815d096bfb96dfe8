"""qwen-vl-utils' frame-count, frame-choice and resize rules (`vision_process.py`), without torch or torchvision.

The model was trained on frames chosen and resized by these rules, so rollouts, the learner and the synthetic suite
follow them exactly. Pure arithmetic: no decoding here (services/common/media.py decodes).
"""

from __future__ import annotations

import math

import numpy as np

# qwen-vl-utils constants (Qwen2-VL / Qwen2.5-VL: patch 14, 2x2 merge -> 28 px per token side).
IMAGE_FACTOR = 28
FRAME_FACTOR = 2  # frames per temporal patch
FPS = 2.0
FPS_MIN_FRAMES = 4
FPS_MAX_FRAMES = 768
MAX_RATIO = 200
VIDEO_MIN_PIXELS = 128 * 28 * 28
VIDEO_MAX_PIXELS = 768 * 28 * 28
VIDEO_TOTAL_PIXELS = 24576 * 28 * 28


def _round_by(x: float, f: int) -> int:
    return round(x / f) * f  # Python's round: halves go to even, as in qwen-vl-utils


def _ceil_by(x: float, f: int) -> int:
    return math.ceil(x / f) * f


def _floor_by(x: float, f: int) -> int:
    return math.floor(x / f) * f


def smart_nframes(total_frames: int, video_fps: float, *, fps: float, min_frames: int, max_frames: int) -> int:
    """How many frames to sample from a video of `total_frames` frames at `video_fps`.

    Rule (qwen-vl-utils, current release):
        n = total_frames / video_fps * fps                      (fps seconds-rate sampling)
        n = min(max(n, ceil2(min_frames)), floor2(max_frames), total_frames)
        n = floor2(n)                                           (a multiple of FRAME_FACTOR=2)
    where ceil2/floor2 round up/down to a multiple of 2. Raises ValueError unless 2 <= n <= total_frames
    (i.e. for videos of fewer than 2 frames).

    >>> smart_nframes(300, 30.0, fps=2.0, min_frames=4, max_frames=768)  # 10 s at 2 fps
    20
    """
    if video_fps <= 0:
        raise ValueError(f"video_fps must be positive, got {video_fps}")
    lo = _ceil_by(min_frames, FRAME_FACTOR)
    hi = _floor_by(max_frames, FRAME_FACTOR)
    n = min(max(total_frames / video_fps * fps, lo), hi, total_frames)
    n = _floor_by(n, FRAME_FACTOR)
    if not FRAME_FACTOR <= n <= total_frames:
        raise ValueError(f"nframes should be in [{FRAME_FACTOR}, {total_frames}], got {n}")
    return int(n)


def smart_resize(
    height: int, width: int, *, factor: int = IMAGE_FACTOR, min_pixels: float, max_pixels: float
) -> tuple[int, int]:
    """Target (height, width) for a frame: both multiples of `factor`, area within [min_pixels, max_pixels],
    aspect ratio kept as closely as possible.

    Rule (qwen-vl-utils):
        reject max(h, w) / min(h, w) > MAX_RATIO=200 with ValueError;
        h', w' = max(factor, round_f(h)), max(factor, round_f(w))     (round half to even)
        if h'w' > max_pixels: beta = sqrt(h*w / max_pixels); h', w' = floor_f(h / beta), floor_f(w / beta)
        elif h'w' < min_pixels: beta = sqrt(min_pixels / (h*w)); h', w' = ceil_f(h * beta), ceil_f(w * beta)
    where round_f/floor_f/ceil_f go to a multiple of `factor`.

    >>> smart_resize(60, 100, min_pixels=784, max_pixels=4096)
    (28, 56)
    """
    if height <= 0 or width <= 0:
        raise ValueError(f"frame size must be positive, got {height}x{width}")
    if max_pixels < min_pixels:
        raise ValueError(f"max_pixels {max_pixels} < min_pixels {min_pixels}")
    if max(height, width) / min(height, width) > MAX_RATIO:
        raise ValueError(f"aspect ratio must be at most {MAX_RATIO}, got {max(height, width) / min(height, width):.1f}")
    h = max(factor, _round_by(height, factor))
    w = max(factor, _round_by(width, factor))
    if h * w > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h, w = _floor_by(height / beta, factor), _floor_by(width / beta, factor)
    elif h * w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h, w = _ceil_by(height * beta, factor), _ceil_by(width * beta, factor)
    return h, w


def video_max_pixels(nframes: int, min_pixels: int, max_pixels: int, total_pixels: float = VIDEO_TOTAL_PIXELS) -> float:
    """Per-frame pixel cap for a clip of `nframes` frames, so that a long clip stays within a total budget.

    Rule (qwen-vl-utils fetch_video): cap = max(min(VIDEO_MAX_PIXELS, total_pixels / nframes * FRAME_FACTOR),
    int(min_pixels * 1.05)); a caller's max_pixels may lower the cap but not raise it.
    """
    cap = max(min(VIDEO_MAX_PIXELS, total_pixels / nframes * FRAME_FACTOR), int(min_pixels * 1.05))
    return min(max_pixels, cap)


def frame_indices(total_frames: int, nframes: int) -> np.ndarray:
    """Evenly spaced frame indices, first and last included: round(linspace(0, total - 1, n)), halves to even."""
    return np.round(np.linspace(0, total_frames - 1, nframes)).astype(np.int64)
