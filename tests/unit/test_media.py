"""services/common/media.py: qwen-vl-utils' sampling rules, frame choice, bad inputs, the cache.

Videos are generated with PyAV into tmp_path. Each frame carries its own index as a 3x3 grid of black or
white cells (9 bits, cell k white iff bit k of the index is set), which survives lossy codecs and resizing,
so a test can read back which source frames were picked.
"""

from __future__ import annotations

import os
import pickle
import struct
import subprocess
import sys
import threading
import zlib
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
import pytest
from media_faults import cut, scramble, write
from PIL import Image

from services.common import frames, media
from services.common.frames import frame_indices, smart_nframes, smart_resize, video_max_pixels
from services.common.media import FrameCache, MediaError, frames_sha, sample_video


@dataclass
class Media:  # duck-typed stand-in for services.common.config.MediaConfig
    fps: float = 2.0
    min_frames: int = 4
    max_frames: int = 768
    min_pixels: int = 28 * 28
    max_pixels: int = 64 * 64


def index_image(i: int, height: int, width: int) -> np.ndarray:
    img = np.zeros((height, width, 3), np.uint8)
    for bit in range(9):
        if i >> bit & 1:
            r, c = divmod(bit, 3)
            img[r * height // 3 : (r + 1) * height // 3, c * width // 3 : (c + 1) * width // 3] = 255
    return img


def read_index(frame: np.ndarray) -> int:
    height, width = frame.shape[:2]
    i = 0
    for bit in range(9):
        r, c = divmod(bit, 3)
        y, x = int((r + 0.5) * height / 3), int((c + 0.5) * width / 3)
        if frame[y - 1 : y + 2, x - 1 : x + 2].mean() > 128:
            i |= 1 << bit
    return i


def write_video(
    path: Path,
    n: int,
    width: int = 64,
    height: int = 64,
    fps: int = 8,
    codec: str = "libx264",
    container_options: dict | None = None,
) -> Path:
    with av.open(str(path), "w", options=container_options or {}) as out:
        stream = out.add_stream(codec, rate=fps)
        stream.width, stream.height = width, height
        stream.pix_fmt = "yuvj420p" if codec == "mjpeg" else "yuv420p"  # mjpeg wants full-range YUV
        if codec == "libx264":
            stream.options = {"crf": "12"}
        for i in range(n):
            frame = av.VideoFrame.from_ndarray(index_image(i, height, width), format="rgb24")
            out.mux(stream.encode(frame))
        out.mux(stream.encode())
    return path


def picked(frames: np.ndarray) -> list[int]:
    return [read_index(f) for f in frames]


# ---- the rules ---------------------------------------------------------------------------------------


def test_smart_nframes_pinned():
    kw = dict(fps=2.0, min_frames=4, max_frames=768)
    assert smart_nframes(16, 8.0, **kw) == 4  # 2 s * 2 fps = 4
    assert smart_nframes(300, 30.0, **kw) == 20  # 10 s * 2 fps = 20
    assert smart_nframes(301, 30.0, **kw) == 20  # 20.07 -> floor to a multiple of 2 -> 20
    assert smart_nframes(345, 30.0, **kw) == 22  # 23 -> floor2 -> 22 (the old round rule gave 24)
    assert smart_nframes(10, 10.0, **kw) == 4  # 2 -> raised to min_frames 4
    assert smart_nframes(10, 10.0, fps=2.0, min_frames=5, max_frames=768) == 6  # min 5 -> ceil2 -> 6
    assert smart_nframes(100_000, 30.0, **kw) == 768  # 6666.7 -> max_frames
    assert smart_nframes(300, 30.0, fps=2.0, min_frames=4, max_frames=9) == 8  # max 9 -> floor2 -> 8
    assert smart_nframes(3, 30.0, **kw) == 2  # min_frames 4 capped at total 3 -> floor2 -> 2
    assert smart_nframes(16, 8.0, fps=30.0, min_frames=4, max_frames=768) == 16  # 60 capped at total 16
    with pytest.raises(ValueError):
        smart_nframes(1, 30.0, **kw)  # min(4, 768, 1) = 1 -> floor2 -> 0, outside [2, 1]
    with pytest.raises(ValueError):
        smart_nframes(16, 0.0, **kw)


def test_smart_resize_pinned():
    small = dict(min_pixels=784, max_pixels=4096)
    assert smart_resize(64, 64, **small) == (56, 56)  # round(64/28 = 2.29) = 2 -> 56; 3136 is within bounds
    # 60x100: round(2.14)=2 -> 56, round(3.57)=4 -> 112, 6272 > 4096, so beta = sqrt(6000/4096) = 1.2103:
    # floor(49.57/28)=1 -> 28, floor(82.62/28)=2 -> 56
    assert smart_resize(60, 100, **small) == (28, 56)
    big = dict(min_pixels=784, max_pixels=10**6)
    assert smart_resize(70, 70, **big) == (56, 56)  # 70/28 = 2.5 rounds half to even -> 2
    assert smart_resize(42, 42, **big) == (56, 56)  # 1.5 -> 2
    assert smart_resize(98, 98, **big) == (112, 112)  # 3.5 -> 4
    # 10x10: round gives 0 -> raised to 28; 784 < 3136, beta = sqrt(3136/100) = 5.6: ceil(56/28) -> 56
    assert smart_resize(10, 10, min_pixels=3136, max_pixels=10**6) == (56, 56)
    video = dict(min_pixels=frames.VIDEO_MIN_PIXELS, max_pixels=frames.VIDEO_MAX_PIXELS)
    assert smart_resize(360, 640, **video) == (364, 644)  # round(12.86)=13, round(22.86)=23; 234416 fits
    # 1080x1920: 1092*1932 > 602112, beta = sqrt(2073600/602112) = 1.8558: floor(581.97/28)=20 -> 560,
    # floor(1034.6/28)=36 -> 1008
    assert smart_resize(1080, 1920, **video) == (560, 1008)
    assert smart_resize(10, 2000, **big)[0] == 28  # ratio exactly 200 is allowed
    with pytest.raises(ValueError, match="aspect ratio"):
        smart_resize(10, 2010, **big)
    with pytest.raises(ValueError):
        smart_resize(64, 64, min_pixels=4096, max_pixels=784)


def test_video_max_pixels_follows_total_budget():
    # VIDEO_TOTAL_PIXELS / 768 * 2 = 19267584 / 384 = 50176, below VIDEO_MAX_PIXELS = 602112
    assert video_max_pixels(768, 784, 10**7) == 50176
    assert video_max_pixels(4, 784, 10**7) == frames.VIDEO_MAX_PIXELS  # short clip: per-frame cap rules
    assert video_max_pixels(4, 784, 4096) == 4096  # a caller's max lowers the cap
    assert video_max_pixels(768, 100352, 10**7) == 105369  # floor is int(min_pixels * 1.05)
    assert video_max_pixels(20, 784, 10**7, total_pixels=200_000) == 20_000  # 200000 / 20 * 2


def test_frame_indices_pinned():
    assert frame_indices(16, 4).tolist() == [0, 5, 10, 15]
    assert frame_indices(6, 3).tolist() == [0, 2, 5]  # 2.5 rounds half to even
    # 300 frames, 20 picks: round(k * 299 / 19) for k = 0..19
    expected = [0, 16, 31, 47, 63, 79, 94, 110, 126, 142, 157, 173, 189, 205, 220, 236, 252, 268, 283, 299]
    assert frame_indices(300, 20).tolist() == expected


# ---- sampling real files -----------------------------------------------------------------------------


def test_mp4_picks_expected_frames(tmp_path):
    frames = sample_video(write_video(tmp_path / "a.mp4", 16), Media())
    assert frames.dtype == np.uint8 and frames.shape == (4, 56, 56, 3) and frames.flags.c_contiguous
    assert picked(frames) == [0, 5, 10, 15]


def test_long_video_picks_expected_frames(tmp_path):
    frames = sample_video(write_video(tmp_path / "long.mp4", 300, fps=30), Media())
    assert frames.shape == (20, 56, 56, 3)
    assert picked(frames) == frame_indices(300, 20).tolist()


@pytest.mark.parametrize("cfg", [Media(), Media(min_pixels=4 * 784, max_pixels=20 * 784), Media(max_pixels=10**6)])
def test_odd_size_is_multiple_of_28_within_bounds(tmp_path, cfg):
    frames = sample_video(write_video(tmp_path / "odd.mp4", 16, width=100, height=60), cfg)
    _, height, width, _ = frames.shape
    assert height % 28 == 0 and width % 28 == 0
    assert cfg.min_pixels <= height * width <= cfg.max_pixels
    assert picked(frames) == [0, 5, 10, 15]
    if cfg == Media():
        assert (height, width) == (28, 56)  # see test_smart_resize_pinned


def test_webm_without_frame_count_is_counted(tmp_path):
    path = write_video(tmp_path / "a.webm", 16, codec="libvpx-vp9")
    with av.open(str(path)) as c:
        assert c.streams.video[0].frames == 0  # matroska carries no count: the packet-count path runs
    assert picked(sample_video(path, Media())) == [0, 5, 10, 15]


@pytest.mark.parametrize("name, codec", [("a.avi", "mpeg4"), ("m.avi", "mjpeg"), ("v8.webm", "libvpx"),
                                         ("v9.webm", "libvpx-vp9"), ("a.mkv", "libx264"), ("a.mov", "libx264")])
def test_containers_and_codecs(tmp_path, name, codec):
    path = write_video(tmp_path / name, 16, codec=codec)
    assert picked(sample_video(path, Media())) == [0, 5, 10, 15]
    # the container is recognised by content, not by name
    assert picked(sample_video(path.rename(tmp_path / "renamed.bin"), Media())) == [0, 5, 10, 15]


def test_reverse_plays_the_same_frames_backwards(tmp_path):
    path = write_video(tmp_path / "a.mp4", 16)
    backwards = sample_video(path, Media(), reverse=True)
    assert picked(backwards) == [15, 10, 5, 0] and backwards.flags.c_contiguous
    folder = tmp_path / "frames"
    folder.mkdir()
    for i in range(8):
        Image.fromarray(index_image(i, 64, 64)).save(folder / f"{i}.jpg")
    # 8 frames at the default folder rate of 2 fps = 4 s -> 4 picks at 1 fps: round(linspace(0, 7, 4)), reversed
    assert picked(sample_video(folder, Media(fps=1.0), reverse=True)) == [7, 5, 2, 0]


def test_cache_serves_reverse_from_the_forward_entry(tmp_path):
    from services.common.pb.videorl.v1 import rollout_pb2 as pb

    path = write_video(tmp_path / "a.mp4", 16)
    cache = FrameCache(max_bytes=10**8)
    forward = cache.get_for_prompt(pb.Prompt(video_uri=str(path)), Media())
    backward = cache.get_for_prompt(pb.Prompt(video_uri=str(path), truth=pb.GroundTruth(reverse_time=True)), Media())
    assert picked(forward) == [0, 5, 10, 15] and picked(backward) == [15, 10, 5, 0]
    assert (cache.misses, cache.hits, len(cache)) == (1, 1, 1) and not backward.flags.writeable
    assert picked(cache.get_or_load(path, Media())) == [0, 5, 10, 15]  # the cached entry was not reversed in place


def test_frame_folder_fps_from_config(tmp_path):
    @dataclass
    class FolderMedia(Media):
        folder_fps: float = 4.0

    for i in range(12):
        Image.fromarray(index_image(i, 64, 64)).save(tmp_path / f"{i:03d}.png")
    # 12 frames at the config's 4 fps = 3 s -> 3 picks at 1 fps, raised to min_frames 4
    assert picked(sample_video(tmp_path, FolderMedia(fps=1.0))) == [0, 4, 7, 11]
    assert picked(sample_video(tmp_path, FolderMedia(fps=1.0), folder_fps=2.0)) == [0, 2, 4, 7, 9, 11]  # call wins
    cache = FrameCache(max_bytes=10**8)
    assert cache.get_or_load(tmp_path, FolderMedia(fps=1.0)).shape[0] == 4
    assert cache.get_or_load(tmp_path, FolderMedia(fps=1.0, folder_fps=2.0)).shape[0] == 6  # part of the key


def test_file_uri(tmp_path):
    path = write_video(tmp_path / "a b.mp4", 16)
    assert picked(sample_video(path.as_uri(), Media())) == [0, 5, 10, 15]  # percent-encoded space
    cache = FrameCache(max_bytes=10**8)
    cache.get_or_load(path.as_uri(), Media())
    cache.get_or_load(path.as_uri(), Media())
    assert cache.hits == 1


def test_frame_folder_natural_order_and_fps(tmp_path):
    for i in range(12):  # frame_1 .. frame_12: a plain sort would put frame_10 before frame_2
        Image.fromarray(index_image(i, 64, 64)).save(tmp_path / f"frame_{i + 1}.png")
    (tmp_path / "notes.txt").write_text("not a frame")
    # 12 frames at folder_fps 2 = 6 s; at 1 fps -> 6 picks: round(linspace(0, 11, 6)) = 0, 2, 4, 7, 9, 11
    assert picked(sample_video(tmp_path, Media(fps=1.0))) == [0, 2, 4, 7, 9, 11]
    # at folder_fps 4 it is 3 s -> 3 picks, raised to min_frames 4: round(linspace(0, 11, 4)) = 0, 4, 7, 11
    assert picked(sample_video(tmp_path, Media(fps=1.0), folder_fps=4.0)) == [0, 4, 7, 11]


def test_frame_folder_rgba_goes_on_white(tmp_path):
    Image.new("RGBA", (64, 64), (0, 0, 0, 0)).save(tmp_path / "0.png")
    Image.new("RGBA", (64, 64), (0, 0, 0, 0)).save(tmp_path / "1.png")
    assert sample_video(tmp_path, Media()).min() == 255


def test_single_frame_becomes_one_temporal_patch(tmp_path):
    frames = sample_video(write_video(tmp_path / "one.mp4", 1), Media())
    assert frames.shape == (2, 56, 56, 3) and np.array_equal(frames[0], frames[1])
    folder = tmp_path / "one"
    folder.mkdir()
    Image.fromarray(index_image(5, 64, 64)).save(folder / "x.jpg")
    assert picked(sample_video(folder, Media())) == [5, 5]


def test_sampling_is_reproducible(tmp_path):
    path = write_video(tmp_path / "a.mp4", 16)
    a, b = sample_video(path, Media()), sample_video(path, Media())
    assert frames_sha(a) == frames_sha(b)
    assert frames_sha(a) != frames_sha(a.reshape(2, 2, 56, 56, 3))  # shape is part of the digest
    assert frames_sha(a) != frames_sha(sample_video(path, Media(fps=4.0)))


def test_resize_matches_torch_antialiased_bicubic():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    for (h, w), (th, tw) in [((64, 64), (56, 56)), ((60, 100), (28, 56)), ((20, 30), (56, 84))]:
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        ours = media._resize(img, (th, tw)).astype(int)
        # what torchvision.transforms.functional.resize(BICUBIC, antialias=True) runs on a uint8 tensor
        x = torch.from_numpy(img).permute(2, 0, 1)[None]
        ref = torch.nn.functional.interpolate(x, size=(th, tw), mode="bicubic", antialias=True)
        diff = np.abs(ours - ref[0].permute(1, 2, 0).numpy().astype(int))
        assert diff.max() <= 2 and diff.mean() < 0.05


def test_importable_without_torch():
    code = "import sys, services.common.media; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[2])


def test_real_media_config_is_accepted(tmp_path):
    config = pytest.importorskip("services.common.config")
    assert sample_video(write_video(tmp_path / "a.mp4", 16), config.MediaConfig()).shape[0] == 4


# ---- bad inputs --------------------------------------------------------------------------------------


def _truncate(path: Path) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _audio_only(path: Path) -> Path:
    with av.open(str(path), "w") as out:
        stream = out.add_stream("aac", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        frame.sample_rate = 8000
        out.mux(stream.encode(frame))
        out.mux(stream.encode())
    return path


def _corrupt_png_folder(path: Path) -> Path:
    _mkdir(path)
    (path / "0.png").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(200))
    (path / "1.png").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(200))
    return path


