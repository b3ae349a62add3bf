-- The schema of TaskForge on PostgreSQL as the migrations leave it (today: 0003), in
-- one file to read and review. Install and upgrade with `taskforge migrate` (which applies
-- migrations/*.sql and records them), not with this file. A test replays every migration into
-- an empty database and checks that the result is exactly this schema, so a new migration
-- must update this file too.

CREATE SCHEMA taskforge;

-- 0001_initial
-- Conventions
--   * Every object lives in the schema "taskforge". Change from the seed: SQLite files belong
--     to TaskForge alone, but a PostgreSQL database is often the application's own (that is
--     what enqueueing inside the application's transaction needs), where plain "users" or
--     "jobs" tables would clash. Queries name the schema, so search_path does not matter.
--   * Ids are native uuid (jobs and executions use UUIDv7, so id order is creation order and
--     "newest first" is "id DESC"); queues keep a small integer key, because the hot claim
--     index starts with it.
--   * Times are timestamptz. Sessions of the backend run with TimeZone UTC, and interval
--     arithmetic goes through taskforge.later(), which is exact whatever the session's zone.
--   * Statuses are enums (job_status, execution_status) holding the values of
--     taskforge_core.states; the moves between them are made by the backend, which applies the
--     transition table. Other small vocabularies use CHECK constraints like SQLite.
--   * Payloads (arguments, results, errors, log fields) are json, headers and permissions
--     jsonb; see the jobs table for why.

-- ---------------------------------------------------------------------------------------------
-- Helpers
-- ---------------------------------------------------------------------------------------------

-- `base` moved by `shift`, computed in UTC so that a day is always 24 hours (an interval's day
-- part would otherwise follow daylight-saving changes of the session's time zone). Used for
-- due dates, retries and leases: the backend turns every absolute time an application gives
-- into an offset from the application's clock, and adds it to the database's clock here.
CREATE FUNCTION taskforge.later(base timestamptz, shift interval) RETURNS timestamptz
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN ((base AT TIME ZONE 'UTC') + shift) AT TIME ZONE 'UTC';

-- A new UUIDv7 (RFC 9562): 48 bits of Unix milliseconds from the server's clock, then random
-- bits, so ids minted in SQL (the execution ids a claim hands out, as many as it claims) sort
-- by creation time and index like the ids the application makes.
CREATE FUNCTION taskforge.uuid7() RETURNS uuid
    LANGUAGE sql VOLATILE PARALLEL SAFE
    RETURN encode(
        set_bit(set_bit(
            overlay(uuid_send(gen_random_uuid())
                    PLACING substring(int8send((extract(epoch FROM clock_timestamp()) * 1000)::bigint)
                                      FROM 3)
                    FROM 1 FOR 6),
            52, 1), 53, 1),
        'hex')::uuid;

-- Abort the calling statement with serialization_failure (SQLSTATE 40001), which the backend
-- retries in a fresh snapshot. A statement calls it when it finds that a row it is about to
-- finish changed in a way its snapshot cannot see (see jobs.children_version).
CREATE FUNCTION taskforge.retry(reason text) RETURNS boolean
    LANGUAGE plpgsql VOLATILE
    AS $$
BEGIN
    RAISE EXCEPTION 'taskforge: %, retrying', reason USING ERRCODE = 'serialization_failure';
END
$$;

-- ---------------------------------------------------------------------------------------------
-- Tenancy (the hosted service manages these; embedded use only has the default rows below)
-- ---------------------------------------------------------------------------------------------

CREATE TABLE taskforge.organizations (
    id          uuid PRIMARY KEY,
    name        text NOT NULL,
    slug        text NOT NULL UNIQUE,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE taskforge.users (
    id              uuid PRIMARY KEY,
    organization_id uuid NOT NULL REFERENCES taskforge.organizations (id) ON DELETE CASCADE,
    email           text NOT NULL,
    name            text NOT NULL DEFAULT '',
    -- argon2id hash; NULL for a user who cannot sign in with a password.
    password_hash   text,
    role            text NOT NULL DEFAULT 'member' CHECK (role IN ('owner', 'admin', 'member')),
    created_at      timestamptz NOT NULL DEFAULT now(),
    disabled_at     timestamptz
);
-- Change from the seed: SQLite declares the e-mail UNIQUE COLLATE NOCASE; the same rule here
-- is a unique index on lower(email).
CREATE UNIQUE INDEX users_email ON taskforge.users (lower(email));
-- Listing the members of an organization, and the cascade when one is deleted.
CREATE INDEX users_organization ON taskforge.users (organization_id);

CREATE TABLE taskforge.subscriptions (
    id                 uuid PRIMARY KEY,
    organization_id    uuid NOT NULL REFERENCES taskforge.organizations (id) ON DELETE CASCADE,
    -- The tier names the limits (rate, jobs, projects) the service applies.
    tier               text NOT NULL DEFAULT 'free',
    status             text NOT NULL DEFAULT 'active'
                       CHECK (status IN ('active', 'past_due', 'cancelled')),
    current_period_end timestamptz,
    created_at         timestamptz NOT NULL DEFAULT now(),
    cancelled_at       timestamptz
);
-- Finding an organization's current subscription, and the cascade when one is deleted.
CREATE INDEX subscriptions_organization ON taskforge.subscriptions (organization_id);

CREATE TABLE taskforge.projects (
    id              uuid PRIMARY KEY,
    organization_id uuid NOT NULL REFERENCES taskforge.organizations (id),
    name            text NOT NULL,
    -- The `project` of every model: unique across the whole store, so it alone names a project.
    slug            text NOT NULL UNIQUE,
    created_at      timestamptz NOT NULL DEFAULT now()
);
-- Listing the projects of an organization.
CREATE INDEX projects_organization ON taskforge.projects (organization_id);

CREATE TABLE taskforge.api_keys (
    id           uuid PRIMARY KEY,
    project_id   uuid NOT NULL REFERENCES taskforge.projects (id) ON DELETE CASCADE,
    name         text NOT NULL DEFAULT '',
    -- The first characters of the key, shown to people and used to find the row.
    prefix       text NOT NULL UNIQUE,
    -- A hash of the whole key; the key itself is never stored.
    key_hash     text NOT NULL,
    -- Array of permission names, e.g. ["jobs:write", "jobs:read"]. Change from the seed:
    -- jsonb instead of JSON text, so "which keys may write jobs" is an indexable query.
    permissions  jsonb NOT NULL DEFAULT '[]',
    created_at   timestamptz NOT NULL DEFAULT now(),
    last_used_at timestamptz,
    expires_at   timestamptz,
    revoked_at   timestamptz
);
-- Listing the keys of a project, and the cascade when one is deleted.
CREATE INDEX api_keys_project ON taskforge.api_keys (project_id);

-- ---------------------------------------------------------------------------------------------
-- Queues and jobs
-- ---------------------------------------------------------------------------------------------

CREATE TABLE taskforge.job_queues (
    id          integer GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    project_id  uuid NOT NULL REFERENCES taskforge.projects (id),
    name        text NOT NULL,
    paused      boolean NOT NULL DEFAULT false,
    created_at  timestamptz NOT NULL DEFAULT now(),
    -- Also the index that resolves (project, queue name) to the queue.
    UNIQUE (project_id, name)
);

-- Change from the seed: the statuses are an enum rather than TEXT with a CHECK (4 bytes a row
-- and in every index that holds it, and a typo in a query is an error, not an empty result).
CREATE TYPE taskforge.job_status AS ENUM (
    'pending', 'scheduled', 'blocked', 'processing', 'succeeded', 'failed', 'cancelled'
);

CREATE TABLE taskforge.jobs (
    id               uuid PRIMARY KEY,
    -- Redundant with the queue's project, kept here so that project scoping, the idempotency
    -- key and listings need no join.
    -- 0002: no foreign keys to projects and job_queues (a trigger per inserted row, 40% of a
    -- bulk enqueue's server time). Every insert takes both ids from those tables in the same
    -- statement, and TaskForge never deletes a project or a queue.
    project_id       uuid NOT NULL,
    queue_id         integer NOT NULL,
    task             text NOT NULL,
    status           taskforge.job_status NOT NULL,
    -- Change from the seed: json rather than jsonb for what tasks pass and return (args,
    -- kwargs, result, error). jsonb would rewrite numbers as decimals (1e300 reads back as an
    -- integer that no longer equals the float) and refuse "\u0000"; json keeps the text
    -- exactly as written, like SQLite, and is cheaper to insert.
    args             json NOT NULL,
    kwargs           json NOT NULL,
    -- Change from the seed: bigint, the 64-bit range SQLite's INTEGER gives.
    priority         bigint NOT NULL DEFAULT 0,
    attempt          integer NOT NULL DEFAULT 0 CHECK (attempt >= 0),
    max_attempts     bigint NOT NULL CHECK (max_attempts >= 1),
    timeout          double precision CHECK (timeout IS NULL OR timeout > 0),
    scheduled_for    timestamptz NOT NULL,
    created_at       timestamptz NOT NULL,
    updated_at       timestamptz NOT NULL,
    key              text,
    -- Change from the seed: jsonb, so jobs can be found by a header (a trace or correlation id).
    headers          jsonb NOT NULL DEFAULT '{}',
    -- The current claim while processing (the fencing token), else the last one.
    execution_id     uuid,
    worker_id        uuid,
    lease_expires_at timestamptz,
    started_at       timestamptz,
    finished_at      timestamptz,
    result           json,
    error            json,
    -- Change from the seed: how many of this job's parents have not succeeded yet. Enqueue
    -- sets it, the completion of a parent and the purge of a parent that had not succeeded
    -- decrease it, and a blocked job is released when it reaches 0. SQLite serialises every
    -- writer and can instead ask "have all parents succeeded?"; here two parents completing at
    -- once in two transactions would each see the other still running. Decrementing a counter
    -- in the child's row is serialised by that row's lock, so exactly one of them releases it.
    parents_pending  integer NOT NULL DEFAULT 0 CHECK (parents_pending >= 0),
    -- Change from the seed: bumped, under the row lock, by every enqueue that gives this job a
    -- new child. A verb that finishes the job (complete, fail) compares the value in its
    -- snapshot with the one in the row it locks: a difference means a child was committed
    -- after the snapshot, which the release or cancellation of children would miss, so the
    -- statement aborts and is retried (see taskforge.retry).
    children_version bigint NOT NULL DEFAULT 0
);
-- Change from the seed: the jobs table is a queue that is updated many times a minute;
-- vacuum and analyse it after 2% of its rows changed instead of 20%, so that dead rows and
-- stale statistics never slow the claim.
ALTER TABLE taskforge.jobs SET (
    autovacuum_vacuum_scale_factor = 0.02,
    autovacuum_analyze_scale_factor = 0.02
);

-- The claim path: for one queue, the runnable jobs in claim order (priority, due time, id), so
-- a claim reads the first N index entries and stops. Partial, so that the millions of finished
-- jobs never enter it and it stays as small as the backlog.
CREATE INDEX jobs_claim ON taskforge.jobs (queue_id, priority DESC, scheduled_for, id)
    WHERE status IN ('pending', 'scheduled');

-- Reclaiming expired leases: only processing jobs, ordered by expiry, so the sweep reads just
-- the expired ones.
CREATE INDEX jobs_lease ON taskforge.jobs (lease_expires_at) WHERE status = 'processing';

-- Heartbeats find the jobs a worker holds by execution id; only processing jobs matter.
CREATE INDEX jobs_execution ON taskforge.jobs (execution_id) WHERE status = 'processing';

-- The idempotency key is unique within a project; most jobs have none and stay out of it. It
-- is also the arbiter of enqueue's ON CONFLICT, so two processes enqueueing one key at once
-- store one job.
CREATE UNIQUE INDEX jobs_key ON taskforge.jobs (project_id, key) WHERE key IS NOT NULL;

-- Listing a project's jobs newest first (cursor = last id seen) without sorting.
CREATE INDEX jobs_project ON taskforge.jobs (project_id, id);

-- Listing, replaying and purging by status (the dead-letter queue is status 'failed') newest
-- first without reading the other statuses.
CREATE INDEX jobs_project_status ON taskforge.jobs (project_id, status, id);

-- Queue statistics count jobs per (queue, status) from this index alone.
CREATE INDEX jobs_queue_status ON taskforge.jobs (queue_id, status);

CREATE TABLE taskforge.job_dependencies (
    job_id    uuid NOT NULL REFERENCES taskforge.jobs (id) ON DELETE CASCADE,
    parent_id uuid NOT NULL REFERENCES taskforge.jobs (id) ON DELETE CASCADE,
    -- The parent's place in the job's depends_on, so it reads back in the order given.
    position  integer NOT NULL,
    PRIMARY KEY (job_id, parent_id)
);

-- Children of a parent: releasing them on success, cancelling them on failure, and the purge
-- check "does an active job depend on this one".
CREATE INDEX job_dependencies_parent ON taskforge.job_dependencies (parent_id);

-- ---------------------------------------------------------------------------------------------
-- Workers
-- ---------------------------------------------------------------------------------------------

CREATE TABLE taskforge.workers (
    id                uuid PRIMARY KEY,
    project_id        uuid NOT NULL REFERENCES taskforge.projects (id),
    name              text NOT NULL,
    hostname          text NOT NULL,
    pid               bigint NOT NULL,
    concurrency       bigint NOT NULL,
    status            text NOT NULL CHECK (status IN ('running', 'draining', 'stopped')),
    started_at        timestamptz NOT NULL,
    last_heartbeat_at timestamptz
);
-- Listing the workers of a project by name.
CREATE INDEX workers_project ON taskforge.workers (project_id, name);

CREATE TABLE taskforge.queue_worker_assignments (
    worker_id uuid NOT NULL REFERENCES taskforge.workers (id) ON DELETE CASCADE,
    queue_id  integer NOT NULL REFERENCES taskforge.job_queues (id) ON DELETE CASCADE,
    weight    bigint NOT NULL DEFAULT 1 CHECK (weight >= 0),
    PRIMARY KEY (worker_id, queue_id)
);
-- Which workers serve a queue (dashboard, drains by queue).
CREATE INDEX queue_worker_assignments_queue ON taskforge.queue_worker_assignments (queue_id);

-- ---------------------------------------------------------------------------------------------
-- History
--
-- Change from the seed: job_executions and execution_logs are partitioned by day on their
-- time column, so retention drops whole partitions (instant, no dead rows, no vacuum) instead
-- of deleting rows. taskforge.maintain_partitions() creates the coming days' partitions and
-- drops expired ones; `taskforge migrate` and PostgresStorage.prune() run it. A DEFAULT
-- partition catches rows outside every daily one (maintenance not run for a while, a test
-- clock far in the future), so an insert never fails for want of a partition. A partitioned
-- table's primary key must contain the partition column, hence (id, started_at) and (id, at);
-- the backend always knows both (an execution starts when its job's claim does).
-- ---------------------------------------------------------------------------------------------

CREATE TYPE taskforge.execution_status AS ENUM (
    'started', 'succeeded', 'retrying', 'deferred', 'failed', 'lost', 'cancelled'
);

CREATE TABLE taskforge.job_executions (
    id          uuid NOT NULL,
    job_id      uuid NOT NULL REFERENCES taskforge.jobs (id) ON DELETE CASCADE,
    attempt     integer NOT NULL,
    -- No foreign key: a worker need not be registered to claim.
    worker_id   uuid,
    status      taskforge.execution_status NOT NULL,
    started_at  timestamptz NOT NULL,
    finished_at timestamptz,
    error       json,
    PRIMARY KEY (id, started_at)
) PARTITION BY RANGE (started_at);
-- A job's attempts oldest first, and the cascade when a job is purged.
CREATE INDEX job_executions_job ON taskforge.job_executions (job_id, started_at);
-- 0003: every partition fills its pages to 40% only (fillfactor 40). An execution row is
-- inserted when its attempt is claimed and updated once when the attempt ends; with room on
-- its page that update is heap-only (HOT) and writes no index entry.
CREATE TABLE taskforge.job_executions_default PARTITION OF taskforge.job_executions DEFAULT
    WITH (fillfactor = 40);

CREATE TABLE taskforge.execution_logs (
    id           bigserial NOT NULL,
    job_id       uuid NOT NULL REFERENCES taskforge.jobs (id) ON DELETE CASCADE,
    execution_id uuid NOT NULL,
    at           timestamptz NOT NULL,
    level        text NOT NULL,
    message      text NOT NULL,
    fields       json NOT NULL DEFAULT '{}',
    PRIMARY KEY (id, at)
) PARTITION BY RANGE (at);
-- A job's log lines oldest first, and the cascade when a job is purged.
CREATE INDEX execution_logs_job ON taskforge.execution_logs (job_id, at, id);
CREATE TABLE taskforge.execution_logs_default PARTITION OF taskforge.execution_logs DEFAULT;

-- Create the daily partitions of both history tables from the day before `now` to `ahead`
-- days after it, and drop those that ended more than `retain` before `now` (NULL: keep all).
-- Returns what it did, one row per partition. Rows that had landed in the default partition
-- for a day that now gets its own partition are moved into it. A partition that cannot be
-- locked within lock_timeout is skipped (and tried again on the next run), so that
-- maintenance never stalls workers.
CREATE FUNCTION taskforge.maintain_partitions(now timestamptz, ahead integer, retain interval)
    RETURNS TABLE (action text, table_name text)
    LANGUAGE plpgsql VOLATILE
    AS $$
DECLARE
    parent text;
    col text;
    fill integer;
    today date := (now AT TIME ZONE 'UTC')::date;
    day date;
    offset_days integer;
    name text;
    low timestamptz;
    high timestamptz;
    child record;
    bound timestamptz;
BEGIN
    -- One maintainer at a time (every worker may call this): the others wait, then find the
    -- partitions made.
    PERFORM pg_advisory_xact_lock(hashtext('taskforge.maintain_partitions'));
    FOR parent, col, fill IN VALUES ('job_executions', 'started_at', 40),
                                    ('execution_logs', 'at', 100) LOOP
        FOR offset_days IN -1 .. ahead LOOP
            day := today + offset_days;
            name := parent || '_p' || to_char(day, 'YYYYMMDD');
            low := day::timestamp AT TIME ZONE 'UTC';
            high := (day + 1)::timestamp AT TIME ZONE 'UTC';
            CONTINUE WHEN to_regclass('taskforge.' || name) IS NOT NULL;
            CONTINUE WHEN retain IS NOT NULL AND high <= now - retain;
            BEGIN
                EXECUTE format(
                    'CREATE TABLE taskforge.%I (LIKE taskforge.%I INCLUDING DEFAULTS '
                    'INCLUDING CONSTRAINTS) WITH (fillfactor = %s)', name, parent, fill);
                EXECUTE format(
                    'WITH moved AS (DELETE FROM taskforge.%I WHERE %I >= $1 AND %I < $2 '
                    'RETURNING *) INSERT INTO taskforge.%I SELECT * FROM moved',
                    parent || '_default', col, col, name) USING low, high;
                EXECUTE format(
                    'ALTER TABLE taskforge.%I ATTACH PARTITION taskforge.%I '
                    'FOR VALUES FROM (%L) TO (%L)', parent, name, low, high);
                action := 'created';
                table_name := name;
                RETURN NEXT;
            EXCEPTION WHEN lock_not_available THEN
                action := 'skipped';
                table_name := name;
                RETURN NEXT;
            END;
        END LOOP;
        CONTINUE WHEN retain IS NULL;
        FOR child IN
            SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) AS spec
            FROM pg_inherits i
            JOIN pg_class c ON c.oid = i.inhrelid
            JOIN pg_class p ON p.oid = i.inhparent
            JOIN pg_namespace n ON n.oid = p.relnamespace
            WHERE n.nspname = 'taskforge' AND p.relname = parent
            ORDER BY c.relname
        LOOP
            CONTINUE WHEN child.spec = 'DEFAULT';
            bound := substring(child.spec FROM 'TO \(''([^'']+)''\)')::timestamptz;
            CONTINUE WHEN bound > now - retain;
            BEGIN
                EXECUTE format('DROP TABLE taskforge.%I', child.relname);
                action := 'dropped';
                table_name := child.relname;
                RETURN NEXT;
            EXCEPTION WHEN lock_not_available THEN
                action := 'skipped';
                table_name := child.relname;
                RETURN NEXT;
            END;
        END LOOP;
        EXECUTE format('DELETE FROM taskforge.%I WHERE %I < $1', parent || '_default', col)
            USING now - retain;
    END LOOP;
END
$$;

-- ---------------------------------------------------------------------------------------------
-- The default organization and project of embedded use
-- ---------------------------------------------------------------------------------------------

INSERT INTO taskforge.organizations (id, name, slug)
VALUES ('00000000-0000-0000-0000-000000000000', 'Default', 'default');

INSERT INTO taskforge.projects (id, organization_id, name, slug)
VALUES ('00000000-0000-0000-0000-000000000000', '00000000-0000-0000-0000-000000000000',
        'Default', 'default');
