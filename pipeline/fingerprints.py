"""The per-stage fingerprints: the settings that change a stage's outputs, and only those
(scheduling settings such as the number of actors or the videos per part may change between
runs of one folder), as canonical JSON; a unit's marker records its stage's."""

from __future__ import annotations

import hashlib
import json
from typing import Any, Optional, Sequence

SEGMENT_FIELDS = ("n_segments", "compactness", "sigma", "spacing", "min_volume_fraction", "iou_threshold",
                  "max_num_iter", "dedupe")
ACTIVATE_FIELDS = ("batch_size", "measure_batch", "fill", "resampling", "autocast", "gradients", "channels_last")


def fingerprints(c: dict[str, Any], window: int, model_digest: Optional[str] = None) -> dict[str, str]:
    """Per resumable stage, the settings its outputs depend on, as canonical JSON. `window`:
    the model's input frames (segment drops shorter supervoxels with short_supervoxels=drop);
    `model_digest`: the weights' digest of a model handed over as an nn.Module (it has no name
    that says what it computes)."""
    seg = c["segment"]
    segment = {k: seg[k] for k in SEGMENT_FIELDS if k != "dedupe" or seg[k] != "voxel"}  # voxel: fingerprints as before
    activate = {k: c["activate"][k] for k in ACTIVATE_FIELDS}
    model = {k: v for k, v in c["model"].items() if k != "layout" or v}  # layout "": fingerprints as before
    model.update({"digest": model_digest} if model_digest else {})
    return {
        "ingest": _canonical({"clip": c["clip"], **({"identity": "sha256"} if c["dataset"].get("identity") == "sha256"
                                                     else {})}),
        "segment": _canonical({"clip": c["clip"], "segment": segment,
                               "min_frames": window if seg["short_supervoxels"] == "drop" else None}),
        "activate": _canonical({"clip": c["clip"], "activate": activate, "model": model,
                                "segment": {**segment, "short_supervoxels": seg["short_supervoxels"]}}),
    }


def reduction_fingerprint(upstream: str, settings: Any, videos: Sequence[tuple[str, Optional[str]]]) -> str:
    """The fingerprint of a reduction (concepts, evaluate): its own settings, its input's
    fingerprint and a digest of the videos it reduces over (ids and labels): a rerun over the
    same inputs with the same settings skips its finished units."""
    listed = json.dumps(sorted(videos, key=str))  # JSON: an id holding a tab or newline cannot fake another list
    digest = hashlib.sha256(listed.encode()).hexdigest()[:16]
    return _canonical({"upstream": hashlib.sha256(upstream.encode()).hexdigest()[:16], "settings": settings,
                       "videos": digest})


def unit_key(*names: str) -> str:
    """A unit's file-safe name from its keys (a class and a layer): a short digest."""
    return hashlib.sha256("\0".join(names).encode()).hexdigest()[:12]


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True)
