#!/usr/bin/env bash
# The Kinetics-400 explanation job on a Ray cluster (cluster.yaml): every class, x3d_m with its
# published weights, outputs to a shared path.
#
#   K400_ROOT=/mnt/k400 OUTPUT=/mnt/shared/ace3d-k400 jobs/kinetics400.sh [more overrides...]
#
# K400_ROOT holds the videos and annotations/train.csv, on a path every node sees (e.g. an FSx
# or NFS mount); OUTPUT is the run folder, shared likewise. Add model=slow_r50 (or i3d_r50,
# r2plus1d_r50) to explain another Kinetics model; each brings its input geometry,
# normalisation and recommended layers from the registry.
# Clips: 32 frames at 6 fps (x3d_m's 16-frame window at its training stride of 5 at 30 fps, two
# windows per clip), segmented at 160x160 (SLIC's cost grows with the voxel count; patches are
# resized to the model's 224x224 anyway). Segmentation runs on the nodes cluster.yaml labels
# ace3d-node=cpu, the model actors on the GPU nodes.
set -euo pipefail
: "${K400_ROOT:?set K400_ROOT to the Kinetics-400 root (videos + annotations/train.csv)}"
: "${OUTPUT:?set OUTPUT to a run folder every node can write}"
# The paths go in quoted (Hydra's grammar: a comma or a space in a path stays part of it).
exec "$(dirname "$0")/submit.sh" dataset=kinetics400 "dataset.root='$K400_ROOT'" \
    "dataset.csv='$K400_ROOT/annotations/train.csv'" model=x3d_m "run.output_dir='$OUTPUT'" \
    clip.num_frames=32 clip.fps=6 clip.height=160 clip.width=160 \
    "ray.cpu_label_selector=[ace3d-node:cpu]" "$@"
