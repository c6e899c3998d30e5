"""What a run will cost, before it runs (`ace3d plan`): the corpus as its manifest lists it,
which of its labels the model knows, and from a few sampled videos, decoded and segmented here
with the run's settings, the supervoxels and model windows per clip, the storage they take and
the time segmentation takes; the model's FLOPs per window (one forward on torch's meta device).
Totals scale the sample's means to the corpus, at the throughputs stated beside them: measured
ones where docs/benchmarks.md has them, assumptions (marked) otherwise.

Pure functions of the plain config (`to_plain`), no Ray: `plan_run(c)` returns the plan as a
dict (what plan.json holds), `plan_table(plan)` its printed form.
"""

from __future__ import annotations

import io as bytes_io
import time
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import torch

from pipeline.activations.extract import LayerTap
from pipeline.activations.patches import num_windows, window_starts
from pipeline.data.corpus import resolve_corpus
from pipeline.data.video import ClipSpec, DecodeLimits, read_clip
from pipeline.params import from_section
from pipeline.run_names import LABEL_VOLUMES, SUPERVOXELS
from pipeline.segmentation.supervoxels import KEPT, SegmentParams, segment_clip
from pipeline.segmentation.video import SegmentedVideo

# Throughputs the totals use (docs/benchmarks.md, "Scale model").
# The demo model's activate stage on 2 CPU cores, the path whole (decode, patches, forward):
# 319 windows/s of 0.37 GFLOP (measured); another model is taken to run at the same FLOP rate.
CPU_ACTOR_GFLOPS = 319 * 0.37
GPU_TFLOPS = (5.0, 20.0)  # effective bf16 per GPU (assumed, until bench/gpu_check.sh measures one)
EVALUATE_FACTOR = 1.65  # evaluate's model windows against activation's (the Kinetics job's)
DRIVER_MB, DRIVER_KB_PER_VIDEO = 800.0, 5.0  # the driver's peak RSS (bench/scale.py)
# An activation row's columns besides its vector (ids, class, windows) as written: the demo run's
# rows of 64 floats take 350 bytes.
VECTOR_ROW_BYTES = 94


