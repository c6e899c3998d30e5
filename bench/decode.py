"""Decoding one clip from Kinetics-like files, with and without seeking, side by side.

    .venv/bin/python bench/decode.py [--long-minutes 10] [--repeats 3]

Files (written once under bench/.cache/, H.264 yuv420p as YouTube serves, a keyframe every 2 s,
moving content so the encoder has work): a 10 s clip at 30 fps, 340x256, as Kinetics-400's
videos are after the usual resize, and a long one (10 minutes) of the same kind. The clip is the
Kinetics job's (32 frames at 6 fps, centred; jobs/kinetics400.sh) and the demo's (16 frames at the
source rate, centred). Each is read with `read_clip` as the stages read it, `decode.seek=true`
(the default: from the keyframe before the clip) and `decode.seek=false` (from frame 0), after a
check that both give the same frames. The last line is
`seek_speedup_10s=<no-seek/seek> seek_speedup_long=<no-seek/seek>` for the Kinetics clip.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import av
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pipeline.data.video import ClipSpec, DecodeLimits, read_clip  # noqa: E402

CACHE = os.path.join(os.path.dirname(os.path.abspath(__file__)), ".cache")
CLIPS = {"kinetics job (32 frames at 6 fps)": ClipSpec(num_frames=32, fps=6, height=160, width=160),
         "demo (16 frames, every frame)": ClipSpec(num_frames=16, height=112, width=112)}


def kinetics_like(path: str, seconds: float, fps: int = 30, width: int = 340, height: int = 256) -> str:
    """An H.264 file of `seconds` of moving blobs over a drifting gradient (written once)."""
    if os.path.exists(path):
        return path
    os.makedirs(os.path.dirname(path), exist_ok=True)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    tmp = path + ".part"
    with av.open(tmp, mode="w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "veryfast", "crf": "23", "g": str(2 * fps), "threads": "2"}
        for t in range(int(seconds * fps)):
            phase = t / fps
            cx, cy = width * (0.5 + 0.4 * np.sin(phase)), height * (0.5 + 0.4 * np.cos(0.7 * phase))
            blob = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / 800.0)
            frame = np.stack([(xx / width + 0.1 * phase) % 1.0, (yy / height) * (1 - blob), blob], axis=-1)
            img = av.VideoFrame.from_ndarray((frame * 255).astype(np.uint8), format="rgb24")
            for packet in stream.encode(img):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    os.replace(tmp, path)
    return path


def per_clip(path: str, spec: ClipSpec, seek: bool, repeats: int) -> float:
    """Seconds to read the clip, the best of `repeats`."""
    limits = DecodeLimits(seek=seek, max_duration_s=0, max_decoded_mb=0)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        read_clip(path, spec, limits)
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--long-minutes", type=float, default=10.0)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    t0 = time.perf_counter()
    files = {"10 s": kinetics_like(os.path.join(CACHE, "k400_10s.mp4"), 10),
             f"{args.long_minutes:g} min": kinetics_like(os.path.join(CACHE, f"k400_{args.long_minutes:g}min.mp4"),
                                                       60 * args.long_minutes)}
    print(f"files ready in {time.perf_counter() - t0:.1f} s (H.264 340x256 30 fps, keyframe every 2 s)")
    ratios = {}
    for name, path in files.items():
        for clip_name, spec in CLIPS.items():
            a = read_clip(path, spec, DecodeLimits(seek=True, max_duration_s=0, max_decoded_mb=0))
            b = read_clip(path, spec, DecodeLimits(seek=False, max_duration_s=0, max_decoded_mb=0))
            assert np.array_equal(a.frames, b.frames) and np.array_equal(a.frame_indices, b.frame_indices)
            seek, full = per_clip(path, spec, True, args.repeats), per_clip(path, spec, False, args.repeats)
            print(f"{name:>8} file, {clip_name:<36} seek {seek * 1e3:8.1f} ms/clip   from frame 0 "
                  f"{full * 1e3:8.1f} ms/clip   x{full / seek:.1f}")
            if clip_name.startswith("kinetics"):
                ratios[name] = full / seek
    long_name = f"{args.long_minutes:g} min"
    print(f"seek_speedup_10s={ratios['10 s']:.2f} seek_speedup_long={ratios[long_name]:.2f}")


if __name__ == "__main__":
    main()
