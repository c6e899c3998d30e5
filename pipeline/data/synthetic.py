"""The synthetic benchmark corpus: the class is decided only by how one actor moves.

Every video shows a textured background, a few distractor shapes that move in ways
unrelated to the class, and one actor: an arrow (yellow head, white tail). The arrow follows a straight track
along the direction it points. The class is the order in which it visits the track:

- `advance`: it moves the way it points (frame k at track position k);
- `retreat`: it moves backwards (track positions in reverse order);
- `jitter`: it jumps along the same track in a random order.

Every other parameter (heading, speed, track, background, distractors) is drawn from the
same distribution for every class, and the three orderings visit the same set of track
positions. So any single frame, and even the unordered set of a video's frames, carries no
information about the class: only motion does. A per-frame classifier is at chance, and a
model that has learnt the task falls to chance when the frames are shuffled in time.

The generator is deterministic for a seed. It writes `root/<class>/<video>.mp4`, the actor's
per-voxel mask in `root/ground_truth.parquet` (read it with `load_ground_truth_mask`) and
`root/meta.json`.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from dataclasses import asdict, dataclass
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.data.video import write_video
from pipeline.params import require

log = logging.getLogger(__name__)

CLASSES = ("advance", "retreat", "jitter")
GENERATOR_VERSION = 2
ACTOR_COLOUR = np.array([255, 214, 0], dtype=np.float32)  # the arrow's head is always this yellow
ACTOR_TAIL_COLOUR = np.array([250, 250, 250], dtype=np.float32)  # and its tail this white
HEADINGS = np.array([[0.0, 1.0], [1.0, 0.0], [0.0, -1.0], [-1.0, 0.0]])  # (dy, dx) unit vectors

GROUND_TRUTH_SCHEMA = pa.schema(
    [
        ("video_id", pa.string()),
        ("label", pa.string()),
        ("shape", pa.list_(pa.int32(), 3)),  # T, H, W
        ("mask_bits", pa.binary()),  # np.packbits of the bool[T,H,W] mask, C order
        ("heading", pa.list_(pa.float32(), 2)),
        ("speed", pa.float32()),
    ]
)


@dataclass
class SyntheticParams:
    """What decides the corpus; two corpora with equal params are identical (the config group
    `dataset.synthetic`).

    videos_per_class: videos per class, all splits together (>= 2).
    num_frames: frames per video (>= 4). size: frames are size x size pixels (>= 32).
    fps: the frame rate written into the files. num_distractors: shapes besides the actor.
    seed: the corpus's seed. actor_scale: the arrow's size relative to the default 22 x 16 px
    (0.4 gives a 9 x 6 px actor, smaller than the distractors: a small-object motion task).
    """

    videos_per_class: int = 24
    num_frames: int = 16
    size: int = 112
    fps: int = 8
    num_distractors: int = 3
    seed: int = 0
    actor_scale: float = 1.0

    def check(self) -> None:
        """Raise ParameterError naming the first field out of range."""
        require(self.videos_per_class >= 2, "videos_per_class", self.videos_per_class, "must be >= 2")
        require(self.num_frames >= 4, "num_frames", self.num_frames, "must be >= 4")
        require(self.size >= 32, "size", self.size, "must be >= 32")
        require(0.2 <= self.actor_scale <= 2.0, "actor_scale", self.actor_scale, "must be in [0.2, 2]")


@dataclass
class SyntheticVideo:
    frames: np.ndarray  # uint8 [T, H, W, 3]
    actor_mask: np.ndarray  # bool [T, H, W]
    heading: np.ndarray  # (dy, dx)
    speed: float  # pixels per frame along the track


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A static, smooth colour texture with some grain, muted so the shapes stand out."""
    from skimage.transform import resize

    coarse = rng.uniform(0.0, 1.0, size=(6, 6, 3))
    medium = rng.uniform(0.0, 1.0, size=(18, 18, 3))
    img = 0.7 * resize(coarse, (size, size), order=3) + 0.3 * resize(medium, (size, size), order=3)
    img = (img - img.min()) / max(img.max() - img.min(), 1e-6)
    base = rng.uniform(60, 110, size=3)
    img = base + img * rng.uniform(50, 90, size=3)
    img += rng.normal(0.0, 4.0, size=img.shape)  # grain
    return img.astype(np.float32)


