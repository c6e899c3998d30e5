"""Checks of an explanation against known truth (the synthetic corpus's actor voxels): does a
concept cover what decides the class, and where does voxel importance fall?"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Sequence

import numpy as np
from scipy.ndimage import binary_dilation


def actor_tube(mask: np.ndarray, pixels: int = 3) -> np.ndarray:
    """The actor's voxels [T, H, W] dilated by `pixels` in space, frame by frame (supervoxel
    boundaries do not follow an object's edge to the pixel)."""
    if pixels <= 0:
        return mask.astype(bool)
    structure = np.zeros((1, 2 * pixels + 1, 2 * pixels + 1), dtype=bool)
    yy, xx = np.mgrid[-pixels:pixels + 1, -pixels:pixels + 1]
    structure[0] = yy**2 + xx**2 <= pixels**2
    return binary_dilation(mask.astype(bool), structure=structure)


def clip_mask(source_mask: np.ndarray, frame_indices: Sequence[int], height: int, width: int) -> np.ndarray:
    """A source-resolution mask [T_src, H_src, W_src] mapped onto a clip: its frames, resized
    to the clip's size (nearest)."""
    m = source_mask[np.asarray(frame_indices)]
    if m.shape[1:] == (height, width):
        return m
    ys = (np.arange(height) + 0.5) * m.shape[1] / height
    xs = (np.arange(width) + 0.5) * m.shape[2] / width
    return m[:, ys.astype(int)][:, :, xs.astype(int)]


def inside_fraction(mask: np.ndarray, tube: np.ndarray) -> float:
    """Share of a supervoxel's voxels inside the tube."""
    n = int(mask.sum())
    return float((mask & tube).sum() / n) if n else 0.0


def positive_mass_inside(importance: np.ndarray, tube: np.ndarray) -> float:
    """Share of the positive voxel-importance mass that lies inside the tube (nan if none)."""
    pos = np.clip(importance, 0, None)
    total = float(pos.sum())
    return float(pos[tube].sum() / total) if total > 0 else float("nan")


def video_actor_tube(dataset_root: str, video: dict, pixels: int = 3) -> np.ndarray:
    """The dilated actor tube of a synthetic video in its clip's coordinates (`video`: its row of
    videos.parquet)."""
    from pipeline.data.synthetic import load_ground_truth_mask

    mask = clip_mask(load_ground_truth_mask(dataset_root, video["video_id"]), video["clip_frame_indices"],
                     video["clip_height"], video["clip_width"])
    return actor_tube(mask, pixels)


# --- the reports the job writes on the synthetic corpus ------------------------------------
# Reported, never used to change a score. `volumes[vid]` is a video's label volumes
# [R, T, H, W], `tube(vid)` its dilated actor tube [T, H, W].

def actor_concept_report(concepts: Sequence[dict[str, Any]], members: Sequence[dict[str, Any]],
                         importance: Sequence[dict[str, Any]], pairs: Iterable[tuple[str, str]],
                         volumes: dict[str, np.ndarray], tube: Callable[[str], np.ndarray],
                         dilation: int) -> dict[tuple[str, str], dict[str, Any]]:
    """Per (class, layer): the concept whose members lie most inside the actor tube (the "actor
    concept") with its rank, TCAV score and p-value, how many concepts lie mostly on the actor,
    and the share of positive voxel-importance mass inside the tube. `concepts`, `members`,
    `importance`: rows of concepts.parquet, concept_members/, voxel_importance/."""
    from pipeline.scoring.voxel_importance import importance_map
    from pipeline.segmentation.supervoxels import supervoxel_mask

    fractions: dict[str, list[float]] = {}
    for m in members:
        fractions.setdefault(m["concept"], []).append(
            inside_fraction(supervoxel_mask(volumes[m["video_id"]], m["supervoxel_id"]), tube(m["video_id"])))
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for k, layer in pairs:
        rows = [r for r in concepts if r["target_class"] == k and r["layer"] == layer]
        scored = [r for r in importance if r["target_class"] == k and r["layer"] == layer]
        gt: dict[str, Any] = {"dilation_px": dilation}
        if rows:
            best = max(rows, key=lambda r: np.mean(fractions[r["concept"]]))
            gt.update(actor_concept=best["concept"],
                      actor_fraction=round(float(np.mean(fractions[best["concept"]])), 3),
                      actor_concept_rank=best["rank"], actor_concept_tcav=best["tcav_mean"],
                      actor_concept_p_value=best["p_value"], actor_concept_significant=best["significant"],
                      concepts_mostly_on_actor=sum(np.mean(fractions[r["concept"]]) >= 0.5 for r in rows))
        shares = [positive_mass_inside(importance_map(volumes[r["video_id"]], r["supervoxel_ids"], r["scores"]),
                                       tube(r["video_id"])) for r in scored]
        shares = [s for s in shares if not np.isnan(s)]
        gt["importance_mass_in_actor_tube"] = round(float(np.mean(shares)), 3) if shares else None
        gt["actor_tube_volume_share"] = round(float(np.mean([tube(r["video_id"]).mean() for r in scored]
                                                            or [np.nan])), 3)
        out[(k, layer)] = gt
    return out


