"""Benchmark of the activation path, side by side in one process, same model, same batch size.

    .venv/bin/python bench/activate.py                         # demo model, CPU
    python bench/activate.py --model x3d_m --device cuda --no-reference --flops   # on a GPU

(a) the model's raw forward throughput on ready-made input tensors (the limit),
(b) the project's path from (clip, label volumes) to supervoxel vectors: patches built on the
    device in batches, hooks, pooling (`pipeline.activations.extract.supervoxel_vectors`),
(c) the reference-style path: each patch built on the host with numpy/PIL, one forward call
    per supervoxel's windows.
(a) and (b) run the model as the actors do (`prepare_model`: batch norms folded into the
convolutions before them, `--no-fuse` leaves them; weights and batches in channels_last_3d, or
in the plain layout with --plain-layout), (c) the model as loaded.

Clips: synthetic, the model's input size, segmented at n_segments=[15,50,80]. The last line is
`activate_vs_forward=<b/a time ratio> speedup_vs_reference=<c/b>` (without --no-reference).
With --flops it also prints the model's FLOPs per window and, on a GPU, the fraction of the
bf16 peak that the model FLOPs reach in (a) and (b).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pipeline.activations.extract import (LayerTap, _autocast, _batch_dtype, _memory_format, choose_batch_size,  # noqa: E402
                                         resolve_autocast, supervoxel_vectors)
from pipeline.activations.patches import PatchSpec  # noqa: E402
from pipeline.activations.video import pick_device, prepare_model, requests_from_table  # noqa: E402
from pipeline.data.synthetic import CLASSES, SyntheticParams, render_video  # noqa: E402
from pipeline.models.registry import load_model  # noqa: E402
from tests.reference.patches import reference_patch  # noqa: E402
from pipeline.segmentation.supervoxels import SegmentParams, segment_clip  # noqa: E402

# Nominal dense bf16 tensor-core peaks (TFLOP/s), by device name.
NOMINAL_BF16_TFLOPS = {"H100 SXM": 989.4, "H100 NVL": 835.0, "H100 PCIe": 756.0, "H100": 989.4, "H200": 989.4,
                       "A100": 312.0, "L40S": 362.0, "A10G": 70.0, "L4": 121.0}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_clips(n: int, size: int, frames: int) -> list[tuple[np.ndarray, object]]:
    out = []
    for i in range(n):
        clip = render_video(SyntheticParams(size=size, num_frames=frames), CLASSES[i % 3],
                            np.random.default_rng([77, i])).frames
        out.append((clip, segment_clip(clip, SegmentParams(n_segments=[15, 50, 80]), min_frames=frames)))
    return out


def forward_only(model, n_windows: int, spec: PatchSpec, batch: int, device: torch.device, amp: bool) -> float:
    """Seconds for `n_windows` windows through the model with hooks, inputs already on the device."""
    x = torch.randn(batch, 3, spec.window, spec.height, spec.width, device=device).to(_batch_dtype(amp))
    x = _memory_format(x, model.module)  # as the actors give it: bf16 for a bf16 model
    with LayerTap(model.module, model.layers, model.spec.layout) as tap, torch.inference_mode(), _autocast(device, amp):
        model.module(x)  # warm-up
        sync(device)
        t0 = time.perf_counter()
        done = 0
        while done < n_windows:
            model.module(x)
            for layer in model.layers:
                tap.pooled(layer)
            done += batch
        sync(device)
    return time.perf_counter() - t0


def project_path(model, clips, spec, batch: int, device: torch.device, amp: bool) -> tuple[float, int]:
    data = []
    for clip, seg in clips:
        kept = seg.kept()
        table = {k: v[kept] for k, v in seg.table.items()}
        data.append((torch.from_numpy(clip).to(device), torch.from_numpy(seg.labels.astype(np.int32)).to(device),
                     requests_from_table(table)))
    supervoxel_vectors(model.module, data[0][0], data[0][1], data[0][2][:batch], spec, model.layers, batch, amp)
    sync(device)
    t0 = time.perf_counter()
    windows = 0
    for clip, labels, requests in data:
        res = supervoxel_vectors(model.module, clip, labels, requests, spec, model.layers, batch, amp)
        windows += int(res.windows.sum())
    sync(device)
    return time.perf_counter() - t0, windows


def reference_path(model, clips, spec) -> float:
    mean = torch.tensor(spec.mean).view(1, 3, 1, 1, 1)
    std = torch.tensor(spec.std).view(1, 3, 1, 1, 1)
    t0 = time.perf_counter()
    with LayerTap(model.module, model.layers, model.spec.layout) as tap, torch.inference_mode():
        for clip, seg in clips:
            for i in seg.kept():
                box = tuple(int(seg.table[k][i]) for k in ("t0", "t1", "y0", "y1", "x0", "x1"))
                mask = seg.labels[seg.table["resolution"][i]] == seg.table["label"][i]
                patch = reference_patch(clip, mask, box, spec.height, spec.width, fill=spec.fill)
                n = (box[1] - box[0]) // spec.window
                windows = np.stack([patch[w * spec.window:(w + 1) * spec.window] for w in range(n)])
                x = (torch.from_numpy(windows).float().permute(0, 4, 1, 2, 3) / 255.0 - mean) / std
                model.module(x)  # one call per supervoxel
                for layer in model.layers:
                    tap.pooled(layer).mean(0)
    return time.perf_counter() - t0


def flops_per_window(model, spec: PatchSpec, device: torch.device) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.randn(1, 3, spec.window, spec.height, spec.width, device=device)
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        model.module(x)
    return float(counter.get_total_flops())


def measured_bf16_peak(device: torch.device) -> float:
    """TFLOP/s of a large bf16 matmul: what the tensor cores deliver on this card."""
    a = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    sync(device)
    t0 = time.perf_counter()
    for _ in range(10):
        a @ b
    sync(device)
    return 10 * 2 * 8192**3 / (time.perf_counter() - t0) / 1e12


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="demo")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    ap.add_argument("--clips", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=0,
                    help="0: measured (as the actors do with activate.measure_batch=true)")
    ap.add_argument("--no-reference", action="store_true", help="skip (c)")
    ap.add_argument("--no-autocast", action="store_true", help="(a), (b) in fp32 (activate.autocast=false); by default "
                    "bf16 where the device runs it natively, a GPU or a CPU with AVX512-BF16/AMX, as the actors do")
    ap.add_argument("--flops", action="store_true")
    ap.add_argument("--no-fuse", action="store_true", help="(a), (b) without folding batch norms into convolutions")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--plain-layout", action="store_true", help="(a), (b) with weights and batches in the "
                    "plain layout (activate.channels_last=false) instead of channels_last_3d")
    args = ap.parse_args()

    device = pick_device(args.device)
    model = prepare_model(load_model({"name": args.model}), device, fuse=not args.no_fuse,
                          channels_last=False if args.plain_layout else None)
    # for (c): the model as loaded (no folded batch norms, the default memory layout)
    plain = prepare_model(load_model({"name": args.model}), device, fuse=False, channels_last=False)
    s = model.spec
    spec = PatchSpec(s.window, s.height, s.width, tuple(s.mean), tuple(s.std), layout=s.layout)
    amp = resolve_autocast(False if args.no_autocast else None, device)
    batch = args.batch_size
    if not batch:
        batch, timings = choose_batch_size(model.module, spec, model.layers, device, amp)
        print("seconds per window by batch size: " + ", ".join(f"{b}: {t * 1e3:.2f} ms" for b, t in timings.items()))
    clips = make_clips(args.clips, s.height, s.window)
    n_sv = sum(len(seg.kept()) for _, seg in clips)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"model={args.model} device={device} ({name})"
          f" batch={batch} bf16={amp} clips={args.clips} of {s.window}x{s.height}x{s.width} supervoxels={n_sv}",
          flush=True)

    _, windows = project_path(model, clips, spec, batch, device, amp)  # warm-up
    t_a = t_b = float("inf")
    for _ in range(args.repeat):  # interleaved, best of N: the machine's speed drifts
        t_a = min(t_a, forward_only(model, windows, spec, batch, device, amp))
        t_b = min(t_b, project_path(model, clips, spec, batch, device, amp)[0])
    print(f"(a) forward on ready tensors  {t_a:.3f} s  {windows / t_a:.1f} windows/s")
    print(f"(b) project path              {t_b:.3f} s  {windows / t_b:.1f} patches/s")
    if args.flops:
        flops = flops_per_window(model, spec, device)
        print(f"model FLOPs per window: {flops / 1e9:.2f} GFLOP")
        if device.type == "cuda":
            name = torch.cuda.get_device_name(device)
            nominal = next((v for k, v in NOMINAL_BF16_TFLOPS.items() if k in name), None)
            peak = measured_bf16_peak(device)
            for label, t in (("(a)", t_a), ("(b)", t_b)):
                achieved = windows * flops / t / 1e12
                line = f"{label} model FLOPs reach {achieved:.1f} TFLOP/s = {achieved / peak:.1%} of the measured " \
                       f"bf16 matmul peak ({peak:.0f} TFLOP/s)"
                if nominal:
                    line += f", {achieved / nominal:.1%} of the nominal {nominal:.0f} TFLOP/s"
                print(line)
    line = f"activate_vs_forward={t_b / t_a:.3f}"
    if not args.no_reference:
        t_c = min(reference_path(plain, clips, spec) for _ in range(2))
        print(f"(c) reference-style path      {t_c:.3f} s  {windows / t_c:.1f} patches/s")
        line += f" speedup_vs_reference={t_c / t_b:.2f}"
    print(line)


if __name__ == "__main__":
    main()