def _tall_folder(path: Path) -> Path:
    _mkdir(path)
    for i in range(2):
        Image.new("RGB", (1, 201)).save(path / f"{i}.png")
    return path


def _folder_of(path: Path, *names: str) -> Path:
    _mkdir(path)
    for name in names:
        (path / name).write_text("not an image")
    return path


def _huge_png_folder(path: Path) -> Path:
    """A real 9000x9000 PNG (81 M pixels > MAX_FRAME_AREA); one bit per pixel keeps making it cheap."""
    _mkdir(path)
    Image.new("1", (9000, 9000)).save(path / "0.png")
    return path


def _png_claiming(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims width x height; the pixel data never follows."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    _mkdir(path)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    (path / "0.png").write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0"))
                                 + chunk(b"IEND", b""))
    return path


def _mkdir(path: Path) -> Path:
    path.mkdir()
    return path


BAD_INPUTS = {
    "missing": (lambda d: d / "nope.mp4", "missing"),
    "zero_length": (lambda d: write(d / "z.mp4", b""), "empty"),
    "random_bytes": (lambda d: write(d / "r.mp4", os.urandom(5000)), "corrupt"),
    "text_file": (lambda d: write(d / "t.txt", b"hello\n" * 100), "corrupt"),  # FFmpeg alone opens it as 'tty'
    # moov is written last by default, so the first half has no index at all
    "truncated_mp4": (lambda d: _truncate(write_video(d / "t.mp4", 16)), "corrupt"),
    # with faststart the index survives and promises 300 frames that are not there
    "truncated_faststart_mp4": (
        lambda d: _truncate(write_video(d / "f.mp4", 300, fps=30, container_options={"movflags": "faststart"})),
        "truncated",
    ),
    "audio_only": (lambda d: _audio_only(d / "a.mp4"), "no_video_stream"),
    "empty_folder": (lambda d: _mkdir(d / "empty"), "empty"),
    "corrupt_png_folder": (lambda d: _corrupt_png_folder(d / "bad"), "corrupt"),
    "bad_aspect": (lambda d: _tall_folder(d / "tall"), "bad_aspect"),
    "fifo": (lambda d: os.mkfifo(d / "pipe.mp4") or d / "pipe.mp4", "unreadable"),  # reading it would block
    "zero_length_webm": (lambda d: write(d / "z.webm", b""), "empty"),
    "missing_folder": (lambda d: d / "frames_nope", "missing"),
    "folder_without_images": (lambda d: _folder_of(d / "txt", "a.txt", "b.json", "c.mp4"), "empty"),
    "zero_length_png_folder": (lambda d: _folder_of(d / "zpng", "0.png", "1.png"), "corrupt"),
    "unsupported_uri": (lambda d: "s3://bucket/v.mp4", "unsupported"),
    # a cut-off webm demuxes cleanly, only shorter; its header still states the full duration
    "truncated_webm": (lambda d: cut(write_video(d / "t.webm", 64, codec="libvpx-vp9"), 0.5), "truncated"),
    "truncated_avi": (lambda d: cut(write_video(d / "t.avi", 64, codec="mpeg4"), 0.5), "truncated"),
    "webm_header_only": (lambda d: cut(write_video(d / "h.webm", 64, codec="libvpx-vp9"), 0.02), "corrupt"),
    "avi_header_only": (lambda d: cut(write_video(d / "h.avi", 64, codec="mpeg4"), 0.02), "corrupt"),
    "scrambled_mp4": (lambda d: scramble(write_video(d / "s.mp4", 64, container_options={
        "movflags": "faststart"})), "corrupt"),
    "scrambled_webm": (lambda d: scramble(write_video(d / "s.webm", 64, codec="libvpx-vp9")), "truncated"),
    "scrambled_avi": (lambda d: scramble(write_video(d / "s.avi", 64, codec="mpeg4")), "truncated"),
    # enormous resolution, refused from the header with the default bounds
    "huge_png": (lambda d: _huge_png_folder(d / "huge"), "too_large"),
    "png_header_claims_40000x40000": (lambda d: _png_claiming(d / "bomb", 40000, 40000), "too_large"),
}


