"""What the CLI reads: queries, JSON, text rendering in Asia/Shanghai; settings from YAML."""

from __future__ import annotations

import datetime as dt

import msgspec
import pytest

from auditd.config.located import Problems, parse_yaml
from auditd.config.typed import MISSING, convert
from auditd.correlate import (
    CorrelateError, CorrelateSettings, Correlator, IncidentDetail, IncidentSummary, get_incident,
    list_incidents, render_incident_detail, render_incident_table,
)
from auditd.correlate import Assign, Transition, act
from auditd.correlate.grading import Facts, Grader
from auditd.correlate.render import _width

from test_correlate_incidents import T0, apply, fixed_clock, make_alert, new_store


@pytest.fixture
def conn():
    conn = new_store()
    correlator = Correlator(CorrelateSettings(), fixed_clock)
    apply(correlator, conn, [
        make_alert(1, actor="E1", subjects=("p:a",)),
        make_alert(2, actor="E2", rule_kind="entitlement", minutes=10, subjects=("p:b", "p:c")),
        make_alert(3, actor="E3", severity="critical", sensitive=True, categories=("property",),
                   minutes=20),
    ])
    return conn


def ids(summaries):
    return sorted(s.actor for s in summaries)


def test_list_incidents_filters_by_status_tier_and_since(conn):
    assert ids(list_incidents(conn)) == ["E1", "E2", "E3"]
    assert ids(list_incidents(conn, tier="T5")) == ["E2"]
    assert ids(list_incidents(conn, tier=["T4", "T5"])) == ["E2", "E3"]
    e1 = list_incidents(conn, tier="T6")[0].incident_id
    act(conn, Transition(incident_id=e1, status="triaged", who="alice", why="x"), clock=fixed_clock)
    assert ids(list_incidents(conn, status="open")) == ["E2", "E3"]
    assert ids(list_incidents(conn, since=T0 + dt.timedelta(minutes=10))) == ["E2", "E3"]
    assert [s.actor for s in list_incidents(conn, limit=2)] == ["E3", "E2"]  # latest first


def test_list_incidents_names_the_valid_values(conn):
    with pytest.raises(CorrelateError, match="unknown tier 'T9' .*T1, T2"):
        list_incidents(conn, tier="T9")


def test_summaries_and_details_round_trip_through_json(conn):
    summaries = list_incidents(conn)
    decoded = msgspec.json.decode(msgspec.json.encode(summaries), type=list[IncidentSummary])
    assert decoded == summaries
    detail = get_incident(conn, summaries[0].incident_id)
    assert msgspec.json.decode(msgspec.json.encode(detail), type=IncidentDetail) == detail
    assert b'"first_seen":"2026-11-28T17:50:00Z"' in msgspec.json.encode(detail.summary)


def test_the_table_shows_shanghai_times(conn):
    text = render_incident_table(list_incidents(conn))
    lines = text.splitlines()
    assert lines[0].split() == ["ID", "TIER", "STATUS", "SEVERITY", "ACTOR", "ALERTS", "AFFECTED",
                                "LAST", "SEEN", "TITLE"]
    e3 = next(line for line in lines if " E3 " in line)
    assert "2026-11-29 01:50:00" in e3 and "T4" in e3 and "Suspected leak: bulk-view by E3" in e3
    assert lines[-1] == "times Asia/Shanghai; * sensitive data"
    assert render_incident_table([]) == "no incidents\n"


def test_the_table_lines_up_chinese_text():
    conn = new_store()
    alert = make_alert(1, actor="张伟")
    apply(Correlator(CorrelateSettings(), fixed_clock), conn, [alert])
    header, row = render_incident_table(list_incidents(conn)).splitlines()[:2]
    # in terminal columns, not characters: each of 张伟 is two wide
    assert _width(header[:header.index("LAST SEEN")]) == _width(row[:row.index("2026-")])


def test_the_detail_shows_the_incident_and_its_timeline(conn):
    incident_id = list_incidents(conn, tier="T5")[0].incident_id
    act(conn, Assign(incident_id=incident_id, assignee="bob", who="alice"), clock=fixed_clock)
    text = render_incident_detail(get_incident(conn, incident_id))
    assert "Discovered  2026-11-29 10:00:00 (Asia/Shanghai)" in text
    assert "Affected    2 customers" in text and "Pseudonyms  p:b, p:c" in text
    assert "Assignee    bob" in text and "Evidence (1 events)\n  event-2" in text
    assert "Alerts (1)\n  2026-11-29 01:40:00  medium    bulk-view: bulk-view by E2" in text
    assert "Timeline (hash chain verified)" in text
    assert [line.split()[3] for line in text.splitlines() if line.startswith("    ")] == [
        "opened", "alerts_added", "assigned",
    ]


def test_the_detail_caps_long_lists():
    conn = new_store()
    alerts = [make_alert(n, minutes=n, subjects=(f"p:{n}",)) for n in range(5)]
    (change,) = apply(Correlator(CorrelateSettings(), fixed_clock), conn, alerts)
    detail = get_incident(conn, change.incident_id, limit=3)
    assert detail.affected_subjects == ("p:0", "p:1", "p:2") and detail.affected_subjects_truncated
    assert len(detail.evidence_event_ids) == 3 and detail.evidence_truncated
    assert detail.summary.affected_count == 5


# --- settings and grading ---------------------------------------------------------------


