-- Every statement of the PostgreSQL backend, by name (loaded by taskforge_backends.postgres._sql).
--
-- Conventions
--   * $1 is "now" in every statement that needs a time: NULL means the database's clock
--     (production), a value means the application's injected clock (tests with a FakeClock).
--     `COALESCE($1::timestamptz, now())` is computed once, in the CTE `clock`.
--   * Absolute times an application gives (NewJob.scheduled_for, RetryRequest.run_at,
--     JobFilter.updated_before) arrive as intervals from the application's clock and are added
--     to "now" with taskforge.later(), so a worker whose clock is off does not shift them.
--   * Batches arrive as parallel arrays, unnested WITH ORDINALITY (`ord`: the place in the
--     batch); one statement handles a whole batch in one round trip.
--   * Statements that lock several jobs lock them in id order, the one order every statement
--     uses, so two of them never wait for each other in a cycle.
--   * Wake-ups: a statement that makes jobs runnable calls pg_notify('taskforge_jobs', queue)
--     once per queue (PostgreSQL sends it at commit, and only then). Queue names over 1000
--     bytes are sent as '*' (wake every listener), because a payload is limited to 8000 bytes.

-- name: enqueue
-- Store a batch of new jobs, planned by the backend in Python (aliases, dependency order and
-- cycles are checked there). $2..$13: the jobs; $14..$17: dependency edges (child, parent,
-- position, whether the parent is in this batch); $18/$19: project slugs and the ids to
-- create them with if missing; $20: create missing queues; $21..$23: idempotency keys the
-- plan assumed taken (project, key, job id or NULL), verified here.
--
-- Rows returned: kind 'problem' (rank 0: unknown queue, rank 2: unknown parent; nothing was
-- written), 'made' (a job stored, with its project and queue ids for the backend's cache) or
-- 'existing' (a job whose key was taken: its id).
-- Stored parents are locked and their children_version bumped, and their latest committed
-- status decides the child's: a parent finishing concurrently either sees the child (it
-- waited for this statement) or was seen finished by it. A race this statement cannot
-- resolve (a project, queue or key created concurrently) aborts it with
-- serialization_failure, and the backend runs it again.
WITH RECURSIVE
clock AS (SELECT COALESCE($1::timestamptz, now()) AS now),
member AS MATERIALIZED (
    SELECT m.*
    FROM unnest($2::uuid[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
                $8::bigint[], $9::bigint[], $10::float8[], $11::interval[], $12::text[],
                $13::text[])
         WITH ORDINALITY AS m(id, project, queue, task, args, kwargs, priority, max_attempts,
                              timeout, shift, key, headers, ord)
),
edge AS MATERIALIZED (
    SELECT e.*
    FROM unnest($14::uuid[], $15::uuid[], $16::integer[], $17::boolean[])
         AS e(child, parent, position, parent_new)
),
project_found AS (
    SELECT p.id, p.slug FROM taskforge.projects p WHERE p.slug IN (SELECT project FROM member)
),
queue_found AS (
    SELECT q.id, pf.slug AS project, q.name
    FROM taskforge.job_queues q
    JOIN project_found pf ON pf.id = q.project_id
    WHERE (pf.slug, q.name) IN (SELECT project, queue FROM member)
),
parent_lock AS MATERIALIZED (
    SELECT j.id
    FROM taskforge.jobs j
    WHERE j.id IN (SELECT parent FROM edge WHERE NOT parent_new)
    ORDER BY j.id
    FOR NO KEY UPDATE
),
parent AS (
    UPDATE taskforge.jobs j
    SET children_version = j.children_version + 1
    FROM parent_lock l, taskforge.projects p
    WHERE j.id = l.id AND p.id = j.project_id
    RETURNING j.id, j.status, p.slug AS project
),
problem AS (
    SELECT 0 AS rank, m.ord, 0 AS position, m.queue AS detail, m.project
    FROM member m
    WHERE NOT $20::boolean
      AND NOT EXISTS (SELECT FROM queue_found q WHERE q.project = m.project AND q.name = m.queue)
    UNION ALL
    SELECT 2, m.ord, e.position, e.parent::text, m.project
    FROM edge e
    JOIN member m ON m.id = e.child
    LEFT JOIN parent p ON p.id = e.parent
    WHERE NOT e.parent_new AND (p.id IS NULL OR p.project <> m.project)
),
ok AS (SELECT NOT EXISTS (SELECT FROM problem) AS ok),
project_made AS (
    INSERT INTO taskforge.projects (id, organization_id, name, slug, created_at)
    SELECT n.id, '00000000-0000-0000-0000-000000000000', n.slug, n.slug, c.now
    FROM unnest($18::text[], $19::uuid[]) AS n(slug, id), clock c, ok
    WHERE ok.ok AND n.slug NOT IN (SELECT slug FROM project_found)
    ON CONFLICT (slug) DO NOTHING
    RETURNING id, slug
),
project AS (
    SELECT id, slug FROM project_found
    UNION ALL
    SELECT id, slug FROM project_made
),
queue_made AS (
    INSERT INTO taskforge.job_queues (project_id, name, paused, created_at)
    SELECT DISTINCT p.id, m.queue, false, c.now
    FROM member m
    JOIN project p ON p.slug = m.project
    CROSS JOIN clock c
    CROSS JOIN ok
    WHERE ok.ok AND $20::boolean
      AND NOT EXISTS (SELECT FROM queue_found q WHERE q.project = m.project AND q.name = m.queue)
    ON CONFLICT (project_id, name) DO NOTHING
    RETURNING id, project_id, name
),
queue AS (
    SELECT id, project, name FROM queue_found
    UNION ALL
    SELECT qm.id, p.slug, qm.name FROM queue_made qm JOIN project p ON p.id = qm.project_id
),
-- A child of a failed or cancelled parent is cancelled, and so are its children in the batch.
dead (id) AS (
    SELECT e.child
    FROM edge e
    JOIN parent p ON p.id = e.parent
    WHERE NOT e.parent_new AND p.status IN ('failed', 'cancelled')
    UNION
    SELECT e.child FROM edge e JOIN dead d ON d.id = e.parent WHERE e.parent_new
),
waiting AS (
    SELECT e.child AS id, count(*) AS n
    FROM edge e
    LEFT JOIN parent p ON p.id = e.parent
    WHERE e.parent_new OR p.status IS DISTINCT FROM 'succeeded'
    GROUP BY e.child
),
plan AS (
    SELECT m.*,
           COALESCE(w.n, 0) AS parents_pending,
           CASE WHEN m.id IN (SELECT id FROM dead) THEN 'cancelled'
                WHEN w.n IS NOT NULL THEN 'blocked'
                WHEN m.shift > interval '0' THEN 'scheduled'
                ELSE 'pending'
           END::taskforge.job_status AS status,
           CASE WHEN m.shift IS NULL THEN c.now ELSE taskforge.later(c.now, m.shift) END
               AS scheduled_for
    FROM member m
    CROSS JOIN clock c
    LEFT JOIN waiting w ON w.id = m.id
),
made AS (
    INSERT INTO taskforge.jobs (
        id, project_id, queue_id, task, status, args, kwargs, priority, attempt, max_attempts,
        timeout, scheduled_for, created_at, updated_at, key, headers, finished_at,
        parents_pending
    )
    SELECT pl.id, p.id, q.id, pl.task, pl.status, pl.args::json, pl.kwargs::json, pl.priority,
           0, pl.max_attempts, pl.timeout, pl.scheduled_for, c.now, c.now, pl.key,
           pl.headers::jsonb, CASE WHEN pl.status = 'cancelled' THEN c.now END,
           pl.parents_pending
    FROM plan pl
    JOIN project p ON p.slug = pl.project
    JOIN queue q ON q.project = pl.project AND q.name = pl.queue
    CROSS JOIN clock c
    CROSS JOIN ok
    WHERE ok.ok
    ORDER BY pl.ord
    ON CONFLICT (project_id, key) WHERE key IS NOT NULL DO NOTHING
    RETURNING id, status, scheduled_for, created_at, project_id, queue_id
),
dependency AS (
    INSERT INTO taskforge.job_dependencies (job_id, parent_id, position)
    SELECT e.child, e.parent, e.position FROM edge e WHERE e.child IN (SELECT id FROM made)
),
existing AS (
    SELECT m.ord, j.id
    FROM member m
    JOIN taskforge.projects p ON p.slug = m.project
    JOIN taskforge.jobs j ON j.project_id = p.id AND j.key = m.key
    CROSS JOIN ok
    WHERE ok.ok AND m.key IS NOT NULL AND m.id NOT IN (SELECT id FROM made)
),
key_seen AS (
    SELECT x.expected, j.id AS actual
    FROM unnest($21::text[], $22::text[], $23::uuid[]) AS x(project, key, expected)
    LEFT JOIN taskforge.projects p ON p.slug = x.project
    LEFT JOIN taskforge.jobs j ON j.project_id = p.id AND j.key = x.key
),
stale AS (
    SELECT 'a project or queue was created concurrently' AS reason
    FROM member m, ok
    WHERE ok.ok
      AND NOT EXISTS (SELECT FROM queue q WHERE q.project = m.project AND q.name = m.queue)
    UNION ALL
    SELECT 'an idempotency key was taken concurrently'
    FROM member m, ok
    WHERE ok.ok AND m.id NOT IN (SELECT id FROM made)
      AND (m.ord NOT IN (SELECT ord FROM existing)
           OR m.id IN (SELECT parent FROM edge WHERE parent_new)
           OR m.id IN (SELECT child FROM edge))
    UNION ALL
    SELECT 'an idempotency key changed concurrently'
    FROM key_seen
    WHERE expected IS DISTINCT FROM actual
),
-- NULL, or raises. The call sits in a CASE over an aggregate, so it runs only once every row
-- of `stale` is known: a volatile call in a WHERE could be pushed below the joins that
-- decide those rows and run too early.
guard AS (
    SELECT CASE WHEN count(*) > 0 THEN taskforge.retry(min(reason)) END AS raised FROM stale
),
notice AS (
    SELECT pg_notify('taskforge_jobs',
                     CASE WHEN octet_length(q.name) <= 1000 THEN q.name ELSE '*' END)
    FROM (SELECT DISTINCT queue_id FROM made WHERE status IN ('pending', 'scheduled')) r
    JOIN queue q ON q.id = r.queue_id
)
SELECT 'problem' AS kind, pr.ord, pr.rank, pr.position, pr.detail, pr.project,
       NULL::uuid AS id, NULL::text AS status, NULL::timestamptz AS scheduled_for,
       NULL::timestamptz AS created_at, NULL::uuid AS project_id, NULL::integer AS queue_id
FROM problem pr
UNION ALL
SELECT 'made', m.ord, NULL, NULL, NULL, NULL, md.id, md.status::text, md.scheduled_for,
       md.created_at, md.project_id, md.queue_id
FROM made md
JOIN member m ON m.id = md.id
WHERE (SELECT raised FROM guard) IS NULL AND (SELECT count(*) FROM notice) >= 0
UNION ALL
SELECT 'existing', e.ord, NULL, NULL, NULL, NULL, e.id, NULL, NULL, NULL, NULL, NULL
FROM existing e;

-- name: enqueue_simple
-- The fast path of enqueue, for the common batch: no dependencies, and every queue already
-- known to exist ($4: their ids; queues are never deleted, so the backend caches them). Jobs
-- whose idempotency key is taken, or whose cached queue is gone, are left out of the result
-- (the backend then reads the jobs holding those keys). $2..$12: ids, project ids, queue ids, tasks, args, kwargs, priorities,
-- max_attempts, timeouts, due offsets, keys; $13: headers.
WITH clock AS (SELECT COALESCE($1::timestamptz, now()) AS now),
made AS (
    INSERT INTO taskforge.jobs (
        id, project_id, queue_id, task, status, args, kwargs, priority, attempt, max_attempts,
        timeout, scheduled_for, created_at, updated_at, key, headers
    )
    SELECT m.id, m.project_id, m.queue_id, m.task,
           CASE WHEN m.shift > interval '0' THEN 'scheduled' ELSE 'pending'
           END::taskforge.job_status,
           m.args::json, m.kwargs::json, m.priority, 0, m.max_attempts, m.timeout,
           CASE WHEN m.shift IS NULL THEN c.now ELSE taskforge.later(c.now, m.shift) END,
           c.now, c.now, m.key, m.headers::jsonb
    FROM unnest($2::uuid[], $3::uuid[], $4::integer[], $5::text[], $6::text[], $7::text[],
                $8::bigint[], $9::bigint[], $10::float8[], $11::interval[], $12::text[],
                $13::text[])
         WITH ORDINALITY AS m(id, project_id, queue_id, task, args, kwargs, priority,
                              max_attempts, timeout, shift, key, headers, ord)
    -- A cached id whose queue is gone (the database was emptied) inserts nothing: the job is
    -- missing from the result and the backend forgets its cache.
    JOIN taskforge.job_queues q ON q.id = m.queue_id AND q.project_id = m.project_id
    CROSS JOIN clock c
    ORDER BY m.ord
    ON CONFLICT (project_id, key) WHERE key IS NOT NULL DO NOTHING
    RETURNING id, status, scheduled_for, created_at, queue_id
),
notice AS (
    SELECT pg_notify('taskforge_jobs',
                     CASE WHEN octet_length(q.name) <= 1000 THEN q.name ELSE '*' END)
    FROM (SELECT DISTINCT queue_id FROM made) r
    JOIN taskforge.job_queues q ON q.id = r.queue_id
)
SELECT id, status::text AS status, scheduled_for, created_at
FROM made
WHERE (SELECT count(*) FROM notice) >= 0;

-- name: enqueue_one
-- enqueue_simple for a batch of one job without an idempotency key (so no ON CONFLICT and
-- its speculative insertion), its values as scalars (encoding thirteen one-element arrays
-- costs the client more than the rest of a single enqueue). $1 now or NULL, $2..$12: id,
-- project id, queue id, task, args, kwargs, priority, max_attempts, timeout, due offset,
-- headers; $13: the wake-up payload (the queue's name, or '*' for a name too long for it).
WITH clock AS (SELECT COALESCE($1::timestamptz, now()) AS now),
made AS (
    INSERT INTO taskforge.jobs (
        id, project_id, queue_id, task, status, args, kwargs, priority, attempt, max_attempts,
        timeout, scheduled_for, created_at, updated_at, headers
    )
    SELECT $2::uuid, $3::uuid, $4::integer, $5::text,
           CASE WHEN $11::interval > interval '0' THEN 'scheduled' ELSE 'pending'
           END::taskforge.job_status,
           $6::json, $7::json, $8::bigint, 0, $9::bigint, $10::float8,
           CASE WHEN $11::interval IS NULL THEN c.now ELSE taskforge.later(c.now, $11) END,
           c.now, c.now, $12::jsonb
    FROM clock c
    -- A cached queue that is gone inserts nothing (see enqueue_simple).
    JOIN taskforge.job_queues q ON q.id = $4::integer AND q.project_id = $3::uuid
    RETURNING id, status, scheduled_for, created_at
)
SELECT id, status::text AS status, scheduled_for, created_at
FROM made
WHERE (SELECT count(*) FROM (SELECT pg_notify('taskforge_jobs', $13) FROM made) n) >= 0;

-- name: queue_ids
-- The ids of the (project, queue) pairs ($1, $2) that exist, with their project's id.
SELECT k.project, k.queue, p.id AS project_id, q.id AS queue_id
FROM unnest($1::text[], $2::text[]) AS k(project, queue)
JOIN taskforge.projects p ON p.slug = k.project
JOIN taskforge.job_queues q ON q.project_id = p.id AND q.name = k.queue;

-- name: jobs_by_key
-- The stored jobs holding idempotency keys ($1 project slugs, $2 keys, in pairs).
SELECT j.id, p.slug AS project, q.name AS queue, j.task, j.status::text AS status, j.args,
       j.kwargs, j.priority, j.attempt, j.max_attempts, j.timeout, j.scheduled_for,
       j.created_at, j.updated_at, j.key, j.headers, j.execution_id, j.worker_id,
       j.lease_expires_at, j.started_at, j.finished_at, j.result, j.error,
       ARRAY(SELECT d.parent_id FROM taskforge.job_dependencies d
             WHERE d.job_id = j.id ORDER BY d.position) AS depends_on
FROM unnest($1::text[], $2::text[]) AS k(project, key)
JOIN taskforge.projects p ON p.slug = k.project
JOIN taskforge.jobs j ON j.project_id = p.id AND j.key = k.key
JOIN taskforge.job_queues q ON q.id = j.queue_id;

-- name: missing_queues
-- Which of the (project, queue) pairs ($1, $2) do not exist.
SELECT k.project, k.queue
FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS k(project, queue, ord)
WHERE NOT EXISTS (
    SELECT FROM taskforge.job_queues q
    JOIN taskforge.projects p ON p.id = q.project_id
    WHERE p.slug = k.project AND q.name = k.queue
)
ORDER BY k.ord;

-- name: claim
-- Claim up to $5 runnable jobs of project $2 for worker $3 with lease $4, first each share
-- ($6 queue names, $7 quotas, in order) from its own queue, then the capacity left over from
-- all the listed queues together, best first. Each claimed job gets a new execution id.
--
-- The best $5 runnable jobs of every listed unpaused queue are locked (SKIP LOCKED: jobs
-- another claim holds are passed over, never waited for). How many each queue gives in the
-- first pass follows the worker's loop over the shares: share i takes min(quota, what its
-- queue has left, what the claim has left). Per queue the shares' cumulative quota, capped by
-- the jobs available, gives what share i takes before the claim's limit applies, and the
-- limit cuts the first share that would cross it and every later one. Each queue then gives
-- its best N jobs, and the second pass the best of the rest.
WITH clock AS (SELECT COALESCE($1::timestamptz, now()) AS now),
share AS (
    SELECT s.ord, GREATEST(s.quota, 0) AS want, q.id AS queue_id, q.name
    FROM unnest($6::text[], $7::bigint[]) WITH ORDINALITY AS s(name, quota, ord)
    JOIN taskforge.projects p ON p.slug = $2
    JOIN taskforge.job_queues q ON q.project_id = p.id AND q.name = s.name AND NOT q.paused
),
candidate AS MATERIALIZED (
    SELECT c.*,
           row_number() OVER (PARTITION BY c.queue_id
                              ORDER BY c.priority DESC, c.scheduled_for, c.id) AS rank
    FROM (SELECT DISTINCT queue_id FROM share) sq
    CROSS JOIN clock
    CROSS JOIN LATERAL (
        SELECT j.id, j.queue_id, j.priority, j.scheduled_for
        FROM taskforge.jobs j
        WHERE j.queue_id = sq.queue_id
          AND j.status IN ('pending', 'scheduled')
          AND j.scheduled_for <= clock.now
        ORDER BY j.priority DESC, j.scheduled_for, j.id
        LIMIT $5
        FOR NO KEY UPDATE OF j SKIP LOCKED
    ) c
),
available AS (SELECT queue_id, count(*) AS n FROM candidate GROUP BY queue_id),
cumulative AS (
    SELECT s.ord, s.queue_id, s.want,
           sum(s.want) OVER (PARTITION BY s.queue_id ORDER BY s.ord) AS upto
    FROM share s
),
uncapped AS (
    SELECT u.ord, u.queue_id,
           LEAST(u.upto, COALESCE(a.n, 0)) - LEAST(u.upto - u.want, COALESCE(a.n, 0)) AS n
    FROM cumulative u
    LEFT JOIN available a ON a.queue_id = u.queue_id
),
capped AS (
    SELECT queue_id, GREATEST(0, LEAST(n, $5 - (sum(n) OVER (ORDER BY ord) - n))) AS n
    FROM uncapped
),
quota AS (SELECT queue_id, sum(n) AS n FROM capped GROUP BY queue_id),
first_pass AS (
    SELECT c.id, c.priority, c.scheduled_for
    FROM candidate c
    JOIN quota q ON q.queue_id = c.queue_id
    WHERE c.rank <= q.n
),
second_pass AS (
    SELECT c.id, c.priority, c.scheduled_for
    FROM candidate c
    LEFT JOIN quota q ON q.queue_id = c.queue_id
    WHERE c.rank > COALESCE(q.n, 0)
    ORDER BY c.priority DESC, c.scheduled_for, c.id
    LIMIT GREATEST(0, $5 - (SELECT COALESCE(sum(n), 0) FROM quota))
),
chosen AS (
    SELECT id FROM first_pass
    UNION ALL
    SELECT id FROM second_pass
),
-- include: claim_chosen

-- name: claim_one_queue
-- claim when the worker serves one queue ($6): its best $5 runnable jobs of project $2 for
-- worker $3 with lease $4. The same jobs as claim with one share (a lone queue's quota never
-- limits: the second pass fills the rest from it), without the quota arithmetic, which is a
-- third of a small claim's server time.
WITH clock AS (SELECT COALESCE($1::timestamptz, now()) AS now),
chosen AS MATERIALIZED (
    SELECT j.id
    FROM taskforge.jobs j, clock
    WHERE j.queue_id = (SELECT q.id FROM taskforge.job_queues q
                        JOIN taskforge.projects p ON p.id = q.project_id
                        WHERE p.slug = $2 AND q.name = $6 AND NOT q.paused)
      AND j.status IN ('pending', 'scheduled')
      AND j.scheduled_for <= clock.now
    ORDER BY j.priority DESC, j.scheduled_for, j.id
    LIMIT $5
    FOR NO KEY UPDATE OF j SKIP LOCKED
),
-- include: claim_chosen

-- name: claim_chosen
-- The end of both claims (not run alone): the jobs in `chosen` become processing for worker
-- $3 with lease $4, each with a new execution id, and are returned in claim order.
claimed AS (
    UPDATE taskforge.jobs j
    SET status = 'processing',
        attempt = j.attempt + 1,
        execution_id = taskforge.uuid7(),
        worker_id = $3,
        lease_expires_at = taskforge.later(clock.now, $4::interval),
        started_at = clock.now,
        updated_at = clock.now
    FROM chosen c, clock
    WHERE j.id = c.id
    RETURNING j.*
),
execution AS (
    INSERT INTO taskforge.job_executions (id, job_id, attempt, worker_id, status, started_at)
    SELECT execution_id, id, attempt, worker_id, 'started', started_at FROM claimed
)
SELECT j.id, $2::text AS project, q.name AS queue, j.task, j.status::text AS status, j.args,
       j.kwargs, j.priority, j.attempt, j.max_attempts, j.timeout, j.scheduled_for,
       j.created_at, j.updated_at, j.key, j.headers, j.execution_id, j.worker_id,
       j.lease_expires_at, j.started_at, j.finished_at, j.result, j.error,
       ARRAY(SELECT d.parent_id FROM taskforge.job_dependencies d
             WHERE d.job_id = j.id ORDER BY d.position) AS depends_on
FROM claimed j
JOIN taskforge.job_queues q ON q.id = j.queue_id
ORDER BY j.priority DESC, j.scheduled_for, j.id;

-- name: complete
-- Move claimed jobs to succeeded. Reports: $2 job ids, $3 execution ids, $4 results (JSON).
-- The fence: a report is taken only if its job is processing under its execution id, and
-- only the first such report on a job in the batch. Children of the completed jobs have
-- their parents_pending decreased, and a blocked child that reaches 0 is released (to
-- scheduled if its own due time is ahead). Returns every report with `accepted`.
WITH clock AS (SELECT COALESCE($1::timestamptz, now()) AS now),
report AS (
    SELECT * FROM unnest($2::uuid[], $3::uuid[], $4::text[])
                  WITH ORDINALITY AS r(job_id, execution_id, result, ord)
),
-- The reported jobs, locked in id order, each with its children_version as locked (the latest
-- committed) and as this statement's snapshot sees it (`seen`, read by the non-locking
-- sub-select). Found by primary key alone: with `status = 'processing'` here, a generic plan
-- scanned every processing job (jobs_lease) against the report, quadratic in a busy fleet;
-- winner checks the status of the locked (latest) row instead.
target AS MATERIALIZED (
    SELECT j.id, j.status, j.execution_id, j.children_version,
           (SELECT s.children_version FROM taskforge.jobs s WHERE s.id = j.id) AS seen
    FROM taskforge.jobs j
    WHERE j.id = ANY($2::uuid[])
    ORDER BY j.id
    FOR NO KEY UPDATE
),
-- Each winner carries its job's staleness, so that `stale` needs no second join with target
-- (planned for a generic plan's one-row estimates, that join was a nested loop: quadratic in
-- the batch size).
winner AS (
    SELECT DISTINCT ON (r.job_id) r.job_id, r.ord, r.result,
           t.children_version <> t.seen AS stale
    FROM report r
    JOIN target t
      ON t.id = r.job_id AND t.execution_id = r.execution_id AND t.status = 'processing'
    ORDER BY r.job_id, r.ord
),
-- NULL, or raises (see the guard of enqueue for why the call sits in a CASE).
stale AS (
    SELECT CASE WHEN bool_or(w.stale)
                THEN taskforge.retry('a child was added to a job being completed') END AS raised
    FROM winner w
),
done AS (
    UPDATE taskforge.jobs j
    SET status = 'succeeded', result = w.result::json, finished_at = c.now,
        updated_at = c.now, lease_expires_at = NULL
    FROM winner w, clock c
    WHERE j.id = w.job_id AND (SELECT raised FROM stale) IS NULL
    RETURNING j.id, j.execution_id, j.started_at
),
finished AS (
    UPDATE taskforge.job_executions e
    SET status = 'succeeded', finished_at = c.now
    FROM done d, clock c
    WHERE e.id = d.execution_id AND e.started_at = d.started_at
),
child AS (
    SELECT d.job_id AS id, count(*) AS n
    FROM taskforge.job_dependencies d
    WHERE d.parent_id IN (SELECT id FROM done)
    GROUP BY d.job_id
),
-- The children locked in id order, each with how many of its parents just succeeded (one
-- CTE, so that released joins only the jobs table, by primary key).
child_lock AS MATERIALIZED (
    SELECT j.id, ch.n FROM taskforge.jobs j
    JOIN child ch ON ch.id = j.id
    ORDER BY j.id
    FOR NO KEY UPDATE OF j
),
released AS (
    UPDATE taskforge.jobs j
    SET parents_pending = GREATEST(j.parents_pending - l.n, 0),
        status = CASE WHEN j.status = 'blocked' AND j.parents_pending <= l.n
                      THEN CASE WHEN j.scheduled_for > c.now THEN 'scheduled'
                                ELSE 'pending' END::taskforge.job_status
                      ELSE j.status END,
        updated_at = CASE WHEN j.status = 'blocked' AND j.parents_pending <= l.n
                          THEN c.now ELSE j.updated_at END
    FROM child_lock l, clock c
    WHERE j.id = l.id
    RETURNING j.status, j.queue_id
),
notice AS (
    SELECT pg_notify('taskforge_jobs',
                     CASE WHEN octet_length(q.name) <= 1000 THEN q.name ELSE '*' END)
    FROM (SELECT DISTINCT queue_id FROM released WHERE status IN ('pending', 'scheduled')) r
    JOIN taskforge.job_queues q ON q.id = r.queue_id
)
SELECT r.job_id, w.ord IS NOT NULL AS accepted
FROM report r
LEFT JOIN winner w ON w.job_id = r.job_id AND w.ord = r.ord
WHERE (SELECT count(*) FROM notice) >= 0
ORDER BY r.ord;

