"""Who the affected people are, and how to reach them: resolved, never stored.

The store holds customers' pseudonyms only. A notice finds its person through a
contact source, looked up by pseudonym at the moment the per-recipient file is
rendered:

- a CSV (``customer_id,name,language,channel,address``), pseudonymised with the
  daemon's own key as it is loaded: the table kept in memory is keyed by pseudonym, and
  the raw customer id is dropped there and then;
- or an HTTP endpoint asked by pseudonym (GET, JSON ``{name, language, channel,
  address}``, 404 for unknown; a redirect is an error, and the whole answer must come
  within the timeout).

The raw name and address go into that one file (mode 0600, under the state directory)
and nowhere else: not the store, not a log line, not a metric. The store keeps
``contact:<pseudonym>:<channel>`` as the reference.

Exports whose access-log line does not list every customer (the example app lists 50)
are completed by the export manifest the source system writes: JSON lines
``{"req": "r-1", "customers": ["C00000001", ...]}`` or CSV ``req,customer_id``,
pseudonymised as they are read.
"""

from __future__ import annotations

import csv
import glob
import http.client
import io
import json
import logging
import os
import re
import stat
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from auditd.config.located import Doc, PathKey, Problems
from auditd.errors import ConfigProblem, Location
from auditd.httpcall import http_call
from auditd.respond.settings import CHANNELS, LANGUAGES, ContactSettings, ManifestSettings

log = logging.getLogger("neo_auditd.respond")

CSV_COLUMNS = ("customer_id", "name", "language", "channel", "address")
# Control characters, C0 and C1, and the Unicode line and paragraph separators: in what a
# customer typed, one would break a header, a CSV row or a line of a letter. Printable
# text of any script passes, the ideographic space (U+3000) of a Chinese name included.
CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_CONTROL_IN_ADDRESS = re.compile(r"[\x00-\x09\x0b\x0c\x0e-\x1f\x7f-\x9f\u2028\u2029]")  # \n, \r: its lines
MAX_FILE_BYTES = 512 * 1024 * 1024


class ContactError(Exception):
    """The contact source could not answer (an HTTP error, a timeout)."""


@dataclass(frozen=True, slots=True)
class Contact:
    name: str
    language: str
    channel: str
    address: str

    def __repr__(self) -> str:  # never print a person's data by accident
        return f"Contact(language={self.language!r}, channel={self.channel!r})"


def normalise_address(address: str) -> str:
    """For comparing an address with the directory's: e-mail lower-cased, phones as digits."""
    address = address.strip().lower()
    if "@" in address:
        return address
    digits = re.sub(r"\D", "", address)
    return digits[-11:] if len(digits) >= 11 else digits