def sample_rows(rows: list[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    """Up to `n` videos of the manifest, taken from each class in turn (the first of each class,
    then the second, ...): deterministic, and every class is seen when n allows."""
    by_class: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_class.setdefault(str(row.get("label")), []).append(row)
    out: list[dict[str, Any]] = []
    for i in range(max((len(v) for v in by_class.values()), default=0)):
        out += [v[i] for v in by_class.values() if i < len(v)]
    return out[:n]


def model_profile(c: dict[str, Any]) -> dict[str, Any]:
    """The model's class names, layers, window and input size, the width of each explained
    layer's vector and its FLOPs per window, from one forward on the meta device (weights are
    never read: a registry model is built without its published ones)."""
    from torch.utils.flop_counter import FlopCounterMode

    from pipeline.models.registry import load_model

    model = load_model({**c["model"], "pretrained": False})
    spec = model.spec
    module = model.module.to("meta")
    x = torch.empty(1, 3, spec.window, spec.height, spec.width, device="meta")
    counter = FlopCounterMode(display=False)
    with LayerTap(module, model.layers, spec.layout) as tap, counter, torch.no_grad():
        module(x)
        dims = {name: int(tap.pooled(name).shape[1]) for name in model.layers}
    return {"name": c["model"]["name"], "class_names": list(model.class_names), "layers": dims,
            "window": spec.window, "input": [spec.window, spec.height, spec.width],
            "gflops_per_window": round(counter.get_total_flops() / 1e9, 3)}


def parquet_bytes(table: Any) -> int:
    """The size of `table` as a Parquet file written as the run folder writes it."""
    sink = bytes_io.BytesIO()
    pq.write_table(table, sink)
    return sink.tell()


def measure_video(row: dict[str, Any], spec: ClipSpec, params: SegmentParams, window: int,
                  pad_short: bool, limits: DecodeLimits) -> dict[str, Any]:
    """One sampled video decoded and segmented as the segment stage does: its kept supervoxels,
    its model windows (each kept supervoxel's and the whole clip's), the bytes of its label
    volumes and supervoxel rows, the seconds it took; or the reason it fails."""
    from pipeline.stages.segment import segment_tables

    t0 = time.perf_counter()
    try:
        clip = read_clip(row["path"], spec, limits).frames
        seg = segment_clip(clip, params, min_frames=None if pad_short else window)
    except Exception as e:  # a video that would fail in the run: counted, with the reason
        return {"video_id": row["video_id"], "error": f"{type(e).__name__}: {e}"}
    seconds = time.perf_counter() - t0
    t = seg.table
    kept = np.flatnonzero(t["status"] == KEPT)
    length = clip.shape[0]
    windows = sum(len(window_starts(t["t0"][i], t["t1"][i], window, length, pad_short))
                  for i in kept)
    video = SegmentedVideo(row["video_id"], seg.labels, t, seconds)
    tables = dict(segment_tables([video], list(params.n_segments)))
    return {"video_id": row["video_id"], "error": None, "seconds": round(seconds, 3),
            "supervoxels": int(len(kept)),
            "windows": int(windows) + num_windows(0, length, window),
            "label_volume_bytes": sum(parquet_bytes(g) for g in tables[LABEL_VOLUMES]),
            "supervoxel_row_bytes": sum(parquet_bytes(g) for g in tables[SUPERVOXELS])}


def sig(x: float) -> float:
    """`x` to three significant figures (hours and sizes stay readable at any scale)."""
    return float(f"{x:.3g}")


def plan_run(c: dict[str, Any], sample: int = 6) -> dict[str, Any]:
    """The plan of the run the plain config `c` describes (module docstring)."""
    corpus = resolve_corpus(c["dataset"])
    ok = [r for r in corpus.rows if not r.get("error")]
    per_class = {k: sum(1 for r in ok if r.get("label") == k) for k in corpus.classes}
    model = model_profile(c)
    known = sorted(set(per_class) & set(model["class_names"]))
    pad_short = c["segment"]["short_supervoxels"] == "pad"
    measured = [measure_video(r, ClipSpec(**c["clip"]), from_section(SegmentParams, c["segment"]),
                              model["window"], pad_short, from_section(DecodeLimits, c["decode"]))
                for r in sample_rows(ok, sample)]
    good = [m for m in measured if not m["error"]]
    n = len(ok)
    per = {k: float(np.mean([m[k] for m in good])) if good else 0.0
           for k in ("supervoxels", "windows", "seconds", "label_volume_bytes",
                     "supervoxel_row_bytes")}
    layers = model["layers"]
    row_bytes = 4 * sum(layers.values()) + VECTOR_ROW_BYTES * len(layers)  # a supervoxel's rows
    per["activation_bytes"] = (per["supervoxels"] + 1) * row_bytes  # and the whole clip's
    gflop = per["windows"] * n * model["gflops_per_window"]
    gpu_hours = [gflop / (t * 1e3) / 3600 for t in reversed(GPU_TFLOPS)]
    storage = {k: per[f"{k}_bytes"] * n for k in ("label_volume", "supervoxel_row", "activation")}
    storage["total"] = sum(storage.values())
    totals = {"supervoxels": round(per["supervoxels"] * n), "windows": round(per["windows"] * n),
              "storage_bytes": {k: round(v) for k, v in storage.items()},
              "segment_core_hours": sig(per["seconds"] * n / 3600),
              "activate_gpu_hours": [sig(h) for h in gpu_hours],
              "evaluate_gpu_hours": [sig(EVALUATE_FACTOR * h) for h in gpu_hours],
              "activate_cpu_actor_hours": sig(gflop / CPU_ACTOR_GFLOPS / 3600),
              "driver_memory_mb": round(DRIVER_MB + DRIVER_KB_PER_VIDEO * n / 1024)}
    failed = len(corpus.rows) - n
    return {"corpus": {"videos": len(corpus.rows), "ok": n, "failed_in_manifest": failed,
                       "classes": per_class, "classes_the_model_knows": known,
                       "classes_the_model_does_not_know": sorted(set(per_class) - set(known)),
                       # the run's own check (ingest.check_corpus): concepts need two known classes
                       "the_run_starts": len(known) >= 2 or "concepts" not in c["run"]["stages"]
                       or not model["class_names"]},
            "model": model, "per_video": {k: sig(v) for k, v in per.items()}, "totals": totals,
            "sample": {"videos": len(measured), "measured": good,
                       "failed": [m for m in measured if m["error"]]},
            "assumptions": ASSUMPTIONS}


ASSUMPTIONS = {
    "segment_core_hours": "measured here: the sample's seconds per video, one core",
    "activate_gpu_hours": f"assumed {GPU_TFLOPS[0]:g}-{GPU_TFLOPS[1]:g} TFLOP/s bf16 a GPU",
    "evaluate_gpu_hours": f"assumed {EVALUATE_FACTOR}x activation's windows (docs/benchmarks.md)",
    "activate_cpu_actor_hours": f"a 2-core CPU actor at {CPU_ACTOR_GFLOPS:g} GFLOP/s, the demo "
                                "model's measured rate (another model may run faster or slower)",
    "driver_memory_mb": f"{DRIVER_MB:g} MB and {DRIVER_KB_PER_VIDEO:g} KB a video (bench/scale.py)",
    "storage_bytes": "the sample's label volumes and supervoxel rows as the run writes them; "
                     "activations at 4 bytes a float for each layer's vectors, the clip's included",
}


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def plan_table(plan: dict[str, Any]) -> str:
    """The plan as `ace3d plan` prints it."""
    corpus, model, totals, per = plan["corpus"], plan["model"], plan["totals"], plan["per_video"]
    classes, unknown = len(corpus["classes"]), corpus["classes_the_model_does_not_know"]
    storage = {k: _size(v) for k, v in totals["storage_bytes"].items()}
    layers = ", ".join(f"{k} ({v})" for k, v in model["layers"].items())
    known = f"{len(corpus['classes_the_model_knows'])} of {classes}"
    if unknown:
        known += f"; not: {', '.join(unknown[:8])}{' ...' if len(unknown) > 8 else ''}"
    rows = [("videos", f"{corpus['ok']} ({corpus['failed_in_manifest']} failed in the manifest), "
                       f"{classes} classes"),
            ("classes the model knows", known if corpus["the_run_starts"] else
             f"{known}: the run would stop before any work (concepts need two; model.class_names)"),
            ("model", f"{model['name']}, {model['gflops_per_window']:g} GFLOP per "
                      f"{'x'.join(map(str, model['input']))} window; layers {layers}"),
            ("sample", f"{plan['sample']['videos']} videos decoded and segmented here, "
                       f"{len(plan['sample']['failed'])} failed"),
            ("per video", f"{per['supervoxels']:.0f} supervoxels, {per['windows']:.0f} model "
                          f"windows, {per['seconds']:.2f} s to segment (one core)"),
            ("supervoxels", f"{totals['supervoxels']:,}"),
            ("model windows", f"{totals['windows']:,} (evaluate: up to {EVALUATE_FACTOR}x more)"),
            ("storage", f"{storage['total']} (label volumes {storage['label_volume']}, activations "
                        f"{storage['activation']})"),
            ("segmentation", f"{totals['segment_core_hours']:g} CPU core-hours"),
            ("activation", "{:g}-{:g} GPU-hours (assumed rate), or {:g} hours of a 2-core CPU "
                           "actor".format(*totals["activate_gpu_hours"],
                                          totals["activate_cpu_actor_hours"])),
            ("evaluate stage", "{:g}-{:g} GPU-hours (assumed rate)".format(
                *totals["evaluate_gpu_hours"])),
            ("driver memory", f"{totals['driver_memory_mb']:,} MB")]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)