-- name: retry
-- Move claimed jobs back to scheduled. Reports: $2 job ids, $3 execution ids, $4 run_at as an
-- interval from now, $5 errors (JSON or NULL: keep the job's last error), $6 whether the
-- attempt counts (false: given back unrun, the attempt counter is restored). Fenced like
-- complete.
WITH clock AS (SELECT COALESCE($1::timestamptz, now()) AS now),
report AS (
    SELECT * FROM unnest($2::uuid[], $3::uuid[], $4::interval[], $5::text[], $6::boolean[])
                  WITH ORDINALITY AS r(job_id, execution_id, shift, error, consume, ord)
),
-- The reported jobs, locked in id order by primary key (see complete).
target AS MATERIALIZED (
    SELECT j.id, j.status, j.execution_id
    FROM taskforge.jobs j
    WHERE j.id = ANY($2::uuid[])
    ORDER BY j.id
    FOR NO KEY UPDATE
),
winner AS (
    SELECT DISTINCT ON (r.job_id) r.*
    FROM report r
    JOIN target t
      ON t.id = r.job_id AND t.execution_id = r.execution_id AND t.status = 'processing'
    ORDER BY r.job_id, r.ord
),
moved AS (
    UPDATE taskforge.jobs j
    SET status = 'scheduled', scheduled_for = taskforge.later(c.now, w.shift),
        error = COALESCE(w.error::json, j.error),
        attempt = j.attempt - CASE WHEN w.consume THEN 0 ELSE 1 END,
        updated_at = c.now, lease_expires_at = NULL
    FROM winner w, clock c
    WHERE j.id = w.job_id
    RETURNING j.id, j.execution_id, j.started_at, j.queue_id, w.consume, w.error
),
-- The report's fields come through moved's RETURNING: a join of two CTEs would be planned
-- as a nested loop (quadratic in the batch size) from a generic plan's one-row estimates.
closed AS (
    UPDATE taskforge.job_executions e
    SET status = CASE WHEN m.consume THEN 'retrying' ELSE 'deferred'
                 END::taskforge.execution_status,
        finished_at = c.now, error = m.error::json
    FROM moved m, clock c
    WHERE e.id = m.execution_id AND e.started_at = m.started_at
),
notice AS (
    SELECT pg_notify('taskforge_jobs',
                     CASE WHEN octet_length(q.name) <= 1000 THEN q.name ELSE '*' END)
    FROM (SELECT DISTINCT queue_id FROM moved) m
    JOIN taskforge.job_queues q ON q.id = m.queue_id
)
SELECT r.job_id, w.ord IS NOT NULL AS accepted
FROM report r
LEFT JOIN winner w ON w.job_id = r.job_id AND w.ord = r.ord
WHERE (SELECT count(*) FROM notice) >= 0
ORDER BY r.ord;

-- name: fail
-- Move claimed jobs to failed (the dead-letter queue) and cancel their not-final
-- descendants. Reports: $2 job ids, $3 execution ids, $4 errors (JSON). Fenced like complete;
-- like complete it retries when a child was added to a job it finishes (or to a descendant it
-- cancels) after its snapshot.
WITH RECURSIVE
clock AS (SELECT COALESCE($1::timestamptz, now()) AS now),
report AS (
    SELECT * FROM unnest($2::uuid[], $3::uuid[], $4::text[])
                  WITH ORDINALITY AS r(job_id, execution_id, error, ord)
),
-- The reported jobs, locked in id order, each with its children_version as locked (the latest
-- committed) and as this statement's snapshot sees it (`seen`, read by the non-locking
-- sub-select). Found by primary key alone: with `status = 'processing'` here, a generic plan
-- scanned every processing job (jobs_lease) against the report, quadratic in a busy fleet;
-- winner checks the status of the locked (latest) row instead.
target AS MATERIALIZED (
    SELECT j.id, j.status, j.execution_id, j.children_version,
           (SELECT s.children_version FROM taskforge.jobs s WHERE s.id = j.id) AS seen
    FROM taskforge.jobs j
    WHERE j.id = ANY($2::uuid[])
    ORDER BY j.id
    FOR NO KEY UPDATE
),
-- Each winner carries its job's staleness, as in complete.
winner AS (
    SELECT DISTINCT ON (r.job_id) r.job_id, r.ord, r.error,
           t.children_version <> t.seen AS stale
    FROM report r
    JOIN target t
      ON t.id = r.job_id AND t.execution_id = r.execution_id AND t.status = 'processing'
    ORDER BY r.job_id, r.ord
),
descendant (id) AS (
    SELECT d.job_id FROM taskforge.job_dependencies d
    WHERE d.parent_id IN (SELECT job_id FROM winner)
    UNION
    SELECT d.job_id FROM taskforge.job_dependencies d JOIN descendant ON d.parent_id = descendant.id
),
victim AS MATERIALIZED (
    SELECT j.id, j.status, j.execution_id, j.started_at, j.children_version,
           (SELECT s.children_version FROM taskforge.jobs s WHERE s.id = j.id) AS seen
    FROM taskforge.jobs j
    WHERE j.id IN (SELECT id FROM descendant)
      AND j.id NOT IN (SELECT job_id FROM winner)
      AND j.status IN ('pending', 'scheduled', 'blocked', 'processing')
    ORDER BY j.id
    FOR NO KEY UPDATE
),
-- NULL, or raises (see the guard of enqueue for why the call sits in a CASE).
stale AS (
    SELECT CASE WHEN bool_or(latest.stale)
                THEN taskforge.retry('a child was added to a job being failed or cancelled')
           END AS raised
    FROM (SELECT stale FROM winner
          UNION ALL
          SELECT children_version <> seen FROM victim) latest
),
failed AS (
    UPDATE taskforge.jobs j
    SET status = 'failed', error = w.error::json, finished_at = c.now, updated_at = c.now,
        lease_expires_at = NULL
    FROM winner w, clock c
    WHERE j.id = w.job_id AND (SELECT raised FROM stale) IS NULL
    RETURNING j.id, j.execution_id, j.started_at, w.error
),
closed AS (
    UPDATE taskforge.job_executions e
    SET status = 'failed', finished_at = c.now, error = f.error::json
    FROM failed f, clock c
    WHERE e.id = f.execution_id AND e.started_at = f.started_at
),
cancelled AS (
    UPDATE taskforge.jobs j
    SET status = 'cancelled', finished_at = c.now, updated_at = c.now, lease_expires_at = NULL
    FROM victim v, clock c
    WHERE j.id = v.id AND (SELECT raised FROM stale) IS NULL
),
stopped AS (
    UPDATE taskforge.job_executions e
    SET status = 'cancelled', finished_at = c.now
    FROM victim v, clock c
    WHERE v.status = 'processing' AND e.id = v.execution_id AND e.started_at = v.started_at
      AND e.status = 'started' AND (SELECT raised FROM stale) IS NULL
)
SELECT r.job_id, w.ord IS NOT NULL AS accepted
FROM report r
LEFT JOIN winner w ON w.job_id = r.job_id AND w.ord = r.ord
ORDER BY r.ord;

