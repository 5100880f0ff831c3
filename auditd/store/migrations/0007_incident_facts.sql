-- 0007: incident facts people add through the correlate seam (auditd/correlate/actions.py):
-- why an incident was dismissed, which incident a duplicate was merged into, the
-- economic loss once known, and whether critical information infrastructure is hit
-- (its regulator clock is 1 h instead of 4 h). Written only by the correlate stage.
ALTER TABLE incidents ADD COLUMN dismissal_reason TEXT;          -- false_positive, duplicate, accepted_risk
ALTER TABLE incidents ADD COLUMN merged_into TEXT;               -- the incident that absorbed this one
ALTER TABLE incidents ADD COLUMN economic_loss REAL;             -- yuan; NULL while unknown
ALTER TABLE incidents ADD COLUMN cii INTEGER NOT NULL DEFAULT 0; -- critical information infrastructure
-- timeline entries that are the respond stage's step traces: each daemon of a fleet runs
-- its own playbooks, so the fleet replica versions an incident by timeline_seq minus these
ALTER TABLE incidents ADD COLUMN step_entries INTEGER NOT NULL DEFAULT 0;
