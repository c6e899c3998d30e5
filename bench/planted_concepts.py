"""User concepts with a known answer: plant "actor", "background" and "random" concepts in a
finished synthetic run from its truth, explain them beside the discovered concepts, and print
where they land.

    python bench/planted_concepts.py outputs/synthetic-demo [--per-class 4]

Per class, "actor" is the kept supervoxels of its first `--per-class` discovery videos (the
concepts stage's split) with at least half their voxels on the actor (dilated 3 px),
"background" those with none, and "random" 40 kept supervoxels of any video
(`pipeline.evaluation.ground_truth.planted_table`). The run is resumed in place with
`concepts.user` (the concepts, atlas, evaluate and report stages run again; the supervoxels and
activations are reused). Prints, per (class, layer), each planted concept's mean TCAV score,
whether it is significant, its rank by TCAV and by causal importance among the pair's concepts,
and its causal importance; the last line counts the pairs in which the actor concept's causal
importance is above both others' and those in which TCAV's significance tells the actor from
the random concept."""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir")
    ap.add_argument("--per-class", type=int, default=4)
    a = ap.parse_args()

    import pyarrow as pa
    import pyarrow.parquet as pq
    from omegaconf import OmegaConf

    from pipeline import io
    from pipeline.api import open_run
    from pipeline.concepts.user import USER_RULE
    from pipeline.config import Config, register_configs
    from pipeline.evaluation.ground_truth import planted_table
    from pipeline.job import run_job
    from pipeline.run_folder import RUN_JSON, RunFolder

    run_dir = os.path.abspath(a.run_dir)
    record = io.read_json(os.path.join(run_dir, RUN_JSON))
    c = record["config"]
    if c["dataset"]["kind"] != "synthetic":
        print(
            f"error: {run_dir} is not a run over the synthetic corpus (no truth to plant from)",
            file=sys.stderr,
        )
        return 2
    planted = os.path.join(run_dir + "-planted.parquet")
    rows = planted_table(
        RunFolder(run_dir, "planting"), c["dataset"]["root"], per_class=a.per_class
    )
    pq.write_table(pa.Table.from_pylist(rows), planted)
    register_configs()
    cfg = OmegaConf.merge(
        OmegaConf.structured(Config), {k: v for k, v in c.items() if k != "hydra"}
    )
    cfg.concepts.user = planted
    run_job(cfg)

    concepts = open_run(run_dir).concepts
    concepts["causal_rank"] = (
        concepts.groupby(["target_class", "layer"])
        .causal_importance.rank(ascending=False, method="min")
        .astype(int)
    )
    pairs = concepts.groupby(["target_class", "layer"])
    causal_right = tcav_right = 0
    print(
        f"{'class':10} {'layer':8} {'concept':11} {'TCAV':>5} {'sig':>4} {'rank':>6} {'causal rank':>12} "
        f"{'causal':>8}"
    )
    for (k, layer), group in pairs:
        mine = group[group.rule == USER_RULE].set_index(
            group[group.rule == USER_RULE].concept.str.split("/user:").str[1]
        )
        for name, r in mine.iterrows():
            print(
                f"{k:10} {layer:8} {name:11} {r.tcav_mean:5.2f} {'*' if r.significant else '':>4} "
                f"{r['rank']:>3}/{len(group):<2} {r.causal_rank:>8}/{len(group):<3} {r.causal_importance:8.4f}"
            )
        causal_right += bool(
            mine.causal_importance["actor"]
            > max(mine.causal_importance["background"], mine.causal_importance["random"])
        )
        tcav_right += bool(mine.significant["actor"] and not mine.significant["random"])
    print(
        f"pairs={pairs.ngroups} actor_causal_above_both={causal_right} "
        f"tcav_actor_significant_random_not={tcav_right}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