-- name: heartbeat
-- Record that worker $2 is alive, extend to $4 from now the leases it still holds among the
-- execution ids $3, and return its stored status (NULL when it is not registered) with the
-- execution ids whose leases were extended.
WITH clock AS (SELECT COALESCE($1::timestamptz, now()) AS now),
beat AS (
    UPDATE taskforge.workers w SET last_heartbeat_at = c.now
    FROM clock c WHERE w.id = $2
    RETURNING w.status
),
held AS MATERIALIZED (
    SELECT j.id
    FROM taskforge.jobs j
    WHERE j.status = 'processing' AND j.execution_id = ANY($3::uuid[]) AND j.worker_id = $2
    ORDER BY j.id
    FOR NO KEY UPDATE
),
extended AS (
    UPDATE taskforge.jobs j
    SET lease_expires_at = taskforge.later(c.now, $4::interval)
    FROM held h, clock c
    WHERE j.id = h.id
    RETURNING j.execution_id
)
SELECT (SELECT status FROM beat) AS status, ARRAY(SELECT execution_id FROM extended) AS held;

-- name: reclaim
-- Take back jobs whose lease expired: each counts as a failed attempt and goes back to
-- pending, or to failed (cancelling its descendants) when it has no attempts left. Runs in a
-- REPEATABLE READ transaction: if any row it changes was changed by someone else since its
-- snapshot it fails with serialization_failure and the backend runs it again.
-- The generic plan knows neither the time nor how many leases expired: the due time is
-- compared with an expression (not a join with clock), and every later step looks its rows up
-- by id (= ANY(ARRAY(...))), or it hash-joined full scans of jobs and executions (121 ms in a
-- 208,000-job database, against 8 ms).
WITH RECURSIVE
clock AS (SELECT COALESCE($1::timestamptz, now()) AS now),
expired AS MATERIALIZED (
    SELECT j.id, j.attempt, j.max_attempts, j.execution_id, j.started_at,
           CASE WHEN j.attempt < j.max_attempts THEN 'pending' ELSE 'failed'
           END::taskforge.job_status AS target,
           json_build_object(
               'type', 'LeaseExpired',
               'message', 'attempt ' || j.attempt || ' of ' || j.max_attempts
                          || ' was lost: the lease of worker '
                          || COALESCE(j.worker_id::text, 'None')
                          || ' expired before it reported',
               'traceback', '') AS error
    FROM taskforge.jobs j
    WHERE j.status = 'processing' AND j.lease_expires_at < COALESCE($1::timestamptz, now())
    ORDER BY j.id
    FOR NO KEY UPDATE OF j SKIP LOCKED
),
moved AS (
    UPDATE taskforge.jobs j
    SET status = e.target, error = e.error,
        finished_at = CASE WHEN e.target = 'failed' THEN c.now END,
        updated_at = c.now, lease_expires_at = NULL
    FROM expired e, clock c
    WHERE j.id = e.id AND j.id = ANY(ARRAY(SELECT id FROM expired))
    RETURNING j.id, j.status, j.queue_id
),
lost AS (
    UPDATE taskforge.job_executions x
    SET status = 'lost', finished_at = c.now, error = e.error
    FROM expired e, clock c
    WHERE x.id = e.execution_id AND x.started_at = e.started_at
      AND x.id = ANY(ARRAY(SELECT execution_id FROM expired))
),
descendant (id) AS (
    SELECT d.job_id FROM taskforge.job_dependencies d
    WHERE d.parent_id IN (SELECT id FROM expired WHERE target = 'failed')
    UNION
    SELECT d.job_id FROM taskforge.job_dependencies d JOIN descendant ON d.parent_id = descendant.id
),
victim AS MATERIALIZED (
    SELECT j.id, j.status, j.execution_id, j.started_at
    FROM taskforge.jobs j
    WHERE j.id = ANY(ARRAY(SELECT id FROM descendant))
      AND j.id NOT IN (SELECT id FROM expired)
      AND j.status IN ('pending', 'scheduled', 'blocked', 'processing')
    ORDER BY j.id
    FOR NO KEY UPDATE
),
cancelled AS (
    UPDATE taskforge.jobs j
    SET status = 'cancelled', finished_at = c.now, updated_at = c.now, lease_expires_at = NULL
    FROM victim v, clock c
    WHERE j.id = v.id
),
stopped AS (
    UPDATE taskforge.job_executions e
    SET status = 'cancelled', finished_at = c.now
    FROM victim v, clock c
    WHERE v.status = 'processing' AND e.id = v.execution_id AND e.started_at = v.started_at
      AND e.status = 'started'
),
notice AS (
    SELECT pg_notify('taskforge_jobs',
                     CASE WHEN octet_length(q.name) <= 1000 THEN q.name ELSE '*' END)
    FROM (SELECT DISTINCT queue_id FROM moved WHERE status = 'pending') m
    JOIN taskforge.job_queues q ON q.id = m.queue_id
)
SELECT id FROM moved WHERE (SELECT count(*) FROM notice) >= 0 ORDER BY id;