@pytest.mark.parametrize("name", sorted(BAD_INPUTS))
def test_bad_input_raises_media_error(tmp_path, name):
    make, reason = BAD_INPUTS[name]
    path = make(tmp_path)
    with pytest.raises(MediaError) as info:
        sample_video(path, Media())
    assert info.value.reason == reason
    assert info.value.path == str(path) and str(path) in str(info.value)


@pytest.mark.parametrize(
    "bound, value, make",
    [
        ("MAX_FRAMES", 10, lambda d: write_video(d / "a.mp4", 16)),  # count from the mp4 index
        ("MAX_FRAMES", 10, lambda d: write_video(d / "a.webm", 16, codec="libvpx-vp9")),  # counted packets
        ("MAX_FRAMES", 10, lambda d: d),  # a folder of 16 frames, filled below
        ("MAX_FRAME_AREA", 32 * 32, lambda d: write_video(d / "a.mp4", 16)),
        ("MAX_FRAME_AREA", 32 * 32, lambda d: d),
    ],
)
def test_too_large_is_refused(tmp_path, monkeypatch, bound, value, make):
    for i in range(16):
        Image.fromarray(index_image(i, 64, 64)).save(tmp_path / f"{i}.png")
    path = make(tmp_path)
    monkeypatch.setattr(media, bound, value)
    with pytest.raises(MediaError) as info:
        sample_video(path, Media())
    assert info.value.reason == "too_large"


