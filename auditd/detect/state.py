"""The state of stateful rule kinds, kept in the store and committed with the batch.

A kind that remembers (a window of counts, a baseline, the values an actor has used)
keeps it in a ``RuleState``: a map from a group key (an actor, a credential) to a
value of the kind's own type, encoded as msgpack in the store's ``detector_state``
table. The pipeline writes what a batch changed in the batch's own transaction, beside
its alerts and checkpoint (``StateStore.flush``), so a crash at any point leaves the
state and the checkpoint in step: the batch is read again from the old checkpoint
against the old state, nothing lost and nothing counted twice. When a transaction
fails, ``discard`` drops what the batch changed in memory.

State is keyed by the rule's id and a hash of what decides its state (kind, resolved
condition, parameters), so a reload that changes one rule starts that one afresh and
keeps every other rule's state. Each rule's keys are capped (``max_keys``); past the
cap the least recently written keys are evicted, and counted per rule, because an
evicted baseline is a detection silently missed. A row that cannot be read (damaged,
or written by a kind whose value type changed) is reported, counted, and that key
starts afresh; other keys are untouched.

Nothing here does I/O until the pipeline binds a connection.
"""

from __future__ import annotations

import hashlib
import logging
import sqlite3
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import msgspec

from auditd.store.times import now_db

log = logging.getLogger("neo_auditd.detect.state")

DEFAULT_MAX_KEYS = 100_000
_PREFETCH_KEYS = 500  # keys per statement when a chunk's keys are read at once
_ABSENT = object()


