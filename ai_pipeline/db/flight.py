"""Slots for predictions in flight, shared by every run and host: the state behind
`processing.in_flight`. Pools and holds are described in migration 0013.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from sqlalchemy import Connection, text

from ai_pipeline.db.transactions import one_statement

_ENSURE = text(
    """
    INSERT INTO flight_pools (name, capacity)
    SELECT name, capacity
    FROM unnest(CAST(:names AS text[]), CAST(:capacities AS integer[])) AS p(name, capacity)
    ON CONFLICT (name) DO UPDATE SET capacity = EXCLUDED.capacity, updated_at = now()
        WHERE flight_pools.capacity <> EXCLUDED.capacity
    """
)
_SYNC = text(
    "SELECT pool, held, share FROM sync_flight_holds(:owner, CAST(:pools AS text[]),"
    " CAST(:keep AS integer[]), CAST(:want AS integer[]), :lease)"
)
_DROP = text("DELETE FROM flight_holds WHERE owner = :run_id OR owner LIKE :prefix")
_IN_FLIGHT = text(
    """
    SELECT p.name, p.capacity, coalesce(sum(h.held) FILTER (WHERE h.expires_at >= now()), 0) AS held
    FROM flight_pools p LEFT JOIN flight_holds h ON h.pool = p.name
    GROUP BY p.name, p.capacity ORDER BY p.name
    """
)


@dataclass(frozen=True)
class Hold:
    """What a run holds of one pool after a sync, and `share`: the most it should keep (an even share
    while another run waits, else the pool's capacity)."""

    pool: str
    held: int
    share: int


@dataclass(frozen=True)
class PoolUse:
    name: str
    capacity: int
    held: int


def ensure_pools(conn: Connection, capacities: Mapping[str, int]) -> None:
    """Create the pools, or change their capacity to the one configured now."""
    if capacities:
        names = sorted(capacities)
        conn.execute(_ENSURE, {"names": names, "capacities": [capacities[name] for name in names]})


@one_statement
def sync_holds(
    conn: Connection, owner: str, changes: Mapping[str, tuple[int, int]], lease_seconds: float
) -> list[Hold]:
    """For each pool, `(keep, want)`: keep at most `keep` of the slots `owner` holds (the rest go back)
    and ask for `want` more; renews its lease on them. Returns what it holds now."""
    pools = sorted(changes)
    rows = conn.execute(
        _SYNC,
        {
            "owner": owner,
            "pools": pools,
            "keep": [changes[pool][0] for pool in pools],
            "want": [changes[pool][1] for pool in pools],
            "lease": lease_seconds,
        },
    )
    return [Hold(row.pool, row.held, row.share) for row in rows]


def drop_holds(conn: Connection, run_id: str) -> int:
    """Give back every slot a run (any attempt of it, owners `run_id:N`) holds; returns how many pools."""
    prefix = run_id.replace("%", r"\%").replace("_", r"\_") + ":%"
    return conn.execute(_DROP, {"run_id": run_id, "prefix": prefix}).rowcount


def pools_in_use(conn: Connection) -> list[PoolUse]:
    """Every pool, its capacity and the slots live runs hold of it."""
    return [PoolUse(row.name, row.capacity, int(row.held)) for row in conn.execute(_IN_FLIGHT)]