def test_too_large_refused_before_decoding(tmp_path, monkeypatch):
    path = write_video(tmp_path / "a.mp4", 16)
    monkeypatch.setattr(media, "MAX_FRAMES", 10)
    monkeypatch.setattr(media, "_decode_video", lambda *a: pytest.fail("decoded an oversized video"))
    with pytest.raises(MediaError, match="too_large"):
        sample_video(path, Media())


def test_media_error_pickles():
    err = pickle.loads(pickle.dumps(MediaError("/x/v.mp4", "corrupt", "moov atom not found")))
    assert (err.path, err.reason, err.detail) == ("/x/v.mp4", "corrupt", "moov atom not found")
    assert "/x/v.mp4" in str(err)


# ---- cache -------------------------------------------------------------------------------------------


def test_cache_hits_and_evicts_by_bytes(tmp_path):
    paths = [write_video(tmp_path / f"{i}.mp4", 16) for i in range(3)]
    one = 4 * 56 * 56 * 3  # bytes of one sampled video
    cache = FrameCache(max_bytes=2 * one)
    a = cache.get_or_load(paths[0], Media())
    assert cache.get_or_load(paths[0], Media()) is a and (cache.hits, cache.misses) == (1, 1)
    assert not a.flags.writeable  # shared between callers
    cache.get_or_load(paths[1], Media())
    cache.get_or_load(paths[0], Media())  # paths[0] is now the most recent
    cache.get_or_load(paths[2], Media())  # over budget: evicts paths[1], the least recent
    assert len(cache) == 2 and cache.nbytes == 2 * one
    misses = cache.misses
    cache.get_or_load(paths[0], Media())
    assert cache.misses == misses
    cache.get_or_load(paths[1], Media())
    assert cache.misses == misses + 1


