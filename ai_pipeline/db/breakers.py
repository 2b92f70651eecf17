"""Circuit breakers in Postgres, shared by every run: the state behind `replicate.breaker`.

One row per breaker (migration 0012). Closed: work goes on. Open: nobody creates until `probe_at`,
when one run takes the probe (half-open) and either closes the breaker or opens it again with a longer
cool-down. Every move is one statement that checks the state it moves from, so runs racing to open,
probe or close it agree on one outcome.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Connection, text

from ai_pipeline.db.transactions import one_statement

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"

_COLUMNS = (
    "name, state, reason, opened_at, probe_at, cooldown_seconds, generation,"
    " (state = 'open' AND probe_at <= now()) OR (state = 'half_open' AND probe_expires_at < now())"
    " AS probe_due, now() AS checked_at"
)
_READ = text(f"SELECT {_COLUMNS} FROM circuit_breakers WHERE name = :name")
_ENSURE = text("INSERT INTO circuit_breakers (name) VALUES (:name) ON CONFLICT (name) DO NOTHING")
# A breaker that opens again soon after it closed (the probe passed, the work did not) waits twice as
# long as the last time; otherwise it starts from the first cool-down.
_OPEN = text(
    """
    WITH closed AS (
        SELECT name,
               CASE WHEN closed_at > now() - make_interval(secs => :longest)
                    THEN LEAST(:longest, GREATEST(:first, cooldown_seconds * 2)) ELSE :first END AS cooldown
        FROM circuit_breakers
        WHERE name = :name AND state = 'closed' AND generation = :generation
        FOR UPDATE
    )
    UPDATE circuit_breakers b
    SET state = 'open', reason = :reason, opened_at = now(), cooldown_seconds = closed.cooldown,
        probe_at = now() + make_interval(secs => closed.cooldown), updated_at = now()
    FROM closed
    WHERE b.name = closed.name
    """
)
_TAKE_PROBE = text(
    """
    UPDATE circuit_breakers
    SET state = 'half_open', probe_owner = :owner, probe_expires_at = now() + make_interval(secs => :seconds),
        updated_at = now()
    WHERE name = :name AND ((state = 'open' AND probe_at <= now())
                            OR (state = 'half_open' AND probe_expires_at < now()))
    """
)
_CLOSE = text(
    """
    UPDATE circuit_breakers
    SET state = 'closed', closed_at = now(), generation = generation + 1, probe_owner = NULL,
        probe_expires_at = NULL, updated_at = now()
    WHERE name = :name AND state = 'half_open' AND probe_owner = :owner
    """
)
_PROBE_FAILED = text(
    """
    UPDATE circuit_breakers
    SET state = 'open', reason = :reason, cooldown_seconds = LEAST(:longest, cooldown_seconds * 2),
        probe_at = now() + make_interval(secs => LEAST(:longest, cooldown_seconds * 2)),
        probe_owner = NULL, probe_expires_at = NULL, updated_at = now()
    WHERE name = :name AND state = 'half_open' AND probe_owner = :owner
    """
)


@dataclass(frozen=True)
class BreakerState:
    """A breaker as the database saw it at `checked_at`."""

    name: str
    state: str
    reason: str | None
    opened_at: datetime | None
    probe_at: datetime | None
    cooldown_seconds: float
    generation: int
    probe_due: bool
    checked_at: datetime | None

    @property
    def closed(self) -> bool:
        return self.state == CLOSED

    def describe(self) -> str:
        """For people: `working`, or why work is paused since when, and when it is tried again."""
        if self.closed:
            return "working"
        if self.state == HALF_OPEN:
            when = "a probe call is under way"
        else:
            when = f"next probe at {_clock(self.probe_at)}"
        return f"paused since {_clock(self.opened_at)} ({self.reason}); {when}"


def _clock(moment: datetime | None) -> str:
    return moment.astimezone(UTC).strftime("%H:%M:%S UTC") if moment else "?"


def closed_breaker(name: str) -> BreakerState:
    """The state of a breaker that has no row yet."""
    return BreakerState(name, CLOSED, None, None, None, 0.0, 0, False, None)


def ensure_breaker(conn: Connection, name: str) -> None:
    """Create the breaker (closed) unless it exists."""
    conn.execute(_ENSURE, {"name": name})


@one_statement
def read_breaker(conn: Connection, name: str) -> BreakerState:
    """The breaker's state now."""
    row = conn.execute(_READ, {"name": name}).first()
    return closed_breaker(name) if row is None else BreakerState(**row._mapping)


@one_statement
def open_breaker(
    conn: Connection,
    name: str,
    reason: str,
    *,
    generation: int,
    first_cooldown: float,
    longest_cooldown: float,
) -> bool:
    """Open the breaker for `reason`, unless it is open already or closed since `generation` (the
    failure came from a call sent before it closed); returns whether this call opened it."""
    result = conn.execute(
        _OPEN,
        {
            "name": name,
            "reason": reason[:500],
            "generation": generation,
            "first": first_cooldown,
            "longest": longest_cooldown,
        },
    )
    return result.rowcount == 1


@one_statement
def take_probe(conn: Connection, name: str, owner: str, seconds: float) -> bool:
    """Become the one caller that probes (half-open) for `seconds`, if a probe is due and nobody has it."""
    return conn.execute(_TAKE_PROBE, {"name": name, "owner": owner, "seconds": seconds}).rowcount == 1


@one_statement
def close_breaker(conn: Connection, name: str, owner: str) -> bool:
    """The probe `owner` took succeeded: work goes on."""
    return conn.execute(_CLOSE, {"name": name, "owner": owner}).rowcount == 1


@one_statement
def probe_failed(conn: Connection, name: str, owner: str, reason: str, *, longest_cooldown: float) -> bool:
    """The probe `owner` took failed: open again, with twice the cool-down (at most `longest_cooldown`)."""
    result = conn.execute(
        _PROBE_FAILED, {"name": name, "owner": owner, "reason": reason[:500], "longest": longest_cooldown}
    )
    return result.rowcount == 1
