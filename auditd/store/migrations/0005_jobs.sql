-- 0005: periodic jobs (auditd/jobs/): when each last ran, so that a restart derives the
-- next due time from the store instead of counting the interval from its own start.
CREATE TABLE jobs (
    job_id       TEXT PRIMARY KEY,
    last_started TEXT,
    last_finished TEXT,
    last_ok      INTEGER,
    last_error   TEXT,
    runs         INTEGER NOT NULL DEFAULT 0
);