-- name: cancel
-- Cancel the not-final jobs among $2 of project $3 and their not-final descendants; a
-- running attempt is cancelled too. Returns the ids cancelled: the requested ones in request
-- order, then the descendants by id. REPEATABLE READ, like reclaim. The victims are looked
-- up by id (= ANY(ARRAY(...))): an OR of two IN sub-queries is no index condition, so each
-- cancel read every job (100 ms in a 208,000-job database, against 4 ms).
WITH RECURSIVE
clock AS (SELECT COALESCE($1::timestamptz, now()) AS now),
target AS (
    SELECT DISTINCT ON (j.id) j.id, w.ord
    FROM unnest($2::uuid[]) WITH ORDINALITY AS w(id, ord)
    JOIN taskforge.jobs j ON j.id = w.id
    WHERE j.project_id = (SELECT id FROM taskforge.projects WHERE slug = $3)
      AND j.status IN ('pending', 'scheduled', 'blocked', 'processing')
    ORDER BY j.id, w.ord
),
descendant (id) AS (
    SELECT d.job_id FROM taskforge.job_dependencies d WHERE d.parent_id IN (SELECT id FROM target)
    UNION
    SELECT d.job_id FROM taskforge.job_dependencies d JOIN descendant ON d.parent_id = descendant.id
),
victim AS MATERIALIZED (
    SELECT j.id, j.status, j.execution_id, j.started_at
    FROM taskforge.jobs j
    WHERE j.id = ANY(ARRAY(SELECT id FROM target UNION ALL SELECT id FROM descendant))
      AND j.status IN ('pending', 'scheduled', 'blocked', 'processing')
    ORDER BY j.id
    FOR NO KEY UPDATE
),
cancelled AS (
    UPDATE taskforge.jobs j
    SET status = 'cancelled', finished_at = c.now, updated_at = c.now, lease_expires_at = NULL
    FROM victim v, clock c
    WHERE j.id = v.id
),
stopped AS (
    UPDATE taskforge.job_executions e
    SET status = 'cancelled', finished_at = c.now
    FROM victim v, clock c
    WHERE v.status = 'processing' AND e.id = v.execution_id AND e.started_at = v.started_at
      AND e.status = 'started'
)
SELECT v.id
FROM victim v
LEFT JOIN target t ON t.id = v.id
ORDER BY t.ord NULLS LAST, v.id;

