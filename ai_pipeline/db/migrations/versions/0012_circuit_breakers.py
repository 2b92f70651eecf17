"""`circuit_breakers`: account-level trouble with Replicate pauses every run, in one row they all share.

A 401/402/403 (or a run of 5xx from every call) opens the breaker: creates stop until a probe call
succeeds. `state` is `closed`, `open` (waiting for `probe_at`) or `half_open` (one run, `probe_owner`,
is probing until `probe_expires_at`). `cooldown_seconds` is the wait before the next probe; it grows
after each failed probe. `generation` counts closings, so a failure of a call sent before the breaker
closed cannot open it again. The row for Replicate is created here.

Revision ID: 0012
Revises: 0005
Create Date: 2026-12-07
"""

from alembic import op

revision = "0012"
down_revision = "0005"
branch_labels = None
depends_on = None

UPGRADE = r"""
CREATE TABLE circuit_breakers (
    name             text PRIMARY KEY,
    state            text NOT NULL DEFAULT 'closed' CHECK (state IN ('closed', 'open', 'half_open')),
    reason           text,
    opened_at        timestamptz,
    probe_at         timestamptz,
    cooldown_seconds double precision NOT NULL DEFAULT 0 CHECK (cooldown_seconds >= 0),
    probe_owner      text,
    probe_expires_at timestamptz,
    closed_at        timestamptz,
    generation       bigint NOT NULL DEFAULT 0,
    updated_at       timestamptz NOT NULL DEFAULT now(),
    CHECK (state = 'closed' OR (opened_at IS NOT NULL AND probe_at IS NOT NULL)),
    CHECK (state <> 'half_open' OR (probe_owner IS NOT NULL AND probe_expires_at IS NOT NULL))
);
INSERT INTO circuit_breakers (name) VALUES ('replicate');
"""

DOWNGRADE = r"""
DROP TABLE circuit_breakers;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