def _arrow_mask(yy: np.ndarray, xx: np.ndarray, centre: np.ndarray, heading: np.ndarray,
                scale: float = 1.0) -> np.ndarray:
    """Pixels (head, tail) of an arrow 22 px long, 16 px wide at the head (times `scale`),
    pointing along `heading`."""
    dy, dx = yy - centre[0], xx - centre[1]
    u = dy * heading[0] + dx * heading[1]  # along the heading
    v = -dy * heading[1] + dx * heading[0]  # across it
    half = 11.0 * scale
    head = (u >= 0) & (u <= half) & (np.abs(v) <= 8.0 * scale * (1.0 - u / half))
    tail = (u >= -half) & (u < 0) & (np.abs(v) <= max(3.5 * scale, 1.0))
    return head, tail


def _distractor_mask(yy: np.ndarray, xx: np.ndarray, centre: np.ndarray, kind: int, radius: float) -> np.ndarray:
    dy, dx = np.abs(yy - centre[0]), np.abs(xx - centre[1])
    if kind == 0:
        return dy**2 + dx**2 <= radius**2  # disc
    if kind == 1:
        return (dy <= radius) & (dx <= radius)  # square
    return dy + dx <= radius * 1.3  # diamond


def _distractor_track(rng: np.random.Generator, t: int, size: int, radius: float) -> np.ndarray:
    """Centres [T, 2] of a distractor: static, drifting (bouncing off the borders) or
    wandering (random walk)."""
    lo, hi = radius + 2, size - radius - 3
    start = rng.uniform(lo, hi, size=2)
    motion = rng.integers(0, 3)
    if motion == 0:
        return np.repeat(start[None], t, axis=0)
    if motion == 1:
        angle = rng.uniform(0, 2 * np.pi)
        vel = rng.uniform(1.5, 4.0) * np.array([np.sin(angle), np.cos(angle)])
        pos, out = start.copy(), np.empty((t, 2))
        for k in range(t):
            out[k] = pos
            pos = pos + vel
            for d in range(2):
                if pos[d] < lo or pos[d] > hi:
                    vel[d] = -vel[d]
                    pos[d] = np.clip(pos[d], lo, hi)
        return out
    steps = rng.normal(0.0, 2.5, size=(t, 2))
    steps[0] = 0
    return np.clip(start + np.cumsum(steps, axis=0), lo, hi)


def render_video(params: SyntheticParams, label: str, rng: np.random.Generator) -> SyntheticVideo:
    """Render one video of class `label`.

    Everything is drawn from `rng` in the same way for every class; the label only
    decides the order in which the actor visits its track (see the module docstring).
    """
    if label not in CLASSES:
        raise ValueError(f"unknown synthetic class {label!r}; classes are {CLASSES}")
    t, size = params.num_frames, params.size
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)

    background = _background(rng, size)
    heading = HEADINGS[rng.integers(0, len(HEADINGS))]
    margin = 12.0
    # 2.5-4 px per frame, slower where a long clip's track would not fit in the frame.
    max_speed = min(4.0, (size - 2 * margin) / (t - 1))
    if max_speed < 0.5:
        raise ValueError(f"a {size}x{size} frame is too small for a {t}-frame track; use a larger size")
    speed = float(rng.uniform(0.625 * max_speed, max_speed))
    length = speed * (t - 1)
    # The track runs from `start` along the heading; it must stay inside the frame.
    along_lo = margin + (length if heading.sum() < 0 else 0.0)
    along_hi = size - margin - (length if heading.sum() > 0 else 0.0)
    start_along = rng.uniform(along_lo, along_hi)
    across = rng.uniform(margin, size - margin)
    start = np.where(heading != 0, start_along, across)
    track = start[None, :] + np.arange(t)[:, None] * speed * heading[None, :]
    jitter_order = rng.permutation(t)

    distractors = []
    palette_hues = rng.permutation(5)
    for i in range(params.num_distractors):
        radius = float(rng.uniform(4.0, 7.0))
        kind = int(rng.integers(0, 3))
        colour = _distractor_colour(int(palette_hues[i % 5]), rng)
        distractors.append((kind, radius, colour, _distractor_track(rng, t, size, radius)))

    order = {"advance": np.arange(t), "retreat": np.arange(t)[::-1], "jitter": jitter_order}[label]
    frames = np.empty((t, size, size, 3), dtype=np.uint8)
    actor = np.zeros((t, size, size), dtype=bool)
    for k in range(t):
        img = background.copy()
        for kind, radius, colour, centres in distractors:
            img[_distractor_mask(yy, xx, centres[k], kind, radius)] = colour
        head, tail = _arrow_mask(yy, xx, track[order[k]], heading, params.actor_scale)
        img[head] = ACTOR_COLOUR
        img[tail] = ACTOR_TAIL_COLOUR
        actor[k] = head | tail
        frames[k] = np.clip(img, 0, 255).astype(np.uint8)
    return SyntheticVideo(frames=frames, actor_mask=actor, heading=heading, speed=speed)


