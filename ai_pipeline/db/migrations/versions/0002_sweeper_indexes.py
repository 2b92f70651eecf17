"""Indexes the sweeper reads every tick: open requests someone asked to cancel, recent retryable failures.

Both are partial, so they stay as small as the work they point at however many finished rows pile up.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

UPGRADE = r"""
-- Cancels still to carry out: rows leave the index when they end.
CREATE INDEX generation_requests_cancel_requested
    ON generation_requests (id)
    WHERE cancel_requested_at IS NOT NULL AND status IN ('pending', 'processing');
-- Failures an automatic retry may copy, by when they failed (the sweeper looks back a bounded window).
CREATE INDEX generation_requests_retryable_failures
    ON generation_requests (completed_at)
    WHERE status = 'failed' AND retryable AND retry_of IS NULL;
"""

DOWNGRADE = r"""
DROP INDEX generation_requests_retryable_failures;
DROP INDEX generation_requests_cancel_requested;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
