"""The report a person reads (report/index.html), opened from disk in a real headless
Chromium: no console errors, every image it references exists and decodes, the page is not
blank; and `python -m pipeline.report` remakes it."""

from __future__ import annotations

import io
import os
import re
from html.parser import HTMLParser

import numpy as np
import pyarrow.parquet as pq
import pytest

from tests.browser import have_browser, open_page
from tests.conftest import call_main, run_cli


class _Sources(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.sources: list[str] = []
        self.links: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag in ("img", "video", "source") and a.get("src"):
            self.sources.append(a["src"])
        if tag in ("a", "link", "script") and (a.get("href") or a.get("src")):
            self.links.append(a.get("href") or a.get("src"))


def page_sources(path: str) -> _Sources:
    parser = _Sources()
    parser.feed(open(path, encoding="utf-8").read())
    return parser


def check_in_browser(index: str, images: bool = True) -> None:
    if not have_browser():
        pytest.fail("the report test needs Debian's chromium and chromium-driver: `make test` installs them")
    page = open_page(index)
    assert page.console_errors == []
    assert (page.images > 0) == images and page.broken_images == []
    assert page.title.startswith("3D ACE report")
    from PIL import Image

    shot = np.asarray(Image.open(io.BytesIO(page.screenshot)).convert("RGB"))
    assert shot.shape[0] > 500 and shot.shape[1] > 1000
    assert shot.std() > 20 and len(np.unique(shot.reshape(-1, 3), axis=0)) > 200  # not blank


def test_the_default_job_writes_a_report_that_opens_in_a_browser(small_run):
    out = small_run["out"]
    index = os.path.join(out, "report", "index.html")
    assert os.path.isfile(index)
    parsed = page_sources(index)
    # everything it references is a relative file of the report: no server, no network
    assert parsed.sources and all(not re.match(r"^[a-z]+:", s) and not s.startswith("/") for s in parsed.sources)
    assert all(link.startswith("#") or link == "atlas.html" for link in parsed.links)  # the atlas page beside it
    for src in parsed.sources:
        assert os.path.isfile(os.path.join(out, "report", src)), src
    concepts = pq.read_table(os.path.join(out, "concepts.parquet")).to_pandas()
    text = open(index, encoding="utf-8").read()
    for k in concepts.target_class.unique():  # every class, every concept of it as a card
        assert f">{k}</h2>" in text
    cards = text.count('<article class="card')
    max_concepts = small_run["record"]["config"]["report"]["max_concepts"]
    assert cards == sum(min(len(g), max_concepts) for _, g in concepts.groupby(["target_class", "layer"]))
    # per (class, layer): exemplar clips (animated), curves, heat maps
    webp = [s for s in parsed.sources if s.endswith(".webp")]
    pairs = concepts.groupby(["target_class", "layer"]).ngroups
    assert len(webp) >= cards and sum(s.endswith("curves.png") for s in parsed.sources) == pairs
    from PIL import Image

    anim = Image.open(os.path.join(out, "report", webp[0]))
    clip = small_run["record"]["config"]["clip"]
    assert anim.n_frames == clip["num_frames"] and anim.size == (clip["width"], clip["height"])
    assert "significant" in text and "causal importance" in text
    # each class leads with its answer: per layer with concepts, the ranking that holds and its
    # concepts that matter, before that class's diagnostics; the overview's headers are short
    for k, group in concepts.groupby("target_class"):
        section = text.split(f">{k}</h2>", 1)[1].split('<section class="class"', 1)[0]
        leads = re.findall(r'<div class="lead[^"]*"><h3>Layer <code>([^<]+)</code>', section)
        assert leads == list(dict.fromkeys(group.layer))
        assert section.index("lead") < section.index("diagnostics")
        sentences = re.findall(r"</h3><p>([^<]+)", section)
        assert sentences and all(("Ranked by" in p or "Neither ranking" in p) for p in sentences)
    table = text.split('<table class="overview">', 1)[1].split("</table>")[0]
    headers = re.findall(r"<th>([^<]+)</th>", table)
    assert len(headers) >= 10 and max(map(len, headers)) <= 20
    assert all(f"<dt>{h}</dt>" in text for h in headers)  # the legend explains each
    record = small_run["record"]
    from pipeline.report.render import fmt

    # the overview's cross-fitted deletion gaps (accuracy; class probability) with their intervals
    for layers in record["stages"]["evaluate"]["classes"].values():
        for s in (s for s in layers.values() if "crossfit_causal_deletion_prob_auc_gap" in s):
            g, (lo, hi) = s["crossfit_causal_deletion_prob_auc_gap"], s["crossfit_causal_deletion_prob_auc_gap_ci95"]
            assert f"; {fmt(g)} [{fmt(lo)}, {fmt(hi)}]</td>" in text
    assert record["stages"]["report"]["assets"] == len(set(parsed.sources))
    check_in_browser(index)


def test_the_report_command_remakes_it_with_other_settings(small_run, tmp_path):
    """`python -m pipeline.report` on a copy of the run: other settings, the earlier images
    gone, a class without concepts still shown. The figures come from the run's tables
    (metrics/, the atlas's), not from run.json: emptied of them, the page still has them."""
    import json
    import shutil

    import pyarrow as pa

    from pipeline import schemas
    from pipeline.report.render import fmt

    out = str(tmp_path / "run")
    shutil.copytree(small_run["out"], out)
    record = json.load(open(os.path.join(out, "run.json")))
    record["stages"] = {name: {"wall_s": stage["wall_s"]} for name, stage in record["stages"].items()}
    json.dump(record, open(os.path.join(out, "run.json"), "w"))
    concepts = pq.read_table(os.path.join(out, "concepts.parquet"))
    # the run's concepts of one class are dropped: the class must still have its section
    filtered = concepts.filter(pa.compute.not_equal(concepts.column("target_class"), "retreat"))
    pq.write_table(filtered, os.path.join(out, "concepts.parquet"))
    digest = {"concepts": schemas.concepts_digest(filtered)}  # as if evaluate and the atlas had seen these
    for name in ("concept_importance.parquet", "metrics/evaluate.parquet"):
        path = os.path.join(out, name)
        pq.write_table(pq.read_table(path).replace_schema_metadata(digest), path)
    manifest = json.load(open(os.path.join(out, "atlas", "atlas.json")))
    json.dump({**manifest, **digest}, open(os.path.join(out, "atlas", "atlas.json"), "w"))
    kept = filtered.to_pandas()
    res = call_main(f"run_dir={out}", "report.format=gif", "report.exemplars=1", "report.max_concepts=2",
                    "report.heatmap_videos=1", "report.class_pages=0", "report.concept_videos=true",
                    module="pipeline.report")
    assert res.returncode == 0, res.stderr[-3000:]
    assert "report/index.html" in res.stdout
    index = os.path.join(out, "report", "index.html")
    # a page per class (report.class_pages=0): the index links each, each links back
    links = [a for a in page_sources(index).links if a.startswith("classes/")]
    assert len(links) == 3 + 3 * 2  # the nav and the overview's rows (3 classes, 2 layers)
    pages = sorted(set(links))
    assert len(pages) == 3 and sorted(os.listdir(os.path.join(out, "report", "classes"))) == [
        p.split("/")[1] for p in pages]
    paths = [os.path.join(out, "report", p) for p in pages]
    parsed = [page_sources(p) for p in paths]
    assert all("../index.html" in p.links for p in parsed)
    sources = {os.path.normpath(os.path.join("classes", s)) for p in parsed for s in p.sources}
    assert sources and all(s.endswith((".gif", ".png")) for s in sources)
    # report.concept_videos: each significant concept's card links its clips as an MP4
    videos = {os.path.normpath(os.path.join("classes", a)) for p in parsed for a in p.links
              if a.endswith(".mp4")}
    import av

    frames = small_run["record"]["config"]["clip"]["num_frames"]
    with av.open(os.path.join(out, "report", sorted(videos)[0])) as f:
        assert sum(1 for _ in f.decode(video=0)) == frames
    sources |= videos
    on_disk = {os.path.relpath(os.path.join(d, f), os.path.join(out, "report"))
               for d, _, fs in os.walk(os.path.join(out, "report", "assets")) for f in fs}
    assert on_disk == sources  # the WebP files of the first report are gone
    text = "".join(open(p, encoding="utf-8").read() for p in [index, *paths])
    assert text.count('<article class="card') == sum(min(len(g), 2) for _, g in kept.groupby(["target_class", "layer"]))
    cards = text.split('<article class="card')[1:]
    assert len(videos) == sum(c.startswith(' sig"') for c in cards) > 0
    assert all((".mp4" in c) == c.startswith(' sig"') for c in cards)  # the significant ones
    assert ">retreat</h2>" in text and "no concept was accepted for this class" in text
    assert text.count("model accuracy on the class's scoring videos") == 3
    for layers in small_run["record"]["stages"]["evaluate"]["classes"].values():
        for s in (s for s in layers.values() if "crossfit_causal_deletion_prob_auc_gap" in s):
            g, (lo, hi) = s["crossfit_causal_deletion_prob_auc_gap"], s["crossfit_causal_deletion_prob_auc_gap_ci95"]
            assert f"; {fmt(g)} [{fmt(lo)}, {fmt(hi)}]</td>" in text
    atlas = open(os.path.join(out, "report", "atlas.html"), encoding="utf-8").read()
    actors = small_run["record"]["stages"]["atlas"]["actor_concepts"]
    assert "Where each class's actor concept falls" in atlas
    assert all(f"<td>{a['actor_concept'].rsplit('/', 1)[-1]}</td>" in atlas
               for layers in actors.values() for a in layers.values())
    check_in_browser(index, images=False)
    check_in_browser(paths[0])
    # the same report on one page again: the class pages go
    res = call_main(f"run_dir={out}", "report.exemplars=0", "report.heatmap_videos=0", module="pipeline.report")
    assert res.returncode == 0 and os.listdir(os.path.join(out, "report", "classes")) == []


def test_the_results_page_gives_each_class_and_layer_what_the_report_leads_with(small_run,
                                                                                 tmp_path):
    """docs/demo-results.md's maker on a finished run: a row per (class, layer) with the run's
    counts and the ranking the report's overview shows."""
    from pipeline.results_page import main

    out = tmp_path / "results.md"
    assert main([small_run["out"], str(out)]) == 0
    page = out.read_text()
    concepts = pq.read_table(os.path.join(small_run["out"], "concepts.parquet")).to_pandas()
    index = open(os.path.join(small_run["out"], "report", "index.html"), encoding="utf-8").read()
    stages = [n for n, s in small_run["record"]["stages"].items() if "wall_s" in s]
    assert all(f"| {n} | " in page for n in stages)
    for (k, layer), group in concepts.groupby(["target_class", "layer"]):
        row = next(line for line in page.splitlines() if line.startswith(f"| {k} | {layer} |"))
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[3:5] == [str(len(group)), str(int(group.significant.sum()))]
        cell = rf">{re.escape(k)}</a></td><td>{re.escape(layer)}</td><td>([^<]+)</td>"
        ranking = re.search(cell, index)
        assert ranking and ranking.group(1) == cells[5]  # as the report's overview says


@pytest.mark.parametrize("args, key", [
    (["report.exemplar=2"], "exemplar"),
    (["report.format=png"], "report.format"),
    (["colour=red"], "colour"),
    ([], "run_dir"),
])
def test_the_report_command_names_a_bad_key(tmp_path, args, key):
    command = run_cli if key == "colour" else call_main  # one as a real process: exit code 2, error: on stderr
    res = command(*([f"run_dir={tmp_path}"] if args else []), *args, module="pipeline.report")
    assert res.returncode == 2 and key in res.stderr, res.stderr
    assert res.stderr.startswith("error: ")


def test_a_saturated_layer_orders_its_cards_by_causal_importance():
    from pipeline.report.render import card_order, saturated_tcav

    rows = [{"concept": c, "tcav_mean": t, "causal_importance": ci}
            for c, t, ci in (("a", 1.0, 0.1), ("b", 1.0, 0.9), ("c", 1.0, 0.5), ("d", 0.4, 0.0))]
    by_causal = sorted(rows, key=lambda r: -r["causal_importance"])
    assert saturated_tcav(rows) == 3  # three concepts tie at 1
    assert card_order(rows, by_causal, "auto", 3) == (by_causal, "causal")
    assert card_order(rows, by_causal, "tcav", 3) == (rows, "tcav")
    graded = [dict(r, tcav_mean=v) for r, v in zip(rows, (0.9, 0.8, 0.7, 0.4))]
    assert saturated_tcav(graded) == 0 and card_order(graded, by_causal, "auto", 0) == (graded, "tcav")
    assert card_order(rows, by_causal[:2], "causal", 3) == (rows, "tcav")  # no causal importance for all yet


def test_a_layer_leads_with_the_ranking_that_holds_under_deletion():
    from pipeline.report.lead import GAP, lead

    rows = [{"concept": f"k/l/concept{i}", "rank": i + 1, "significant": sig,
             "causal_importance": ci, "tcav_mean": t} for i, (sig, ci, t) in enumerate(
                 [(True, 0.01, 0.9), (True, 0.3, 0.8), (False, 0.2, 0.5), (True, -0.1, 0.3)])]
    tied = [dict(r, tcav_mean=1.0) if r["rank"] < 4 else r for r in rows]  # TCAV saturated
    causal_holds = {GAP: -0.3, f"{GAP}_ci95.0": -0.4, f"{GAP}_ci95.1": -0.2,
                    "tcav_deletion_prob_auc_top": 0.7, "tcav_deletion_prob_auc_bottom": 0.6}
    first = lead(rows, causal_holds, "auto")
    assert (first.ranking, first.holds) == ("causal", True)
    assert "−0.30 [−0.40, −0.20]" in first.sentence
    assert [r["rank"] for r in first.concepts] == [2, 3, 1]  # by causal importance, positive
    tcav_holds = {**causal_holds, f"{GAP}_ci95.1": 0.05, "tcav_deletion_prob_auc_top": 0.5}
    second = lead(rows, tcav_holds, "auto")  # the causal interval reaches zero; TCAV's areas hold
    assert (second.ranking, second.holds) == ("tcav", True) and "not below zero" in second.sentence
    assert [r["rank"] for r in second.concepts] == [1, 2, 4]  # the significant ones in TCAV's order
    neither = lead(rows, {**tcav_holds, "tcav_deletion_prob_auc_top": 0.7}, "auto")
    assert (neither.ranking, neither.holds) == ("tcav", False)
    assert neither.sentence.startswith("Neither")
    saturated = lead(tied, tcav_holds, "auto")  # TCAV's areas hold, but its ties' order is arbitrary
    assert (saturated.ranking, saturated.holds) == ("causal", False)
    assert "arbitrary" in saturated.sentence
    unscored = lead([dict(r, causal_importance=float("nan")) for r in rows], causal_holds, "auto")
    assert unscored.ranking == "tcav"
    assert "not every concept has a causal importance" in unscored.sentence
    asked = lead(rows, causal_holds, "tcav")
    assert (asked.ranking, asked.holds) == ("tcav", False) and "report.rank_by" in asked.sentence
    unmeasured = lead(rows, {k: v for k, v in causal_holds.items() if "tcav" not in k}, "tcav")
    assert unmeasured.holds is None and "no deletion test checked it" in unmeasured.sentence
    untested = lead(rows, {}, "auto")
    assert (untested.ranking, untested.holds) == ("tcav", None)
    assert "has not run" in untested.sentence
    none = lead([dict(r, significant=False) for r in rows], {}, "auto")
    assert none.concepts == [] and "none of its 4 concepts is significant" in none.empty


def test_names_that_are_math_or_alike_once_slugged_are_drawn_as_written_and_never_share_a_file():
    from pipeline.report.atlas_page import exemplar_asset
    from pipeline.report.images import curves_png, share_heatmap_png

    names = ["a$^$b", "x$\\frac$", "50$ & 10%"]
    rows = [{"kind": "point", "mode": m, "ranking": "causal", "order": "top", "k": k, "accuracy": 0.5,
             "mean_prob": 0.5} for m in ("delete", "insert") for k in (1, 2)]
    assert curves_png(rows, names[0]).startswith(b"\x89PNG")  # matplotlib would parse "$...$" as math and raise
    assert share_heatmap_png(np.ones((3, 2)), names, ["1", "2"], names[1]).startswith(b"\x89PNG")
    ids = ["walk/ü1", "walk/é1", "a/" + "x" * 60, "b/" + "x" * 60]
    assert len({exemplar_asset("layer1", v, 3, "webp") for v in ids}) == len(ids)


def test_a_corpus_of_junk_lists_its_first_failed_videos_and_counts_the_rest():
    from pipeline.report.page import FAILED_SHOWN
    from pipeline.report.page import index_html

    failed = [{"video_id": f"junk/{i:05d}", "failed_stage": "ingest", "error": "cannot open as a video"}
              for i in range(FAILED_SHOWN)]
    html = index_html("/run", {}, {}, [], failed, 10_000, n_failed=10_000)
    assert "10000 videos (0 ok, 10000 failed)" in html and f"and {10_000 - FAILED_SHOWN} more" in html
    assert html.count("<tr><td>junk/") == FAILED_SHOWN
