"""The command lines that read finished runs: `python -m pipeline.atlas query ...`
(`commands.atlas`) and `python -m pipeline.report ...` (`commands.report`); each module's
`main(argv)` returns the exit code (0, or 2 with `error: ...` on stderr)."""
