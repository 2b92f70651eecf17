"""Starting the emulator: the ``emulate`` command, profiles and flags, and the child-process helper."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import replicate
from click.testing import CliRunner

from ai_pipeline.dev.emulator import IMAGE_MODEL, IMAGE_MODEL_VERSION, emulator_process
from ai_pipeline.dev.emulator.cli import config_from_options, emulate


def test_flags_override_the_profile_which_overrides_defaults(tmp_path: Path) -> None:
    profile = tmp_path / "faults.json"
    profile.write_text(json.dumps({"predict_seconds": 3, "http_error_rates": {"get": 0.2}, "seed": 4}))

    config = config_from_options(
        str(profile),
        {"predict_seconds": 0.5, "http_error_rates": ("create=0.1",), "rate_limits_enabled": False},
    )

    assert config.predict_seconds == 0.5
    assert config.http_error_rates == {"create": 0.1, "get": 0.2, "other": 0.0}
    assert config.seed == 4
    assert config.rate_limits_enabled is False
    assert config.output_ttl == 3600


def test_emulate_rejects_an_unknown_knob_in_the_profile(tmp_path: Path) -> None:
    profile = tmp_path / "bad.json"
    profile.write_text(json.dumps({"predict_second": 3}))

    result = CliRunner().invoke(emulate, ["--profile", str(profile)])

    assert result.exit_code == 2
    assert "predict_second" in result.output


def test_emulate_help_lists_the_knobs() -> None:
    result = CliRunner().invoke(emulate, ["--help"])

    assert result.exit_code == 0
    for flag in (
        "--port",
        "--profile",
        "--seed",
        "--output-ttl",
        "--predict-seconds",
        "--no-rate-limits",
        "--token",
    ):
        assert flag in result.output


def test_child_process_serves_the_official_client() -> None:
    with emulator_process(predict_seconds=0.1, predict_jitter_seconds=0, token="r8_child") as emu:
        client = replicate.Client(api_token="r8_child", base_url=emu.base_url)
        output = client.run(f"{IMAGE_MODEL}:{IMAGE_MODEL_VERSION}", input={"prompt": "from a child"})

        assert httpx.get(output, trust_env=False).headers["content-type"] == "image/png"
        assert emu.stats()["predictions_created"] == 1
        process = emu.process
    assert process is not None and process.poll() is not None  # stopped afterwards
