"""Probing an uploaded video or image (``POST /files``) with the imageio-ffmpeg wheel's ffmpeg: what it is
(kind, frame count, size, fps) and whether it decodes, in bounded memory and time.

ffmpeg decodes every frame (so a file that is truncated or corrupt anywhere is refused: ``-xerror``), scaled
to 8x8 grey on the way out, so the pipe carries 64 bytes a frame; the probe stops as soon as the frame or pixel
limit is passed. Only the container formats we serve are opened (``-format_whitelist``) and only local files
(``-protocol_whitelist file``): a playlist or a reference to another URL is never followed. Torch- and
numpy-free (the API runs it, in its thread pool).
"""

from __future__ import annotations

import re
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from common.errors import InvalidArgument

DEMUXERS = {"mov": "video", "matroska": "video", "gif": "video", "apng": "video",
            "png_pipe": "image", "jpeg_pipe": "image", "image2": "image"}
CONTENT_TYPES = {"mov": "video/mp4", "matroska": "video/webm", "gif": "image/gif", "apng": "image/apng",
                 "png_pipe": "image/png", "jpeg_pipe": "image/jpeg", "image2": "image/jpeg"}
PROBE_SIZE = 8  # frames come out of ffmpeg as PROBE_SIZE x PROBE_SIZE grey bytes
TIMEOUT_S = 120.0
# Each decoded frame once: without it ffmpeg's output runs at a constant rate it guesses, and a GIF of one or two
# frames (100 fps time base) came out as 12 or 24 copies (the engine's reader passes the same).
PASSTHROUGH = ["-fps_mode", "passthrough"]
FIELD = "file"


@dataclass(frozen=True)
class MediaInfo:
    kind: str  # "video" or "image"
    frames: int
    width: int
    height: int
    fps: float | None  # None for a still image
    content_type: str


def ffmpeg_command(path: Path | str, output: list[str]) -> list[str]:
    """ffmpeg reading `path` (local files of the served formats only) into `output`."""
    import imageio_ffmpeg

    return [imageio_ffmpeg.get_ffmpeg_exe(), "-nostdin", "-hide_banner", "-protocol_whitelist", "file",
            "-format_whitelist", ",".join(DEMUXERS), "-xerror", "-i", str(path), "-map", "0:v:0", *output]


class _Log:
    """ffmpeg's stderr, read by a thread: the head (stream info) and the last line (the error)."""

    def __init__(self, stream):
        self.head, self.last, self.done = "", "", threading.Event()
        self._stream = stream
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for raw in self._stream:
            line = raw.decode("utf-8", "replace").strip()
            if len(self.head) < 16384:
                self.head += line + "\n"
            if line:
                self.last = line
        self.done.set()


def _header(text: str) -> tuple[str, int, int, float | None]:
    """(demuxer, width, height, fps) of the input stream as ffmpeg printed it."""
    demuxer = re.search(r"Input #0, ([\w]+)", text)
    stream = re.search(r"Stream #0:\d+\S*: Video: .*", text)
    size = re.search(r", (\d+)x(\d+)", stream.group(0)) if stream else None
    if not demuxer or not stream or not size:
        raise InvalidArgument("the file does not decode as a video or image", field=FIELD)
    fps = re.search(r", ([\d.]+) (?:fps|tbr)", stream.group(0))
    return demuxer.group(1), int(size.group(1)), int(size.group(2)), float(fps.group(1)) if fps else None


def probe(path: Path | str, max_frames: int, max_pixels: int) -> MediaInfo:
    """What `path` holds, or `InvalidArgument` (field ``file``) naming why it is refused: it does not decode
    (not a video or image of the served formats, truncated, corrupt), has no frames, has frames over
    `max_pixels` (width x height), or more than `max_frames` frames (decoding stops there)."""
    cmd = ffmpeg_command(path, [*PASSTHROUGH, "-vf", f"scale={PROBE_SIZE}:{PROBE_SIZE}", "-pix_fmt", "gray",
                                "-f", "rawvideo", "-"])
    process = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert process.stdout is not None and process.stderr is not None
    log, frame_bytes, frames, deadline = _Log(process.stderr), PROBE_SIZE * PROBE_SIZE, 0, time.monotonic() + TIMEOUT_S
    header = None
    try:
        while True:
            chunk = process.stdout.read(frame_bytes)
            if len(chunk) < frame_bytes:
                break
            frames += 1
            if header is None:  # ffmpeg printed the stream info before its first frame
                header = _header(log.head)
                if header[1] * header[2] > max_pixels:
                    raise InvalidArgument(f"frames of {header[1]}x{header[2]} are over this deployment's limit of "
                                          f"{max_pixels} pixels a frame", field=FIELD)
            if frames > max_frames:
                raise InvalidArgument(f"the file has more than this deployment's limit of {max_frames} frames",
                                      field=FIELD)
            if time.monotonic() > deadline:
                raise InvalidArgument(f"the file did not decode within {TIMEOUT_S:g} s", field=FIELD)
        code = process.wait(timeout=max(1.0, deadline - time.monotonic()))
        log.done.wait(5)
    except subprocess.TimeoutExpired:
        raise InvalidArgument(f"the file did not decode within {TIMEOUT_S:g} s", field=FIELD) from None
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stdout.close()
    if code != 0:
        reason = log.last.split("] ", 1)[-1] or "ffmpeg failed"
        raise InvalidArgument(f"the file does not decode as a video or image ({reason})", field=FIELD)
    if frames == 0:
        raise InvalidArgument("the file has no frames", field=FIELD)
    demuxer, width, height, fps = header or _header(log.head)
    kind = DEMUXERS.get(demuxer, "video")
    if kind == "image" and frames > 1:
        kind = "video"
    return MediaInfo(kind=kind, frames=frames, width=width, height=height, fps=None if kind == "image" else fps,
                     content_type=CONTENT_TYPES.get(demuxer, "application/octet-stream"))
