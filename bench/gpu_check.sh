#!/usr/bin/env bash
# The GPU checks, in one run of under 8 minutes on one H100, written to one JSON file:
#   1. the activation bench for x3d_m and r3d_18 on the GPU (bench/activate.py: patches/s,
#      activate_vs_forward, share of the bf16 peak);
#   2. FAISS k-means at 1 M x 192 vectors, K = 1,000, 10 iterations, on the GPU against the CPU
#      (the atlas's training step; needs the FAISS GPU build, the project's `gpu` extra);
#   3. the demo job with its model actor on the GPU (activate.gpus_per_actor=1), up to activate.
#
#   bash bench/gpu_check.sh [out.json]     # default: $OUT/gpu_check.json, else bench/gpu_check.json
#
# Uses .venv/bin/python when present, else python3 (torch with CUDA needed). Each step has its own
# time limit and records its output tail and exit status, so one failing step keeps the others'.
# The docs' GPU figures (docs/cluster.md) come from this file, marked with the card it names.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=python3
[ -x .venv/bin/python ] && PY=.venv/bin/python
DEST="${1:-${OUT:-bench}/gpu_check.json}"
LOGS="$(mktemp -d)"
START=$(date +%s)

step() {  # step NAME SECONDS COMMAND...: run it with a time limit, keep its output and status
  local name=$1 limit=$2
  shift 2
  echo "== $name (at most ${limit} s)"
  local t0=$(date +%s)
  timeout "$limit" "$@" >"$LOGS/$name.log" 2>&1
  echo $? >"$LOGS/$name.rc"
  echo $(( $(date +%s) - t0 )) >"$LOGS/$name.s"
  tail -3 "$LOGS/$name.log"
}

step device 60 "$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; \
print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name(0))"
for model in x3d_m r3d_18; do
  step "activate_$model" 150 "$PY" bench/activate.py --model "$model" --device cuda --clips 4 --batch-size 0 \
      --no-reference --flops
done
step faiss_kmeans 150 "$PY" - <<'EOF'
import time
import faiss
import numpy as np
rng = np.random.default_rng(0)
centres = rng.normal(size=(1000, 192)).astype(np.float32)
x = (centres[rng.integers(0, 1000, 1_000_000)] + 0.3 * rng.normal(size=(1_000_000, 192))).astype(np.float32)
print("faiss", faiss.__version__, "gpus", faiss.get_num_gpus())
seconds = {}
for gpu in (True, False):
    if gpu and not faiss.get_num_gpus():
        continue
    km = faiss.Kmeans(192, 1000, niter=10, seed=0, gpu=gpu, verbose=False)
    t0 = time.perf_counter()
    km.train(x)
    seconds["gpu" if gpu else "cpu"] = time.perf_counter() - t0
    print("gpu" if gpu else "cpu", round(seconds["gpu" if gpu else "cpu"], 2), "s, objective", km.obj[-1])
print(f"kmeans_gpu_s={seconds.get('gpu', float('nan')):.2f} kmeans_cpu_s={seconds['cpu']:.2f} "
      f"kmeans_gpu_speedup={seconds['cpu'] / seconds.get('gpu', float('nan')):.1f}")
EOF
step demo_job 200 "$PY" -m pipeline "run.output_dir=$LOGS/demo" activate.gpus_per_actor=1 \
    "run.stages=[ingest,segment,activate]"

"$PY" - "$LOGS" "$DEST" "$START" <<'EOF'
import json, os, sys, time
logs, dest, start = sys.argv[1], sys.argv[2], float(sys.argv[3])
out = {"wall_s": round(time.time() - start, 1), "steps": {}}
for name in ("device", "activate_x3d_m", "activate_r3d_18", "faiss_kmeans", "demo_job"):
    text = open(os.path.join(logs, f"{name}.log"), errors="replace").read() if os.path.exists(
        os.path.join(logs, f"{name}.log")) else ""
    lines = [line for line in text.splitlines() if line.strip()]
    out["steps"][name] = {"rc": int(open(os.path.join(logs, f"{name}.rc")).read()),
                          "seconds": int(open(os.path.join(logs, f"{name}.s")).read()),
                          "last_line": lines[-1] if lines else "", "tail": lines[-12:]}
run = os.path.join(logs, "demo", "run.json")
if os.path.exists(run):
    act = json.load(open(run))["stages"].get("activate", {})
    out["steps"]["demo_job"]["activate"] = {k: act.get(k) for k in ("devices", "bf16", "batch_size", "windows_per_s",
                                                                    "wall_s", "actors")}
out["device"] = out["steps"]["device"]["last_line"]
os.makedirs(os.path.dirname(os.path.abspath(dest)), exist_ok=True)
json.dump(out, open(dest, "w"), indent=1)
print(json.dumps({k: v["last_line"] for k, v in out["steps"].items()}, indent=1))
print(f"wrote {dest} ({out['wall_s']} s)")
EOF
