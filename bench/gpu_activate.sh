#!/usr/bin/env bash
# Activation throughput on a CUDA machine: x3d_m (16x224x224) and r3d_18 (16x112x112), random
# weights, bf16 autocast, channels_last_3d. Prints patches/s, activate_vs_forward and the
# fraction of the GPU's bf16 peak that the model FLOPs reach.
#
#   bash bench/gpu_activate.sh            # from the project root, with the project installed
#
# Self-contained: uses .venv/bin/python when present, else python3 (torch with CUDA needed).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=python3
[ -x .venv/bin/python ] && PY=.venv/bin/python
"$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.__version__, torch.cuda.get_device_name(0))"
for model in x3d_m r3d_18; do
  echo "== $model"
  "$PY" bench/activate.py --model "$model" --device cuda --clips "${CLIPS:-4}" --batch-size "${BATCH:-0}" \
      --no-reference --flops
done
