"""The run's report a person reads: `report/index.html` under the run folder.

`build` reads one class's rows from the run folder and writes its section, `render` turns one
class into its section and images (a pure function), `images` draws the pictures, `page` lays
out the page; the report stage (`pipeline.stages.report`) fans the classes out over Ray tasks;
`python -m pipeline.report run_dir=...` (`pipeline.commands.report`) remakes a finished run's
report.
"""
