"""The report's pages: index.html (the overview table, the classes' sections or links to
their pages, the failed videos), a class's own page (classes/<n>-<class>.html, when the run has
more classes than `report.class_pages`), and the style they share."""

from __future__ import annotations

from typing import Any, Optional

from pipeline.report.lead import HOLDS
from pipeline.report.render import ClassSection, esc, fmt, slug

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1c2833;
background:#f4f6f7}header.top{background:#1c2833;color:#fff;padding:18px 28px}
header.top h1{margin:0 0 4px;font-size:22px}header.top p{margin:2px 0;color:#d5dbdb}
main{padding:8px 28px 40px}nav a{margin-right:12px}
h2{border-bottom:2px solid #1c2833;padding-bottom:4px;margin-top:32px}h3{margin:22px 0 4px}
.meta{color:#566573;margin:4px 0}.warn{color:#b03a2e;font-weight:600}
.cards,.tiles{display:flex;flex-wrap:wrap;gap:12px}
.card{background:#fff;border:1px solid #d5d8dc;border-radius:6px;padding:10px 12px;width:400px}
.lead{background:#fff;border-left:5px solid #1e8449;padding:4px 14px 12px;margin:12px 0}
.lead.weak{border-left-color:#b03a2e}.lead.untested{border-left-color:#7f8c8d}
.lead h3{margin-top:8px}.tile p{margin:2px 0 6px}
.tile{border:1px solid #d5d8dc;border-radius:6px;padding:6px 10px;width:290px}
.card.sig{border-left:5px solid #1e8449}.rank{color:#566573}
.badge{background:#1e8449;color:#fff;border-radius:3px;padding:0 5px;font-size:11px;margin-left:6px}
.badge.user{background:#6c3483}
dl{display:grid;grid-template-columns:auto 1fr;gap:1px 10px;margin:8px 0}
dt{color:#566573}dd{margin:0}
.exemplars,.heatrow{display:flex;gap:8px;flex-wrap:wrap}figure{margin:0;text-align:center}
figure img{width:124px;height:124px;image-rendering:auto;border-radius:3px;background:#000}
.heatrow figure img{width:168px;height:168px}
figcaption{font-size:11px;color:#566573;max-width:168px;overflow-wrap:anywhere}
.curves{display:flex;gap:16px;align-items:flex-start;flex-wrap:wrap}
img.plot{max-width:100%;background:#fff;border:1px solid #d5d8dc}
table{border-collapse:collapse;background:#fff;margin:8px 0}table.auc{max-width:340px}
td,th{border:1px solid #d5d8dc;padding:3px 8px;text-align:right}th{background:#eaeded}
td:first-child,th:first-child,td:nth-child(2){text-align:left}
table.overview td:nth-child(3),table.overview td:nth-child(4){text-align:left}
caption{caption-side:bottom;font-size:12px;color:#566573;text-align:left;padding-top:4px}
code{font-size:13px}dl.legend{font-size:12px;max-width:1100px}summary{color:#566573;cursor:pointer}
"""
FAILED_SHOWN = 500  # failed videos listed on the page (a corpus of junk files would make it huge)
# The overview's short headers and what each means (the legend under the table)
COLUMNS = [
    ("class", "the class; its link opens its section"),
    ("layer", "the explained layer"),
    (
        "ranking",
        "the ranking its section leads with (causal importance or TCAV) and whether it held "
        "under deletion: its top concepts deleted first take the class away sooner",
    ),
    (
        "concepts that matter",
        "the first concepts by that ranking (significant by TCAV, or with a "
        "positive causal importance)",
    ),
    ("n", "concepts accepted"),
    ("sig.", "of them significant by TCAV"),
    ("stab.", "mean stability: the share of resamples a concept reappears in"),
    ("ρ", "Spearman correlation of the TCAV and causal rankings"),
    (
        "top-1 drop",
        "accuracy drop from deleting the top concept beyond a random concept's: causal "
        "order (TCAV order); the most any single concept gives",
    ),
    (
        "x-fit top-1",
        "the same, causal order cross-fitted (each half of the scoring videos ordered "
        "by the other half)",
    ),
    ("del. top", "deletion AUC (accuracy), causal order, most important first"),
    ("del. bottom", "the same, least important first"),
    (
        "x-fit gap",
        "cross-fitted deletion AUC gap, top minus bottom, in accuracy; in class probability "
        "(95% interval over videos; below zero: the top concepts take the class away sooner)",
    ),
    (
        "filled",
        "accuracy on wholly mean-filled clips (from one half on, deleting concepts can "
        "hardly take the class away: marked)",
    ),
]
CARD_LEGEND = (  # under "What the cards say" (a <details>, closed: the answer comes first)
    "On a card: <b>TCAV</b> the mean &plusmn; std over the random sets, <b>p</b> its p-value "
    "(significant after correction: the green edge); <b>magnitude</b> the graded TCAV score; "
    "<b>causal</b> the mean drop in class probability when the concept's voxels are mean-filled in "
    "the class's scoring videos (its causal rank in brackets); <b>masking</b> the same "
    "estimated by "
    "random masking; <b>stability</b> the share of resamples it reappears in; <b>CAV acc.</b> the "
    "hold-out accuracy of its CAVs; <b>randomised</b> its TCAV with the weights after the layer "
    "randomised (a check: it should fall). The clips are the members nearest the centroid, the "
    "supervoxel outlined in yellow, everything else dimmed. <b>your concept</b>: one of "
    "<code>concepts.user</code>'s, scored and tested as the discovered ones are."
)


def card_legend() -> str:
    return (f'<details><summary>What the cards say</summary><p class="meta">{CARD_LEGEND}</p>'
            "</details>")


def gap_cell(row: dict[str, Any]) -> str:
    """The overview's cross-fitted deletion gap: accuracy; class probability, each with its
    interval."""
    parts = [
        f"{fmt(g)} [{fmt(ci[0])}, {fmt(ci[1])}]"
        for g, ci in (row.get("crossfit_gap") or {}).values()
        if g is not None and ci
    ]
    return "; ".join(parts) or "–"


def class_file(index: int, target_class: str) -> str:
    """A class's page, under report/classes/ (by index: two classes may slug alike)."""
    return f"{index:04d}-{slug(target_class)[:60]}.html"


def class_href(s: ClassSection, pages: bool) -> str:
    return f"classes/{class_file(s.index, s.target_class)}" if pages else f"#class-{s.index}"


def overview_row(s: ClassSection, row: dict[str, Any], pages: bool) -> str:
    top1 = (
        f"{fmt(row['top1'][0])} ({fmt(row['top1'][1])}); at most {fmt(row['top1'][2])}"
        if row["top1"][0] is not None
        else "–"
    )
    ranking = f"{'causal' if row.get('ranking') == 'causal' else 'TCAV'}, {HOLDS[row.get('holds')]}"
    names = ", ".join(esc(c.rsplit("/", 1)[-1]) for c in row.get("lead", [])) or "–"
    filled = fmt(row["empty"])
    cells = [
        f'<a href="{class_href(s, pages)}">{esc(s.target_class)}</a>',
        esc(row["layer"]),
        ranking,
        names,
        row["concepts"],
        row["significant"],
        fmt(row.get("stability")),
        fmt(row["spearman"]),
        top1,
        fmt(row.get("crossfit_top1")),
        fmt(row["del_top"]),
        fmt(row["del_bottom"]),
        gap_cell(row),
        f'<span class="warn">{filled}</span>' if (row["empty"] or 0) >= 0.5 else filled,
    ]
    return "<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>"


def overview(sections: list[ClassSection], pages: bool) -> str:
    head = "".join(f"<th>{name}</th>" for name, _ in COLUMNS)
    rows = "".join(overview_row(s, row, pages) for s in sections for row in s.summary)
    legend = "".join(f"<dt>{name}</dt><dd>{words}</dd>" for name, words in COLUMNS)
    return (f'<table class="overview"><tr>{head}</tr>{rows}</table><details><summary>What the '
            f'columns say</summary><dl class="legend">{legend}</dl></details>')


def failed_list(failed: list[dict[str, Any]], n_failed: int) -> str:
    if not failed:
        return ""
    rows = "".join(
        f"<tr><td>{esc(v['video_id'])}</td><td>{esc(v.get('failed_stage') or '')}</td>"
        f"<td>{esc(v.get('error') or '')}</td></tr>"
        for v in failed
    )
    more = (
        f"<p class=meta>and {n_failed - len(failed)} more: videos.parquet has every one "
        "(status failed, with the reason)</p>"
        if n_failed > len(failed)
        else ""
    )
    return (
        "<h2 id=failed>Failed videos</h2><table>"
        "<tr><th>video</th><th>stage</th><th>reason</th></tr>"
        f"{rows}</table>{more}"
    )


def head(title: str) -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{esc(title)}</title>\n"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<style>{CSS}</style></head>\n"
    )


def index_html(
    run_dir: str,
    c: dict[str, Any],
    record: dict[str, Any],
    sections: list[ClassSection],
    failed: list[dict[str, Any]],
    total: int,
    atlas: bool = False,
    n_failed: Optional[int] = None,
    pages: bool = False,
) -> str:
    """The index page: `failed` the failed videos' rows of videos.parquet (the first
    `FAILED_SHOWN` of `n_failed`), `total` the videos in; `atlas`: link the atlas page;
    `pages`: each class has its own page (else its section is on this one)."""
    n_failed = len(failed) if n_failed is None else n_failed
    model = c.get("model", {}).get("name", "?")
    dataset = c.get("dataset", {}).get("name", "?")
    stages = record.get("stages", {})
    timing = ", ".join(
        f"{esc(n)} {s.get('wall_s', 0):.0f} s" for n, s in stages.items() if isinstance(s, dict)
    )
    nav = " ".join(f'<a href="{class_href(s, pages)}">{esc(s.target_class)}</a>' for s in sections)
    return (
        head(f"3D ACE report: {dataset} / {model}")
        + f"""<body><header class="top"><h1>3D ACE: spatio-temporal concepts of {esc(model)} on \
{esc(dataset)}</h1>
<p>{total} videos ({total - n_failed} ok, {n_failed} failed) &middot; {len(sections)} classes
&middot; run started {esc(record.get("started", "?"))} &middot; {timing}</p>
<p>run folder <code>{esc(run_dir)}</code></p></header>
<main><nav>{'<a href="atlas.html">global concept atlas</a> · ' if atlas else ""}classes: {nav}\
{' · <a href="#failed">failed videos</a>' if failed else ""}</nav>
<h2>Overview</h2>
<p class="meta">Per class and layer: the ranking of its concepts that holds under deletion and
the concepts that matter by it, then the figures behind it. The tables: concepts.parquet,
concept_importance.parquet, metrics/, evaluation/.</p>
{overview(sections, pages)}
{"" if pages else card_legend()}
{"".join("" if pages else s.html for s in sections)}
{failed_list(failed, n_failed)}
<p class="meta">Made by <code>ace3d report run_dir={esc(run_dir)}</code>.</p>
</main></body></html>
"""
    )


def class_page(section_html: str, target_class: str, dataset: str, model: str, atlas: bool) -> str:
    """A class's own page (in report/classes/): its section, the card legend, links back."""
    links = '<a href="../index.html">&larr; all classes</a>' + (
        ' · <a href="../atlas.html">global concept atlas</a>' if atlas else ""
    )
    return (
        head(f"3D ACE report: {target_class} ({dataset} / {model})")
        + f"""<body><header class="top"><h1>{esc(target_class)}</h1>
<p>3D ACE: spatio-temporal concepts of {esc(model)} on {esc(dataset)}</p></header>
<main><nav>{links}</nav>{card_legend()}
{section_html}
</main></body></html>
"""
    )