def load(text: str):
    problems = Problems()
    text = "correlate:\n" + "".join(f"  {line}\n" for line in text.splitlines())
    doc = parse_yaml(text, "auditd.yaml", problems)
    assert doc is not None
    value = convert(CorrelateSettings, doc.data["correlate"], doc, ("correlate",), problems)
    return value, [str(p) for p in problems.items]


def test_settings_load_from_yaml():
    settings, problems = load(
        "episode_gap: 2h\n"
        "tiers: {by_rule_kind: {departed: T4}, default: T6}\n"
        "criminal_bands: {insider_factor: 1, bands: [{name: loc, records: 10, categories: [location]}]}\n"
    )
    assert problems == []
    assert settings.episode_gap.seconds == 7200
    assert settings.tiers.by_rule_kind == {"departed": "T4"} and settings.tiers.leak == "T4"
    assert settings.criminal_bands.bands[0].records == 10
    assert settings.criminal_bands.other_records == 5000


def test_settings_problems_say_where():
    settings, problems = load(
        "episode_gap: 0s\n"
        "tiers: {leak: T7}\n"
        "criminal_bands: {insider_factor: 2, bands: [{name: a, records: 0, categories: []}]}\n"
        "gap: 4h\n"
    )
    assert settings is MISSING
    assert problems == [
        "auditd.yaml:5:3: correlate.gap: unknown key 'gap' (valid keys: criminal_bands, episode_gap, tiers)",
        "auditd.yaml:3:17: correlate.tiers.leak: expected one of 'T1', 'T2', 'T3', 'T4', 'T5',"
        " 'T6', got 'T7'",
        "auditd.yaml:4:36: correlate.criminal_bands.insider_factor: must be greater than 0 and at"
        " most 1",
        "auditd.yaml:4:66: correlate.criminal_bands.bands[0].records: must be a positive number"
        " of records",
    ]
    _, problems = load("episode_gap: 0s\n")
    assert problems == ["auditd.yaml:2:16: correlate.episode_gap: must be longer than zero"]


def test_bands_are_the_2017_thresholds_halved_for_insiders():
    grader = Grader(CorrelateSettings())

    def band(categories, affected, actor="E1"):
        return grader.band_reached(Facts(actor=actor, categories=frozenset(categories),
                                         affected=affected, max_record_count=0,
                                         rules=frozenset(), severe_sensitive=False))

    assert band(["property"], 24) is None and band(["property"], 25) == "location-property"
    assert band(["property"], 49, actor=None) is None  # not an insider: the full 50
    assert band(["order"], 250) == "transaction-health" and band(["identity"], 2500) == "other"
    assert band(["identity"], 2499) is None and band([], 2500) == "other"
    # art. 5(6): families add up in proportion: 228/250 + 228/2500 >= 1 > 227/250 + 227/2500
    assert band(["order", "identity"], 228) == "transaction-health"
    assert band(["order", "identity"], 227) is None


def test_by_severity_takes_only_known_severities_and_tiers(tmp_path):
    from auditd.settings import load_settings

    def problems_of(tiers: str) -> list[str]:
        path = tmp_path / "c.yaml"
        path.write_text(f"state_dir: s\nsources: []\npseudonym: {{key_file: k}}\ncorrelate:\n  tiers: {tiers}\n",
                        encoding="utf-8")
        problems = Problems()
        load_settings(path, problems)
        return [str(p) for p in problems.items]

    assert problems_of("{by_severity: {critical: T3, high: T5, medium: T5}}") == []
    assert problems_of("{by_severity: {severe: T4}}") == [
        f"{tmp_path / 'c.yaml'}:5:33: correlate.tiers.by_severity.severe: unknown severity 'severe' "
        "(valid: info, low, medium, high, critical)"]
    (bad_tier,) = problems_of("{by_severity: {high: T9}}")
    assert "correlate.tiers.by_severity.high" in bad_tier


def test_the_timeline_shows_nested_instants_in_shanghai_time_too():
    from auditd.correlate.render import _localised

    data = {"event": "planned", "at": "2026-12-05T13:04:53.077811+00:00",
            "steps": {"triage": "2026-12-05T14:04:53.077811+00:00", "closing": None},
            "times": ["2026-12-05T16:00:00Z"]}
    assert _localised(data, dt.timezone(dt.timedelta(hours=8))) == {
        "event": "planned", "at": "2026-12-05T21:04:53+08:00",
        "steps": {"triage": "2026-12-05T22:04:53+08:00", "closing": None}, "times": ["2026-12-06T00:00:00+08:00"]}


def test_the_detail_says_why_an_incident_is_dismissed_and_its_loss(conn):
    """A merged incident showed only 'Status dismissed', and a recorded loss not at all."""
    from auditd.correlate import Merge, SetLoss

    e1, e2 = (list_incidents(conn, tier=t)[0].incident_id for t in ("T6", "T5"))
    act(conn, Merge(incident_id=e1, into=e2, who="alice", why="same"), clock=fixed_clock)
    act(conn, SetLoss(incident_id=e2, yuan=12000, who="alice", why="estimate"), clock=fixed_clock)
    assert f"Status      dismissed (duplicate, merged into {e2})" in render_incident_detail(get_incident(conn, e1))
    text = render_incident_detail(get_incident(conn, e2))
    assert "Loss        ¥12,000" in text and "CII" not in text