def importance_mass_report(rows: Sequence[dict[str, Any]], causal: dict[str, float], volumes: dict[str, np.ndarray],
                           tubes: dict[str, np.ndarray]) -> dict[tuple[str, str], dict[str, float]]:
    """Per (class, layer), the share of positive voxel-importance mass inside the actor tube on
    the class's own scoring videos (`rows`: their voxel_importance rows), with concepts scored
    by causal importance, by TCAV, and by two reference scorings made from the ground truth, for
    scale: every supervoxel scored by its own share of actor voxels; every concept scored 1 if
    its supervoxels lie mostly on the actor, else 0."""
    from pipeline.scoring.voxel_importance import causal_scores, importance_map
    from pipeline.segmentation.supervoxels import split_supervoxel_id

    # each supervoxel's own share of voxels inside the tube (per resolution, one bincount)
    share_of = {vid: [np.bincount(lab.ravel(), weights=tubes[vid].ravel(), minlength=int(lab.max()) + 1)
                      / np.maximum(np.bincount(lab.ravel(), minlength=int(lab.max()) + 1), 1) for lab in labels]
                for vid, labels in volumes.items()}

    def own_share(vid: str, sid: int) -> float:
        resolution, label = split_supervoxel_id(int(sid))
        return float(share_of[vid][resolution][label])

    concept_share: dict[str, list[float]] = {}
    for r in rows:
        for sid, cn in zip(r["supervoxel_ids"], r["concepts"]):
            if cn is not None:
                concept_share.setdefault(cn, []).append(own_share(r["video_id"], sid))
    on_actor = {cn: float(np.mean(v)) >= 0.5 for cn, v in concept_share.items()}
    shares: dict[tuple[str, str], dict[str, list[float]]] = {}
    for r in rows:
        vid = r["video_id"]
        scores = {
            "causal": causal_scores(r["concepts"], causal),
            "tcav": r["scores"],
            "oracle_supervoxel_share": [own_share(vid, sid) for sid in r["supervoxel_ids"]],
            "oracle_actor_concepts": [float(on_actor.get(cn, False)) if cn is not None else 0.0
                                      for cn in r["concepts"]],
        }
        for name, values in scores.items():
            share = positive_mass_inside(importance_map(volumes[vid], r["supervoxel_ids"], values), tubes[vid])
            if not np.isnan(share):
                shares.setdefault((r["target_class"], r["layer"]), {}).setdefault(name, []).append(share)
    return {kl: {f"importance_mass_in_actor_tube_{name}": round(float(np.mean(v)), 3) for name, v in by_score.items()}
            for kl, by_score in shares.items()}


def pointing_game(importance: np.ndarray, tube: np.ndarray) -> float:
    """Per frame where the actor is, does the voxel of highest importance lie on the (dilated)
    actor? The mean over those frames. Maps are constant on supervoxels, so a frame's maximum is
    often a region: it counts for the share of that region on the actor (the hit rate of a tie
    broken at random). nan when the actor is in no frame."""
    hits = []
    for imp, on in zip(importance, tube):
        if on.any():
            top = imp == imp.max()
            hits.append(float((top & on).sum() / top.sum()))
    return float(np.mean(hits)) if hits else float("nan")


def top_share_iou(importance: np.ndarray, tube: np.ndarray, seed: int = 0) -> float:
    """IoU with the actor tube of the voxels of highest importance, as many as the tube has
    (q = the tube's share of the clip); ties broken by a seeded random order."""
    n = int(tube.sum())
    if n == 0:
        return float("nan")
    tiebreak = np.random.default_rng(seed).permutation(importance.size)
    order = np.lexsort((tiebreak, -importance.ravel()))
    top = np.zeros(importance.size, dtype=bool)
    top[order[:n]] = True
    inter = int((top & tube.ravel()).sum())
    return inter / (2 * n - inter)


