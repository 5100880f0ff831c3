"""The incident facts people add through the seam (dismissal reason, merge, economic loss,
critical-infrastructure flag), the size bands of grading, and `incidents verify` over the
bytes as stored."""

from __future__ import annotations

import datetime as dt
import sqlite3

import msgspec
import pytest

from auditd.cli import main
from auditd.correlate import (
    CorrelateError, CorrelateSettings, Correlator, Dismiss, Merge, Note, SetCII, SetLoss, act, changelog,
    get_incident, verify_timeline,
)
from auditd.correlate import timeline
from auditd.correlate.settings import TierSettings

from test_correlate_incidents import apply, fixed_clock, make_alert, new_store


@pytest.fixture
def conn():
    return new_store()


@pytest.fixture
def correlator():
    return Correlator(CorrelateSettings(), fixed_clock)


def test_dismissal_carries_its_reason(conn, correlator):
    (opened,) = apply(correlator, conn, [make_alert(1)])
    summary = act(conn, Dismiss(incident_id=opened.incident_id, who="alice", reason="accepted_risk",
                                why="the test tenant"), clock=fixed_clock)
    assert summary.status == "dismissed" and summary.dismissal_reason == "accepted_risk"
    assert changelog.read(conn, "t")[-1].change.dismissal_reason == "accepted_risk"
    with pytest.raises(CorrelateError, match="unknown dismissal reason"):
        act(conn, Dismiss(incident_id=opened.incident_id, who="a", reason="bored", why="x"), clock=fixed_clock)


def test_a_merge_keeps_both_timelines_and_the_earlier_discovery(conn):
    early = Correlator(CorrelateSettings(), lambda: dt.datetime(2026, 11, 29, 1, 0, tzinfo=dt.timezone.utc))
    (first,) = apply(early, conn, [make_alert(1, actor="E1", subjects=("p:a", "p:b"))])
    late = Correlator(CorrelateSettings(), fixed_clock)
    (second,) = apply(late, conn, [make_alert(2, actor="E2", subjects=("p:b", "p:c"), categories=("contact",))])
    summary = act(conn, Merge(incident_id=second.incident_id, into=first.incident_id, who="alice",
                              why="one export seen twice"), clock=fixed_clock)
    assert summary.incident_id == first.incident_id
    assert summary.affected_count == 3 and set(summary.categories) == {"identity", "contact"}
    assert summary.discovered_at == first.discovered_at  # the earlier of the two
    absorbed = get_incident(conn, second.incident_id)
    assert absorbed.summary.status == "dismissed" and absorbed.summary.merged_into == first.incident_id
    assert absorbed.summary.dismissal_reason == "duplicate"
    survivor = get_incident(conn, first.incident_id)
    merged = [e for e in survivor.timeline if e.kind == "merged"][0]
    assert merged.data["from_head"]["hash"] == absorbed.timeline[-1].hash  # the chains are tied together
    assert survivor.timeline_verified and absorbed.timeline_verified
    causes = [c.change.cause for c in changelog.read(conn, "t")][-2:]
    assert causes == ["merged_away", "merged"]
    with pytest.raises(CorrelateError, match="only active incidents"):
        act(conn, Merge(incident_id=second.incident_id, into=first.incident_id, who="a", why="again"),
            clock=fixed_clock)


def test_the_loss_band_raises_the_tier_and_the_cii_flag_is_recorded(conn, correlator):
    (opened,) = apply(correlator, conn, [make_alert(1, rule_kind="entitlement")])
    assert opened.tier == "T5"
    summary = act(conn, SetLoss(incident_id=opened.incident_id, who="cfo", yuan=25_000_000, why="estimate"),
                  clock=fixed_clock)
    assert summary.tier == "T2" and summary.economic_loss == 25_000_000
    last = changelog.read(conn, "t")[-1].change
    assert last.cause == "loss_set" and last.tier_raised and last.previous_tier == "T5"
    summary = act(conn, SetCII(incident_id=opened.incident_id, who="ciso", cii=True, why="payments"),
                  clock=fixed_clock)
    assert summary.cii is True and changelog.read(conn, "t")[-1].change.cii is True
    with pytest.raises(CorrelateError, match="finite"):
        act(conn, SetLoss(incident_id=opened.incident_id, who="a", yuan=float("nan"), why="x"), clock=fixed_clock)


