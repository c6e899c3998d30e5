"""The report of a many-class run, side by side in one process: the index with a page per class
(what the report stage writes past `report.class_pages` classes) against one page holding every
class's section (what it writes below), for a run of N classes.

    .venv/bin/python bench/report_index.py RUN_DIR [--classes 400]

RUN_DIR: a finished run whose report was made on one page (`make demo` writes one). Its
classes' sections and overview rows (the report stage's records) are repeated, renamed, until
there are N classes, and both pages are written into RUN_DIR/report/ (so their images resolve),
measured, opened in Chromium when it is installed (seconds to the load event), and removed.
The last line is `index_size_ratio=<one page / index bytes> open_speedup=<one page / index s>`.
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import pyarrow.parquet as pq  # noqa: E402

from pipeline.report.page import index_html  # noqa: E402
from pipeline.report.render import ClassSection  # noqa: E402
from tests.browser import have_browser, load_seconds  # noqa: E402


def many_classes(run_dir: str, n: int) -> list[ClassSection]:
    """The run's report sections, repeated under new class names until there are `n`."""
    records = [
        json.loads(r)
        for f in glob.glob(os.path.join(run_dir, "_done", "report", "*.parquet"))
        for r in pq.read_table(f, columns=["record"]).column("record").to_pylist()
    ]
    records = [r for r in sorted(records, key=lambda r: r["index"]) if r.get("html")]
    if not records:
        sys.exit(
            f"{run_dir}: no report sections on one page; remake it with `ace3d report "
            f"run_dir={run_dir}` (report.class_pages at least its classes)"
        )
    out = []
    for i in range(n):
        r = records[i % len(records)]
        name = f"{r['class']}-{i:03d}"
        html = r["html"].replace(f'id="class-{r["index"]}', f'id="class-{i}')
        out.append(ClassSection(i, name, html, {}, r["summary"]))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir")
    ap.add_argument("--classes", type=int, default=400)
    a = ap.parse_args()
    sections = many_classes(a.run_dir, a.classes)
    record = json.load(open(os.path.join(a.run_dir, "run.json")))
    c = record["config"]
    report = os.path.join(a.run_dir, "report")
    paths = {
        "index": os.path.join(report, "bench-index.html"),
        "one page": os.path.join(report, "bench-one.html"),
    }
    pages = {
        "index": index_html(
            a.run_dir,
            c,
            record,
            [dataclasses.replace(s, html="") for s in sections],
            [],
            0,
            pages=True,
        ),
        "one page": index_html(a.run_dir, c, record, sections, [], 0, pages=False),
    }
    seconds = {}
    try:
        for name, page in pages.items():
            with open(paths[name], "w", encoding="utf-8") as f:
                f.write(page)
            if have_browser():
                seconds[name] = min(load_seconds(paths[name]) for _ in range(2))
            print(
                f"{name}: {len(page.encode()) / 1e6:.2f} MB, {page.count('<img')} images, "
                f"{page.count('<tr>')} table rows"
                + (
                    f", load event after {seconds[name]:.2f} s in Chromium"
                    if name in seconds
                    else ""
                )
            )
    finally:
        for p in paths.values():
            if os.path.exists(p):
                os.remove(p)
    ratio = len(pages["one page"].encode()) / len(pages["index"].encode())
    speed = seconds["one page"] / seconds["index"] if seconds else float("nan")
    print(f"index_size_ratio={ratio:.1f} open_speedup={speed:.1f}")


if __name__ == "__main__":
    main()
