"""The command lines: `ace3d` (`commands.cli`: the commands, their help, the `python -m` forms)
and the two that read finished runs, `ace3d atlas query ...` (`commands.atlas`) and `ace3d report
...` (`commands.report`); each module's `main(argv)` returns the exit code (0, or 2 with
`error: ...` on stderr)."""
