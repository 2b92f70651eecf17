"""One settings model: documented in the README as declared, every bad value refused in one line naming
its variable, secrets masked, `.env` read from the working directory only."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ai_pipeline.settings import Settings, SettingsError, configuration_table

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_the_readme_configuration_table_is_the_one_generated_from_the_settings() -> None:
    readme = (REPO_ROOT / "README.md").read_text()
    assert configuration_table() in readme, "README is out of date: paste `python -m ai_pipeline.settings`"


@pytest.mark.parametrize(
    ("variable", "value", "says"),
    [
        ("AI_PIPELINE_MAX_IN_FLIGHT", "0", "greater than or equal to 1"),
        ("AI_PIPELINE_MAX_IN_FLIGHT", "-1", "greater than or equal to 1"),
        ("AI_PIPELINE_CREATES_PER_MINUTE", "0", "greater than or equal to 1"),
        ("AI_PIPELINE_LEASE_SECONDS", "-5", "greater than or equal to 1"),
        ("AI_PIPELINE_SYNC_WAIT_SECONDS", "61", "less than or equal to 60"),
        ("AI_PIPELINE_OUTPUT_TIMEOUT_SECONDS", "soon", "valid number"),
    ],
)
def test_a_bad_value_is_refused_in_one_line_naming_its_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, says: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError) as refused:
        Settings.from_env()
    message = str(refused.value)
    assert message.startswith(f"{variable}={value!r}: ") and says in message
    assert "\n" not in message


def test_the_token_is_masked_in_reprs_and_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REPLICATE_API_TOKEN", "r8_very_secret")
    monkeypatch.setenv("AI_PIPELINE_MAX_ATTEMPTS", "none")
    with pytest.raises(SettingsError) as refused:
        Settings.from_env()
    assert "r8_very_secret" not in str(refused.value)
    monkeypatch.delenv("AI_PIPELINE_MAX_ATTEMPTS")
    settings = Settings(replicate_api_token="r8_very_secret")
    assert "r8_very_secret" not in repr(settings) and settings.token == "r8_very_secret"


def test_dotenv_is_read_from_the_working_directory_and_never_from_a_parent(tmp_path: Path) -> None:
    parent, child = tmp_path, tmp_path / "work"
    child.mkdir()
    (parent / ".env").write_text("REPLICATE_BASE_URL=http://parent.invalid\n")
    script = "from ai_pipeline.settings import Settings; print(Settings.from_env().replicate_base_url)"
    env = {k: v for k, v in os.environ.items() if k != "REPLICATE_BASE_URL"}
    run = subprocess.run([sys.executable, "-c", script], cwd=child, env=env, capture_output=True, text=True)
    assert run.stdout.strip() == "https://api.replicate.com", run.stderr

    (child / ".env").write_text("REPLICATE_BASE_URL=http://here.invalid\nAI_PIPELINE_MAX_IN_FLIGHT=7\n")
    run = subprocess.run([sys.executable, "-c", script], cwd=child, env=env, capture_output=True, text=True)
    assert run.stdout.strip() == "http://here.invalid", run.stderr

    real = {**env, "REPLICATE_BASE_URL": "http://real.invalid"}
    run = subprocess.run([sys.executable, "-c", script], cwd=child, env=real, capture_output=True, text=True)
    assert run.stdout.strip() == "http://real.invalid", run.stderr


def test_the_cli_stops_at_a_bad_setting_with_one_line_and_exit_code_1(tmp_path: Path) -> None:
    env = {**os.environ, "AI_PIPELINE_MAX_IN_FLIGHT": "0"}
    cli = Path(sys.executable).with_name("ai-pipeline")
    run = subprocess.run([str(cli), "status"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert run.returncode == 1
    assert (
        run.stderr.strip()
        == "Error: AI_PIPELINE_MAX_IN_FLIGHT='0': Input should be greater than or equal to 1"
    )


def test_comma_separated_output_hosts_become_a_tuple(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AI_PIPELINE_OUTPUT_HOSTS", " cdn.example.com, *.delivery.example ,127.0.0.1:8787")
    assert Settings.from_env().output_hosts == ("cdn.example.com", "*.delivery.example", "127.0.0.1:8787")
