"""What a class's section of the report says first, per layer: which ranking of its concepts
holds under deletion (and why, in one sentence), and the concepts that matter by it.

A ranking holds when deleting the concepts it puts first takes the class away sooner than
deleting the ones it puts last. For causal importance the test is cross-fitted (each half of the
class's scoring videos ordered by the other half) and has a 95% interval over videos: it holds
when the whole interval of the class-probability deletion-area gap is below zero. TCAV's order is
not fitted to deletion, so its test is the plain comparison of its top-first and bottom-first
deletion areas; a saturated TCAV (most concepts tie at 0 or 1) does not hold, its order among
the ties being arbitrary. Causal is preferred when it holds (it has the interval); TCAV, the paper's
ranking, otherwise. `report.rank_by=tcav|causal` chooses instead; the sentence still says
whether the choice held.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

SHOWN = 3  # the concepts that matter shown first, per layer
HOLDS = {True: "held", False: "did not hold", None: "not tested"}  # a lead's `holds` in words
GAP = "crossfit_causal_deletion_prob_auc_gap"


@dataclass(frozen=True)
class Lead:
    ranking: str  # "tcav" or "causal": the order the section leads with
    holds: Optional[bool]  # the deletion test supports it; None: not tested (no evaluate stage)
    sentence: str  # which ranking and why, plain text
    concepts: list[dict[str, Any]]  # the concepts that matter by it, at most SHOWN
    empty: str  # what to say when `concepts` is empty


def missing(value: Any) -> bool:
    """None or NaN (pandas gives NaN where Arrow has null)."""
    return value is None or (isinstance(value, float) and math.isnan(value))


def _num(value: Optional[float]) -> str:
    return "–" if missing(value) else f"{value:.2f}".replace("-", "−")


def causal_test(ev: dict[str, Any]) -> tuple[Optional[bool], str]:
    """Whether the cross-fitted causal order holds, and its figures as words."""
    gap, lo, hi = ev.get(GAP), ev.get(f"{GAP}_ci95.0"), ev.get(f"{GAP}_ci95.1")
    if missing(gap) or missing(lo) or missing(hi):
        return None, ""
    return hi < 0, (f"a deletion-area gap of {_num(gap)} [{_num(lo)}, {_num(hi)}] in class "
                    "probability")


def tcav_test(ev: dict[str, Any]) -> tuple[Optional[bool], str]:
    """Whether TCAV's top-first deletion lowers the class probability sooner than bottom-first."""
    top, bottom = ev.get("tcav_deletion_prob_auc_top"), ev.get("tcav_deletion_prob_auc_bottom")
    if missing(top) or missing(bottom):
        return None, ""
    return top < bottom, f"deletion area {_num(top)} top-first against {_num(bottom)} bottom-first"


def choose(ev: dict[str, Any], rank_by: str, saturated: bool,
           has_causal: bool) -> tuple[str, Optional[bool], str]:
    """The ranking a layer leads with, whether it held, and the sentence saying so. A saturated
    TCAV (most concepts tie at 0 or 1) never holds: its order among the ties is arbitrary."""
    causal_ok, causal_words = causal_test(ev)
    tcav_ok, tcav_words = tcav_test(ev)
    if causal_ok is None and tcav_ok is None:
        wants_causal = rank_by == "causal" or (rank_by == "auto" and saturated)
        ranking = "causal" if has_causal and wants_causal else "tcav"
        return ranking, None, (f"Ranked by {_name(ranking)}; no deletion test checked it: "
                               "the evaluate stage has not run.")
    if rank_by in ("tcav", "causal") and (rank_by == "tcav" or has_causal):
        ok, words = (tcav_ok, tcav_words) if rank_by == "tcav" else (causal_ok, causal_words)
        verdict = ("no deletion test checked it" if ok is None
                   else f"it {'holds' if ok else 'does not hold'} under deletion ({words})")
        return rank_by, ok, f"Ranked by {_name(rank_by)}, as report.rank_by asks; {verdict}."
    if causal_ok and has_causal:
        return "causal", True, (
            "Ranked by causal importance: deleting the concepts it puts first (ordered on the "
            "other half of the scoring videos) lowers the class probability sooner than "
            f"deleting them last, {causal_words}.")
    if tcav_ok and not saturated:
        return "tcav", True, (
            "Ranked by TCAV: deleting its top concepts first lowers the class probability "
            f"sooner ({tcav_words}); the causal order's cross-fitted test is not below zero"
            + (f" ({causal_words})." if causal_words else "."))
    ranking = "causal" if saturated and has_causal else "tcav"
    tcav_why = ("TCAV ties at 0 or 1 for most concepts, so its order among them is arbitrary"
                if saturated else f"TCAV: {tcav_words or 'untested'}")
    causal_why = (f"causal: {causal_words}, but not every concept has a causal importance"
                  if causal_ok else f"causal: {causal_words or 'untested'}")
    return ranking, False, (f"Neither ranking holds under deletion here ({tcav_why}; "
                            f"{causal_why}): shown by {_name(ranking)}, read them as candidates.")


def _name(ranking: str) -> str:
    return "causal importance" if ranking == "causal" else "TCAV (the paper's ranking)"


def lead(rows: list[dict[str, Any]], ev: dict[str, Any], rank_by: str) -> Lead:
    """A layer's lead from its concepts (concepts.parquet rows, the causal importance joined;
    None or NaN where the evaluate stage has not given one) and its evaluate figures (`ev`,
    empty when the stage has not run)."""
    from pipeline.report.render import saturated_tcav

    rows = sorted(rows, key=lambda r: r["rank"])
    has_causal = bool(rows) and not any(missing(r.get("causal_importance")) for r in rows)
    ranking, holds, sentence = choose(ev, rank_by, bool(saturated_tcav(rows)), has_causal)
    if ranking == "causal":
        shown = sorted((r for r in rows if r["causal_importance"] > 0),
                       key=lambda r: -r["causal_importance"])
        empty = "no concept's deletion lowers the class probability at this layer"
    else:
        shown = [r for r in rows if r["significant"]]
        empty = f"none of its {len(rows)} concepts is significant by TCAV at this layer"
    return Lead(ranking, holds, sentence, shown[:SHOWN], empty)
