"""The loaded code location matches its reviewed snapshot: an accidental change to the graph shows up here.

After an intended change, refresh the snapshot with `UPDATE_SNAPSHOT=1 pytest <this file>` and review it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

SNAPSHOT = Path(__file__).with_name("definitions_snapshot.json")


def describe_definitions() -> dict[str, Any]:
    from ai_pipeline.definitions import defs

    repo = defs.get_repository_def()
    job = repo.get_job("process_batch")
    return {
        "assets": sorted(
            f"{node.key.to_user_string()} partitioned by {type(node.partitions_def).__name__}"
            f" ({getattr(node.partitions_def, 'name', '')}), kinds {sorted(node.kinds)}"
            for node in repo.asset_graph.asset_nodes
        ),
        "jobs": sorted(j.name for j in repo.get_all_jobs() if not j.name.startswith("__")),
        "process_batch_hooks": sorted(h.name for h in job.hook_defs),
        "sensors": sorted(
            f"{s.name} every {s.minimum_interval_seconds}s, default {s.default_status.value}"
            for s in repo.sensor_defs
        ),
        "schedules": sorted(f"{s.name} {s.cron_schedule}" for s in repo.schedule_defs),
        "resources": sorted(repo.get_top_level_resources()),
    }


def test_definitions_match_the_reviewed_snapshot(monkeypatch) -> None:
    monkeypatch.setenv("REPLICATE_API_TOKEN", "r8_snapshot")
    current = describe_definitions()
    if os.environ.get("UPDATE_SNAPSHOT"):
        SNAPSHOT.write_text(json.dumps(current, indent=2) + "\n")
    assert SNAPSHOT.exists(), (
        f"no reviewed snapshot at {SNAPSHOT}: write one with UPDATE_SNAPSHOT=1 and review it"
    )
    assert current == json.loads(SNAPSHOT.read_text())
