"""Deletion and insertion plans applied to one video on the model (method step 10 and causal
importance): the class probability and correctness under each plan. Runs on a model actor
(`pipeline.orchestration.actors.ModelActor`, the `host`), which holds the model."""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
import torch

from pipeline.activations.extract import clips_logits
from pipeline.activations.video import to_device
from pipeline.data.ingest import read_ingested_clip
from pipeline.evaluation.deletion import Plan, apply_plan, concept_voxels, in_video


def plan_outcomes(host: Any, row: dict[str, Any], labels: np.ndarray,
                  assignments: dict[str, tuple[list[int], list[Optional[str]]]], plans: dict[str, list[Plan]],
                  fill: float, chunk: int = 16, clip: Optional[np.ndarray] = None,
                  distinct: bool = True) -> dict[str, dict[str, list]]:
    """The video's class probability and correctness under each plan: `labels` its label
    volumes, `assignments[layer]` = (supervoxel ids, concept of each or None), `plans[layer]`
    its deletion / insertion plans, `clip` its frames when already decoded. Returns
    {layer: {"prob": [...], "correct": [...]}}, in the plans' order. Plans that differ only in
    concepts absent from this video make the same clip: each distinct clip runs once (`distinct`
    False runs every plan: bench/evaluate.py's baseline)."""
    k = host.class_index(row)
    clip = read_ingested_clip(row, host.clip_spec, host.limits).frames if clip is None else clip
    out: dict[str, dict[str, list]] = {}
    for layer, layer_plans in plans.items():
        voxels = concept_voxels(labels, *assignments[layer])
        makes = [in_video(p, voxels) if distinct else p for p in layer_plans]  # each plan's clip
        runs = list(dict.fromkeys(makes))
        probs: list[float] = []
        correct: list[bool] = []
        for start in range(0, len(runs), chunk):
            clips = [to_device(apply_plan(clip, voxels, p, fill), host.device)
                     for p in runs[start:start + chunk]]
            logits = clips_logits(host.model.module, clips, host.spec, host.params.batch_size, host.params.autocast)
            p = torch.softmax(torch.from_numpy(logits), dim=1).numpy()
            probs += p[:, k].tolist()
            correct += (np.argmax(logits, axis=1) == k).tolist()
        at = {plan: i for i, plan in enumerate(runs)}
        rows = [at[p] for p in makes]
        out[layer] = {"prob": [probs[i] for i in rows], "correct": [correct[i] for i in rows]}
    return out
