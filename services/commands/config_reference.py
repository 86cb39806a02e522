"""`stylecast config-reference`: the Markdown reference of every setting, generated from the settings model.

The committed copy lives in deploy/CONFIGURATION.md; a test fails when it differs from what this
command prints, so the document cannot drift from the code.
"""

from __future__ import annotations

from pathlib import Path

import typer

COMMITTED_PATH = Path("deploy/CONFIGURATION.md")


def render() -> str:
    from shared.settings import settings_reference

    return settings_reference()


def register(app: typer.Typer) -> None:
    @app.command("config-reference")
    def config_reference(
        output: Path = typer.Option(None, "--output", "-o", help=f"Write to this file instead of printing (e.g. {COMMITTED_PATH})."),
        check: Path = typer.Option(None, help="Compare with this file instead; exit 1 if it differs (for CI)."),
    ) -> None:
        """Print the configuration reference (every field: YAML key, environment variable, type, default)."""
        text = render()
        if check is not None:
            try:
                current = check.read_text(encoding="utf-8")
            except FileNotFoundError:
                typer.echo(f"error: {check} does not exist; write it with: stylecast config-reference -o {check}", err=True)
                raise typer.Exit(1) from None
            if current != text:
                typer.echo(f"{check} is out of date; regenerate it with: stylecast config-reference -o {check}", err=True)
                raise typer.Exit(1)
            typer.echo(f"{check} is up to date")
            return
        if output is not None:
            output.write_text(text, encoding="utf-8")
            typer.echo(f"wrote {output}", err=True)
            return
        typer.echo(text, nl=False)
