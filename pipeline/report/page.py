"""The report's page: the overview table, the classes' sections, the failed videos, the style."""

from __future__ import annotations

from typing import Any, Optional

from pipeline.report.render import ClassSection, esc, fmt

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1c2833;background:#f4f6f7}
header.top{background:#1c2833;color:#fff;padding:18px 28px}header.top h1{margin:0 0 4px;font-size:22px}
header.top p{margin:2px 0;color:#d5dbdb}main{padding:8px 28px 40px}nav a{margin-right:12px}
h2{border-bottom:2px solid #1c2833;padding-bottom:4px;margin-top:32px}h3{margin:22px 0 4px}
.meta{color:#566573;margin:4px 0}.warn{color:#b03a2e;font-weight:600}
.cards{display:flex;flex-wrap:wrap;gap:12px}
.card{background:#fff;border:1px solid #d5d8dc;border-radius:6px;padding:10px 12px;width:400px}
.card.sig{border-left:5px solid #1e8449}.rank{color:#566573}.badge{background:#1e8449;color:#fff;border-radius:3px;
padding:0 5px;font-size:11px;margin-left:6px}
dl{display:grid;grid-template-columns:auto 1fr;gap:1px 10px;margin:8px 0}dt{color:#566573}dd{margin:0}
.exemplars,.heatrow{display:flex;gap:8px;flex-wrap:wrap}figure{margin:0;text-align:center}
figure img{width:124px;height:124px;image-rendering:auto;border-radius:3px;background:#000}
.heatrow figure img{width:168px;height:168px}figcaption{font-size:11px;color:#566573;max-width:168px;
overflow-wrap:anywhere}.curves{display:flex;gap:16px;align-items:flex-start;flex-wrap:wrap}
img.plot{max-width:100%;background:#fff;border:1px solid #d5d8dc}
table{border-collapse:collapse;background:#fff;margin:8px 0}table.auc{max-width:340px}
td,th{border:1px solid #d5d8dc;padding:3px 8px;
text-align:right}th{background:#eaeded}td:first-child,th:first-child,td:nth-child(2){text-align:left}
caption{caption-side:bottom;font-size:12px;color:#566573;text-align:left;padding-top:4px}code{font-size:13px}
"""
FAILED_SHOWN = 500  # failed videos listed on the page (a corpus of junk files would make it huge)


def gap_cell(row: dict[str, Any]) -> str:
    """The overview's cross-fitted deletion gap: accuracy; class probability, each with its interval."""
    parts = [f"{fmt(g)} [{fmt(ci[0])}, {fmt(ci[1])}]" for g, ci in (row.get("crossfit_gap") or {}).values()
             if g is not None and ci]
    return "; ".join(parts) or "–"


def index_html(run_dir: str, c: dict[str, Any], record: dict[str, Any], sections: list[ClassSection],
               failed: list[dict[str, Any]], total: int, atlas: bool = False, n_failed: Optional[int] = None) -> str:
    """The page: `failed` the failed videos' rows of videos.parquet (the first `FAILED_SHOWN`
    of `n_failed`), `total` the videos in; `atlas`: link the atlas page (atlas.html)."""
    n_failed = len(failed) if n_failed is None else n_failed
    model = c.get("model", {}).get("name", "?")
    dataset = c.get("dataset", {}).get("name", "?")
    overview = ["<table><tr><th>class</th><th>layer</th><th>concepts</th><th>significant</th>"
                "<th>mean stability (share of resamples a concept reappears in)</th>"
                "<th>TCAV top concept</th><th>causal top concept</th><th>Spearman TCAV/causal</th>"
                "<th>top-1 deletion: accuracy drop beyond a random concept's, causal (TCAV) order; the most any "
                "single concept gives</th><th>the same, causal order cross-fitted (each half of the scoring videos "
                "ordered by the other half)</th>"
                "<th>deletion AUC, top-first causal order</th><th>deletion AUC, bottom-first causal order</th>"
                "<th>cross-fitted deletion AUC gap, top minus bottom, in accuracy; in class probability "
                "(95% interval over videos; negative: the top concepts take the class away sooner)</th>"
                "<th>accuracy on wholly mean-filled clips</th></tr>"]
    for s in sections:
        for row in s.summary:
            top1 = (f"{fmt(row['top1'][0])} ({fmt(row['top1'][1])}); at most {fmt(row['top1'][2])}"
                    if row["top1"][0] is not None else "–")
            overview.append(
                f'<tr><td><a href="#class-{s.index}">{esc(s.target_class)}</a></td><td>{esc(row["layer"])}</td>'
                f'<td>{row["concepts"]}</td><td>{row["significant"]}</td><td>{fmt(row.get("stability"))}</td>'
                f'<td>{esc((row["top_tcav"] or "–").rsplit("/", 1)[-1])}</td>'
                f'<td>{esc((row["top_causal"] or "–").rsplit("/", 1)[-1])}</td>'
                f'<td>{fmt(row["spearman"])}</td><td>{top1}</td><td>{fmt(row.get("crossfit_top1"))}</td>'
                f'<td>{fmt(row["del_top"])}</td><td>{fmt(row["del_bottom"])}</td><td>{gap_cell(row)}</td>'
                + (f'<td class="warn">{fmt(row["empty"])}</td>' if (row["empty"] or 0) >= 0.5
                   else f'<td>{fmt(row["empty"])}</td>') + '</tr>')
    overview.append("</table>")
    stages = record.get("stages", {})
    timing = ", ".join(f"{esc(n)} {s.get('wall_s', 0):.0f} s" for n, s in stages.items() if isinstance(s, dict))
    fails = ""
    if failed:
        fails = ("<h2 id=failed>Failed videos</h2><table><tr><th>video</th><th>stage</th><th>reason</th></tr>"
                 + "".join(f"<tr><td>{esc(v['video_id'])}</td><td>{esc(v.get('failed_stage') or '')}</td>"
                           f"<td>{esc(v.get('error') or '')}</td></tr>" for v in failed) + "</table>"
                 + (f"<p class=meta>and {n_failed - len(failed)} more: videos.parquet has every one "
                    "(status failed, with the reason)</p>" if n_failed > len(failed) else ""))
    nav = " ".join(f'<a href="#class-{s.index}">{esc(s.target_class)}</a>' for s in sections)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>3D ACE report: {esc(dataset)} / {esc(model)}</title>
<meta name="viewport" content="width=device-width, initial-scale=1"><style>{CSS}</style></head>
<body><header class="top"><h1>3D ACE: spatio-temporal concepts of {esc(model)} on {esc(dataset)}</h1>
<p>{total} videos ({total - n_failed} ok, {n_failed} failed) &middot; {len(sections)} classes
&middot; run started {esc(record.get("started", "?"))} &middot; {timing}</p>
<p>run folder <code>{esc(run_dir)}</code></p></header>
<main><nav>{'<a href="atlas.html">global concept atlas</a> · ' if atlas else ""}classes: {nav}\
{' · <a href="#failed">failed videos</a>' if failed else ""}</nav>
<h2>Overview</h2>
<p class="meta">Concepts are ranked by mean TCAV score (the paper's ordering); causal importance is the mean drop in
class probability when the concept's voxels are mean-filled in the class's scoring videos. Each card's clips are the
members nearest the concept's centroid, the supervoxel outlined in yellow on its source clip, everything else
dimmed. The tables: evaluation/ (curves), concepts.parquet, concept_importance.parquet.</p>
{"".join(overview)}
{"".join(s.html for s in sections)}
{fails}
<p class="meta">Made by <code>python -m pipeline.report run_dir={esc(run_dir)}</code>.</p>
</main></body></html>
"""
