"""Stored events are msgpack arrays: no attribute names; rows that older versions wrote
as maps are read beside them; partial readers (`stored_view`) decode only what they need."""

from __future__ import annotations

import datetime as dt
import sqlite3

import msgspec
import pytest

from auditd.cli import main
from auditd.detect.departed_sweep import logins_since
from auditd.enrich.pseudonym import create_key_file
from auditd.entitlement.review import _read_uses
from auditd.errors import StoreFormatError
from auditd.event import AccessEvent, stored_view
from auditd.store.encoding import EVENT_ENCODING_KEY
from auditd.store.sqlite import Store

T0 = dt.datetime(2026, 11, 2, 1, 0, tzinfo=dt.timezone.utc)


def sample(n: int) -> list[AccessEvent]:
    out = []
    for i in range(n):
        e = AccessEvent(T0 + dt.timedelta(seconds=i), "export" if i % 3 else "login", user_id=f"E{i % 4}",
                        subject_ids=(f"p:{i:032x}",), categories=("contact",), record_count=i + 1,
                        event_id=f"f:{i}", log_offset=i * 100, labels={"k": str(i)} if i % 2 else {})
        if i % 5 == 0:  # the last attributes set too
            e.entitlement_granted, e.entitlement_reason, e.sensitive = False, "no grant", True
        out.append(e)
    return out


def test_an_encoded_event_carries_values_not_attribute_names(tmp_path):
    store = Store(tmp_path / "state.db").open()
    with store.transaction() as conn:
        store.insert_events(conn, "crm", sample(10))
    (doc,) = store.conn.execute("SELECT doc FROM event_segments").fetchone()
    assert b"user_id" not in doc and b"subject_ids" not in doc and b"timestamp" not in doc
    assert list(store.iter_events()) == sample(10)
    store.close()


def test_an_other_event_is_stored_and_read_back_in_both_encodings(tmp_path):
    path = tmp_path / "state.db"
    other = msgspec.structs.replace(sample(1)[0], action="other", labels={"event_name": "SendCommand"}, event_id="o:1")
    store = Store(path).open()
    with store.transaction() as conn:
        store.insert_events(conn, "aws", [other])
    store.close()
    _add_map_form_rows(path, [msgspec.structs.replace(other, event_id="o:2")])  # as an older version writes
    store = Store(path).open()
    assert [(e.action, e.labels["event_name"], e.event_id) for e in store.iter_events()] == [
        ("other", "SendCommand", "o:1"), ("other", "SendCommand", "o:2")]
    store.close()


def _add_map_form_rows(path, events: list[AccessEvent]) -> None:
    """Rows as versions before the array encoding wrote them: events as msgpack maps
    (only the attributes that differ from their defaults)."""
    defaults = {f.name: f.default for f in msgspec.structs.fields(AccessEvent)}

    def as_map(e: AccessEvent) -> dict:
        return {k: v for k, v in msgspec.structs.asdict(e).items() if v != defaults[k] and v != {}}

    conn = sqlite3.connect(path)
    with conn:
        conn.execute("INSERT INTO event_segments (source, first_ts, last_ts, count, doc) VALUES (?,?,?,?,?)",
                     ("crm", "1970-01-01T00:00:00.000000+00:00", "9999-12-31T00:00:00.000000+00:00", len(events), msgspec.msgpack.encode([as_map(e) for e in events])))
        for e in events[:2]:
            conn.execute("INSERT INTO evidence (event_id, ts, doc) VALUES (?,?,?)",
                         (e.event_id, "1970-01-01T00:00:00.000000+00:00", msgspec.msgpack.encode(as_map(e))))
    conn.close()


