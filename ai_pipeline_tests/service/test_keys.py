"""`ai-pipeline keys create|list|revoke`: a key shown once, stored only as its hash."""

from __future__ import annotations

import re

from click.testing import CliRunner
from sqlalchemy import Engine, text

from ai_pipeline.cli import main
from ai_pipeline.service.keys import hash_key


def test_a_key_is_shown_once_stored_as_its_hash_listed_without_it_and_revoked(
    engine: Engine, database_url: str, unique: str
) -> None:
    env = {"AI_PIPELINE_DATABASE_URL": database_url}
    runner = CliRunner()
    created = runner.invoke(main, ["keys", "create", f"shop-{unique}", "--label", "web"], env=env)
    assert created.exit_code == 0, created.output
    key = re.search(r"key\s+(aip_\S+)", created.output)
    key_id = re.search(r"key id\s+(key_\S+)", created.output)
    assert key and key_id and re.search(r"webhook secret\s+whsec_\S+", created.output)
    with engine.connect() as conn:
        stored = conn.execute(
            text("SELECT key_hash FROM api_keys WHERE id = :id"), {"id": key_id[1]}
        ).scalar_one()
        assert bytes(stored) == hash_key(key[1])
        assert (
            conn.execute(
                text("SELECT count(*) FROM api_keys WHERE key_hash::text LIKE :k"), {"k": f"%{key[1]}%"}
            ).scalar_one()
            == 0
        )

    listed = runner.invoke(main, ["keys", "list", "--application", f"shop-{unique}"], env=env)
    assert key_id[1] in listed.output and "active" in listed.output and key[1] not in listed.output

    assert runner.invoke(main, ["keys", "revoke", key_id[1]], env=env).exit_code == 0
    assert (
        "revoked" in runner.invoke(main, ["keys", "list", "--application", f"shop-{unique}"], env=env).output
    )
    missing = runner.invoke(main, ["keys", "revoke", "key_nope"], env=env)
    assert missing.exit_code == 1 and "no key" in missing.output
