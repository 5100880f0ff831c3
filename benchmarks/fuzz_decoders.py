#!/usr/bin/env python3
"""Fuzz every decoder: no input escapes as an exception, every bad one is quarantined.

    python benchmarks/fuzz_decoders.py [--inputs 100000] [--seed 1] [--only jsonl,gzip]

Each decoder (JSON lines through the neo-crm and cloudtrail formats, CSV with a
non-default quote, key=value, regex, pgaudit, CloudTrail documents, gzip files, the
ECS documents of the cluster source) gets --inputs records: valid seeds mutated at
random (bytes flipped, inserted, deleted, duplicated, spliced from another seed,
truncated, JSON values swapped for hostile ones) and pure noise. They go through the
decoder as the pipeline sends them (chunks of 256 records to a Normaliser; whole
files to the framers and the gzip reader), and each chunk is checked:

- nothing raises out of the decoder;
- every record is an event, quarantined with a reason, or skipped: none is lost;
- no quarantine reason is "internal error" (the normaliser's safety net caught an
  exception that a decoder should have turned into a reason);
- every event has a known action and an aware UTC timestamp;
- framers give records at their offsets, in order.

Prints inputs/s per decoder and every failure (input and what went wrong), and exits 1
if there was any. The test suite runs the same checks on a few thousand inputs
(tests/test_decode_fuzz.py); this script is for the long run.
"""
from __future__ import annotations

import argparse
import datetime as dt
import gzip
import json
import os
import random
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from auditd.config.located import Problems, parse_yaml  # noqa: E402
from auditd.decode import Normaliser, load_format  # noqa: E402
from auditd.decode.formats import Format  # noqa: E402
from auditd.elastic.ecs_format import EcsDocumentDecoder  # noqa: E402
from auditd.event import ACTIONS, AccessEvent, to_ecs  # noqa: E402
from auditd.pipeline import CHUNK_RECORDS  # noqa: E402
from auditd.sources.base import Batch, Checkpoint  # noqa: E402
from auditd.sources.framing import CsvFramer, JsonDocumentFramer, LineFramer  # noqa: E402
from auditd.sources.wholefile import Limits, pieces  # noqa: E402

FINGERPRINT = "f022ed0c" * 5
INTERESTING = [b'"', b"\\", b"{", b"}", b"[", b"]", b",", b":", b"\n", b"\r", b"\x00", b"\xff", b"\xc3", b"\xe5\xbc",
               b"'", b"=", b" ", b"\t", b"null", b"true", b"-1", b"1e999", b"\\u0000", b"\\ud800", b'""', b"AUDIT: ",
               "张伟".encode(), b"\xf0\x9f\x98\x80", b"9" * 40, b"[" * 3000, b"{\"a\":" * 200]
HOSTILE_VALUES = [None, True, 0, -1, 1.5, 10 ** 30, "", " ", "\u0000", "x" * 5000, [], {}, [1, [2, [3]]],
                  {"a": {"b": None}}, "2026-13-45T99:99:99Z", "2026-11-02T09:00:00", "1700000000", "NaN",
                  "AKIA" + "A" * 16, ["a", None, 3]]


# -- the decoders ----------------------------------------------------------------------------
def _format(name_or_text: str) -> Format:
    problems = Problems()
    if "\n" in name_or_text:  # a format file's text
        doc = parse_yaml(name_or_text, "<fuzz>", problems)
        custom = {"fuzz": _converted(doc, problems)}
        fmt = load_format("fuzz", problems, custom=custom, referrer=doc)
    else:
        fmt = load_format(name_or_text, problems)
    if fmt is None or problems.items:
        raise SystemExit(f"cannot load {name_or_text[:40]!r}: {[str(p) for p in problems.items]}")
    return fmt


def _converted(doc, problems):
    from auditd.config.typed import convert
    from auditd.decode.settings import FormatSettings

    return convert(FormatSettings, doc.data, doc, (), problems)


CSV_FORMAT = """kind: csv
options: {columns: [when, who, what, note], min_columns: 3, quote: "'", skip_header: true}
fields:
  "@timestamp": {path: when, time_format: iso8601}
  event.action: {path: what, map: {r: read, w: update}, default: other}
  user.id: {path: who}
  labels.note: {path: note}
  neo.data.record_count: {path: note, extract: '(\\d+) rows'}
"""
KV_FORMAT = """kind: kv
fields:
  "@timestamp": {path: time, time_format: epoch_s}
  event.action: {path: act, map: {read: read, export: export}}
  user.id: {path: user}
  neo.data.subject_ids: {path: ids, split: ","}
  neo.data.masked: {path: masked}
"""
REGEX_FORMAT = r"""kind: regex
options: {pattern: '^(?P<ts>\S+) (?P<user>\w+) (?P<op>\w+)(?: (?P<count>\S+))?'}
fields:
  "@timestamp": {path: ts, time_format: "%Y-%m-%dT%H:%M:%S", timezone: Europe/Paris}
  event.action: {path: op, lower: true, map: {read: read, dl: download}}
  user.id: {path: user}
  neo.data.record_count: {path: count}
"""


