"""Video decoding and frame sampling for rollouts and the learner, by qwen-vl-utils' rules (services/common/frames.py).

Invariants kept by `sample_video`:
- it returns a C-contiguous uint8 array (T, H, W, 3), T a positive multiple of FRAME_FACTOR,
  H and W positive multiples of IMAGE_FACTOR;
- the same file with the same sampling parameters gives the same bytes (see `frames_sha`);
- every problem with the input (missing, empty, corrupt, truncated, too large, not a video) raises
  `MediaError` with a short `reason`, never an av/PIL/OS exception;
- nothing is decoded by us when the container says the video is larger than MAX_FRAMES frames or
  MAX_FRAME_AREA pixels per frame, and counting frames stops at MAX_FRAMES + 1 (FFmpeg's own stream
  probing inside av.open may still decode a first frame; image headers are read without decoding);
- `reverse=True` returns exactly the forward frames in reverse order (reverse-time rows, see
  services/common/dataset.py), and the FrameCache stores only forward samplings.

Inputs: mp4/mov, webm/mkv (VP8, VP9, H.264...), avi (MPEG-4 part 2, MJPEG...), a `file://` URI of one,
or a folder of jpg/png/bmp/webp frames in natural name order, played at the config's optional
`folder_fps` (default FOLDER_FPS = 2 frames per second).
"""

from __future__ import annotations

import hashlib
import re
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Protocol
from urllib.parse import unquote, urlparse

import av
import numpy as np
from PIL import Image

from services.common.frames import (
    FRAME_FACTOR,
    MAX_RATIO,
    VIDEO_TOTAL_PIXELS,
    frame_indices,
    smart_nframes,
    smart_resize,
    video_max_pixels,
)

# Our own guards: a dataset row must not be able to make an actor decode for hours or allocate
# gigabytes. Module-level so tests (and operators) can tighten them.
MAX_FRAMES = 100_000
MAX_FRAME_AREA = 8192 * 8192

FOLDER_FPS = 2.0  # a directory of frames is taken to be a video at this rate unless told otherwise
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp"})

# What the decoding libraries raise for bad input. PIL's DecompressionBombError is not an OSError.
_LIB_ERRORS = (av.error.FFmpegError, OSError, ValueError, EOFError, SyntaxError, Image.DecompressionBombError)


class MediaConfigLike(Protocol):
    """What sample_video reads from its `media` argument (services.common.config.MediaConfig, which is frozen:
    read-only properties, so a frozen model satisfies the protocol)."""

    @property
    def fps(self) -> float: ...
    @property
    def min_frames(self) -> int: ...
    @property
    def max_frames(self) -> int: ...
    @property
    def min_pixels(self) -> int: ...
    @property
    def max_pixels(self) -> int: ...


class _TruthLike(Protocol):
    reverse_time: bool


class PromptLike(Protocol):
    """What FrameCache.get_for_prompt reads from a videorl.v1.Prompt."""

    video_uri: str

    @property
    def truth(self) -> _TruthLike: ...


class MediaError(Exception):
    """A video (or frame folder) that cannot be sampled. `reason` is one of:
    missing, unreadable, unsupported, empty, corrupt, truncated, too_large, no_video_stream, bad_aspect."""

    REASONS = ("missing", "unreadable", "unsupported", "empty", "corrupt", "truncated", "too_large", "no_video_stream",
               "bad_aspect")

    def __init__(self, path: str | Path, reason: str, detail: str = ""):
        self.path, self.reason, self.detail = str(path), reason, detail
        super().__init__(f"cannot sample video {self.path!r}: {reason}" + (f" ({detail})" if detail else ""))

    def __reduce__(self):
        # Rebuild from our own fields: the default reduce would call MediaError(message) and fail,
        # and this error crosses process boundaries (Ray actors, multiprocessing pools).
        return (MediaError, (self.path, self.reason, self.detail))


def frames_sha(frames: np.ndarray) -> str:
    """sha256 of dtype, shape and bytes: equal iff two samplings produced identical frames."""
    h = hashlib.sha256(f"{frames.dtype.str}{frames.shape}".encode())
    h.update(np.ascontiguousarray(frames).tobytes())
    return h.hexdigest()


