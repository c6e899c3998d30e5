"""End to end: the project's job against a reference-style sequential implementation of the
whole method, on the same small synthetic corpus, same model, in one process.

    .venv/bin/python bench/e2e.py [--videos-per-class 6]

Reference-style: one process, per-video loops, float masks for the dedupe, every patch built on
the host with numpy/PIL and sent through the model on its own, sklearn KMeans, sklearn CAVs,
per-video voxel maps from float masks (as the authors' script works, less its pickles).
Project: `python -m pipeline`'s stages ingest -> segment -> activate -> concepts on a local Ray
cluster (started before the clock starts). Both sides use the same segment preset (`--segment`,
the job's default `fine`: five resolutions, short supervoxels padded to a window).

The limit: what the work costs with no system around it, measured in this process on all
cores: bare skimage SLIC of the same clips at the same resolutions (a process per core), plus
the bare batched forward of the same number of windows (the job's batch size and precision,
the model's hooks on) as the job ran. The last line is
`e2e_speedup_vs_reference=<ratio> e2e_vs_limit=<the job's wall time / the limit>` (target for
the second: at most 1.5).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pipeline.activations.extract import LayerTap  # noqa: E402
from pipeline.activations.patches import window_starts  # noqa: E402
from pipeline.concepts.discovery import RULE_PRESETS, accept  # noqa: E402
from pipeline.concepts.explain import split_videos  # noqa: E402
from pipeline.scoring.tcav import draw_random_sets  # noqa: E402
from pipeline.data.corpus import resolve_corpus  # noqa: E402
from pipeline.data.synthetic import SyntheticParams, ensure_corpus  # noqa: E402
from pipeline.data.video import ClipSpec, read_clip  # noqa: E402
from pipeline.models import clip_to_input  # noqa: E402
from pipeline.models.registry import load_model  # noqa: E402
from tests.reference.patches import reference_patch  # noqa: E402
from tests.reference.segmentation import segment_clip_reference  # noqa: E402
from pipeline.scoring.tcav import fit_cav, significance, tcav_score  # noqa: E402
from pipeline.segmentation.supervoxels import split_supervoxel_id  # noqa: E402

K, MIN_VIDEOS, MAX_VIDEOS, N_RANDOM, RANDOM_SIZE, SEED = 25, 5, 40, 20, 40, 0


def reference_run(root: str, seg: dict) -> dict[str, float]:
    """The whole method, sequentially, the plain way, with the job's segment settings
    (`seg`: n_segments, short_supervoxels, ...). Returns seconds per step."""
    times: dict[str, float] = {}
    model = load_model({"name": "demo"})
    m, layers = model.module, model.layers
    mean = torch.tensor(model.spec.mean).view(1, 3, 1, 1, 1)
    std = torch.tensor(model.spec.std).view(1, 3, 1, 1, 1)
    rows = resolve_corpus({"kind": "folder", "root": root}).rows
    spec = ClipSpec()
    t0 = time.perf_counter()
    clips, segs = {}, {}
    for r in rows:  # steps 1-2: decode, SLIC, mask-by-mask dedupe
        clip = read_clip(r["path"], spec).frames
        labels, kept = segment_clip_reference(clip, seg["n_segments"], seg["compactness"], seg["sigma"], seg["spacing"],
                                              seg["min_volume_fraction"], seg["iou_threshold"])
        clips[r["video_id"]], segs[r["video_id"]] = clip, (labels, kept)
    times["segment"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    sv_vec: dict[str, dict[str, list]] = {layer: {} for layer in layers}
    clip_vec: dict[str, dict[str, np.ndarray]] = {layer: {} for layer in layers}
    grads: dict[str, dict[str, np.ndarray]] = {layer: {} for layer in layers}
    with LayerTap(m, layers, model.spec.layout) as tap:
        for r in rows:  # steps 3-4: a patch at a time on the host, a forward call per supervoxel
            vid, clip = r["video_id"], clips[r["video_id"]]
            labels, kept = segs[vid]
            for sid in kept:
                res, lab = split_supervoxel_id(sid)
                mask = labels[res] == lab
                ts, ys, xs = np.nonzero(mask)
                box = (ts.min(), ts.max() + 1, ys.min(), ys.max() + 1, xs.min(), xs.max() + 1)
                starts = window_starts(box[0], box[1], 16, len(clip), seg["short_supervoxels"] == "pad")
                if not starts:
                    continue
                patch = reference_patch(clip, mask, (starts[0], starts[0] + 16) + box[2:], 112, 112)
                x = (torch.from_numpy(patch).float().permute(3, 0, 1, 2)[None] / 255.0 - mean) / std
                with torch.no_grad():
                    m(x)
                for layer in layers:
                    sv_vec[layer].setdefault(vid, []).append((sid, tap.pooled(layer)[0].numpy()))
            x = clip_to_input(clip[None], model.spec.mean, model.spec.std).requires_grad_(True)
            logits = m(x)
            outs = [tap.outputs[layer] for layer in layers]
            g = torch.autograd.grad(logits[0, model.class_names.index(r["label"])], outs)
            for layer, out, gl in zip(layers, outs, g):
                clip_vec[layer][vid] = tap.pooled(layer)[0].detach().numpy()
                grads[layer][vid] = tap.pooled(layer, gl)[0].numpy()
    times["activate"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    from sklearn.cluster import KMeans

    classes = sorted({r["label"] for r in rows})
    for k in classes:  # steps 5-9 per class and layer
        ids = [r["video_id"] for r in rows if r["label"] == k]
        discovery, scoring = split_videos(ids, 0.5, SEED)
        pool_ids = sorted(r["video_id"] for r in rows if r["label"] != k)
        sets = draw_random_sets(np.array(pool_ids), N_RANDOM, RANDOM_SIZE, SEED)
        for layer in layers:
            items = [(vid, sid, v) for vid in discovery for sid, v in sv_vec[layer].get(vid, [])]
            x = np.stack([v for _, _, v in items])
            km = KMeans(n_clusters=min(K, len(x)), random_state=SEED, n_init=10).fit(x)
            dist = np.linalg.norm(x - km.cluster_centers_[km.labels_], axis=1)
            concepts = accept(km.labels_, dist, km.cluster_centers_, [vid for vid, _, _ in items], len(discovery),
                              RULE_PRESETS["3dace"], MIN_VIDEOS, MAX_VIDEOS)
            pool_vec = np.stack([clip_vec[layer][vid] for vid in pool_ids])
            randoms = [pool_vec[s] for s in sets.sets]
            gr = np.stack([grads[layer][vid] for vid in scoring])
            base = [tcav_score(gr, fit_cav(pool_vec[sets.baseline], rs, seed=SEED + i, alpha=0.01).direction)
                    for i, rs in enumerate(randoms)]
            importance = []
            for c in concepts:
                scores = [tcav_score(gr, fit_cav(x[c.members], rs, seed=SEED + i, alpha=0.01).direction)
                          for i, rs in enumerate(randoms)]
                significance(scores, base)
                importance.append(float(np.mean(scores)))
            for vid in scoring:  # voxel importance, float masks per supervoxel
                labels, _ = segs[vid]
                total = np.zeros(labels.shape[1:])
                count = np.zeros(labels.shape[1:])
                for sid, v in sv_vec[layer].get(vid, []):
                    res, lab = split_supervoxel_id(sid)
                    mask = (labels[res] == lab).astype(float)
                    score = 0.0
                    if concepts:
                        d = [np.linalg.norm(v - c.centroid) for c in concepts]
                        j = int(np.argmin(d))
                        score = importance[j] if d[j] <= concepts[j].radius else 0.0
                    total += mask * score
                    count += mask
                total / np.maximum(count, 1)
    times["concepts"] = time.perf_counter() - t0
    return times


def _slic_clip(args: tuple) -> int:
    from pipeline.segmentation.supervoxels import slic_labels

    path, seg = args
    clip = read_clip(path, ClipSpec()).frames
    for n in seg["n_segments"]:
        slic_labels(clip, n, seg["compactness"], seg["sigma"], seg["spacing"], seg["max_num_iter"])
    return len(seg["n_segments"])


def limit_run(root: str, seg: dict, windows: int, batch_size: int, bf16: bool) -> dict[str, float]:
    """The bare cost of the job's work: SLIC of every clip at every resolution on all cores,
    and `windows` forward windows in batches (the model's layers tapped, as the actors run it)."""
    from concurrent.futures import ProcessPoolExecutor

    rows = resolve_corpus({"kind": "folder", "root": root}).rows
    t0 = time.perf_counter()
    with ProcessPoolExecutor(max_workers=os.cpu_count()) as pool:
        list(pool.map(_slic_clip, [(r["path"], seg) for r in rows]))
    times = {"slic": time.perf_counter() - t0}
    from pipeline.activations.video import prepare_model

    model = prepare_model(load_model({"name": "demo"}), torch.device("cpu"))  # as the actors run it (BN folded)
    torch.set_num_threads(os.cpu_count() or 1)
    clip = read_clip(rows[0]["path"], ClipSpec()).frames
    x = clip_to_input(np.repeat(clip[None], batch_size, axis=0), model.spec.mean, model.spec.std)
    with LayerTap(model.module, model.layers), torch.no_grad(), torch.autocast("cpu", torch.bfloat16, enabled=bf16):
        model.module(x)  # warm
        t0 = time.perf_counter()
        for _ in range(-(-windows // batch_size)):
            model.module(x)
    times["forward"] = time.perf_counter() - t0
    return times


def compose_job(root: str, out: str, segment: str):
    from hydra import compose, initialize_config_dir

    from pipeline.config import CONF_DIR, register_configs

    register_configs()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        # the stages the reference has: the default job's evaluate and report have no counterpart there
        return compose("config", overrides=["dataset=folder", f"dataset.root={root}", f"run.output_dir={out}",
                                            f"segment={segment}", "run.stages=[ingest,segment,activate,concepts]"])


def project_run(cfg) -> tuple[dict[str, float], float, dict]:
    """The job's stages on a local Ray cluster started before the clock starts. Returns
    (seconds per stage, seconds of the whole job, the activate stage's record)."""
    import ray

    from pipeline.job import run_job

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        t0 = time.perf_counter()
        record = run_job(cfg)
        wall = time.perf_counter() - t0
    finally:
        ray.shutdown()
    return {name: s["wall_s"] for name, s in record["stages"].items()}, wall, record["stages"]["activate"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--videos-per-class", type=int, default=6)
    ap.add_argument("--segment", default="fine", choices=["fine", "reference"],
                    help="the segment preset both sides use (the job's default: fine)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = os.path.join(tmp, "corpus")
        ensure_corpus(root, SyntheticParams(videos_per_class=args.videos_per_class, seed=9))
        n = 3 * args.videos_per_class
        cfg = compose_job(root, os.path.join(tmp, "run"), args.segment)
        seg = {k: cfg.segment[k] for k in cfg.segment}
        seg = {k: list(v) if hasattr(v, "__len__") and not isinstance(v, str) else v for k, v in seg.items()}
        project, t_project, act = project_run(cfg)
        limit = limit_run(root, seg, int(act["windows"]), int(act["batch_size"]), bool(act["bf16"]))
        t_limit = sum(limit.values())
        t0 = time.perf_counter()
        reference = reference_run(root, seg)
        t_reference = time.perf_counter() - t0
    print(f"corpus: {n} synthetic videos of 16x112x112, demo model, segment={args.segment} "
          f"(n_segments={seg['n_segments']}, short supervoxels: {seg['short_supervoxels']})")
    print("project (s):   " + "  ".join(f"{k} {v:.1f}" for k, v in project.items()) + f"  total {t_project:.1f}")
    print("reference (s): " + "  ".join(f"{k} {v:.1f}" for k, v in reference.items()) + f"  total {t_reference:.1f}")
    print("limit (s):     " + "  ".join(f"{k} {v:.1f}" for k, v in limit.items()) + f"  total {t_limit:.1f}"
          f"  ({act['windows']} windows, batch {act['batch_size']}, bf16={act['bf16']})")
    print(f"e2e_speedup_vs_reference={t_reference / t_project:.2f} e2e_vs_limit={t_project / t_limit:.2f}")


if __name__ == "__main__":
    main()