def _distractor_colour(hue: int, rng: np.random.Generator) -> np.ndarray:
    """Saturated colours, none of them yellow like the actor."""
    palette = np.array(
        [[220, 40, 40], [40, 90, 230], [40, 190, 80], [200, 60, 210], [30, 200, 210]], dtype=np.float32
    )
    return np.clip(palette[hue] + rng.uniform(-20, 20, size=3), 0, 255).astype(np.float32)


def video_ids(params: SyntheticParams) -> list[tuple[str, str]]:
    """(video_id, label) of every video of the corpus, in generation order."""
    return [(f"{label}/v{j:04d}", label) for label in CLASSES for j in range(params.videos_per_class)]


def generate(root: str, params: SyntheticParams) -> None:
    """Write the corpus under `root`: written beside it under a name of this process's own (two
    processes never write into one folder), then renamed into place, a corpus already there
    renamed aside first and removed after (a reader sees a whole corpus or none; a crash
    leaves none, and the next run generates it again)."""
    tmp = f"{root.rstrip('/')}.{uuid.uuid4().hex[:8]}.part"
    os.makedirs(tmp)
    rows: dict[str, list] = {name: [] for name in GROUND_TRUTH_SCHEMA.names}
    for ci, label in enumerate(CLASSES):
        for j in range(params.videos_per_class):
            rng = np.random.default_rng([params.seed, ci, j])
            video = render_video(params, label, rng)
            vid = f"{label}/v{j:04d}"
            write_video(os.path.join(tmp, vid + ".mp4"), video.frames, fps=params.fps)
            rows["video_id"].append(vid)
            rows["label"].append(label)
            rows["shape"].append(list(video.actor_mask.shape))
            rows["mask_bits"].append(np.packbits(video.actor_mask, axis=None).tobytes())
            rows["heading"].append(video.heading.astype(np.float32).tolist())
            rows["speed"].append(video.speed)
    pq.write_table(pa.table(rows, schema=GROUND_TRUTH_SCHEMA), os.path.join(tmp, "ground_truth.parquet"))
    with open(os.path.join(tmp, "meta.json"), "w") as f:
        json.dump({"generator_version": GENERATOR_VERSION, "classes": list(CLASSES), **asdict(params)}, f, indent=2)
    aside = f"{root.rstrip('/')}.{uuid.uuid4().hex[:8]}.old"
    try:
        os.replace(root, aside)
    except FileNotFoundError:  # none there (or another process set it aside first)
        pass
    try:
        os.replace(tmp, root)
    except OSError:  # another process put the same corpus in place meanwhile: keep that one
        shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(aside, ignore_errors=True)


def ensure_corpus(root: str, params: SyntheticParams) -> bool:
    """Generate the corpus under `root` unless the same one is already there.

    Returns True when it was generated. A folder that holds something else fails with a
    message naming it, rather than being overwritten.
    """
    meta_path = os.path.join(root, "meta.json")
    wanted = {"generator_version": GENERATOR_VERSION, "classes": list(CLASSES), **asdict(params)}
    if os.path.exists(meta_path):
        with open(meta_path) as f:
            meta = json.load(f)
        if meta == wanted:
            return False
        log.info("synthetic corpus at %s was made with other parameters; regenerating", root)
    elif os.path.exists(root) and os.listdir(root):
        raise FileExistsError(
            f"dataset.root={root!r} exists and is not a synthetic corpus (no meta.json); "
            "choose another dataset.root for the synthetic corpus"
        )
    n = params.videos_per_class * len(CLASSES)
    log.info("generating the synthetic corpus: %d videos of %dx%dx%d under %s",
             n, params.num_frames, params.size, params.size, root)
    generate(root, params)
    return True


def load_ground_truth_mask(dataset_root: str, video_id: str) -> np.ndarray:
    """The actor's voxels of a synthetic video: bool [T, H, W] at the source resolution.

    Map it onto a clip with the `clip_frame_indices` recorded in `videos.parquet`.
    """
    path = os.path.join(dataset_root, "ground_truth.parquet")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} does not exist: is {dataset_root!r} a synthetic corpus?")
    table = pq.read_table(path, filters=[("video_id", "=", video_id)], columns=["shape", "mask_bits"])
    if table.num_rows == 0:
        raise KeyError(f"video_id {video_id!r} is not in the synthetic corpus at {dataset_root}")
    shape = tuple(table.column("shape")[0].as_py())
    bits = np.frombuffer(table.column("mask_bits")[0].as_py(), dtype=np.uint8)
    return np.unpackbits(bits, count=int(np.prod(shape))).astype(bool).reshape(shape)
