-- 0004: the state of stateful rule kinds (windows, baselines, first-seen values).
-- Keyed by rule id and a hash of the rule's content, so a reload that changes one rule
-- starts that rule afresh and keeps every other rule's state. Written in the batch's
-- transaction, with its alerts and checkpoint.
CREATE TABLE detector_state (
    rule_id   TEXT NOT NULL,
    rule_hash TEXT NOT NULL,
    key       TEXT NOT NULL,       -- the rule's group key (an actor, a credential, ...)
    touched   INTEGER NOT NULL,    -- rises with every write of the rule: eviction is oldest first
    value     BLOB NOT NULL,       -- msgpack, the kind's own shape
    PRIMARY KEY (rule_id, rule_hash, key)
) WITHOUT ROWID;
CREATE INDEX detector_state_by_age ON detector_state (rule_id, rule_hash, touched);

-- per rule version: keys evicted over the cap (a detection silently missed otherwise)
CREATE TABLE detector_rules (
    rule_id   TEXT NOT NULL,
    rule_hash TEXT NOT NULL,
    evicted   INTEGER NOT NULL DEFAULT 0,
    bad_rows  INTEGER NOT NULL DEFAULT 0,  -- unreadable rows found and rebuilt
    updated_at TEXT NOT NULL,
    PRIMARY KEY (rule_id, rule_hash)
) WITHOUT ROWID;