def test_cache_key_tracks_params_and_file_changes(tmp_path):
    path = write_video(tmp_path / "a.mp4", 16)
    cache = FrameCache(max_bytes=10**8)
    first = cache.get_or_load(path, Media())
    assert cache.get_or_load(path, Media(fps=4.0)).shape[0] == 8  # 2 s * 4 fps
    write_video(path, 32)
    os.utime(path, ns=(1, 1))  # a different mtime even on coarse-clock filesystems
    assert cache.get_or_load(path, Media()).shape[0] == 8 and first.shape[0] == 4  # 4 s * 2 fps
    assert cache.misses == 3


def test_cache_skips_oversized_and_propagates_errors(tmp_path):
    cache = FrameCache(max_bytes=100)
    cache.get_or_load(write_video(tmp_path / "a.mp4", 16), Media())
    assert len(cache) == 0 and cache.nbytes == 0
    with pytest.raises(MediaError, match="missing"):
        cache.get_or_load(tmp_path / "nope.mp4", Media())


def test_cache_is_thread_safe(tmp_path, monkeypatch):
    paths = [tmp_path / f"{i}.mp4" for i in range(8)]
    for p in paths:
        p.write_bytes(b"x")
    # a fake loader keeps this about the cache's bookkeeping, not decoding speed
    monkeypatch.setattr(media, "sample_video", lambda p, m: np.full((2, 28, 28, 3), int(Path(p).stem), np.uint8))
    one = 2 * 28 * 28 * 3
    cache = FrameCache(max_bytes=3 * one)
    errors = []

    def worker(seed):
        rng = np.random.default_rng(seed)
        try:
            for _ in range(300):
                i = int(rng.integers(0, len(paths)))
                assert cache.get_or_load(paths[i], Media())[0, 0, 0, 0] == i
        except AssertionError as e:
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert cache.hits + cache.misses == 8 * 300
    assert len(cache) <= 3 and cache.nbytes == len(cache) * one
