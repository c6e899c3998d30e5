"""How sensitive a model's decision on one new video is to each concept of a finished run: the
directional derivatives of the predicted class's logit along the run's saved CAVs (TCAV's
derivatives, one video at a time instead of a share over a class's scoring videos).

For a video v predicted as class k and a concept c of k at layer L, with the run's CAVs d_r of c
(one per random set r, `tcav_scores/`'s `direction`) and g_v the gradient of k's logit at L
(averaged over the clip's windows, time and space, as the run's own): s_r = g_v . d_r. The
video's `share_positive` is the share of random sets with s_r > 0, and `derivative_mean` the mean
of s_r. Averaged over a class's scoring videos, when each is predicted as its label (the run takes
its label's gradient), `share_positive` is the concept's TCAV score.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pipeline.scoring.tcav import directional_derivatives


def class_gradients(
    host: Any, row: dict[str, Any], layers: list[str], class_index: int
) -> dict[str, np.ndarray]:
    """One video's gradient of the logit of `class_index` at each layer, {layer: [C]}, on a
    model actor (`host`, pipeline.orchestration.actors.ModelActor) as the activate stage
    computes a run's: the same windows and precision, with the actor's batch size (the run's,
    unless it measured one: then the sums may differ in the last bits)."""
    from pipeline.activations.extract import clip_outputs
    from pipeline.activations.video import to_device
    from pipeline.data.ingest import read_ingested_clip

    t_clip = to_device(read_ingested_clip(row, host.clip_spec, host.limits).frames, host.device)
    res = clip_outputs(
        host.model.module,
        t_clip,
        host.spec,
        layers,
        class_index,
        host.params.batch_size,
        host.params.autocast,
    )
    return res.gradients


def sensitivity_rows(
    video_id: str, target_class: str, layer: str, gradient: np.ndarray, cavs: dict[str, np.ndarray]
) -> list[dict[str, Any]]:
    """concept_sensitivity/ rows of one video at one layer: per concept (and the random
    baseline, "random"), its CAVs [R, C] against the video's gradient [C]."""
    rows = []
    for concept, directions in cavs.items():
        s = directional_derivatives(np.asarray(gradient)[None], directions)[0]
        rows.append(
            {
                "video_id": video_id,
                "target_class": target_class,
                "layer": layer,
                "concept": concept,
                "share_positive": float((s > 0).mean()),
                "derivative_mean": float(s.mean()),
                "cavs": int(len(s)),
            }
        )
    return rows
