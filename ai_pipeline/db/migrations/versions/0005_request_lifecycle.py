"""The request lifecycle, enforced by the database: a status changes only along an allowed move.

Applications write `generation_requests` too, so a stray `UPDATE ... SET status = 'succeeded'` on a
pending row must fail in the database, not only in our code. `request_transitions` lists every allowed
(from, to) pair: the moves of `ai_pipeline/db/lifecycle.py` as of this revision (a test holds the table
and `ALLOWED_TRANSITIONS` to each other, so changing the lifecycle means a migration). The trigger fires
only when the status changes, so lease renewals and other updates pay nothing.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30
"""

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

UPGRADE = r"""
CREATE TABLE request_transitions (
    from_status text NOT NULL,
    to_status   text NOT NULL,
    move        text NOT NULL,
    PRIMARY KEY (from_status, to_status)
);
INSERT INTO request_transitions (from_status, to_status, move) VALUES
    ('pending',    'processing', 'claim'),
    ('processing', 'pending',    'hand back'),
    ('processing', 'succeeded',  'succeed'),
    ('pending',    'failed',     'fail'),
    ('processing', 'failed',     'fail'),
    ('pending',    'rejected',   'reject'),
    ('processing', 'rejected',   'reject'),
    ('pending',    'canceled',   'cancel'),
    ('processing', 'canceled',   'cancel');

CREATE FUNCTION generation_requests_follow_lifecycle() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (
        SELECT 1 FROM request_transitions WHERE from_status = OLD.status AND to_status = NEW.status
    ) THEN
        RAISE EXCEPTION 'request %: a request cannot go from % to %', OLD.id, OLD.status, NEW.status
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER generation_requests_follow_lifecycle
    BEFORE UPDATE OF status ON generation_requests
    FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status)
    EXECUTE FUNCTION generation_requests_follow_lifecycle();
"""

DOWNGRADE = r"""
DROP TRIGGER generation_requests_follow_lifecycle ON generation_requests;
DROP FUNCTION generation_requests_follow_lifecycle();
DROP TABLE request_transitions;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
