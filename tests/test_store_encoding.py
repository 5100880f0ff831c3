"""Stored events are msgpack arrays: no attribute names, older map-form stores migrated,
partial readers (`stored_view`) decode only what they need."""

from __future__ import annotations

import datetime as dt
import sqlite3

import msgspec
import pytest

from auditd.cli import main
from auditd.enrich.pseudonym import create_key_file
from auditd.errors import StoreFormatError
from auditd.event import AccessEvent, stored_view
from auditd.ops.sdnotify import Notifier
from auditd.service import _migration_progress
from auditd.store import sqlite as sqlite_store
from auditd.store.sqlite import EVENT_ENCODING, EVENT_ENCODING_KEY, Store
from test_ops_sdnotify import manager  # noqa: F401 - a fixture

T0 = dt.datetime(2026, 11, 2, 1, 0, tzinfo=dt.timezone.utc)


def sample(n: int) -> list[AccessEvent]:
    out = []
    for i in range(n):
        e = AccessEvent(T0 + dt.timedelta(seconds=i), "export" if i % 3 else "login", user_id=f"E{i % 4}",
                        subject_ids=(f"p:{i:032x}",), categories=("contact",), record_count=i + 1,
                        event_id=f"f:{i}", log_offset=i * 100, labels={"k": str(i)} if i % 2 else {})
        if i % 5 == 0:  # the last attributes set: nothing left out at the end
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


def _write_map_form(path, events: list[AccessEvent]) -> None:
    """A store as versions before the array encoding wrote it: events as msgpack maps
    (only non-default attributes), and no encoding recorded in `meta`."""
    store = Store(path).open()
    with store.transaction() as conn:
        store.insert_events(conn, "crm", events[:5])
        store.insert_events(conn, "crm", events[5:])
        store.insert_evidence(conn, events[2:4])
    store.close()
    as_map = msgspec.msgpack.Encoder().encode

    def old(e: AccessEvent) -> dict:
        defaults = {f.name: f.default for f in msgspec.structs.fields(AccessEvent)}
        return {k: v for k, v in msgspec.structs.asdict(e).items() if v != defaults[k] and v != {}}

    conn = sqlite3.connect(path)
    with conn:
        conn.execute("DELETE FROM meta WHERE key = ?", (EVENT_ENCODING_KEY,))
        for seq, doc in conn.execute("SELECT seq, doc FROM event_segments").fetchall():
            events_ = msgspec.msgpack.decode(doc, type=list[AccessEvent])
            conn.execute("UPDATE event_segments SET doc = ? WHERE seq = ?", (as_map([old(e) for e in events_]), seq))
        for event_id, doc in conn.execute("SELECT event_id, doc FROM evidence").fetchall():
            e = msgspec.msgpack.decode(doc, type=AccessEvent)
            conn.execute("UPDATE evidence SET doc = ? WHERE event_id = ?", (as_map(old(e)), event_id))
    conn.close()


def test_a_store_of_map_form_events_is_re_encoded_when_opened(tmp_path):
    path, events = tmp_path / "state.db", sample(12)
    _write_map_form(path, events)
    raw = sqlite3.connect(path)
    (doc,) = raw.execute("SELECT doc FROM event_segments ORDER BY seq LIMIT 1").fetchone()
    assert b"user_id" in doc  # the old form, as written
    raw.close()

    store = Store(path).open()
    assert list(store.iter_events()) == events
    assert store.evidence(["f:2", "f:3"]) == events[2:4]
    assert store.conn.execute("SELECT value FROM meta WHERE key = ?", (EVENT_ENCODING_KEY,)).fetchone() == (
        EVENT_ENCODING,)
    (doc,) = store.conn.execute("SELECT doc FROM event_segments ORDER BY seq LIMIT 1").fetchone()
    assert b"user_id" not in doc
    store.close()
    # a second opening finds it done and changes nothing
    store = Store(path).open()
    assert list(store.iter_events()) == events
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
    assert not hasattr(decoded[0], "actor_known") or isinstance(decoded[0].actor_known, msgspec.Raw)
    with pytest.raises(ValueError, match="no attribute nope"):
        stored_view("Bad", ("action", "nope"))


class Interrupted(Exception):
    pass


def test_an_interrupted_migration_resumes_and_keeps_systemd_waiting(tmp_path, monkeypatch, manager):
    path, events = tmp_path / "state.db", sample(12)
    _write_map_form(path, events)  # 2 segments and 2 evidence rows
    monkeypatch.setattr(sqlite_store, "MIGRATION_ROWS_PER_COMMIT", 1)

    def stop_after_two(done: int, rows: int) -> None:
        if done == 2:
            raise Interrupted  # a kill in the middle: two rows are committed, two are not
    with pytest.raises(Interrupted):
        Store(path).open(on_migration_progress=stop_after_two)
    raw = sqlite3.connect(path)
    assert raw.execute("SELECT value FROM meta WHERE key = ?", (EVENT_ENCODING_KEY,)).fetchone() is None
    raw.close()

    progress = _migration_progress(Notifier({"NOTIFY_SOCKET": manager.notify_socket}))
    store = Store(path).open(on_migration_progress=progress)
    assert list(store.iter_events()) == events
    assert store.evidence(["f:2", "f:3"]) == events[2:4]
    store.close()
    # every commit told systemd to wait a minute more, with the progress as status
    assert [manager.receive() for _ in range(4)] == [
        f"EXTEND_TIMEOUT_USEC=60000000\nSTATUS=migrating the store: {i}/4 rows" for i in range(1, 5)]
    assert manager.nothing_pending()
