-- 0002_jobs_without_tenancy_foreign_keys: jobs no longer declare foreign keys to projects and
-- job_queues.
--
-- Safe while older workers run: yes. Their statements join projects and queues as before; the
-- only difference they could see is that an enqueue against a queue id cached from a database
-- that was since emptied stores its jobs instead of failing (test set-ups, not production).
--
-- Why: each foreign key is a trigger per inserted row (a lookup and a row lock on the queue),
-- about 5 µs a job each: 40% of the server's work for a bulk enqueue, and 40 µs of a
-- single-job one. Every statement that inserts a job takes its project and queue from those
-- tables in the same statement (the batched fast path joins the cached ids with job_queues
-- and treats a missing row as a stale cache), and TaskForge never deletes a project or a
-- queue, so the keys only guarded against what no statement does.
ALTER TABLE taskforge.jobs
    DROP CONSTRAINT jobs_project_id_fkey,
    DROP CONSTRAINT jobs_queue_id_fkey;