def localisation_report(rows: Sequence[dict[str, Any]], causal: dict[str, float], volumes: dict[str, np.ndarray],
                        tubes: dict[str, np.ndarray], seed: int = 0) -> dict[tuple[str, str], dict[str, float]]:
    """Per (class, layer), on the class's scoring videos (`rows`: their voxel_importance rows):
    the pointing game and the top-q% IoU with the actor tube of the TCAV and causal voxel maps,
    and of a random map on the same supervoxels (each scored uniformly in [0, 1], seeded)."""
    from pipeline.scoring.voxel_importance import causal_scores, importance_map

    found: dict[tuple[str, str], dict[str, list[float]]] = {}
    for i, r in enumerate(rows):
        vid = r["video_id"]
        rng = np.random.default_rng([seed, i])
        maps = {"tcav": r["scores"], "causal": causal_scores(r["concepts"], causal),
                "random": rng.uniform(0, 1, len(r["supervoxel_ids"])).tolist()}
        for name, values in maps.items():
            imp = importance_map(volumes[vid], r["supervoxel_ids"], values)
            out = found.setdefault((r["target_class"], r["layer"]), {})
            for metric, value in (("pointing_game", pointing_game(imp, tubes[vid])),
                                  ("top_share_iou", top_share_iou(imp, tubes[vid], seed + i))):
                if not np.isnan(value):
                    out.setdefault(f"{metric}_{name}", []).append(value)
    return {kl: {name: round(float(np.mean(v)), 3) for name, v in by.items()} for kl, by in found.items()}


# --- concepts planted from the truth (user concepts with a known answer) --------------------

def planted_concepts(
    volumes: dict[str, np.ndarray],
    tube: Callable[[str], np.ndarray],
    supervoxels: dict[str, Sequence[int]],
    target_class: str,
    actor_at_least: float = 0.5,
) -> list[dict[str, Any]]:
    """Rows of a user concept table (`pipeline.concepts.user`) for one class from its videos'
    truth: "actor", the supervoxels with at least `actor_at_least` of their voxels in the actor
    tube, and "background", those with none. `supervoxels[vid]`: the video's kept supervoxel ids."""
    from pipeline.segmentation.supervoxels import supervoxel_mask

    rows = []
    for vid, ids in supervoxels.items():
        inside = tube(vid)
        for sid in ids:
            share = inside_fraction(supervoxel_mask(volumes[vid], int(sid)), inside)
            name = "actor" if share >= actor_at_least else "background" if share == 0 else None
            if name:
                rows.append(
                    {
                        "concept": name,
                        "video_id": vid,
                        "supervoxel_id": int(sid),
                        "target_class": target_class,
                    }
                )
    return rows


def planted_table(
    folder: Any, truth_root: str, per_class: int = 4, random_members: int = 40, seed: int = 0
) -> list[dict[str, Any]]:
    """A user concept table planted from a finished synthetic run's truth: per class, "actor"
    and "background" (`planted_concepts`) from its first `per_class` discovery videos (by id;
    the concepts stage's split, so deletion measures them on videos they were not drawn from),
    and one "random" concept of every class, `random_members` kept supervoxels drawn (seeded)
    from all videos. `folder`: the run's RunFolder (activated, with its run.json)."""
    import pyarrow.compute as pc

    from pipeline import io
    from pipeline.concepts.explain import split_videos
    from pipeline.run_names import PREDICTIONS, RUN_JSON, SUPERVOXELS

    split = io.read_json(folder.path(RUN_JSON))["config"]["concepts"]
    pred = folder.read(PREDICTIONS, columns=["video_id", "label", "label_index"]).to_pylist()
    clips = {
        r["video_id"]: r
        for r in folder.read_videos(
            ["video_id", "clip_frame_indices", "clip_height", "clip_width"]
        ).to_pylist()
    }
    kept = folder.read(
        SUPERVOXELS, columns=["video_id", "supervoxel_id"], filter=pc.field("status") == "kept"
    )
    ids: dict[str, list[int]] = {}
    for vid, sid in zip(
        kept.column("video_id").to_pylist(), kept.column("supervoxel_id").to_pylist()
    ):
        ids.setdefault(vid, []).append(int(sid))
    rows: list[dict[str, Any]] = []
    for k in sorted({r["label"] for r in pred if r["label"] is not None}):
        mine = [r["video_id"] for r in pred if r["label"] == k and r["label_index"] >= 0]
        discovery, _ = split_videos(mine, split["discovery_fraction"], split["seed"])
        videos = sorted(v for v in discovery if v in ids)[:per_class]
        volumes = folder.label_volumes(videos)
        rows += planted_concepts(
            volumes,
            lambda v: video_actor_tube(truth_root, clips[v], 3),
            {v: ids[v] for v in videos},
            k,
        )
    pool = [(v, s) for v in sorted(ids) for s in ids[v]]
    for i in np.random.default_rng(seed).choice(
        len(pool), min(random_members, len(pool)), replace=False
    ):
        rows.append(
            {
                "concept": "random",
                "video_id": pool[i][0],
                "supervoxel_id": pool[i][1],
                "target_class": None,
            }
        )
    return rows