def rule_state_hash(kind: str, condition: Any, params: Any, *, ignore: tuple[str, ...] = ("max_keys",)) -> str:
    """What decides a rule's state, hashed: a change to anything else keeps it.

    The text hashed is the repr of (kind, condition, parameters) with every set's items
    sorted: a plain repr lists a set (`event.action in (read, export)`) in an order that
    depends on the process's string-hash seed, so the hash, and with it the rule's
    state, would change at every start of the daemon (and differ between processes)."""
    if params is not None and hasattr(params, "__dataclass_fields__"):
        fields = {name: getattr(params, name) for name in params.__dataclass_fields__ if name not in ignore}
    else:
        fields = params
    text = stable_repr((kind, condition, fields))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def stable_repr(value: Any) -> str:
    """repr(), with the elements of sets in sorted order: the repr of a frozenset of
    strings follows the process's hash seed, so a condition with `in (a, b)` had another
    hash after every restart (and on every other daemon of a fleet). Text without sets
    is exactly repr's, so the hashes of such rules stay what they were."""
    if isinstance(value, (set, frozenset)):
        if not value:
            return repr(value)
        inner = ", ".join(sorted(stable_repr(v) for v in value))
        return f"{{{inner}}}" if isinstance(value, set) else f"frozenset({{{inner}}})"
    if isinstance(value, tuple) and not hasattr(value, "_fields"):
        items = [stable_repr(v) for v in value]
        return "(" + ", ".join(items) + ("," if len(items) == 1 else "") + ")"
    if isinstance(value, list):
        return "[" + ", ".join(stable_repr(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{stable_repr(k)}: {stable_repr(v)}" for k, v in value.items()) + "}"
    fields = getattr(value, "__dataclass_fields__", None)
    if fields is not None and _generated_repr(type(value)):
        shown = ", ".join(f"{name}={stable_repr(getattr(value, name))}" for name, f in fields.items() if f.repr)
        return f"{type(value).__qualname__}({shown})"
    return repr(value)


def _generated_repr(cls: type) -> bool:
    """Whether cls's __repr__ is the one @dataclass wrote (not a hand-written one)."""
    own = cls.__dict__.get("__repr__")
    code = getattr(getattr(own, "__wrapped__", own), "__code__", None)
    return code is not None and code.co_filename == "<string>"


@dataclass(slots=True)
class RuleStats:
    keys: int = 0
    evicted: int = 0
    bad_rows: int = 0


class RuleState:
    """One rule's keys and values, read through from the store, written back at flush."""

    def __init__(self, owner: "StateStore", rule_id: str, rule_hash: str, value_type: Any, max_keys: int):
        self.rule_id = rule_id
        self.rule_hash = rule_hash
        self.max_keys = max(1, max_keys)
        self._owner = owner
        self._encode = msgspec.msgpack.Encoder().encode
        self._decode = msgspec.msgpack.Decoder(value_type).decode
        self._cache: dict[str, Any] = {}  # key -> value, or _ABSENT when known to be missing
        self._dirty: set[str] = set()
        self._deleted: set[str] = set()
        self._count: int | None = None  # keys in the store, once counted
        self._reported_bad = 0  # bad rows already added to detector_rules
        self._in_batch = False  # in the owner's touched set since its last flush or discard
        self._fresh: set[str] = set()  # keys read as missing from the store since the last flush
        self.stats = RuleStats()

    # -- reads and writes, during detection ----------------------------------------------
    def get(self, key: str, default: Any = None) -> Any:
        value = self._cache.get(key, None)
        if value is None:
            value = self._load(key)
            self._cache[key] = value
        return default if value is _ABSENT else value

    def put(self, key: str, value: Any) -> None:
        """Set the key's value (never None: delete instead); written at the next flush."""
        if value is None:
            raise ValueError("a state value cannot be None; delete the key instead")
        self._cache[key] = value
        self._dirty.add(key)
        if self._deleted:
            self._deleted.discard(key)
        if not self._in_batch:  # the per-event path: one flag test, not a set insert
            self._in_batch = True
            self._owner._touched.add(self)

    def delete(self, key: str) -> None:
        self._cache[key] = _ABSENT
        self._dirty.discard(key)
        self._deleted.add(key)
        self._in_batch = True
        self._owner._touched.add(self)

    def items(self) -> Iterator[tuple[str, Any]]:
        """Every key and value, the batch's changes included (for time hooks)."""
        conn = self._owner.conn
        stored = conn.execute("SELECT key FROM detector_state WHERE rule_id = ? AND rule_hash = ? ORDER BY key",
                              (self.rule_id, self.rule_hash)).fetchall()
        keys = {k for (k,) in stored} | {k for k, v in self._cache.items() if v is not _ABSENT}
        for key in sorted(keys):
            value = self.get(key)
            if value is not None:
                yield key, value

    def prefetch(self, keys: Iterable[str | None]) -> None:
        """Read the (distinct) keys not yet in memory in a few statements (a chunk's actors), rather
        than one statement per key as `get` would: the same values, fewer round trips."""
        cache = self._cache
        missing = sorted(k for k in keys if k is not None and k not in cache)
        if not missing:
            return
        conn = self._owner.conn
        for start in range(0, len(missing), _PREFETCH_KEYS):
            part = missing[start:start + _PREFETCH_KEYS]
            rows = conn.execute(
                f"SELECT key, value FROM detector_state WHERE rule_id = ? AND rule_hash = ? "
                f"AND key IN ({','.join('?' * len(part))})", (self.rule_id, self.rule_hash, *part)).fetchall()
            stored = dict(rows)
            for key in part:
                cache[key] = self._decoded(key, stored[key]) if key in stored else self._absent(key)

    def _load(self, key: str) -> Any:
        row = self._owner.conn.execute(
            "SELECT value FROM detector_state WHERE rule_id = ? AND rule_hash = ? AND key = ?",
            (self.rule_id, self.rule_hash, key)).fetchone()
        return self._absent(key) if row is None else self._decoded(key, row[0])

    def _absent(self, key: str) -> Any:
        self._fresh.add(key)  # written at flush by an insert, not an update
        return _ABSENT

    def _decoded(self, key: str, data: bytes) -> Any:
        try:
            return self._decode(data)
        except (msgspec.DecodeError, msgspec.ValidationError, TypeError, ValueError) as exc:
            # one damaged row costs that key its history, never the rule's other keys
            self.stats.bad_rows += 1
            self._in_batch = True
            self._owner._touched.add(self)
            log.error("unreadable detector state; the key starts afresh",
                      extra={"rule.id": self.rule_id, "error": str(exc)})
            self._deleted.add(key)
            return _ABSENT

    # -- the batch's commit --------------------------------------------------------------
    def _flush(self, conn: sqlite3.Connection, touched: int) -> None:
        # the key count is kept from the statements' own row counts: counting the
        # rule's rows at every flush would read all of them (100,000 keys) per batch
        count = self._count if self._count is not None else self._count_keys(conn)
        if self._deleted:
            cur = conn.executemany("DELETE FROM detector_state WHERE rule_id = ? AND rule_hash = ? AND key = ?",
                                   [(self.rule_id, self.rule_hash, k) for k in sorted(self._deleted)])
            count -= max(0, cur.rowcount)
        if self._dirty:
            encode, rule_id, rule_hash, fresh = self._encode, self.rule_id, self.rule_hash, self._fresh
            old_rows, new_rows = [], []
            for k in sorted(self._dirty):
                (new_rows if k in fresh else old_rows).append((touched, encode(self._cache[k]), rule_id, rule_hash, k))
            if old_rows:
                cur = conn.executemany("UPDATE detector_state SET touched = ?, value = ? WHERE rule_id = ?"
                                       " AND rule_hash = ? AND key = ?", old_rows)
                if cur.rowcount != len(old_rows):  # some were not in the store after all (put unread)
                    new_rows += old_rows
            if new_rows:
                cur = conn.executemany("INSERT OR IGNORE INTO detector_state (touched, value, rule_id, rule_hash, key)"
                                       " VALUES (?, ?, ?, ?, ?)", new_rows)
                count += max(0, cur.rowcount)  # the keys that were new
            fresh.clear()
        evicted = self._evict(conn, count - self.max_keys) if count > self.max_keys else 0
        self.stats.keys = count - evicted
        self._count = self.stats.keys
        self.stats.evicted += evicted
        conn.execute(
            "INSERT INTO detector_rules (rule_id, rule_hash, evicted, bad_rows, updated_at) VALUES (?, ?, ?, ?, ?)"
            " ON CONFLICT (rule_id, rule_hash) DO UPDATE SET evicted = evicted + excluded.evicted,"
            " bad_rows = bad_rows + excluded.bad_rows, updated_at = excluded.updated_at",
            (self.rule_id, self.rule_hash, evicted, self._bad_since_flush(), now_db()))
        self._dirty.clear()
        self._deleted.clear()

    def _bad_since_flush(self) -> int:
        bad, self._reported_bad = self.stats.bad_rows - self._reported_bad, self.stats.bad_rows
        return bad

    def _count_keys(self, conn: sqlite3.Connection) -> int:
        return int(conn.execute("SELECT COUNT(*) FROM detector_state WHERE rule_id = ? AND rule_hash = ?",
                                (self.rule_id, self.rule_hash)).fetchone()[0])

    def _evict(self, conn: sqlite3.Connection, over: int) -> int:
        rows = conn.execute(
            "SELECT key FROM detector_state WHERE rule_id = ? AND rule_hash = ? ORDER BY touched, key LIMIT ?",
            (self.rule_id, self.rule_hash, over)).fetchall()
        conn.executemany("DELETE FROM detector_state WHERE rule_id = ? AND rule_hash = ? AND key = ?",
                         [(self.rule_id, self.rule_hash, k) for (k,) in rows])
        for (key,) in rows:
            self._cache[key] = _ABSENT
        log.warning("detector state over its cap: oldest keys evicted",
                    extra={"rule.id": self.rule_id, "evicted": len(rows), "max_keys": self.max_keys})
        return len(rows)

    def _forget_changes(self) -> None:
        self._cache.clear()
        self._fresh.clear()
        self._dirty.clear()
        self._deleted.clear()
        self._count = None


class StateStore:
    """Every stateful rule's state for one store; the pipeline binds and flushes it."""

    # cached values across rules kept between batches: a baseline is ~0.8 kB in memory,
    # so 150,000 of them stay well inside the daemon's memory budget; past it the cache
    # starts afresh and values are read back from the store as keys recur
    CACHE_LIMIT = 150_000

    def __init__(self) -> None:
        self._rules: dict[tuple[str, str], RuleState] = {}
        self._touched: set[RuleState] = set()
        self._conn: sqlite3.Connection | None = None
        self._generation = 0

    @classmethod
    def in_memory(cls) -> "StateStore":
        """A private store in memory: for rules loaded without the daemon's store
        (``check``, ``test-rules``, samples), whose state is thrown away."""
        from auditd.store.migrations import migrate

        conn = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
        migrate(conn)
        store = cls()
        store.bind(conn)
        return store

    def rule(self, rule_id: str, rule_hash: str, value_type: Any, *, max_keys: int = DEFAULT_MAX_KEYS) -> RuleState:
        key = (rule_id, rule_hash)
        state = self._rules.get(key)
        if state is None:
            state = self._rules[key] = RuleState(self, rule_id, rule_hash, value_type, max_keys)
        return state

    def bind(self, conn: sqlite3.Connection) -> None:
        if conn is not self._conn:
            self._conn = conn
            self._generation = 0
            for state in self._rules.values():
                state._forget_changes()

    @property
    def conn(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError("detector state is not bound to a store")
        return self._conn

    @property
    def rules(self) -> tuple[RuleState, ...]:
        return tuple(self._rules.values())

    def flush(self, conn: sqlite3.Connection) -> None:
        """Write what changed since the last flush, inside the caller's transaction."""
        if not self._touched:
            return
        if not conn.in_transaction:
            raise RuntimeError("detector state is flushed only inside the batch's transaction")
        if not self._generation:
            row = conn.execute("SELECT COALESCE(MAX(touched), 0) FROM detector_state").fetchone()
            self._generation = int(row[0])
        self._generation += 1
        for state in sorted(self._touched, key=lambda s: (s.rule_id, s.rule_hash)):
            state._flush(conn, self._generation)
            state._in_batch = False
        self._touched.clear()
        if sum(len(s._cache) for s in self._rules.values()) > self.CACHE_LIMIT:
            for state in self._rules.values():
                state._cache.clear()

    def discard(self) -> None:
        """The batch's transaction failed: forget what it changed in memory."""
        for state in self._touched:
            state._forget_changes()
            state._in_batch = False
        self._touched.clear()
        self._generation = 0


def rule_counters(conn: sqlite3.Connection) -> list[tuple[str, str, int, int, int]]:
    """(rule id, rule hash, keys, evicted, bad rows) per rule version, for status and metrics."""
    rows = conn.execute(
        "SELECT r.rule_id, r.rule_hash, (SELECT COUNT(*) FROM detector_state s WHERE s.rule_id = r.rule_id"
        " AND s.rule_hash = r.rule_hash), r.evicted, r.bad_rows FROM detector_rules r ORDER BY r.rule_id, r.rule_hash")
    return [(rid, rhash, int(keys), int(evicted), int(bad)) for rid, rhash, keys, evicted, bad in rows]