def sample_video(
    path: str | Path, media: MediaConfigLike, *, folder_fps: float | None = None, reverse: bool = False
) -> np.ndarray:
    """Decode `path` and return the frames the model sees: uint8 (T, H, W, 3).

    `path` is a video file (mp4/mov, webm/mkv, avi; recognised by content, not name), a `file://` URI of
    one, or a directory of image files. A directory is taken as a video at `folder_fps` (default: the
    config's optional `folder_fps`, else FOLDER_FPS = 2) whose frames are the images in natural sort order
    (frame_2 before frame_10). Frames are chosen by `smart_nframes` + `frame_indices` and resized to
    `smart_resize` of the first frame's size with the pixel cap from `video_max_pixels` (`media` may carry
    an optional `total_pixels`; default VIDEO_TOTAL_PIXELS).

    `reverse=True` plays the video backwards (ST-R1 reverse-time rows): the same frames are chosen, and
    returned last first.

    A one-frame source is returned as that frame twice (one temporal patch), as qwen-vl-utils pads frame
    lists; qwen-vl-utils itself would reject a one-frame video file.

    Resizing uses PIL's BICUBIC, which like torchvision's `resize(..., BICUBIC, antialias=True)` on uint8
    (what qwen-vl-utils calls) is the antialiased a=-0.5 cubic kernel; they agree within 2 grey levels.
    """
    frames = _sample_forward(_local_path(path), media, folder_fps)
    return np.ascontiguousarray(frames[::-1]) if reverse else frames


def _local_path(path: str | Path) -> Path:
    """A local path from a path or URI: file:// URIs are read locally, other schemes are refused."""
    s = str(path)
    if "://" not in s:
        return Path(path)
    uri = urlparse(s)
    if uri.scheme.lower() != "file":
        raise MediaError(s, "unsupported", f"no reader for {uri.scheme}:// URIs; stage videos on a local path")
    return Path(unquote(uri.path))


def _sample_forward(p: Path, media: MediaConfigLike, folder_fps: float | None) -> np.ndarray:
    try:
        exists = p.exists()
    except OSError as e:  # a name too long, a parent we may not search: a bad row, not a reason to stop
        raise MediaError(p, "unreadable", e.strerror or str(e)) from e
    if not exists:
        raise MediaError(p, "missing")
    if not (p.is_dir() or p.is_file()):  # a FIFO or device would block or never end
        raise MediaError(p, "unreadable", "not a regular file or directory")
    if p.is_dir():
        files = _list_frames(p)
        height, width = _image_size(p, files[0])
        fps = folder_fps or getattr(media, "folder_fps", None) or FOLDER_FPS
        idx, size = _plan(p, len(files), fps, height, width, media)
        return _load_images(p, files, idx, size)
    fmt = _sniff(p)
    total, video_fps, height, width = _probe_video(p, fmt)
    idx, size = _plan(p, total, video_fps, height, width, media)
    return _decode_video(p, fmt, idx, size)


def _plan(
    p: Path, total: int, video_fps: float, height: int, width: int, media: MediaConfigLike
) -> tuple[np.ndarray, tuple[int, int]]:
    """Which frames to keep and the (H, W) to resize them to."""
    if max(height, width) / min(height, width) > MAX_RATIO:
        raise MediaError(p, "bad_aspect", f"{width}x{height} is beyond ratio {MAX_RATIO}")
    if total < FRAME_FACTOR:
        idx = np.zeros(FRAME_FACTOR, dtype=np.int64)
    else:
        n = smart_nframes(total, video_fps, fps=media.fps, min_frames=media.min_frames, max_frames=media.max_frames)
        idx = frame_indices(total, n)
    total_pixels = getattr(media, "total_pixels", VIDEO_TOTAL_PIXELS)
    max_pixels = video_max_pixels(len(idx), media.min_pixels, media.max_pixels, total_pixels)
    return idx, smart_resize(height, width, min_pixels=media.min_pixels, max_pixels=max_pixels)


def _check_area(p: Path, height: int, width: int) -> None:
    if height <= 0 or width <= 0:
        raise MediaError(p, "corrupt", f"frame size {width}x{height}")
    if height * width > MAX_FRAME_AREA:
        raise MediaError(p, "too_large", f"frame size {width}x{height} exceeds {MAX_FRAME_AREA} pixels")