def open_regular(path: Path) -> bytes:
    """Read a file without following a link and without blocking on a FIFO."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise OSError(f"{path} is not a regular file")
        if info.st_size > MAX_FILE_BYTES:
            raise OSError(f"{path} is larger than {MAX_FILE_BYTES} bytes")
        chunks = []
        while True:
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


class ContactBook:
    """Contacts by pseudonym: from a CSV loaded at start (and reload), or an endpoint."""

    def __init__(self, table: dict[str, Contact] | None = None, *, http_url: str | None = None,
                 timeout_s: float = 5.0):
        self._table = table or {}
        self._url = http_url
        self._timeout = timeout_s

    def __len__(self) -> int:
        return len(self._table)

    def lookup(self, pseudonym: str) -> Contact | None:
        if self._url is None:
            return self._table.get(pseudonym)
        url = self._url.replace("{pseudonym}", urllib.parse.quote(pseudonym, safe=""))
        try:
            status, answer = http_call("GET", url, self._timeout, headers={"Accept": "application/json"})
            if status == 404:
                return None
            if not 200 <= status < 300:  # a redirect too: no other host learns the pseudonym or names the addressee
                raise ContactError(f"contact endpoint answered HTTP {status}")
            body = json.loads(answer)
        except (OSError, ValueError, http.client.HTTPException) as exc:
            raise ContactError(f"contact endpoint failed: {type(exc).__name__}") from None
        return _contact_from(body)


def _contact_from(body: object) -> Contact | None:
    if not isinstance(body, dict):
        return None
    values = {k: body.get(k) for k in ("name", "language", "channel", "address")}
    if not all(isinstance(v, str) and v.strip() for v in values.values()):
        return None
    if values["language"] not in LANGUAGES or values["channel"] not in CHANNELS:
        return None
    if any((_CONTROL_IN_ADDRESS if k == "address" else CONTROL).search(v) for k, v in values.items()):
        return None  # as a CSV row with one: not a contact to use
    return Contact(values["name"].strip(), values["language"], values["channel"], values["address"].strip())


def load_contacts(settings: ContactSettings | None, pseudonymise: Callable[[str], str], problems: Problems, *,
                  referrer: Doc | None = None, key_path: PathKey = ("respond", "contacts")) -> ContactBook:
    if settings is None:
        return ContactBook()
    if settings.http is not None:
        return ContactBook(http_url=settings.http.url, timeout_s=settings.http.timeout_s)
    assert settings.csv is not None
    try:
        text = open_regular(settings.csv).decode("utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        problems.add(referrer, key_path + ("csv",), f"cannot read {settings.csv}: {exc}")
        return ContactBook()
    return ContactBook(_parse_csv(text, str(settings.csv), pseudonymise, problems))


def _parse_csv(text: str, file: str, pseudonymise: Callable[[str], str], problems: Problems) -> dict[str, Contact]:
    table: dict[str, Contact] = {}
    reader = csv.reader(io.StringIO(text, newline=""))
    header = next(reader, None)
    if header is None or tuple(h.strip() for h in header) != CSV_COLUMNS:
        problems.items.append(ConfigProblem(Location(file, 1, 1), "", f"the header must be {','.join(CSV_COLUMNS)}"))
        return table
    reported = 0
    first_line: dict[str, int] = {}  # pseudonym -> the line of its row
    for row in _rows(reader):
        line = reader.line_num
        problem = _row_problem(row) if isinstance(row, list) else ("", row)
        if problem is None:
            customer, name, language, channel, address = (v.strip() for v in row)
            pseudonym = pseudonymise(customer)
            if pseudonym in first_line:  # which of two addresses is the person's? not ours to guess
                problem = "customer_id", f"the same customer as line {first_line[pseudonym]}: one row per customer"
            else:
                first_line[pseudonym] = line
                table[pseudonym] = Contact(name, language, channel, address)
        if problem is not None:
            if reported < 20:  # name the line and column, never the person's data
                problems.items.append(ConfigProblem(Location(file, line, 1), problem[0], problem[1]))
            reported += 1
    if reported > 20:
        problems.items.append(ConfigProblem(Location(file, 1, 1), "", f"{reported - 20} more bad rows"))
    return table


def _rows(reader: Iterable[list[str]]) -> Iterable[list[str] | str]:
    """Each row, or what the csv module found wrong with it (a field over its size limit,
    say): that row is bad, the file goes on."""
    rows = iter(reader)
    while True:
        try:
            yield next(rows)
        except StopIteration:
            return
        except csv.Error as exc:
            yield f"not a CSV row: {exc}"


def _row_problem(row: list[str]) -> tuple[str, str] | None:
    if len(row) != len(CSV_COLUMNS):
        return "", f"expected {len(CSV_COLUMNS)} columns, found {len(row)}"
    for column, value in zip(CSV_COLUMNS, row):
        if not value.strip():
            return column, "must not be empty"
        if (_CONTROL_IN_ADDRESS if column == "address" else CONTROL).search(value):
            # a NUL or an escape reaches a gateway, a terminal or a letter as it is;
            # only a postal address may run over lines
            return column, "holds a control character (a line break only in an address)"
    if row[2].strip() not in LANGUAGES:
        return "language", f"unknown language (valid: {', '.join(LANGUAGES)})"
    if row[3].strip() not in CHANNELS:
        return "channel", f"unknown channel (valid: {', '.join(CHANNELS)})"
    return None


@dataclass
class ManifestRead:
    customers: dict[str, set[str]]  # request id -> pseudonyms
    bad_lines: int = 0
    unreadable_files: int = 0


def read_manifests(manifests: Iterable[ManifestSettings], requests: set[str],
                   pseudonymise: Callable[[str], str]) -> ManifestRead:
    """The customers of these request ids, from every configured manifest; bad lines
    and unreadable files are counted, never fatal."""
    out = ManifestRead({})
    if not requests:
        return out
    for manifest in manifests:
        for pattern in manifest.paths:
            for name in sorted(glob.glob(str(pattern))):
                try:
                    text = open_regular(Path(name)).decode("utf-8", errors="replace")
                except OSError:
                    out.unreadable_files += 1
                    continue
                reader = _jsonl_rows if manifest.format == "jsonl" else _csv_rows
                for req, customers in reader(text, out):
                    if req in requests:
                        out.customers.setdefault(req, set()).update(pseudonymise(c) for c in customers)
    return out


def _jsonl_rows(text: str, out: ManifestRead) -> Iterable[tuple[str, list[str]]]:
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            req, customers = row["req"], row["customers"]
            if not isinstance(req, str) or not isinstance(customers, list) or \
                    not all(isinstance(c, str) and c for c in customers):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            out.bad_lines += 1
            continue
        yield req, customers


def _csv_rows(text: str, out: ManifestRead) -> Iterable[tuple[str, list[str]]]:
    for row in _rows(csv.reader(io.StringIO(text, newline=""))):
        if row == ["req", "customer_id"]:
            continue
        if not isinstance(row, list) or len(row) != 2 or not row[0] or not row[1]:
            out.bad_lines += 1
            continue
        yield row[0], [row[1]]