-- name: replay_candidates
-- The jobs matching a filter (see list_jobs for $2..$7) with their parents' ids and
-- statuses, oldest first; the backend decides in Python which to replay (REPEATABLE READ).
SELECT j.id, j.status::text AS status,
       ARRAY(SELECT d.parent_id FROM taskforge.job_dependencies d
             WHERE d.job_id = j.id ORDER BY d.position) AS parent_ids,
       ARRAY(SELECT p.status::text FROM taskforge.job_dependencies d
             JOIN taskforge.jobs p ON p.id = d.parent_id
             WHERE d.job_id = j.id ORDER BY d.position) AS parent_statuses
FROM taskforge.jobs j
WHERE j.project_id = (SELECT id FROM taskforge.projects WHERE slug = $2)
  AND ($3::text[] IS NULL OR j.status = ANY($3::text[]::taskforge.job_status[]))
  AND ($4::text IS NULL OR j.queue_id = (
          SELECT q.id FROM taskforge.job_queues q JOIN taskforge.projects p
          ON p.id = q.project_id WHERE p.slug = $2 AND q.name = $4))
  AND ($5::text IS NULL OR j.task = $5)
  AND ($6::uuid[] IS NULL OR j.id = ANY($6::uuid[]))
  AND ($7::interval IS NULL
       OR j.updated_at < taskforge.later(COALESCE($1::timestamptz, now()), $7::interval))
