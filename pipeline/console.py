"""What the job prints: the per-class concept table, the evaluation figures, the summary."""

from __future__ import annotations

import logging

from typing import Any

from pipeline import io
from pipeline.run_folder import RUN_JSON


def concept_table(concepts: list[dict[str, Any]], class_info: dict[str, dict[str, Any]], top: int = 3) -> list[str]:
    """The short per-class table the job prints: top concepts by mean TCAV score."""
    lines = []
    for k, info in class_info.items():
        flag = "" if info["recognised"] else "  << not significantly above chance"
        lines.append(f"{k}: model accuracy {info['scoring_accuracy']:.2f} on {info['scoring_videos']} scoring videos"
                     f"{flag}")
        for layer, li in info.get("layers", {}).items():
            rows = sorted((r for r in concepts if r["target_class"] == k and r["layer"] == layer),
                          key=lambda r: r["rank"])
            lines.append(f"  {layer}: {li['concepts']} concepts, {li['significant']} significant "
                         f"(random baseline {li['random_baseline_mean']:.2f})")
            gt = li.get("ground_truth")
            if gt and "actor_concept" in gt:
                lines.append(f"    ground truth: actor concept {gt['actor_concept'].rsplit('/', 1)[-1]} "
                             f"({gt['actor_fraction']:.2f} of its voxels on the actor) is #{gt['actor_concept_rank']}, "
                             f"TCAV {gt['actor_concept_tcav']:.2f}, p={gt['actor_concept_p_value']:.1e}; "
                             f"importance mass on the actor {gt['importance_mass_in_actor_tube']} "
                             f"(the tube is {gt['actor_tube_volume_share']} of the volume)")
            rc = li.get("randomisation")
            if rc:
                lines.append(f"    randomisation check (weights after {layer} re-initialised): ranking Spearman "
                             f"{rc['spearman']:.2f}, mean |TCAV change| {rc['mean_abs_change']:.2f}, "
                             f"{rc['significance_changed']} significance decisions changed "
                             f"({rc['significant_before']} -> {rc['significant_after']} significant)")
            for r in rows[:top]:
                lines.append(f"    #{r['rank']} {r['concept'].rsplit('/', 1)[-1]:<10} TCAV {r['tcav_mean']:.2f} "
                             f"+- {r['tcav_std']:.2f}  p={r['p_value']:.1e}{' *' if r['significant'] else '  '}  "
                             f"size {r['size']} from {r['num_videos']} videos")
    return lines


def gap_text(s: dict[str, Any]) -> str:
    """The cross-fitted deletion gap, top-first minus bottom-first area, with its interval."""
    if s.get("crossfit_causal_deletion_prob_auc_gap") is None:
        return ""
    def gap(w: str) -> str:
        low, high = s[f"crossfit_causal_deletion_{w}auc_gap_ci95"]
        return f"{s[f'crossfit_causal_deletion_{w}auc_gap']:.2f} [{low:.2f}, {high:.2f}]"

    return "; gap top - bottom " + ", ".join(
        f"{gap(w)} in {name}" for w, name in (("", "accuracy"), ("prob_", "probability"))) + " (95% over videos)"


