-- 0010: the deliver stage's tables (auditd/deliver/), written only by it.

-- The outbox: one row per message and route. A notice (respond's `notices` row) has one
-- route per channel its recipient is reached by (the security team: chat and e-mail);
-- the stage's own messages (digests, delivery-failure escalations) have no notice.
-- A row is `sending` in a committed transaction before its message goes on the wire, so
-- after a crash the messages that may have gone out are known: they are sent again and
-- marked possible repeats.
CREATE TABLE outbox (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    notice_seq      INTEGER,                -- notices.seq; NULL for a digest or an escalation
    route           TEXT NOT NULL,          -- channel and target: email, chat:security-team#0, ...
    channel         TEXT NOT NULL,          -- the channel kind: email, sms, push, chat, webhook, letter, portal
    wire_key        TEXT NOT NULL,          -- the idempotency key on the wire: fleet-wide
    incident_id     TEXT,
    fleet_key       TEXT,
    step_id         TEXT,
    kind            TEXT NOT NULL,          -- the notice's kind, or digest, delivery-failed
    audience        TEXT NOT NULL,
    recipient       TEXT NOT NULL,          -- pseudonym or audience name: never an address
    contact_ref     TEXT NOT NULL,
    body_path       TEXT NOT NULL,
    state           TEXT NOT NULL,          -- held, pending, sending, retrying, delivered, failed,
                                            -- suppressed, fleet (delivered by another daemon)
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at TEXT NOT NULL,
    created_at      TEXT NOT NULL,
    claimed_at      TEXT,
    claimed_by      TEXT,                   -- the worker (process) that marked it sending
    possible_repeat INTEGER NOT NULL DEFAULT 0,  -- in flight at a crash: sent again
    delivered_at    TEXT,
    receipt         TEXT,                   -- JSON: queue id, HTTP status and id, file path, ...
    message_sha256  TEXT,                   -- of the bytes that went out (MIME message, JSON body, file)
    last_error      TEXT,
    escalated_at    TEXT,                   -- failed, and the escalation message queued
    covered_by      TEXT,                   -- suppressed by a realert window / part of a digest: that key
    body_deleted_at TEXT,                   -- a customer's rendered file (raw contact data) deleted
    UNIQUE (notice_seq, route)
);
CREATE INDEX outbox_due ON outbox (state, route, next_attempt_at);
CREATE INDEX outbox_by_incident ON outbox (incident_id, audience, kind);
CREATE INDEX outbox_by_wire_key ON outbox (wire_key);

-- Every attempt: when, how it ended, the receipt or the error (never an address).
CREATE TABLE delivery_attempts (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    outbox_id   INTEGER NOT NULL,
    attempt     INTEGER NOT NULL,
    claimed_at  TEXT NOT NULL,
    finished_at TEXT NOT NULL,
    outcome     TEXT NOT NULL,              -- delivered, retry, failed, interrupted (in flight at a crash)
    receipt     TEXT,
    error       TEXT
);
CREATE INDEX delivery_attempts_by_outbox ON delivery_attempts (outbox_id);