def _neo_crm_seed(rnd: random.Random) -> bytes:
    i = rnd.randrange(10 ** 6)
    return json.dumps({
        "ts": f"2026-11-02T09:{i % 60:02d}:{i % 60:02d}.{i % 1000:03d}+08:00", "app": "crm", "host": "crm-web-01",
        "req": f"r-{i}", "emp": {"id": f"E{10000 + i % 97}", "name": "张伟"}, "ip": f"10.20.{i % 7}.{i % 250}",
        "op": rnd.choice(["customer.view", "order.list", "auth.login", "customer.export"]),
        "res": {"type": "customer", "id": f"C{i:08d}", "store": "S021"}, "subjects": [f"C{i:08d}"],
        "count": 1 + i % 50, "fields": ["name", "phone"], "masked": bool(i % 2), "result": "ok",
    }, ensure_ascii=False).encode()


def _cloudtrail_record(rnd: random.Random) -> dict:
    return {
        "eventVersion": "1.08", "eventTime": "2026-11-02T01:02:03Z", "eventSource": "s3.amazonaws.com",
        "eventName": rnd.choice(["GetObject", "ListBuckets", "SendCommand", "AssumeRole", "ConsoleLogin"]),
        "awsRegion": "us-east-1", "sourceIPAddress": rnd.choice(["1.2.3.4", "ec2.amazonaws.com", "::1"]),
        "userAgent": "aws-cli/2.13", "requestParameters": {"bucketName": "crm-exports", "key": "a/b.csv"},
        "userIdentity": {"type": "AssumedRole", "arn": "arn:aws:sts::1:assumed-role/R/alice",
                         "accessKeyId": "ASIAEXAMPLE", "sessionContext": {
                             "sessionIssuer": {"type": "Role", "arn": "arn:aws:iam::1:role/R", "userName": "R"},
                             "attributes": {"mfaAuthenticated": "true"}}},
        "responseElements": rnd.choice([None, {"ConsoleLogin": "Success"}]),
        "errorCode": rnd.choice([None, None, "AccessDenied"]),
    }


def _cloudtrail_seed(rnd: random.Random) -> bytes:
    return json.dumps(_cloudtrail_record(rnd)).encode()


def _csv_seed(rnd: random.Random) -> bytes:
    return rnd.choice([b"2026-11-02T09:00:00Z,E7,r,'two\nlines, it''s \"quoted\"'",
                       b"2026-11-02T09:00:00+08:00,E8,w,'12 rows'", b"when,who,what,note",
                       b"2026-11-02T09:00:00Z,E9,x"])


def _kv_seed(rnd: random.Random) -> bytes:
    return rnd.choice([b'time=1700000000 act=read user="Zhang \\"Wei\\" Jr" ids=C1,C2 masked=true',
                       b"time=1700000000.5 act=export user='single quoted' ids=C3 masked=no",
                       b"time=1700000000 act=read user=E1"])


def _regex_seed(rnd: random.Random) -> bytes:
    return rnd.choice([b"2026-11-02T09:00:00 E1 read 3", b"2026-11-02T09:00:00 E2 DL", b"garbage line"])


def _pgaudit_seed(rnd: random.Random) -> bytes:
    statement = rnd.choice(['select * from account where name = \'"x"\'', "insert into t values (1)\n, (2)"])
    audit = f'AUDIT: SESSION,1,1,READ,SELECT,TABLE,public.account,"{statement.replace(chr(34), chr(34) * 2)}",<none>'
    row = ['2015-08-12 16:13:43.123 UTC', "postgres", "contrib_regression", "12345", "[local]", "55cb1f16.3039",
           "1", "SELECT", "2015-08-12 16:13:42 UTC", "2/0", "0", "LOG", "00000", audit] + [""] * 9
    return ",".join('"' + c.replace('"', '""') + '"' if c else "" for c in row).encode()


def _ecs_seed(rnd: random.Random) -> bytes:
    event = AccessEvent(dt.datetime(2026, 11, 2, 1, tzinfo=dt.timezone.utc), rnd.choice(ACTIONS), user_id="E1",
                        subject_ids=("p:ab",), categories=("contact",), event_id=f"ab:{rnd.randrange(999)}",
                        labels={"event_name": "X"})
    return json.dumps(to_ecs(event)).encode()