def test_rows_in_the_old_map_form_are_read_beside_arrays_by_every_reader(tmp_path):
    """Rows an older version wrote as maps stay beside the arrays this one writes
    (migrations never rewrite event blobs): each is read in the encoding it has."""
    path, events = tmp_path / "state.db", sample(12)
    store = Store(path).open()
    with store.transaction() as conn:
        store.insert_events(conn, "crm", events[:4])
        store.insert_evidence(conn, events[4:5])
    store.close()
    _add_map_form_rows(path, events[5:9])  # an older version, writing after the newer one
    store = Store(path).open()
    with store.transaction() as conn:
        store.insert_events(conn, "crm", events[9:])
    raw = [doc for (doc,) in store.conn.execute("SELECT doc FROM event_segments ORDER BY seq")]
    assert [b"user_id" in doc for doc in raw] == [False, True, False]  # array, map, array

    assert list(store.iter_events()) == events[:4] + events[5:9] + events[9:]
    assert store.evidence(["f:4", "f:5", "f:6"]) == events[4:7]
    logins = logins_since(store.conn, ["E0", "E1", "E2", "E3"], T0).logins
    assert sorted(login.event_id for found in logins.values() for login in found) == sorted(
        e.event_id for e in events if e.action == "login" and e not in events[4:5])
    uses, accesses = _read_uses(store.conn, T0, T0 + dt.timedelta(days=1))
    exports = [e for e in events if e.action == "export" and e not in events[4:5]]
    assert accesses == len(exports)
    assert sum(uses.values()) == sum(1 for e in exports if e.entitlement_granted is not False)
    store.close()


def test_a_store_from_a_newer_version_is_refused_with_a_clear_error(tmp_path, capsys):
    create_key_file(tmp_path / "pseudonym.key")
    config = tmp_path / "config.yaml"
    config.write_text("state_dir: state\nsources:\n  - name: crm\n    paths: [access.log]\n    format: neo-crm\n"
                      "pseudonym:\n  key_file: pseudonym.key\n")
    state = tmp_path / "state"
    state.mkdir()
    path = state / "neo-auditd.db"
    Store(path).open().close()
    conn = sqlite3.connect(path)
    with conn:
        conn.execute("UPDATE meta SET value = 'columns-9' WHERE key = ?", (EVENT_ENCODING_KEY,))
    conn.close()
    with pytest.raises(StoreFormatError, match="columns-9"):
        Store(path).open()
    assert main(["incidents", "list", "-c", str(config)]) == 78
    assert "columns-9" in capsys.readouterr().err


def test_a_stored_view_decodes_only_the_wanted_attributes(tmp_path):
    store = Store(tmp_path / "state.db").open()
    events = sample(10)
    with store.transaction() as conn:
        store.insert_events(conn, "crm", events)
    (doc,) = store.conn.execute("SELECT doc FROM event_segments").fetchone()
    store.close()
    view = stored_view("View", ("action", "user_id", "record_count", "entitlement_reason", "sensitive"))
    decoded = msgspec.msgpack.decode(doc, type=list[view])
    assert [(v.action, v.user_id, v.record_count, v.entitlement_reason, v.sensitive) for v in decoded] == [
        (e.action, e.user_id, e.record_count, e.entitlement_reason, e.sensitive) for e in events]
    # unwanted attributes before the last wanted one stay raw bytes
    assert isinstance(decoded[0].timestamp, msgspec.Raw)
    assert isinstance(decoded[0].actor_known, msgspec.Raw)  # before `sensitive`, so present but undecoded
    # an event stored before its last attributes existed: a shorter array, the defaults
    old = msgspec.msgpack.encode([[T0, "read", "success", "E7"]])
    assert msgspec.msgpack.decode(old, type=list[AccessEvent]) == [AccessEvent(T0, "read", user_id="E7")]
    [v] = msgspec.msgpack.decode(old, type=list[view])
    assert (v.action, v.user_id, v.record_count, v.entitlement_reason, v.sensitive) == ("read", "E7", 1, None, False)
    with pytest.raises(ValueError, match="no attribute nope"):
        stored_view("Bad", ("action", "nope"))
