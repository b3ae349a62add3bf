-- 0001_initial: the seed schema of TaskForge on SQLite.
--
-- Conventions
--   * Times are INTEGER microseconds since the Unix epoch (UTC): exact, and they sort right.
--   * Ids are canonical lower-case UUID text. Jobs and executions use UUIDv7, so text order is
--     creation order and "newest first" is "id DESC". Queues use a small INTEGER key, because
--     the hot claim index starts with it.
--   * JSON values (arguments, results, errors, headers, permissions) are TEXT written by
--     taskforge_core.serialization.encode.
--   * :now is bound by the migration runner to the backend's clock.
--   * Every status column is checked against the values of taskforge_core.states; the moves
--     between them are made by the backend, which applies the transition table.

-- ---------------------------------------------------------------------------------------------
-- Tenancy (the hosted service manages these; embedded use only has the default rows below)
-- ---------------------------------------------------------------------------------------------

CREATE TABLE organizations (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    slug        TEXT NOT NULL UNIQUE,
    created_at  INTEGER NOT NULL
);

CREATE TABLE users (
    id              TEXT PRIMARY KEY,
    organization_id TEXT NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    email           TEXT NOT NULL UNIQUE COLLATE NOCASE,
    name            TEXT NOT NULL DEFAULT '',
    -- argon2id hash; NULL for a user who cannot sign in with a password.
    password_hash   TEXT,
    role            TEXT NOT NULL DEFAULT 'member' CHECK (role IN ('owner', 'admin', 'member')),
    created_at      INTEGER NOT NULL,
    disabled_at     INTEGER
);
-- Listing the members of an organization, and the cascade when one is deleted.
CREATE INDEX users_organization ON users (organization_id);

CREATE TABLE subscriptions (
    id                 TEXT PRIMARY KEY,
    organization_id    TEXT NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    -- The tier names the limits (rate, jobs, projects) the service applies.
    tier               TEXT NOT NULL DEFAULT 'free',
    status             TEXT NOT NULL DEFAULT 'active'
                       CHECK (status IN ('active', 'past_due', 'cancelled')),
    current_period_end INTEGER,
    created_at         INTEGER NOT NULL,
    cancelled_at       INTEGER
);
-- Finding an organization's current subscription, and the cascade when one is deleted.
CREATE INDEX subscriptions_organization ON subscriptions (organization_id);

CREATE TABLE projects (
    id              TEXT PRIMARY KEY,
    organization_id TEXT NOT NULL REFERENCES organizations (id),
    name            TEXT NOT NULL,
    -- The `project` of every model: unique across the whole store, so it alone names a project.
    slug            TEXT NOT NULL UNIQUE,
    created_at      INTEGER NOT NULL
);
-- Listing the projects of an organization.
CREATE INDEX projects_organization ON projects (organization_id);

CREATE TABLE api_keys (
    id           TEXT PRIMARY KEY,
    project_id   TEXT NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    name         TEXT NOT NULL DEFAULT '',
    -- The first characters of the key, shown to people and used to find the row.
    prefix       TEXT NOT NULL UNIQUE,
    -- A hash of the whole key; the key itself is never stored.
    key_hash     TEXT NOT NULL,
    -- JSON array of permission names, e.g. ["jobs:write", "jobs:read"].
    permissions  TEXT NOT NULL DEFAULT '[]',
    created_at   INTEGER NOT NULL,
    last_used_at INTEGER,
    expires_at   INTEGER,
    revoked_at   INTEGER
);
-- Listing the keys of a project, and the cascade when one is deleted.
CREATE INDEX api_keys_project ON api_keys (project_id);

-- ---------------------------------------------------------------------------------------------
-- Queues and jobs
-- ---------------------------------------------------------------------------------------------

CREATE TABLE job_queues (
    id          INTEGER PRIMARY KEY,
    project_id  TEXT NOT NULL REFERENCES projects (id),
    name        TEXT NOT NULL,
    paused      INTEGER NOT NULL DEFAULT 0 CHECK (paused IN (0, 1)),
    created_at  INTEGER NOT NULL,
    -- Also the index that resolves (project, queue name) to the queue.
    UNIQUE (project_id, name)
);

CREATE TABLE jobs (
    id               TEXT PRIMARY KEY,
    -- Redundant with the queue's project, kept here so that project scoping, the idempotency
    -- key and listings need no join.
    project_id       TEXT NOT NULL REFERENCES projects (id),
    queue_id         INTEGER NOT NULL REFERENCES job_queues (id),
    task             TEXT NOT NULL,
    status           TEXT NOT NULL CHECK (status IN (
                         'pending', 'scheduled', 'blocked', 'processing',
                         'succeeded', 'failed', 'cancelled')),
    args             TEXT NOT NULL,
    kwargs           TEXT NOT NULL,
    priority         INTEGER NOT NULL DEFAULT 0,
    attempt          INTEGER NOT NULL DEFAULT 0 CHECK (attempt >= 0),
    max_attempts     INTEGER NOT NULL CHECK (max_attempts >= 1),
    timeout          REAL CHECK (timeout IS NULL OR timeout > 0),
    scheduled_for    INTEGER NOT NULL,
    created_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL,
    key              TEXT,
    headers          TEXT NOT NULL DEFAULT '{}',
    -- The current claim while processing (the fencing token), else the last one.
    execution_id     TEXT,
    worker_id        TEXT,
    lease_expires_at INTEGER,
    started_at       INTEGER,
    finished_at      INTEGER,
    result           TEXT,
    error            TEXT
);

