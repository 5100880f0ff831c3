-- 0008: the respond stage's tables (auditd/respond/), written only by it, in the same
-- transaction as its change-log cursor ('respond') or as the person's command.

-- One row per playbook step of an incident: the clocks are data. A restart reads them
-- back, so nothing due is lost and nothing fired fires again.
CREATE TABLE playbook_steps (
    incident_id  TEXT NOT NULL,
    step_id      TEXT NOT NULL,
    playbook     TEXT NOT NULL,            -- the playbook (tier) that added the step
    kind         TEXT NOT NULL,            -- notify, contain, task, approval, report, announce, escalate
    title        TEXT NOT NULL,
    audience     TEXT,
    owner        TEXT,
    spec         TEXT NOT NULL,            -- JSON: the step as planned (respond.playbook.Step)
    anchor       TEXT NOT NULL,            -- discovery or resolution: what due_at counts from
    due_at       TEXT,                     -- NULL while its anchor has not happened (resolution)
    waits_for    TEXT NOT NULL,            -- JSON array of step ids
    state        TEXT NOT NULL,            -- pending, running, review, requested, done, approved,
                                           -- skipped, failed, cancelled
    added_at     TEXT NOT NULL,
    started_at   TEXT,                     -- the job claimed it (a contain action runs after this commits)
    fired_at     TEXT,
    late         INTEGER NOT NULL DEFAULT 0,  -- fired after due_at (e.g. the daemon was down)
    closed_at    TEXT,                     -- NULL while the step is open: it counts as overdue past due_at
    closed_by    TEXT,
    reason       TEXT,                     -- why skipped, failed or cancelled
    escalations  INTEGER NOT NULL DEFAULT 0,
    next_escalation_at TEXT,
    result       TEXT,                     -- JSON: exit status, counts, paths; never raw customer data
    PRIMARY KEY (incident_id, step_id)
) WITHOUT ROWID;
CREATE INDEX playbook_steps_open ON playbook_steps (closed_at, due_at);

-- Rendered messages for the delivery stage's outbox: one row per recipient and revision.
-- `recipient` is a customer pseudonym or an audience name; the raw address lives only
-- in the per-recipient file at body_path (mode 0600 under the state directory).
CREATE TABLE notices (
    seq             INTEGER PRIMARY KEY AUTOINCREMENT,  -- delivery reads in this order
    idempotency_key TEXT NOT NULL UNIQUE,               -- incident/step/recipient/revision
    incident_id     TEXT NOT NULL,
    step_id         TEXT NOT NULL,
    revision        INTEGER NOT NULL,
    kind            TEXT NOT NULL,          -- notice, announcement, escalation, regulator, police, alert
    audience        TEXT NOT NULL,
    channel         TEXT NOT NULL,
    recipient       TEXT NOT NULL,          -- pseudonym (p:...) or audience name
    contact_ref     TEXT NOT NULL,          -- where delivery finds the address: contact:<pseudonym>:<channel> or audience:<name>
    language        TEXT NOT NULL,
    subject         TEXT NOT NULL,          -- no raw customer data
    body_path       TEXT NOT NULL,
    body_sha256     TEXT NOT NULL,
    rendered_at     TEXT NOT NULL
);
CREATE INDEX notices_by_incident ON notices (incident_id, step_id);

-- Regulator reports and notice drafts as rendered: Markdown, HTML and JSON files.
CREATE TABLE reports (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    incident_id  TEXT NOT NULL,
    kind         TEXT NOT NULL,            -- initial, followup, closing, notice-draft
    revision     INTEGER NOT NULL,
    cause_known  INTEGER NOT NULL,
    markdown_path TEXT NOT NULL,
    html_path    TEXT NOT NULL,
    json_path    TEXT NOT NULL,
    sha256       TEXT NOT NULL,            -- of the JSON
    rendered_at  TEXT NOT NULL,
    rendered_by  TEXT NOT NULL,
    UNIQUE (incident_id, kind, revision)
);

-- What people found out, for the reports: cause, leads, planned measures, ... (latest wins).
CREATE TABLE report_findings (
    incident_id TEXT NOT NULL,
    field       TEXT NOT NULL,
    text        TEXT NOT NULL,
    who         TEXT NOT NULL,
    at          TEXT NOT NULL,
    PRIMARY KEY (incident_id, field)
) WITHOUT ROWID;
