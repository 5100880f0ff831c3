-- 0009: runtime suppressions (`neo-auditd suppress add|list|remove`): the rule files'
-- `exceptions` for what cannot wait for a rule change, with the same fields (what to
-- match, owner, reason, expiry), kept here so that every host's daemon and `status`
-- see them. A removed suppression keeps its row (who removed it and when).
CREATE TABLE suppressions (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    rule_id    TEXT NOT NULL,      -- a rule's id, or '*' for every rule
    fields     TEXT NOT NULL,      -- JSON list of ECS field names
    match_values TEXT NOT NULL,    -- JSON list of values, one per field
    owner      TEXT NOT NULL,
    reason     TEXT NOT NULL,
    created_at TEXT NOT NULL,
    expires_at TEXT NOT NULL,      -- applies to events before this time
    removed_at TEXT,
    removed_by TEXT
);
CREATE INDEX suppressions_active ON suppressions (removed_at, expires_at);