ORDER BY j.id;

-- name: replay_apply
-- Move the failed or cancelled jobs $2 back to the statuses $3 (pending or blocked) with
-- their attempt counter reset.
WITH clock AS (SELECT COALESCE($1::timestamptz, now()) AS now),
moved AS (
    UPDATE taskforge.jobs j
    SET status = r.status::taskforge.job_status, attempt = 0, error = NULL, result = NULL,
        lease_expires_at = NULL, finished_at = NULL, scheduled_for = c.now, updated_at = c.now
    FROM unnest($2::uuid[], $3::text[]) AS r(id, status), clock c
    WHERE j.id = r.id AND j.status IN ('failed', 'cancelled')
    RETURNING j.id, j.status, j.queue_id
),
notice AS (
    SELECT pg_notify('taskforge_jobs',
                     CASE WHEN octet_length(q.name) <= 1000 THEN q.name ELSE '*' END)
    FROM (SELECT DISTINCT queue_id FROM moved WHERE status = 'pending') m
    JOIN taskforge.job_queues q ON q.id = m.queue_id
)
SELECT count(*) FROM moved WHERE (SELECT count(*) FROM notice) >= 0;

-- name: purge
-- Delete the final jobs matching a filter (see list_jobs for $2..$7) that no active job
-- depends on, with their dependencies, executions and logs; at most $8 of them (the backend
-- repeats until none is left). Children that stay have parents_pending decreased for each
-- deleted parent that had not succeeded. Returns how many were deleted. REPEATABLE READ.
WITH target AS MATERIALIZED (
    SELECT j.id, j.status
    FROM taskforge.jobs j
    WHERE j.project_id = (SELECT id FROM taskforge.projects WHERE slug = $2)
      AND ($3::text[] IS NULL OR j.status = ANY($3::text[]::taskforge.job_status[]))
      AND ($4::text IS NULL OR j.queue_id = (
              SELECT q.id FROM taskforge.job_queues q JOIN taskforge.projects p
              ON p.id = q.project_id WHERE p.slug = $2 AND q.name = $4))
      AND ($5::text IS NULL OR j.task = $5)
      AND ($6::uuid[] IS NULL OR j.id = ANY($6::uuid[]))
      AND ($7::interval IS NULL
           OR j.updated_at < taskforge.later(COALESCE($1::timestamptz, now()), $7::interval))
      AND j.status IN ('succeeded', 'failed', 'cancelled')
      AND NOT EXISTS (
          SELECT FROM taskforge.job_dependencies d
          JOIN taskforge.jobs c ON c.id = d.job_id
          WHERE d.parent_id = j.id
            AND c.status IN ('pending', 'scheduled', 'blocked', 'processing'))
    ORDER BY j.id
    LIMIT $8
    FOR UPDATE
),
child AS (
    SELECT d.job_id AS id, count(*) AS n
    FROM taskforge.job_dependencies d
    JOIN target t ON t.id = d.parent_id
    WHERE t.status <> 'succeeded' AND d.job_id NOT IN (SELECT id FROM target)
    GROUP BY d.job_id
),
fixed AS (
    UPDATE taskforge.jobs j
    SET parents_pending = GREATEST(j.parents_pending - ch.n, 0)
    FROM child ch
    WHERE j.id = ch.id
),
gone AS (
    DELETE FROM taskforge.jobs j WHERE j.id IN (SELECT id FROM target) RETURNING j.id
)
SELECT count(*) FROM gone;

