"""The per-stage fingerprints: the settings that change a stage's outputs, and only those
(scheduling settings such as the number of actors or the videos per part may change between
runs of one folder), as canonical JSON; a unit's marker records its stage's."""

from __future__ import annotations

import hashlib
import json
from typing import Any, Optional, Sequence

from pipeline.params import output_settings
from pipeline.schemas import FORMAT_VERSION

# The fingerprints hold the output format (`schemas.FORMAT_VERSION`): a change of what they hold
# (not of a setting's value) bumps it, and a folder of another format is refused.
VERSION = FORMAT_VERSION


def segment_settings(c: dict[str, Any]) -> dict[str, Any]:
    """The segment group's settings that change outputs (`SegmentConfig`'s fields not marked
    `SCHEDULING`): the fingerprint's, and what `pipeline.score` pins to a finished run."""
    from pipeline.config import SegmentConfig

    return output_settings(SegmentConfig, c["segment"])


def activate_settings(c: dict[str, Any]) -> dict[str, Any]:
    """The activate group's settings that change outputs (`ActivateConfig`'s, as above)."""
    from pipeline.config import ActivateConfig

    return output_settings(ActivateConfig, c["activate"])


def fingerprints(c: dict[str, Any], window: int, model_digest: Optional[str] = None) -> dict[str, str]:
    """Per resumable stage, the settings its outputs depend on, as canonical JSON: every field
    of its groups but those marked `SCHEDULING`, derived from the dataclasses (a field added to
    one is in its fingerprint without an edit here). `window`: the model's input frames
    (segment drops shorter supervoxels with short_supervoxels=drop); `model_digest`: the
    weights' digest of a model handed over as an nn.Module (it has no name that says what it
    computes)."""
    segment = segment_settings(c)
    model = {**c["model"], **({"digest": model_digest} if model_digest else {})}
    min_frames = window if segment["short_supervoxels"] == "drop" else None
    return {
        "ingest": _canonical({"version": VERSION, "clip": c["clip"], "identity": c["dataset"].get("identity", "stat")}),
        "segment": _canonical({"version": VERSION, "clip": c["clip"], "segment": segment, "min_frames": min_frames}),
        "activate": _canonical({"version": VERSION, "clip": c["clip"], "segment": segment, "min_frames": min_frames,
                                "activate": activate_settings(c), "model": model}),
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
