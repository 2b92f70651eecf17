"""Slots for predictions in flight, shared by every run and host: a leased counting semaphore.

`flight_pools` names each cap: `replicate` (every prediction, `AI_PIPELINE_MAX_IN_FLIGHT`) and
`model:<name>` (a catalogue model's `max_in_flight`). `flight_holds` says how many slots of a pool each
run holds, how many more it waits for, and until when its lease runs: a run that stops renewing (it
died) holds nothing once `expires_at` passes. Runs hand slots to their own requests in memory and call
`sync_flight_holds` about once a second to give back idle ones and ask for more, so the database sees
one statement per run per second, not two per prediction.

`sync_flight_holds(owner, pools, keep, want, lease)`, per pool (callers pass them sorted, so two runs
lock pool rows in the same order): lock the pool row, forget expired holds, keep at most `keep` of what
the run held (the rest is given back), grant up to `want` more of what is free, but while another run
waits no more than an even share among the runs that hold or want slots; returns what the run holds
now and `share`, the most it should keep (its share while others wait, else the capacity). One
statement, atomic without a transaction; `keep` is absolute, so running it again after a lost
connection gives nothing back twice.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-07
"""

from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

UPGRADE = r"""
CREATE TABLE flight_pools (
    name       text PRIMARY KEY,
    capacity   integer NOT NULL CHECK (capacity >= 0),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE flight_holds (
    pool       text NOT NULL REFERENCES flight_pools (name) ON DELETE CASCADE,
    owner      text NOT NULL,
    held       integer NOT NULL CHECK (held >= 0),
    wanted     integer NOT NULL DEFAULT 0 CHECK (wanted >= 0),
    expires_at timestamptz NOT NULL,
    PRIMARY KEY (pool, owner)
);

CREATE FUNCTION sync_flight_holds(
    p_owner text, p_pools text[], p_keep integer[], p_want integer[], p_lease_seconds double precision
)
RETURNS TABLE (pool text, held integer, share integer) LANGUAGE plpgsql AS $$
DECLARE
    i integer;
    v_capacity integer;
    v_mine integer;
    v_others integer;
    v_claimants integer;
    v_waiting boolean;
    v_share integer;
    v_grant integer;
BEGIN
    FOR i IN 1 .. coalesce(array_length(p_pools, 1), 0) LOOP
        SELECT p.capacity INTO v_capacity FROM flight_pools p WHERE p.name = p_pools[i] FOR UPDATE;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'no flight pool named %', p_pools[i] USING ERRCODE = 'no_data_found';
        END IF;
        DELETE FROM flight_holds h WHERE h.pool = p_pools[i] AND h.expires_at < now();
        SELECT h.held INTO v_mine FROM flight_holds h WHERE h.pool = p_pools[i] AND h.owner = p_owner;
        v_mine := least(coalesce(v_mine, 0), greatest(0, p_keep[i]));
        SELECT coalesce(sum(h.held), 0), count(*), coalesce(bool_or(h.wanted > 0), false)
        INTO v_others, v_claimants, v_waiting
        FROM flight_holds h WHERE h.pool = p_pools[i] AND h.owner <> p_owner;
        v_share := ceil(v_capacity::numeric / (v_claimants + 1));
        v_grant := least(p_want[i], greatest(0, v_capacity - v_others - v_mine));
        IF v_waiting THEN
            v_grant := least(v_grant, greatest(0, v_share - v_mine));
        END IF;
        v_mine := v_mine + v_grant;
        IF v_mine = 0 AND p_want[i] = v_grant THEN
            DELETE FROM flight_holds h WHERE h.pool = p_pools[i] AND h.owner = p_owner;
        ELSE
            INSERT INTO flight_holds AS h (pool, owner, held, wanted, expires_at)
            VALUES (p_pools[i], p_owner, v_mine, p_want[i] - v_grant,
                    now() + make_interval(secs => p_lease_seconds))
            ON CONFLICT ON CONSTRAINT flight_holds_pkey DO UPDATE
                SET held = EXCLUDED.held, wanted = EXCLUDED.wanted, expires_at = EXCLUDED.expires_at;
        END IF;
        pool := p_pools[i];
        held := v_mine;
        share := CASE WHEN v_waiting THEN v_share ELSE v_capacity END;
        RETURN NEXT;
    END LOOP;
END $$;
"""

DOWNGRADE = r"""
DROP FUNCTION sync_flight_holds(text, text[], integer[], integer[], double precision);
DROP TABLE flight_holds;
DROP TABLE flight_pools;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