def _document_seed(rnd: random.Random) -> bytes:
    records = [_cloudtrail_record(rnd) for _ in range(rnd.randrange(1, 5))]
    shape = rnd.randrange(4)
    if shape == 0:
        return json.dumps({"Records": records}).encode()
    if shape == 1:
        return json.dumps(records, indent=2).encode()
    if shape == 2:
        return b"\n".join(json.dumps(r).encode() for r in records)
    return json.dumps({"Records": records}, indent=1).encode()


@dataclass
class Decoder:
    name: str
    seed: Callable[[random.Random], bytes]
    check: Callable[[list[bytes]], None]  # raises AssertionError (or anything) on a failure
    whole: bool = False  # inputs are whole files, not records


def _normaliser_check(normaliser) -> Callable[[list[bytes]], None]:
    def check(records: list[bytes]) -> None:
        offsets, offset = [], 0
        for record in records:
            offsets.append(offset)
            offset += len(record) + 1
        batch = Batch("fuzz", "/fuzz.log", FINGERPRINT, records, offsets, Checkpoint("fuzz", FINGERPRINT, "/f", 0))
        events, quarantined, skipped = normaliser.process(batch)
        assert len(events) + len(quarantined) + skipped == len(records), "a record was lost"
        for q in quarantined:
            assert q.reason and not q.reason.startswith("internal error"), q.reason
        for event in events:
            assert event.action in ACTIONS, event.action
            assert event.timestamp.utcoffset() == dt.timedelta(0), event.timestamp
    return check


def _framer_check(framer_class) -> Callable[[list[bytes]], None]:
    framer = framer_class()

    def check(records: list[bytes]) -> None:
        buf = b"\n".join(records)
        found, offsets, consumed = framer.split(buf, 7)
        assert 0 <= consumed <= len(buf)
        assert offsets == sorted(offsets) and all(buf[o - 7:o - 7 + len(r)] == r for r, o in zip(found, offsets))
    return check


def _document_check(normaliser) -> Callable[[list[bytes]], None]:
    framer = JsonDocumentFramer()
    records_check = _normaliser_check(normaliser)

    def check(docs: list[bytes]) -> None:
        for doc in docs:
            records, offsets, rejected = framer.split_document(doc)
            assert len(records) == len(offsets) and offsets == sorted(offsets)
            assert all(doc[o:o + len(r)] == r for r, o in zip(records, offsets)), "a record is not at its offset"
            assert all(r.reason for r in rejected)
            if records:
                records_check(records)
    return check


def _gzip_check(folder: Path) -> Callable[[list[bytes]], None]:
    limits = Limits(4096, 64 * 1024, 256 * 1024, 1024 * 1024)
    fd = os.memfd_create("neo-fuzz-gzip")  # a file in memory: the reader's preads, no disk

    def check(docs: list[bytes]) -> None:
        for doc in docs:
            os.ftruncate(fd, 0)
            os.pwrite(fd, doc, 0)
            for framer in (LineFramer(), JsonDocumentFramer()):
                out = list(pieces(fd, framer, limits))
                offsets = [o for p in out for o in p.offsets]
                assert offsets == sorted(offsets)
                assert all(r.reason for p in out for r in p.rejected)
    return check


def _gzip_seed(rnd: random.Random) -> bytes:
    data = gzip.compress(_document_seed(rnd), mtime=0)
    if rnd.random() < 0.3:
        data += gzip.compress(b"\n".join(_cloudtrail_seed(rnd) for _ in range(2)), mtime=0)
    return data


def decoders(folder: Path) -> list[Decoder]:
    return [
        Decoder("jsonl:neo-crm", _neo_crm_seed, _normaliser_check(Normaliser(_format("neo-crm")))),
        Decoder("jsonl:cloudtrail", _cloudtrail_seed, _normaliser_check(Normaliser(_format("cloudtrail")))),
        Decoder("csv", _csv_seed, _normaliser_check(Normaliser(_format(CSV_FORMAT)))),
        Decoder("csv:framer", _csv_seed, _framer_check(lambda: CsvFramer(quote="'"))),
        Decoder("kv", _kv_seed, _normaliser_check(Normaliser(_format(KV_FORMAT)))),
        Decoder("regex", _regex_seed, _normaliser_check(Normaliser(_format(REGEX_FORMAT)))),
        Decoder("pgaudit", _pgaudit_seed, _normaliser_check(Normaliser(_format("pgaudit")))),
        Decoder("cloudtrail:documents", _document_seed,
                _document_check(Normaliser(_format("cloudtrail-files"))), whole=True),
        Decoder("gzip", _gzip_seed, _gzip_check(folder), whole=True),
        Decoder("ecs", _ecs_seed, _normaliser_check(EcsDocumentDecoder("fuzz"))),
    ]


