"""The run's report a person reads: `report/index.html` under the run folder.

`build` reads one class's rows from the run folder and writes its section (or its own page),
`section` turns one class into its section and images (a pure function): per layer the lead
(`lead`: which ranking holds under deletion, and the concepts that matter by it), then the
diagnostics; `images` draws the pictures, `page` lays out the index and a class's page, `params`
holds the settings; the report stage (`pipeline.stages.report`) fans the classes out over Ray
tasks; `ace3d report run_dir=...` (`pipeline.commands.report`) remakes a finished run's report.
"""