-- name: get_jobs
-- The jobs among $1 in project $2.
SELECT j.id, p.slug AS project, q.name AS queue, j.task, j.status::text AS status, j.args,
       j.kwargs, j.priority, j.attempt, j.max_attempts, j.timeout, j.scheduled_for,
       j.created_at, j.updated_at, j.key, j.headers, j.execution_id, j.worker_id,
       j.lease_expires_at, j.started_at, j.finished_at, j.result, j.error,
       ARRAY(SELECT d.parent_id FROM taskforge.job_dependencies d
             WHERE d.job_id = j.id ORDER BY d.position) AS depends_on
FROM taskforge.jobs j
JOIN taskforge.projects p ON p.id = j.project_id
JOIN taskforge.job_queues q ON q.id = j.queue_id
WHERE j.id = ANY($1::uuid[]) AND p.slug = $2;

-- name: list_jobs
-- Jobs of project $2 newest first, filtered by: $3 statuses, $4 queue, $5 task, $6 ids,
-- $7 updated before (an interval from now); $8 the cursor (list ids below it), $9 the limit.
SELECT j.id, p.slug AS project, q.name AS queue, j.task, j.status::text AS status, j.args,
       j.kwargs, j.priority, j.attempt, j.max_attempts, j.timeout, j.scheduled_for,
       j.created_at, j.updated_at, j.key, j.headers, j.execution_id, j.worker_id,
       j.lease_expires_at, j.started_at, j.finished_at, j.result, j.error,
       ARRAY(SELECT d.parent_id FROM taskforge.job_dependencies d
             WHERE d.job_id = j.id ORDER BY d.position) AS depends_on
FROM taskforge.jobs j
JOIN taskforge.projects p ON p.id = j.project_id
JOIN taskforge.job_queues q ON q.id = j.queue_id
WHERE j.project_id = (SELECT id FROM taskforge.projects WHERE slug = $2)
  AND ($3::text[] IS NULL OR j.status = ANY($3::text[]::taskforge.job_status[]))
  AND ($4::text IS NULL OR j.queue_id = (
          SELECT q2.id FROM taskforge.job_queues q2 JOIN taskforge.projects p2
          ON p2.id = q2.project_id WHERE p2.slug = $2 AND q2.name = $4))
  AND ($5::text IS NULL OR j.task = $5)
  AND ($6::uuid[] IS NULL OR j.id = ANY($6::uuid[]))
  AND ($7::interval IS NULL
       OR j.updated_at < taskforge.later(COALESCE($1::timestamptz, now()), $7::interval))
  AND ($8::uuid IS NULL OR j.id < $8)
ORDER BY j.id DESC
LIMIT $9;

-- name: queue_stats
-- Job counts per (queue, status) of project $1; queues without jobs give one row with a
-- NULL status.
SELECT q.name, q.paused, j.status::text AS status, count(j.id) AS n
FROM taskforge.job_queues q
LEFT JOIN taskforge.jobs j ON j.queue_id = q.id
WHERE q.project_id = (SELECT id FROM taskforge.projects WHERE slug = $1)
GROUP BY q.id, q.name, q.paused, j.status;

-- name: ensure_project
-- The id of project $2, creating it (with id $3, in the default organization) if missing.
-- Run as two statements' worth of work: the INSERT below, then project_id.
INSERT INTO taskforge.projects (id, organization_id, name, slug, created_at)
VALUES ($3, '00000000-0000-0000-0000-000000000000', $2, $2, COALESCE($1::timestamptz, now()))
ON CONFLICT (slug) DO NOTHING;

-- name: project_id
SELECT id FROM taskforge.projects WHERE slug = $1;

-- name: set_queue_paused
-- Pause or resume queue $3 of project id $2, creating it if missing; a resumed queue wakes
-- its workers.
WITH saved AS (
    INSERT INTO taskforge.job_queues (project_id, name, paused, created_at)
    VALUES ($2, $3, $4, COALESCE($1::timestamptz, now()))
    ON CONFLICT (project_id, name) DO UPDATE SET paused = EXCLUDED.paused
    RETURNING name, paused
),
notice AS (
    SELECT pg_notify('taskforge_jobs',
                     CASE WHEN octet_length(name) <= 1000 THEN name ELSE '*' END)
    FROM saved WHERE NOT paused
)
SELECT paused FROM saved WHERE (SELECT count(*) FROM notice) >= 0;

