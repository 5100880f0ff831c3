-- 0001: the schema as it stood before numbered migrations (stores of 0.1.0 carry
-- user_version 0 and these tables: IF NOT EXISTS adopts them as they are).
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS checkpoints (
    source TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    path TEXT NOT NULL,
    offset INTEGER NOT NULL,
    tail_hash TEXT NOT NULL DEFAULT '',
    cursor TEXT,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (source, fingerprint)
);
CREATE TABLE IF NOT EXISTS event_segments (
    seq INTEGER PRIMARY KEY,
    source TEXT NOT NULL,
    first_ts_us INTEGER NOT NULL,
    last_ts_us INTEGER NOT NULL,
    count INTEGER NOT NULL,
    doc BLOB NOT NULL  -- msgpack array of AccessEvent
);
CREATE INDEX IF NOT EXISTS event_segments_last_ts ON event_segments (last_ts_us);
CREATE TABLE IF NOT EXISTS evidence (
    event_id TEXT PRIMARY KEY,
    ts_us INTEGER NOT NULL,
    doc BLOB NOT NULL  -- msgpack AccessEvent
);
CREATE TABLE IF NOT EXISTS quarantine (
    seq INTEGER PRIMARY KEY,
    source TEXT NOT NULL,
    path TEXT NOT NULL,
    offset INTEGER NOT NULL,
    reason TEXT NOT NULL,
    length INTEGER NOT NULL,
    record BLOB NOT NULL,
    at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS source_stats (
    source TEXT PRIMARY KEY,
    events INTEGER NOT NULL DEFAULT 0,
    quarantined INTEGER NOT NULL DEFAULT 0,
    skipped INTEGER NOT NULL DEFAULT 0,
    last_event_at TEXT,
    updated_at TEXT
);

CREATE TABLE IF NOT EXISTS incidents (
    incident_id      TEXT PRIMARY KEY,        -- INC-YYYYMMDD-NNNN, date in Asia/Shanghai
    group_key        TEXT NOT NULL,           -- the actor, or the rule for actor-less alerts
    actor            TEXT,
    title            TEXT NOT NULL,
    tier             TEXT NOT NULL,           -- in force (a person may have set it)
    auto_tier        TEXT NOT NULL,           -- the highest the correlator has graded
    status           TEXT NOT NULL,
    assignee         TEXT,
    severity         TEXT NOT NULL,           -- the highest of its alerts
    first_seen       TEXT NOT NULL,           -- event time of the earliest alert
    last_seen        TEXT NOT NULL,           -- event time of the latest alert
    discovered_at    TEXT NOT NULL,           -- wall clock at opening: starts the legal clocks
    updated_at       TEXT NOT NULL,
    alert_count      INTEGER NOT NULL,
    affected_count   INTEGER NOT NULL,        -- rows of incident_subjects
    max_record_count INTEGER NOT NULL,
    sensitive        INTEGER NOT NULL,
    band             TEXT,                    -- criminal band family reached, if any
    rules            TEXT NOT NULL,           -- JSON array of rule ids, sorted
    categories       TEXT NOT NULL,           -- JSON array, sorted
    timeline_seq     INTEGER NOT NULL,        -- seq and hash of the last timeline entry
    timeline_head    TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS incidents_by_group ON incidents (group_key, last_seen);
CREATE INDEX IF NOT EXISTS incidents_by_last_seen ON incidents (last_seen);
CREATE INDEX IF NOT EXISTS incidents_by_status ON incidents (status, last_seen);

CREATE TABLE IF NOT EXISTS incident_counters (
    day  TEXT PRIMARY KEY,                    -- YYYYMMDD in Asia/Shanghai
    last INTEGER NOT NULL
);

-- pseudonyms only: the enrich stage replaced raw customer ids before detection
CREATE TABLE IF NOT EXISTS incident_subjects (
    incident_id TEXT NOT NULL REFERENCES incidents (incident_id) DEFERRABLE INITIALLY DEFERRED,
    subject_id  TEXT NOT NULL,
    PRIMARY KEY (incident_id, subject_id)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS alerts (
    alert_id    TEXT PRIMARY KEY,
    incident_id TEXT NOT NULL REFERENCES incidents (incident_id) DEFERRABLE INITIALLY DEFERRED,
    rule_id     TEXT NOT NULL,
    severity    TEXT NOT NULL,
    timestamp   TEXT NOT NULL,
    doc         TEXT NOT NULL                 -- the Alert as JSON
);
CREATE INDEX IF NOT EXISTS alerts_by_incident ON alerts (incident_id, timestamp);

CREATE TABLE IF NOT EXISTS incident_timeline (
    incident_id TEXT NOT NULL REFERENCES incidents (incident_id) DEFERRABLE INITIALLY DEFERRED,
    seq         INTEGER NOT NULL,             -- 1, 2, 3, ... per incident
    at          TEXT NOT NULL,                -- wall clock
    kind        TEXT NOT NULL,
    who         TEXT NOT NULL,
    data        TEXT NOT NULL,                -- canonical JSON
    prev_hash   TEXT NOT NULL,
    hash        TEXT NOT NULL,                -- sha256(prev_hash + canonical JSON of the entry)
    PRIMARY KEY (incident_id, seq)
) WITHOUT ROWID;

-- The hash chain shows tampering; these stop the accidental kind.
CREATE TRIGGER IF NOT EXISTS incident_timeline_no_update
BEFORE UPDATE ON incident_timeline
BEGIN
    SELECT RAISE(ABORT, 'incident_timeline is append-only');
END;
CREATE TRIGGER IF NOT EXISTS incident_timeline_no_delete
BEFORE DELETE ON incident_timeline
BEGIN
    SELECT RAISE(ABORT, 'incident_timeline is append-only');
END;

CREATE TABLE IF NOT EXISTS elastic_dead_letters (
    seq INTEGER PRIMARY KEY,
    feed TEXT NOT NULL,              -- events, alerts, incidents
    row_key INTEGER NOT NULL,        -- events.seq / alerts.rowid / position in the page
    doc_id TEXT NOT NULL,
    target TEXT NOT NULL,            -- the index or data stream
    status INTEGER NOT NULL,         -- 0: never sent (could not be encoded)
    reason TEXT NOT NULL,
    document BLOB NOT NULL,          -- what was (or would have been) sent, to re-drive
    at TEXT NOT NULL
)
;
