"""The run's report a person reads: `report/index.html` under the run folder.

`build` reads the run folder and fans the classes out over Ray tasks, `render` turns one class
into its section and images (a pure function), `images` draws the pictures, `page` lays out
the page; `python -m pipeline.report run_dir=...` remakes a finished run's report.
"""
