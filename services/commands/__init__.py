"""Extra `stylecast` sub-commands: each module here defines `register(app: typer.Typer)`.

`services/cli.py` registers every module of this package at import, so a command lives beside the
code it drives and adding one never touches the CLI module.
"""