def test_people_bands_raise_a_leak_and_only_a_leak(conn):
    settings = CorrelateSettings(tiers=TierSettings(people={"T1": 1000, "T2": 100, "T3": 10}))
    correlator = Correlator(settings, fixed_clock)
    subjects = tuple(f"p:{i}" for i in range(150))
    (leak,) = apply(correlator, conn, [make_alert(1, actor="E1", severity="critical", sensitive=True,
                                                  subjects=subjects)])
    assert leak.tier == "T2"
    (violation,) = apply(correlator, conn, [make_alert(2, actor="E2", rule_kind="entitlement", subjects=subjects[:20],
                                                       categories=("order",))])
    assert violation.tier == "T5"  # 20 people, but not a leak: the people bands do not apply


def test_verify_detects_an_edited_or_deleted_entry_in_the_database(tmp_path, capsys):
    from auditd.store.sqlite import Store

    store = Store(tmp_path / "neo-auditd.db").open()
    correlator = Correlator(CorrelateSettings(), fixed_clock)
    (opened,) = apply(correlator, store.conn, [make_alert(1)])
    act(store.conn, Note(incident_id=opened.incident_id, who="alice", text="called the store manager"),
        clock=fixed_clock)
    act(store.conn, Note(incident_id=opened.incident_id, who="bob", text="安全团队已复核"), clock=fixed_clock)
    store.close()
    config = tmp_path / "config.yaml"
    key = tmp_path / "key"
    key.write_text("ab" * 32)
    config.write_text(f"state_dir: {tmp_path}\nsources: []\npseudonym: {{key_file: {key}}}\n")
    assert main(["incidents", "verify", "-c", str(config), opened.incident_id]) == 0
    # an empty id (a script's unset variable) is an unknown incident, not "every incident"
    assert main(["incidents", "verify", "-c", str(config), ""]) == 1
    assert "no incident ''" in capsys.readouterr().err

    raw = sqlite3.connect(tmp_path / "neo-auditd.db")
    raw.execute("DROP TRIGGER incident_timeline_no_update")
    raw.execute("DROP TRIGGER incident_timeline_no_delete")
    # the same JSON value written with other bytes: a re-encoding would not see it, the stored bytes do
    raw.execute("UPDATE incident_timeline SET data = replace(data, '\":\"', '\": \"') WHERE seq = 3")
    raw.commit()
    assert main(["incidents", "verify", "-c", str(config), "--json"]) == 1
    assert '"first_bad_seq": 3' in capsys.readouterr().out
    raw.execute("UPDATE incident_timeline SET data = replace(data, '\": \"', '\":\"') WHERE seq = 3")
    raw.commit()
    assert main(["incidents", "verify", "-c", str(config), opened.incident_id]) == 0
    raw.execute("DELETE FROM incident_timeline WHERE seq = 2")
    raw.commit()
    assert main(["incidents", "verify", "-c", str(config), opened.incident_id]) == 1
    assert "BROKEN at entry 2" in capsys.readouterr().out


def test_a_json_library_that_encodes_differently_does_not_break_a_valid_chain(conn, correlator, monkeypatch):
    (opened,) = apply(correlator, conn, [make_alert(1)])
    act(conn, Note(incident_id=opened.incident_id, who="小李", text="涉事员工已停职 \"待查\"\n"), clock=fixed_clock)
    # an upgrade that escapes non-ASCII and orders keys otherwise changes every re-encoding
    monkeypatch.setattr(timeline, "_canonical", msgspec.json.Encoder())
    monkeypatch.setattr(msgspec.json, "encode", lambda obj, **kw: b"{}")
    assert verify_timeline(conn, opened.incident_id) == (True, None)


def test_the_entry_bytes_are_what_the_encoder_wrote():
    data = {"z": 1, "a": ["\u2028", "\x7f", "\x01", "é"], "m": {"y": None, "b": 1.5}}
    text = msgspec.json.Encoder(order="sorted").encode(data).decode()
    expected = msgspec.json.Encoder(order="sorted").encode(
        {"at": "t", "data": data, "incident_id": "INC-1", "kind": "note", "seq": 7, "who": "王\"x\"\n"})
    assert timeline.entry_bytes("INC-1", 7, "t", "note", "王\"x\"\n", text) == expected
