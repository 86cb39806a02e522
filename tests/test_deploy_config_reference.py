"""deploy/CONFIGURATION.md is exactly what `stylecast config-reference` generates from the settings model."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from services.cli import app
from shared.settings import Settings, env_var_name, settings_reference

REPO = Path(__file__).resolve().parents[1]
COMMITTED = REPO / "deploy" / "CONFIGURATION.md"
REGENERATE = "stylecast config-reference -o deploy/CONFIGURATION.md"


def test_committed_reference_matches_the_settings_model() -> None:
    assert COMMITTED.read_text(encoding="utf-8") == settings_reference(), f"deploy/CONFIGURATION.md is stale: run `{REGENERATE}`"


def test_reference_names_every_field_and_its_variable() -> None:
    text = COMMITTED.read_text(encoding="utf-8")
    for section in ("model", "engine", "ingest", "service"):
        model = Settings.model_fields[section].annotation
        for field in model.model_fields:
            assert f"`{section}.{field}`" in text and f"`{env_var_name((section, field))}`" in text, (section, field)


def test_command_prints_writes_and_checks(tmp_path: Path) -> None:
    runner = CliRunner()
    printed = runner.invoke(app, ["config-reference"])
    assert printed.exit_code == 0 and printed.stdout == settings_reference()

    out = tmp_path / "CONFIGURATION.md"
    assert runner.invoke(app, ["config-reference", "-o", str(out)]).exit_code == 0
    assert out.read_text(encoding="utf-8") == settings_reference()
    assert runner.invoke(app, ["config-reference", "--check", str(out)]).exit_code == 0

    out.write_text(settings_reference().replace("Batch size B", "Batch size"), encoding="utf-8")
    stale = runner.invoke(app, ["config-reference", "--check", str(out)])
    assert stale.exit_code == 1 and "out of date" in stale.stderr
    missing = runner.invoke(app, ["config-reference", "--check", str(tmp_path / "nope.md")])
    assert missing.exit_code == 1 and "does not exist" in missing.stderr