# -- inputs ----------------------------------------------------------------------------------
def mutate(data: bytes, rnd: random.Random, other: bytes) -> bytes:
    """One to four random edits of `data`; `other` is another seed to splice from."""
    out = bytearray(data)
    for _ in range(rnd.randint(1, 4)):
        op = rnd.randrange(9)
        at = rnd.randrange(len(out) + 1)
        if op == 0 and out:
            out[min(at, len(out) - 1)] ^= 1 << rnd.randrange(8)
        elif op == 1:
            out[at:at] = rnd.choice(INTERESTING)
        elif op == 2:
            del out[at:at + rnd.randrange(1, 64)]
        elif op == 3:
            end = min(len(out), at + rnd.randrange(1, 256))
            out[at:at] = out[at:end]
        elif op == 4:
            out[at:] = other[rnd.randrange(len(other) + 1):]
        elif op == 5:
            del out[at:]
        elif op == 6:
            out[at:at] = rnd.randbytes(rnd.randrange(1, 16))
        elif op == 7:
            out = bytearray(_swap_json_value(bytes(out), rnd))
        else:
            out[at:at] = rnd.choice(INTERESTING) * rnd.randrange(2, 50)
    return bytes(out)


def _swap_json_value(data: bytes, rnd: random.Random) -> bytes:
    try:
        value = json.loads(data)
    except (ValueError, RecursionError):
        return data
    if isinstance(value, dict) and value:
        key = rnd.choice(list(value))
        value[key] = rnd.choice(HOSTILE_VALUES)
        return json.dumps(value, ensure_ascii=rnd.random() < 0.5).encode("utf-8", "surrogatepass")
    return data


def inputs(decoder: Decoder, count: int, rnd: random.Random) -> Iterator[bytes]:
    pool = [decoder.seed(rnd) for _ in range(256)]  # seeds made once: the decoders are what is timed
    for _ in range(count):
        roll = rnd.random()
        if roll < 0.05:
            yield rnd.randbytes(rnd.randrange(0, 200))
        elif roll < 0.15:
            yield rnd.choice(pool)
        else:
            yield mutate(rnd.choice(pool), rnd, rnd.choice(pool))


# -- running -----------------------------------------------------------------------------------
@dataclass
class Result:
    name: str
    inputs: int
    seconds: float
    failures: list[tuple[bytes, str]]


def run(decoder: Decoder, count: int, seed: int, *, max_failures: int = 5) -> Result:
    rnd = random.Random(f"{seed}:{decoder.name}")
    chunk_size = 8 if decoder.whole else CHUNK_RECORDS
    failures: list[tuple[bytes, str]] = []
    chunk: list[bytes] = []
    started = time.perf_counter()

    def flush() -> None:
        try:
            decoder.check(chunk)
        except Exception:  # noqa: BLE001 - any escape is the finding
            for one in chunk:  # narrow it down to the input(s) that fail alone
                try:
                    decoder.check([one])
                except Exception:  # noqa: BLE001
                    failures.append((one, traceback.format_exc(limit=3)))
                    break
            else:
                failures.append((b"<the chunk together>", traceback.format_exc(limit=3)))
        chunk.clear()

    for data in inputs(decoder, count, rnd):
        chunk.append(data)
        if len(chunk) == chunk_size:
            flush()
            if len(failures) >= max_failures:
                break
    if chunk:
        flush()
    return Result(decoder.name, count, time.perf_counter() - started, failures)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--inputs", type=int, default=100_000, help="inputs per decoder")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--only", default="", help="comma-separated decoder names")
    args = parser.parse_args(argv)
    wanted = {n for n in args.only.split(",") if n}
    total_failures = 0
    with tempfile.TemporaryDirectory(prefix="neo-fuzz-") as folder:
        for decoder in decoders(Path(folder)):
            if wanted and decoder.name not in wanted:
                continue
            result = run(decoder, args.inputs, args.seed)
            rate = result.inputs / result.seconds if result.seconds else 0.0
            print(f"{result.name:22s} {result.inputs:>9,} inputs  {rate:>10,.0f} inputs/s  "
                  f"{len(result.failures)} failure(s)", flush=True)
            for data, problem in result.failures:
                print(f"  input {data[:200]!r}\n  " + problem.replace("\n", "\n  "))
            total_failures += len(result.failures)
    return 1 if total_failures else 0


if __name__ == "__main__":
    sys.exit(main())