-- The claim path: for one queue, the runnable jobs in claim order (priority, due time, id), so
-- a claim reads the first N index entries and stops. Partial, so that the millions of finished
-- jobs never enter it and it stays as small as the backlog.
CREATE INDEX jobs_claim ON jobs (queue_id, priority DESC, scheduled_for, id)
    WHERE status IN ('pending', 'scheduled');

-- Reclaiming expired leases: only processing jobs, ordered by expiry, so the sweep reads just
-- the expired ones.
CREATE INDEX jobs_lease ON jobs (lease_expires_at) WHERE status = 'processing';

-- (Heartbeats find a held job from its execution id through job_executions' primary key, so
-- jobs needs no index on execution_id: one less index to update on every claim and report.)

-- The idempotency key is unique within a project; most jobs have none and stay out of it.
CREATE UNIQUE INDEX jobs_key ON jobs (project_id, key) WHERE key IS NOT NULL;

-- Listing a project's jobs newest first (cursor = last id seen) without sorting.
CREATE INDEX jobs_project ON jobs (project_id, id);

-- Listing, replaying and purging by status (the dead-letter queue is status 'failed') newest
-- first without reading the other statuses.
CREATE INDEX jobs_project_status ON jobs (project_id, status, id);

-- Queue statistics count jobs per (queue, status) from this index alone.
CREATE INDEX jobs_queue_status ON jobs (queue_id, status);

CREATE TABLE job_dependencies (
    job_id    TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    parent_id TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    -- The parent's place in the job's depends_on, so it reads back in the order given.
    position  INTEGER NOT NULL,
    PRIMARY KEY (job_id, parent_id)
) WITHOUT ROWID;

-- Children of a parent: releasing them on success, cancelling them on failure, and the purge
-- check "does an active job depend on this one".
CREATE INDEX job_dependencies_parent ON job_dependencies (parent_id);

-- ---------------------------------------------------------------------------------------------
-- Workers
-- ---------------------------------------------------------------------------------------------

CREATE TABLE workers (
    id                TEXT PRIMARY KEY,
    project_id        TEXT NOT NULL REFERENCES projects (id),
    name              TEXT NOT NULL,
    hostname          TEXT NOT NULL,
    pid               INTEGER NOT NULL,
    concurrency       INTEGER NOT NULL,
    status            TEXT NOT NULL CHECK (status IN ('running', 'draining', 'stopped')),
    started_at        INTEGER NOT NULL,
    last_heartbeat_at INTEGER
);
-- Listing the workers of a project by name.
CREATE INDEX workers_project ON workers (project_id, name);

CREATE TABLE queue_worker_assignments (
    worker_id TEXT NOT NULL REFERENCES workers (id) ON DELETE CASCADE,
    queue_id  INTEGER NOT NULL REFERENCES job_queues (id) ON DELETE CASCADE,
    weight    INTEGER NOT NULL DEFAULT 1 CHECK (weight >= 0),
    PRIMARY KEY (worker_id, queue_id)
) WITHOUT ROWID;
-- Which workers serve a queue (dashboard, drains by queue).
CREATE INDEX queue_worker_assignments_queue ON queue_worker_assignments (queue_id);

-- ---------------------------------------------------------------------------------------------
-- History
-- ---------------------------------------------------------------------------------------------

CREATE TABLE job_executions (
    id          TEXT PRIMARY KEY,
    job_id      TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    attempt     INTEGER NOT NULL,
    -- No foreign key: a worker need not be registered to claim.
    worker_id   TEXT,
    status      TEXT NOT NULL CHECK (status IN (
                    'started', 'succeeded', 'retrying', 'deferred', 'failed', 'lost',
                    'cancelled')),
    started_at  INTEGER NOT NULL,
    finished_at INTEGER,
    error       TEXT
);
-- A job's attempts oldest first, and the cascade when a job is purged.
CREATE INDEX job_executions_job ON job_executions (job_id, started_at);

CREATE TABLE execution_logs (
    id           INTEGER PRIMARY KEY,
    job_id       TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    execution_id TEXT NOT NULL,
    at           INTEGER NOT NULL,
    level        TEXT NOT NULL,
    message      TEXT NOT NULL,
    fields       TEXT NOT NULL DEFAULT '{}'
);
-- A job's log lines oldest first, and the cascade when a job is purged.
CREATE INDEX execution_logs_job ON execution_logs (job_id, at, id);

-- ---------------------------------------------------------------------------------------------
-- The default organization and project of embedded use
-- ---------------------------------------------------------------------------------------------

INSERT INTO organizations (id, name, slug, created_at)
VALUES ('00000000-0000-0000-0000-000000000000', 'Default', 'default', :now);

INSERT INTO projects (id, organization_id, name, slug, created_at)
VALUES ('00000000-0000-0000-0000-000000000000', '00000000-0000-0000-0000-000000000000',
        'Default', 'default', :now);
