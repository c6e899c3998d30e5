"""Decoding and clip sampling on real files made with PyAV, good and broken."""

from __future__ import annotations

import os

import av
import numpy as np
import pytest

from pipeline.data.video import ClipSpec, DecodeLimits, VideoError, read_clip, sample_indices
from tests.conftest import make_video


def test_read_clip_samples_and_resizes(tmp_path):
    path = str(tmp_path / "v.mp4")
    written = make_video(path, frames=30, size=(48, 64), fps=10)
    clip = read_clip(path, ClipSpec(num_frames=8, frame_stride=2, start="start", height=32, width=40))
    assert clip.frames.shape == (8, 32, 40, 3) and clip.frames.dtype == np.uint8
    assert clip.frame_indices.tolist() == [0, 2, 4, 6, 8, 10, 12, 14]
    assert clip.info.num_frames == 30 and clip.info.fps == pytest.approx(10.0)
    assert (clip.info.height, clip.info.width) == (48, 64)
    # Same size: the decoded frames are the written ones (near-lossless H.264).
    same = read_clip(path, ClipSpec(num_frames=5, start="centre", height=48, width=64))
    assert same.frame_indices.tolist() == [12, 13, 14, 15, 16]
    err = np.abs(same.frames.astype(int) - written[same.frame_indices].astype(int)).mean()
    shifted = np.abs(same.frames.astype(int) - written[same.frame_indices + 1].astype(int)).mean()
    assert err < 8.0 and shifted > 5 * err  # the right frames, not their neighbours


def test_sample_indices_fps_and_start():
    spec = ClipSpec(num_frames=4, fps=5.0, start="start")
    assert sample_indices(100, 25.0, spec).tolist() == [0, 5, 10, 15]
    spec = ClipSpec(num_frames=4, frame_stride=3, start="2.0")
    assert sample_indices(100, 10.0, spec).tolist() == [20, 23, 26, 29]
    with pytest.raises(VideoError, match="shorter than needed"):
        sample_indices(10, 10.0, ClipSpec(num_frames=4, frame_stride=4))
    with pytest.raises(VideoError, match="runs past"):
        sample_indices(30, 10.0, ClipSpec(num_frames=4, start="2.9"))


def _audio_only(path: str) -> None:
    with av.open(path, "w", format="mp4") as out:
        stream = out.add_stream("aac", rate=16000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), dtype=np.float32), format="fltp", layout="mono")
        frame.sample_rate = 16000
        for _ in range(5):
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


@pytest.mark.parametrize("kind, reason", [
    ("empty", "empty file"),
    ("text", "cannot open as a video"),
    ("truncated", "cannot open as a video|truncated|decoding failed"),
    ("audio", "no video stream"),
    ("short", "shorter than needed"),
    ("missing", "no such file"),
])
def test_broken_inputs_fail_with_a_reason(tmp_path, kind, reason):
    path = str(tmp_path / f"{kind}.mp4")
    if kind == "empty":
        open(path, "wb").close()
    elif kind == "text":
        with open(path, "w") as f:
            f.write("this is not a video\n" * 50)
    elif kind == "truncated":
        make_video(path, frames=40)
        data = open(path, "rb").read()
        with open(path, "wb") as f:
            f.write(data[: len(data) // 2])
    elif kind == "audio":
        _audio_only(path)
    elif kind == "short":
        make_video(path, frames=4)
    with pytest.raises(VideoError, match=reason):
        read_clip(path, ClipSpec(num_frames=16, height=32, width=32))


def test_truncated_mdat_is_caught_when_decoding(tmp_path):
    """A file whose header is intact but whose frames are cut off (moov atom first)."""
    src = str(tmp_path / "src.mp4")
    make_video(src, frames=60, size=(64, 64))
    fast = str(tmp_path / "faststart.mp4")
    with av.open(src) as inp, av.open(fast, "w", format="mp4", options={"movflags": "faststart"}) as out:
        s_in = inp.streams.video[0]
        s_out = out.add_stream_from_template(s_in)
        for packet in inp.demux(s_in):
            if packet.dts is None:
                continue
            packet.stream = s_out
            out.mux(packet)
    data = open(fast, "rb").read()
    with open(fast, "wb") as f:
        f.write(data[: int(len(data) * 0.4)])
    with pytest.raises(VideoError, match="truncated|decoding failed"):
        read_clip(fast, ClipSpec(num_frames=50, start="start", height=32, width=32))
    assert os.path.getsize(fast) > 0


def _kinetics_like(path: str, seconds: float = 4.0, fps: int = 30, gop: int = 15) -> None:
    """H.264 yuv420p with B-frames and a keyframe every `gop` frames, as YouTube serves
    Kinetics: frames a seek lands between."""
    yy, xx = np.mgrid[0:48, 0:64]
    with av.open(path, mode="w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.options = {"preset": "veryfast", "g": str(gop), "bf": "2", "threads": "1"}
        for t in range(int(seconds * fps)):
            frame = np.stack([(xx * 4 + t * 7) % 256, (yy * 5 + t * 3) % 256, np.full_like(xx, t % 256)], -1)
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame.astype(np.uint8), format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


@pytest.mark.parametrize("spec", [ClipSpec(num_frames=16, height=48, width=64),
                                  ClipSpec(num_frames=8, fps=6, height=32, width=32),
                                  ClipSpec(num_frames=5, frame_stride=3, start="2.1", height=48, width=64),
                                  ClipSpec(num_frames=4, start="start", height=48, width=64)],
                         ids=["centre", "fps-resampled", "start-time", "first-frames"])
def test_seeking_gives_the_frames_of_a_decode_from_the_start(tmp_path, spec):
    path = str(tmp_path / "k.mp4")
    _kinetics_like(path)
    seek = read_clip(path, spec, DecodeLimits(seek=True))
    full = read_clip(path, spec, DecodeLimits(seek=False))
    assert np.array_equal(seek.frames, full.frames) and np.array_equal(seek.frame_indices, full.frame_indices)
    assert full.decoded_frames == int(full.frame_indices[-1]) + 1
    if spec.start != "start":  # from the keyframe before the clip: at most a GOP before its first frame
        assert seek.decoded_frames <= int(seek.frame_indices[-1] - seek.frame_indices[0]) + 1 + 15
        assert seek.decoded_frames < full.decoded_frames


@pytest.mark.parametrize("limits, key", [(DecodeLimits(max_pixels=64 * 47), "decode.max_pixels"),
                                         (DecodeLimits(max_duration_s=3.5), "decode.max_duration_s"),
                                         (DecodeLimits(seek=False, max_decoded_mb=64 * 48 * 3 * 50 / 1e6),
                                          "decode.max_decoded_mb")])
def test_a_video_past_a_cap_fails_with_the_cap_named(tmp_path, limits, key):
    from pipeline.data.ingest import ingest_video

    path = str(tmp_path / "k.mp4")
    _kinetics_like(path)
    spec = ClipSpec(num_frames=16, height=32, width=32)
    with pytest.raises(VideoError, match=key.replace(".", r"\.")):
        read_clip(path, spec, limits)
    if key != "decode.max_decoded_mb":  # the container says so: a failed row at ingest, nothing decoded
        row = ingest_video({"video_id": "k", "path": path, "label": "x"}, spec, limits)
        assert row["status"] == "failed" and key in row["error"]
    read_clip(path, spec, DecodeLimits())  # under the default caps it reads
