"""Decode a video with PyAV and sample one clip from it (method step 1).

`read_clip` is the one place a video file becomes pixels: ingestion, segmentation and
training all call it, so a clip is sampled the same way everywhere and its source frame
indices are known (they go into `videos.parquet`).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Optional

import av
import numpy as np

from pipeline.params import require


class VideoError(Exception):
    """A video that cannot give the requested clip; the message is the reason recorded
    in the `failed` row."""


class VideoChanged(VideoError):
    """The file is not the one ingestion read (replaced while the run went on)."""


def retryable(e: BaseException) -> bool:
    """Whether a video's failure may pass when it is tried again: the file changed under the
    run, an I/O error, memory; not a file that is not a video, too short or past a cap (a
    rerun with `run.retry_failed=true` tries those too). A lost worker and a time limit are
    retryable as well: the stages say so where they see them."""
    return isinstance(e, (VideoChanged, OSError, MemoryError, TimeoutError))


@dataclass
class ClipSpec:
    """How a clip is sampled from a video and resized (method step 1; the config group `clip`).

    num_frames: frames in the clip (may exceed the model window).
    frame_stride: take every `frame_stride`-th decoded frame (ignored when `fps` is set).
    fps: resample to this frame rate (None: use `frame_stride`).
    start: `centre` | `start` | a time in seconds where the clip begins (as a string or a
        number); for csv corpora `start` is taken relative to `time_start`.
    height, width: every frame is resized to this size (pixels), with no crop, as the paper does.
    """

    num_frames: int = 16
    frame_stride: int = 1
    fps: Optional[float] = None
    start: str = "centre"
    height: int = 112
    width: int = 112

    def check(self) -> None:
        """Raise ParameterError naming the first field out of range."""
        for name in ("num_frames", "frame_stride", "height", "width"):
            require(getattr(self, name) >= 1, name, getattr(self, name), "must be >= 1")
        require(self.fps is None or self.fps > 0, "fps", self.fps, "must be > 0")
        if str(self.start) not in ("centre", "center", "start"):
            try:
                seconds = float(self.start)
            except ValueError:
                seconds = -1.0
            require(seconds >= 0, "start", self.start, "must be 'centre', 'start' or a time in seconds >= 0")


@dataclass
class DecodeLimits:
    """How far decoding may go for one clip (the config group `decode`); a video past a cap is
    a failed row naming it.

    seek: seek to the keyframe before the clip instead of decoding from the first frame (the
        frames are the same; a stream whose timestamps are not regular is decoded from the
        start).
    max_duration_s: the longest video accepted, in seconds (0: no cap).
    max_pixels: the largest frame accepted, width x height (0: no cap).
    max_decoded_mb: the most raw frame data (width x height x 3 bytes a frame) decoded to reach
        one clip, in MB (0: no cap); with seeking, the frames from the keyframe before the clip.
    unit_timeout_s: how long a unit of work that decodes (ingest, segment) may take from when
        it is queued before it is stopped and its videos are tried one at a time; a video that
        runs past it alone is a failed row (0: no limit).
    """

    seek: bool = True
    max_duration_s: float = 3600.0
    max_pixels: int = 4096 * 2160
    max_decoded_mb: float = 2048.0
    unit_timeout_s: float = 1800.0

    def check(self) -> None:
        for name in ("max_duration_s", "max_pixels", "max_decoded_mb", "unit_timeout_s"):
            require(getattr(self, name) >= 0, name, getattr(self, name), "must be >= 0 (0: no cap)")

    def check_video(self, info: "VideoInfo") -> None:
        """Raise VideoError naming the cap a video is past (from its container's metadata)."""
        if self.max_pixels and info.height * info.width > self.max_pixels:
            raise VideoError(f"frames of {info.width}x{info.height} are past the cap of {self.max_pixels} pixels "
                             "(decode.max_pixels)")
        if self.max_duration_s and info.fps > 0 and info.num_frames / info.fps > self.max_duration_s:
            raise VideoError(f"{info.num_frames / info.fps:.0f} s long, past the cap of {self.max_duration_s:g} s "
                             "(decode.max_duration_s)")


@dataclass(frozen=True)
class VideoInfo:
    """What the container says about the video stream."""

    num_frames: int  # frames in the stream
    fps: float
    height: int
    width: int


@dataclass
class Clip:
    frames: np.ndarray  # uint8 [L, H, W, 3], RGB, resized to the spec's H x W
    frame_indices: np.ndarray  # int64 [L], index of each clip frame in the source stream
    info: VideoInfo
    decoded_frames: int = 0  # frames decoded to reach it (from the keyframe before it, when seeking)


def _probe(container: "av.container.InputContainer", path: str) -> tuple["av.video.stream.VideoStream", VideoInfo]:
    if not container.streams.video:
        raise VideoError("no video stream")
    stream = container.streams.video[0]
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    fps = float(rate) if rate else 0.0
    n = int(stream.frames or 0)
    if n <= 0 and stream.duration is not None and stream.time_base is not None and fps > 0:
        n = int(round(float(stream.duration * stream.time_base) * fps))
    if n <= 0 and container.duration and fps > 0:
        n = int(round(container.duration / av.time_base * fps))
    cc = stream.codec_context
    return stream, VideoInfo(num_frames=n, fps=fps, height=int(cc.height or 0), width=int(cc.width or 0))


def sample_indices(num_source_frames: int, source_fps: float, spec: ClipSpec) -> np.ndarray:
    """Source frame indices of the clip.

    With `spec.fps` set, the step between clip frames is `source_fps / spec.fps` source
    frames (rounded per frame); otherwise it is `spec.frame_stride`. The clip starts at
    frame 0 (`start="start"`), is centred in the video (`"centre"`), or starts at a time in
    seconds. Raises VideoError when the video is too short.
    """
    if spec.fps is not None:
        if source_fps <= 0:
            raise VideoError("the video has no frame rate, cannot resample to clip.fps")
        step = source_fps / spec.fps
    else:
        step = float(spec.frame_stride)
    span = int(math.floor((spec.num_frames - 1) * step)) + 1
    if num_source_frames < span:
        raise VideoError(
            f"shorter than needed: the clip needs {span} frames ({spec.num_frames} at a step of "
            f"{step:g}), the video has {num_source_frames}"
        )
    start = spec.start
    if start in ("centre", "center"):
        first = (num_source_frames - span) // 2
    elif start == "start":
        first = 0
    else:
        if source_fps <= 0:
            raise VideoError("the video has no frame rate, cannot start at a time")
        first = int(round(float(start) * source_fps))
        if first + span > num_source_frames:
            raise VideoError(
                f"shorter than needed: a clip of {span} frames starting at {float(start):g} s "
                f"(frame {first}) runs past the video's {num_source_frames} frames"
            )
    return first + np.floor(np.arange(spec.num_frames) * step + 1e-9).astype(np.int64)


def _open(path: str) -> "av.container.InputContainer":
    if not os.path.exists(path):
        raise VideoError(f"no such file: {path}")
    if os.path.isfile(path) and os.path.getsize(path) == 0:  # (a pipe or a device is read as it comes)
        raise VideoError("empty file (0 bytes)")
    try:
        return av.open(path)
    except av.error.FFmpegError as e:  # not a video / unreadable header
        raise VideoError(f"cannot open as a video: {e}") from None


def probe_clip(path: str, spec: ClipSpec, limits: Optional[DecodeLimits] = None) -> tuple[VideoInfo, np.ndarray]:
    """What the container says about the video and the source frames the clip `spec`
    describes would take, without decoding a frame (the packets are counted when the container
    does not give the number of frames). Raises VideoError as `read_clip` does for a file that
    is not a video, is too short or is past a cap of `limits`; a stream that cannot be decoded
    fails later, in `read_clip`."""
    limits = limits or DecodeLimits()
    with _open(path) as container:
        stream, info = _probe(container, path)
        limits.check_video(info)
        if info.num_frames <= 0:
            info = VideoInfo(_count_frames(container, stream), info.fps, info.height, info.width)
            limits.check_video(info)
        return info, sample_indices(info.num_frames, info.fps, spec)


def read_clip(path: str, spec: ClipSpec, limits: Optional[DecodeLimits] = None) -> Clip:
    """Decode the clip `spec` describes from the video at `path`.

    Frames are converted to RGB and resized to `spec.height x spec.width` (bilinear, by
    FFmpeg's swscale), with no crop, as the reference does. With `limits.seek`, decoding
    starts at the keyframe before the clip (frame exact: a decoded frame's index comes from its
    timestamp on the stream's frame grid; a stream off that grid is decoded from the start).
    Raises VideoError with a readable reason for an empty, truncated or non-video file, a file
    without a video stream, a video shorter than the clip, or one past a cap of `limits`.
    """
    limits = limits or DecodeLimits()
    container = _open(path)
    with container:
        stream, info = _probe(container, path)
        limits.check_video(info)
        if info.num_frames <= 0:
            info = VideoInfo(_count_frames(container, stream), info.fps, info.height, info.width)
            limits.check_video(info)
            container.seek(0)
        indices = sample_indices(info.num_frames, info.fps, spec)
        stream.thread_type = "AUTO"
        got = None
        if limits.seek and int(indices[0]) > 0 and info.fps > 0 and stream.time_base is not None:
            got = _decode(container, stream, info, indices, spec, limits, seek=True)
            if got is None:  # the stream's timestamps are off its frame grid: decoded from the start
                container.seek(0)
        frames, decoded = got or _decode(container, stream, info, indices, spec, limits, seek=False)
    return Clip(frames=frames, frame_indices=indices, info=info, decoded_frames=decoded)


def _decode(container: "av.container.InputContainer", stream: "av.video.stream.VideoStream", info: VideoInfo,
            indices: np.ndarray, spec: ClipSpec, limits: DecodeLimits,
            seek: bool) -> Optional[tuple[np.ndarray, int]]:
    """The clip's frames and how many were decoded. `seek`: from the keyframe at or before the clip's first frame, each
    frame's index read from its timestamp (None when a timestamp is off the frame grid, or the
    seek landed past the clip's first frame); else every frame from the first, counted."""
    wanted: dict[int, list[int]] = {}
    for pos, idx in enumerate(indices.tolist()):
        wanted.setdefault(idx, []).append(pos)
    frames = np.empty((spec.num_frames, spec.height, spec.width, 3), dtype=np.uint8)
    first, last = int(indices[0]), int(indices[-1])
    budget = limits.max_decoded_mb * 1e6 / max(1, info.height * info.width * 3) if limits.max_decoded_mb else None
    if seek:  # frame 0 is the first frame decoded, as in a decode from the start
        tb = float(stream.time_base)
        try:
            start = next(container.decode(stream)).pts
        except (StopIteration, av.error.FFmpegError):
            return None
        if start is None:
            return None
        container.seek(start + int(first / info.fps / tb), stream=stream, backward=True, any_frame=False)
    got = decoded = 0
    idx = -1
    try:
        for count, frame in enumerate(container.decode(stream)):
            if seek:
                if frame.pts is None:
                    return None
                at = (frame.pts - start) * tb * info.fps
                idx = int(round(at))
                if abs(at - idx) > 0.01 or (count == 0 and idx > first):
                    return None
            else:
                idx = count
            decoded += 1
            if budget is not None and decoded > budget:
                raise VideoError(f"reaching the clip needs more than {limits.max_decoded_mb:g} MB of decoded frames "
                                 "(decode.max_decoded_mb)")
            if idx in wanted:
                rgb = frame.to_ndarray(format="rgb24", width=spec.width, height=spec.height, interpolation="BILINEAR")
                for pos in wanted.pop(idx):
                    frames[pos] = rgb
                    got += 1
            if idx >= last:
                break
    except av.error.FFmpegError as e:
        raise VideoError(f"decoding failed after {idx + 1} frames: {e}") from None
    if got < spec.num_frames:
        if seek and wanted and min(wanted) < idx:  # a wanted frame was skipped: not on the grid
            return None
        raise VideoError(f"truncated: decoded {idx + 1} frames, the clip needs frame {last} "
                         f"(the container claims {info.num_frames})")
    return frames, decoded


def _count_frames(container: "av.container.InputContainer", stream: "av.video.stream.VideoStream") -> int:
    n = 0
    for _ in container.demux(stream):
        n += 1
    return n


def write_video(path: str, frames: np.ndarray, fps: int = 8) -> None:
    """Write uint8 RGB frames [T, H, W, 3] as a lossless H.264 mp4 (4:4:4, qp 0), byte for
    byte the same for the same frames (used by the synthetic corpus and the tests)."""
    t, h, w, _ = frames.shape
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".part"
    with av.open(tmp, mode="w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height = w, h
        stream.pix_fmt = "yuv444p"
        stream.options = {"qp": "0", "preset": "ultrafast", "threads": "1"}
        for planes in rgb_to_yuv444(frames):
            frame = av.VideoFrame.from_ndarray(planes, format="yuv444p")
            _zero_padding(frame)
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    os.replace(tmp, path)


def _zero_padding(frame: "av.VideoFrame") -> None:
    """Zero the bytes past each row's end in every plane. x264's SIMD code reads them, and
    left uninitialised they made the same frames encode to different files."""
    for plane in frame.planes:
        rows = np.frombuffer(memoryview(plane), dtype=np.uint8).reshape(plane.height, plane.line_size).copy()
        rows[:, plane.width:] = 0
        plane.update(rows.tobytes())


def rgb_to_yuv444(frames: np.ndarray) -> np.ndarray:
    """uint8 RGB [T, H, W, 3] -> uint8 planar Y'CbCr [T, 3, H, W], BT.601 limited range: the
    matrix FFmpeg assumes when it decodes an untagged stream, so decoding gives back the RGB
    values to within 2 levels. (Numpy does it for the whole video at once, far faster than
    swscale's per-frame rgb24 -> yuv444p path.)"""
    x = frames.astype(np.float32) * (1.0 / 255.0)
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    y = 16.0 + 65.481 * r + 128.553 * g + 24.966 * b
    cb = 128.0 - 37.797 * r - 74.203 * g + 112.0 * b
    cr = 128.0 + 112.0 * r - 93.786 * g - 18.214 * b
    return np.clip(np.rint(np.stack([y, cb, cr], axis=1)), 0, 255).astype(np.uint8)