def evaluation_table(summary: dict[str, dict[str, Any]]) -> list[str]:
    """The lines the job prints per (class, layer) after the evaluate stage."""
    lines = []
    for k, layers in summary.items():
        for layer, s in layers.items():
            def drop(name: str) -> str:
                v = s.get(name)
                return "n/a" if v is None else f"{v:.2f}"

            lines.append(f"{k}/{layer}: TCAV-causal Spearman {s['spearman_tcav_causal']:.2f}; top-1 deletion lowers "
                         f"accuracy by {drop('causal_top1_deletion_accuracy_drop_vs_random')} more than a random "
                         f"concept (causal order; TCAV order {drop('tcav_top1_deletion_accuracy_drop_vs_random')}; "
                         f"at most {drop('best_single_concept_top1_deletion_accuracy_drop_vs_random')} for any "
                         "single concept); "
                         f"deletion AUC top/bottom {s['causal_deletion_auc_top']:.2f}/"
                         f"{s['causal_deletion_auc_bottom']:.2f} "
                         f"(TCAV order {s['tcav_deletion_auc_top']:.2f}/{s['tcav_deletion_auc_bottom']:.2f})"
                         + (f"; cross-fitted (each half of the scoring videos ordered by the other's causal "
                            f"importance): top-1 drop {drop('crossfit_causal_top1_deletion_accuracy_drop_vs_random')}, "
                            f"{drop('crossfit_causal_top1_share_of_bound')} of the in-sample bound, deletion AUC "
                            f"top/bottom {drop('crossfit_causal_deletion_auc_top')}/"
                            f"{drop('crossfit_causal_deletion_auc_bottom')} in accuracy, "
                            f"{drop('crossfit_causal_deletion_prob_auc_top')}/"
                            f"{drop('crossfit_causal_deletion_prob_auc_bottom')} in class probability"
                            + gap_text(s)
                            if s.get("crossfit_causal_deletion_auc_top") is not None else "")
                         + (f"; masking importance ({s['masking_masks']} random concept subsets, "
                            f"{s['masking_windows']} clips): Spearman {drop('masking_spearman_tcav')} with TCAV, "
                            f"{drop('masking_spearman_causal')} with single removal" if "masking_masks" in s else "")
                         + (f"; the model predicts the class for {s['mean_filled_clip_accuracy']:.2f} of its wholly "
                            "mean-filled clips, so deletion can hardly take it away"
                            if (s.get("mean_filled_clip_accuracy") or 0) >= 0.5 else "")
                         + (f"; importance mass on the actor {s['importance_mass_in_actor_tube_causal']} causal, "
                            f"{s.get('importance_mass_in_actor_tube_tcav')} TCAV (ground-truth reference scorings: "
                            f"{s.get('importance_mass_in_actor_tube_oracle_supervoxel_share')} scoring supervoxels by "
                            "their actor share, "
                            f"{s.get('importance_mass_in_actor_tube_oracle_actor_concepts')} scoring "
                            "actor concepts 1)"
                            if "importance_mass_in_actor_tube_causal" in s else "")
                         + (f"; on the actor, pointing game {s['pointing_game_tcav']:.2f} TCAV, "
                            f"{s['pointing_game_causal']:.2f} causal, {s['pointing_game_random']:.2f} random map; "
                            f"top-q% IoU {s['top_share_iou_tcav']:.2f} / {s['top_share_iou_causal']:.2f} / "
                            f"{s['top_share_iou_random']:.2f}" if "pointing_game_random" in s else ""))
    return lines


def print_summary(record: dict[str, Any]) -> None:
    counts = record["counts"]
    print(f"\nrun folder: {record['run_dir']}")
    retried = sum(s.get("videos_retried") or 0 for s in record["stages"].values()
                  if isinstance(s, dict) and "from_run_started" not in s)  # this run's
    print(f"videos: {counts.get('videos_in', 0)} in, {counts.get('videos_ok', 0)} ok, "
          f"{counts.get('videos_failed', 0)} failed" + (f", {retried} failed before tried again" if retried else "")
          + "  (videos.parquet)")
    if "supervoxels_kept" in counts:
        print(f"supervoxels kept: {counts['supervoxels_kept']}  (supervoxels/, label_volumes/)")
    if "concepts_found" in counts:
        print(f"concepts: {counts['concepts_found']} found, {counts['concepts_significant']} significant "
              "(concepts.parquet, concept_members/, tcav_scores/)")
        for line in record.get("concept_table", []):
            print("  " + line)
    if record["stages"].get("report", {}).get("path"):
        print(f"report: {record['stages']['report']['path']}")
    if record.get("evaluation_table"):
        print("evaluation (evaluation/; concept_importance.parquet):")
        for line in record["evaluation_table"]:
            print("  " + line)
    for name, s in record["stages"].items():
        print(f"  {name:<8} {s['wall_s']:8.1f} s" + ("  (an earlier run)" if "from_run_started" in s else ""))
    print(f"run record: {io.join(record['run_dir'], RUN_JSON)}", flush=True)


def show_progress() -> None:
    """Progress lines on stderr when nothing else shows the pipeline's log (a notebook)."""
    logger = logging.getLogger("pipeline")
    if not logger.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