def _resize(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    height, width = size
    return np.asarray(Image.fromarray(rgb).resize((width, height), Image.Resampling.BICUBIC))


def _sniff(p: Path) -> str:
    """The demuxer for `p`, from its first bytes. FFmpeg would probe anything (a .txt file opens as an
    ANSI-art 'tty' video; playlist demuxers open other files), so only three known containers get through."""
    try:
        with p.open("rb") as f:
            head = f.read(12)
    except OSError as e:
        raise MediaError(p, "unreadable", str(e)) from e
    if not head:
        raise MediaError(p, "empty", "zero-length file")
    if head[4:8] in (b"ftyp", b"moov", b"mdat", b"free", b"wide", b"skip"):
        return "mp4"
    if head[:4] == b"\x1a\x45\xdf\xa3":
        return "matroska"
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return "avi"
    raise MediaError(p, "corrupt", "not an mp4/mov, webm/mkv or avi container")


def _open(p: Path, fmt: str):
    try:
        container = av.open(str(p), format=fmt)
    except _LIB_ERRORS as e:
        raise MediaError(p, "corrupt", str(e)) from e
    if not container.streams.video:
        container.close()
        raise MediaError(p, "no_video_stream")
    return container, container.streams.video[0]


def _probe_video(p: Path, fmt: str) -> tuple[int, float, int, int]:
    """(total frames, fps, height, width), refusing oversized videos before any frame is decoded."""
    container, stream = _open(p, fmt)
    with container:
        height, width = stream.codec_context.height, stream.codec_context.width
        _check_area(p, height, width)
        total = stream.frames
        if total > MAX_FRAMES:
            raise MediaError(p, "too_large", f"{total} frames exceeds {MAX_FRAMES}")
        counted = total <= 0
        if counted:  # webm/mkv and some avi carry no count: count packets, which needs no decoding
            total = _count_packets(p, container, stream)
        rate = stream.average_rate or stream.guessed_rate
        if rate:
            video_fps = float(rate)
        elif stream.duration and stream.time_base:
            video_fps = total / float(stream.duration * stream.time_base)
        else:
            raise MediaError(p, "corrupt", "no frame rate or duration")
        if counted and container.duration and total:
            # A cut-off webm still demuxes cleanly, just shorter; its header still states the full duration.
            promised = container.duration / av.time_base * video_fps
            if total < 0.9 * promised - 2:
                raise MediaError(p, "truncated", f"header says {promised:.0f} frames, found {total}")
    if total == 0:
        raise MediaError(p, "empty", "no video frames")
    return total, video_fps, height, width


def _count_packets(p: Path, container, stream) -> int:
    n = 0
    try:
        for packet in container.demux(stream):
            if packet.size:  # the demuxer ends with an empty flush packet
                n += 1
                if n > MAX_FRAMES:
                    raise MediaError(p, "too_large", f"more than {MAX_FRAMES} frames")
    except _LIB_ERRORS as e:
        raise MediaError(p, "corrupt", f"demuxing failed after {n} packets: {e}") from e
    return n


def _decode_video(p: Path, fmt: str, idx: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Decode in order up to the last wanted frame, converting only the wanted ones. Sequential decoding
    (no seeking) is what makes the frame index exact: seeking lands on keyframes, not frame numbers."""
    wanted, last = set(idx.tolist()), int(idx.max())
    got: dict[int, np.ndarray] = {}
    container, stream = _open(p, fmt)
    stream.thread_type = "AUTO"
    i = -1
    with container:
        try:
            for i, frame in enumerate(container.decode(stream)):
                if i in wanted:
                    _check_area(p, frame.height, frame.width)
                    got[i] = _resize(frame.to_ndarray(format="rgb24"), size)
                if i >= last:
                    break
        except _LIB_ERRORS as e:
            raise MediaError(
                p, "truncated" if i >= 0 else "corrupt", f"decoding failed after {i + 1} frames: {e}"
            ) from e
    if len(got) < len(wanted):  # frames, then none: cut short; no frame at all: the data is unusable
        raise MediaError(p, "truncated" if i >= 0 else "corrupt",
                         f"container promised {last + 1}+ frames, decoded {i + 1}")
    return np.stack([got[j] for j in idx.tolist()])


def _natural_key(name: str) -> list:
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", name)]


def _list_frames(p: Path) -> list[Path]:
    try:
        files = [f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file()]
    except OSError as e:
        raise MediaError(p, "unreadable", str(e)) from e
    if not files:
        raise MediaError(p, "empty", f"no {'/'.join(sorted(IMAGE_SUFFIXES))} files")
    if len(files) > MAX_FRAMES:
        raise MediaError(p, "too_large", f"{len(files)} frames exceeds {MAX_FRAMES}")
    return sorted(files, key=lambda f: _natural_key(f.name))


def _image_size(p: Path, f: Path) -> tuple[int, int]:
    try:
        with Image.open(f) as im:  # reads the header only
            width, height = im.size
    except Image.DecompressionBombError as e:  # PIL refuses a header of more than 2x its pixel limit
        raise MediaError(p, "too_large", f"{f.name}: {e}") from e
    except _LIB_ERRORS as e:
        raise MediaError(p, "corrupt", f"{f.name}: {e}") from e
    _check_area(p, height, width)
    return height, width


def _load_images(p: Path, files: list[Path], idx: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Load the chosen images; each is resized to the size planned from the first one."""
    out = []
    for j in idx.tolist():
        try:
            with Image.open(files[j]) as im:
                _check_area(p, im.height, im.width)  # before load(): the header is all that is read so far
                out.append(_resize(_to_rgb(im), size))
        except _LIB_ERRORS as e:
            raise MediaError(p, "corrupt", f"{files[j].name}: {e}") from e
    return np.stack(out)


def _to_rgb(im: Image.Image) -> np.ndarray:
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        # Transparent pixels go on white, as Qwen3-VL's fetch_image does; a bare convert would expose
        # whatever colour the transparent pixels happen to store.
        rgba = im.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return np.asarray(background)
    return np.asarray(im.convert("RGB"))


class FrameCache:
    """A thread-safe LRU of sampled frames bounded by total bytes.

    Keyed by (resolved path, mtime_ns, size, sampling parameters), so an edited file is re-decoded. For a
    frame folder the mtime is the directory's, which changes when frames are added, removed or renamed but
    not when one is rewritten in place. Loading happens outside the lock, so two threads missing on the
    same key both decode and the later insert wins; that is rarer and cheaper than serialising all loads.
    Returned arrays are shared and read-only: copy before writing. Reverse-time requests share the entry
    of their forward sampling and get a reversed copy.
    """

    def __init__(self, max_bytes: int):
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
        self.max_bytes = max_bytes
        self.nbytes = self.hits = self.misses = 0
        self._items: OrderedDict[tuple, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def get_for_prompt(self, prompt: PromptLike, media: MediaConfigLike) -> np.ndarray:
        """The frames for a videorl.v1.Prompt: its video_uri, backwards when its ground truth says reverse_time."""
        return self.get_or_load(prompt.video_uri, media, reverse=prompt.truth.reverse_time)

    def get_or_load(self, path: str | Path, media: MediaConfigLike, *, reverse: bool = False) -> np.ndarray:
        frames = self._forward(path, media)
        if reverse:
            frames = np.ascontiguousarray(frames[::-1])
            frames.setflags(write=False)
        return frames

    def _forward(self, path: str | Path, media: MediaConfigLike) -> np.ndarray:
        key = self._key(path, media)
        with self._lock:
            if key is not None and key in self._items:
                self._items.move_to_end(key)
                self.hits += 1
                return self._items[key]
            self.misses += 1
        frames = sample_video(path, media)
        frames.setflags(write=False)
        if key is not None:
            self._put(key, frames)
        return frames

    def _key(self, path: str | Path, media: MediaConfigLike) -> tuple | None:
        try:
            resolved = _local_path(path).resolve()
            st = resolved.stat()
        except (OSError, ValueError, MediaError):  # ValueError: a NUL byte in the path
            return None  # sample_video will raise; if the file appeared meanwhile, we have no key to trust
        params = (media.fps, media.min_frames, media.max_frames, media.min_pixels, media.max_pixels,
                  getattr(media, "total_pixels", VIDEO_TOTAL_PIXELS), getattr(media, "folder_fps", None))
        return (str(resolved), st.st_mtime_ns, st.st_size, *params)

    def _put(self, key: tuple, frames: np.ndarray) -> None:
        if frames.nbytes > self.max_bytes:
            return  # would evict everything and still not fit
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self.nbytes -= old.nbytes
            self._items[key] = frames
            self.nbytes += frames.nbytes
            while self.nbytes > self.max_bytes:
                _, evicted = self._items.popitem(last=False)
                self.nbytes -= evicted.nbytes