-- name: list_queues
SELECT q.name, q.paused
FROM taskforge.job_queues q
JOIN taskforge.projects p ON p.id = q.project_id
WHERE p.slug = $1
ORDER BY q.name;

-- name: register_worker
-- Record worker $2 of project id $3 ($4 name, $5 hostname, $6 pid, $7 concurrency, $8 status,
-- $9/$10 started and last heartbeat as intervals from now, NULL meaning now) and replace its
-- queue assignments with $11 queue names and $12 weights (queues are created if missing).
WITH clock AS (SELECT COALESCE($1::timestamptz, now()) AS now),
saved AS (
    INSERT INTO taskforge.workers (id, project_id, name, hostname, pid, concurrency, status,
                                   started_at, last_heartbeat_at)
    SELECT $2, $3, $4, $5, $6, $7, $8,
           CASE WHEN $9::interval IS NULL THEN c.now ELSE taskforge.later(c.now, $9) END,
           CASE WHEN $10::interval IS NULL THEN c.now ELSE taskforge.later(c.now, $10) END
    FROM clock c
    ON CONFLICT (id) DO UPDATE SET
        project_id = EXCLUDED.project_id, name = EXCLUDED.name,
        hostname = EXCLUDED.hostname, pid = EXCLUDED.pid,
        concurrency = EXCLUDED.concurrency, status = EXCLUDED.status,
        started_at = EXCLUDED.started_at, last_heartbeat_at = EXCLUDED.last_heartbeat_at
    RETURNING id
),
dropped AS (
    DELETE FROM taskforge.queue_worker_assignments a
    WHERE a.worker_id = $2
      AND a.queue_id NOT IN (
          SELECT q.id FROM taskforge.job_queues q
          WHERE q.project_id = $3 AND q.name = ANY($11::text[]))
)
INSERT INTO taskforge.queue_worker_assignments (worker_id, queue_id, weight)
SELECT s.id, q.id, a.weight
FROM saved s
CROSS JOIN unnest($11::text[], $12::bigint[]) AS a(name, weight)
JOIN taskforge.job_queues q ON q.project_id = $3 AND q.name = a.name
ON CONFLICT (worker_id, queue_id) DO UPDATE SET weight = EXCLUDED.weight;

-- name: ensure_queues
-- Create the queues $3 of project id $2 that do not exist yet.
INSERT INTO taskforge.job_queues (project_id, name, paused, created_at)
SELECT $2, n, false, COALESCE($1::timestamptz, now())
FROM unnest($3::text[]) AS n
ON CONFLICT (project_id, name) DO NOTHING;

-- name: set_worker_status
UPDATE taskforge.workers SET status = $2 WHERE id = $1;

-- name: list_workers
-- The workers of project $1 by name, each with its assignments by queue name.
SELECT w.id, w.name, w.hostname, w.pid, w.concurrency, w.status, w.started_at,
       w.last_heartbeat_at,
       ARRAY(SELECT q.name FROM taskforge.queue_worker_assignments a
             JOIN taskforge.job_queues q ON q.id = a.queue_id
             WHERE a.worker_id = w.id ORDER BY q.name) AS queues,
       ARRAY(SELECT a.weight FROM taskforge.queue_worker_assignments a
             JOIN taskforge.job_queues q ON q.id = a.queue_id
             WHERE a.worker_id = w.id ORDER BY q.name) AS weights
FROM taskforge.workers w
WHERE w.project_id = (SELECT id FROM taskforge.projects WHERE slug = $1)
ORDER BY w.name, w.id;

-- name: list_executions
SELECT id, attempt, worker_id, status::text AS status, started_at, finished_at, error
FROM taskforge.job_executions
WHERE job_id = $1
ORDER BY started_at, id;

-- name: add_logs
-- Store log lines ($1 job ids, $2 execution ids, $3 times, $4 levels, $5 messages, $6 fields
-- as JSON). Lines of a job purged meanwhile are dropped rather than failing the batch: the
-- job row is share-locked so that a purge cannot delete it between this check and the
-- insert.
INSERT INTO taskforge.execution_logs (job_id, execution_id, at, level, message, fields)
SELECT l.job_id, l.execution_id, l.at, l.level, l.message, l.fields::json
FROM unnest($1::uuid[], $2::uuid[], $3::timestamptz[], $4::text[], $5::text[], $6::text[])
     WITH ORDINALITY AS l(job_id, execution_id, at, level, message, fields, ord)
JOIN taskforge.jobs j ON j.id = l.job_id
ORDER BY l.ord
FOR KEY SHARE OF j;

-- name: list_logs
SELECT execution_id, at, level, message, fields
FROM taskforge.execution_logs
WHERE job_id = $1
ORDER BY at, id;

-- name: maintain_partitions
-- Create the history partitions for the coming $2 days, drop those older than $3.
SELECT action, table_name
FROM taskforge.maintain_partitions(COALESCE($1::timestamptz, now()), $2, $3::interval);

-- name: purge_finished
-- Retention: delete at most $4 jobs of any project in status $2 last updated more than $3
-- before now that no active job depends on (see purge). REPEATABLE READ.
WITH target AS MATERIALIZED (
    SELECT j.id, j.status
    FROM taskforge.jobs j
    WHERE j.status = $2::text::taskforge.job_status
      AND j.updated_at < taskforge.later(COALESCE($1::timestamptz, now()), -$3::interval)
      AND NOT EXISTS (
          SELECT FROM taskforge.job_dependencies d
          JOIN taskforge.jobs c ON c.id = d.job_id
          WHERE d.parent_id = j.id
            AND c.status IN ('pending', 'scheduled', 'blocked', 'processing'))
    ORDER BY j.id
    LIMIT $4
    FOR UPDATE
),
child AS (
    SELECT d.job_id AS id, count(*) AS n
    FROM taskforge.job_dependencies d
    JOIN target t ON t.id = d.parent_id
    WHERE t.status <> 'succeeded' AND d.job_id NOT IN (SELECT id FROM target)
    GROUP BY d.job_id
),
fixed AS (
    UPDATE taskforge.jobs j
    SET parents_pending = GREATEST(j.parents_pending - ch.n, 0)
    FROM child ch
    WHERE j.id = ch.id
),
gone AS (
    DELETE FROM taskforge.jobs j WHERE j.id IN (SELECT id FROM target) RETURNING j.id
)
SELECT count(*) FROM gone;

-- name: jobs_by_id
-- The jobs among $1, whatever their project.
SELECT j.id, p.slug AS project, q.name AS queue, j.task, j.status::text AS status, j.args,
       j.kwargs, j.priority, j.attempt, j.max_attempts, j.timeout, j.scheduled_for,
       j.created_at, j.updated_at, j.key, j.headers, j.execution_id, j.worker_id,
       j.lease_expires_at, j.started_at, j.finished_at, j.result, j.error,
       ARRAY(SELECT d.parent_id FROM taskforge.job_dependencies d
             WHERE d.job_id = j.id ORDER BY d.position) AS depends_on
FROM taskforge.jobs j
JOIN taskforge.projects p ON p.id = j.project_id
JOIN taskforge.job_queues q ON q.id = j.queue_id
WHERE j.id = ANY($1::uuid[]);
