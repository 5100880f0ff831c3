"""Error reporting to Sentry with customers' personal information and secrets scrubbed.

Every event, transaction, log and breadcrumb passes through a scrubber before it leaves
the process. ``scrub`` is a plain function over JSON-like data (dicts, lists, strings,
numbers) and does three things:

- values under keys whose names suggest a secret (password, token, key, dsn,
  authorization, cookie, ...) become ``[Filtered]``;
- values under known customer field names (name, phone, id_card, address, ...; the
  caller can add its own) become ``[Filtered]``;
- every string, dict key and integer anywhere is searched for mainland-China mobile
  numbers, resident identity numbers, e-mail addresses, bank card numbers and inline
  secrets (``password=...``, ``Bearer ...``, ``user:pass@`` in URLs), which are
  replaced by ``[Filtered:<kind>]``.

The patterns err on the side of removing too much: a 13-19 digit number is taken for a
bank card without a Luhn check, since a typo'd card number is still personal data.
Customers' IPv4 addresses are not personal information in this deployment and are left.

Patterns cannot recognise a customer id (C10023 looks like an order or an employee id),
a name or a raw log line, so what could hold them is not collected at all: frame
variables are off, a log record travels as its template without its arguments, error
messages lose their quoted values, and request bodies are never read.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Iterable
from functools import partial
from typing import Any

import sentry_sdk

FILTERED = "[Filtered]"

# Substrings of a (lower-cased, separator-free) key that mark its value as a secret.
SECRET_KEY_PARTS = ("password", "passwd", "pwd", "secret", "token", "key", "dsn",
                    "authorization", "auth", "cookie", "credential", "session", "csrf",
                    "xsrf", "signature", "privatekey")

# Customer fields, matched on the whole key after normalising (``idCard`` -> ``id_card``).
DEFAULT_CUSTOMER_FIELDS = frozenset({
    "name", "full_name", "real_name", "customer_name", "contact_name", "receiver_name",
    "consignee", "phone", "phone_number", "mobile", "mobile_phone", "telephone", "tel",
    "contact_phone", "receiver_phone", "id_card", "idcard", "id_card_no", "id_number",
    "id_no", "identity_card", "address", "street", "detail_address", "email",
    "birthday", "birth_date", "gender", "bank_card", "card_no", "card_number",
    "location", "latitude", "longitude", "lat", "lng", "imei", "mac", "android_id",
    "idfa", "face", "photo",
    "姓名", "手机", "手机号", "电话", "联系电话", "身份证", "身份证号", "地址", "收货地址",
    "邮箱", "银行卡", "银行卡号",
})

_EDGE_BEFORE = r"(?<![0-9A-Za-z])"
_EDGE_AFTER = r"(?![0-9A-Za-z])"

# Every pattern below starts only where a run of its characters starts (a look-behind
# for the same class), so that re's scan is linear: without it, a 100,000-character
# word in an exception message cost minutes of backtracking per pattern, inside the
# thread that reported the error.
#
# Order matters: the most specific patterns go first so that the label says what it was.
_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("email", re.compile(r"(?<![A-Za-z0-9._%+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")),
    # 6-digit area, birth date 18xx-20xx, 3-digit sequence, check digit 0-9 or X.
    ("id-card", re.compile(
        _EDGE_BEFORE
        + r"[1-9]\d{5}(?:18|19|20)\d{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])\d{3}[0-9Xx]"
        + _EDGE_AFTER)),
    # 1[3-9]x xxxx xxxx, optionally +86 / 0086 / 86 / (+86), spaces or dashes between groups.
    ("phone", re.compile(
        r"(?<![0-9A-Za-z+])"
        + r"(?:(?:\(\+?86\)|\+86|0086|86)[\s-]?)?"
        + r"1[3-9]\d(?:[\s-]?\d{4}){2}"
        + _EDGE_AFTER)),
    # 13-19 digits in a run, or 16-19 written in groups of four with spaces or dashes.
    ("bank-card", re.compile(
        _EDGE_BEFORE + r"(?:\d{13,19}|\d{4}(?:[\s-]\d{4}){3}(?:[\s-]?\d{1,3})?)" + _EDGE_AFTER)),
)

_SECRET_KEY = re.compile(r"(?i)password|passwd|pwd|secret|token|api[_-]?key|access[_-]?key|private[_-]?key|"
                         r"dsn|authorization|cookie|session[_-]?id")


def _secret_assignment(match: re.Match[str]) -> str:
    if _SECRET_KEY.search(match["key"]) is None:
        return match.group(0)
    return match["key"] + match["sep"] + match["quote"] + FILTERED


_INLINE_SECRETS: tuple[tuple[re.Pattern[str], Any], ...] = (
    # user:password@ (and a bare DSN key@) in URLs.
    (re.compile(r"(?<![A-Za-z0-9+.-])(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)[^/\s@:]+(?::[^/\s@]*)?@"),
     r"\g<scheme>" + FILTERED + "@"),
    (re.compile(r"(?i)\b(?P<kind>bearer|basic)\s+[A-Za-z0-9._~+/=-]{8,}"),
     r"\g<kind> " + FILTERED),
    # password=..., "api_key": "...", token: ... The whole key is taken possessively and
    # then tested for a secret's name, rather than searched for one by backtracking.
    (re.compile(r"(?<![\w.-])(?P<key>[\w.-]++)(?P<sep>['\"]?\s*+[=:]\s*+)(?P<quote>['\"]?)[^\s'\",&;)}\]]+"),
     _secret_assignment),
)

_CAMEL_BOUNDARY = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_SEPARATORS = re.compile(r"[\W_]+")  # Unicode-aware: 手机号 stays a name

Scrubber = Callable[[Any], Any]


# Sentry keeps 1024 characters of a value; what is cut here is never scrubbed or sent.
MAX_TEXT_CHARS = 4096
# A quoted value in a message ('C10023', "王小明") is what Python's own errors quote:
# the key that was missing, the text that did not parse. It is data, not code.
_QUOTED = re.compile(r"'[^'\n]{0,512}'|\"[^\"\n]{0,512}\"")


def scrub_text(text: str) -> str:
    """Replace personal information and inline secrets in free text."""
    if len(text) > MAX_TEXT_CHARS:
        text = text[:MAX_TEXT_CHARS] + "…[truncated]"
    for pattern, replacement in _INLINE_SECRETS:
        text = pattern.sub(replacement, text)
    for kind, pattern in _PATTERNS:
        text = pattern.sub(f"[Filtered:{kind}]", text)
    return text


def personal_information_in(text: str) -> list[str]:
    """The kinds of personal information the patterns find in `text` (email, id-card,
    phone, bank-card), for refusing free text that will be kept where only pseudonyms
    belong; [] when none."""
    return [kind for kind, pattern in _PATTERNS if pattern.search(text)]  # all of it: a note is short


def scrub_message(text: str) -> str:
    """An error or log message: quoted values removed as well as the patterns."""
    return scrub_text(_QUOTED.sub(lambda m: m.group(0)[0] + FILTERED + m.group(0)[0], text))


def _normalised(key: str) -> str:
    return _SEPARATORS.sub("_", _CAMEL_BOUNDARY.sub("_", key).lower()).strip("_")


def is_secret_key(key: str) -> bool:
    compact = _normalised(key).replace("_", "")
    return any(part in compact for part in SECRET_KEY_PARTS)


def scrub(obj: Any, *, customer_fields: Iterable[str] = DEFAULT_CUSTOMER_FIELDS) -> Any:
    """Return a copy of ``obj`` with secrets and personal information removed.

    Handles what Sentry events are made of: dicts, lists, tuples, strings, bytes, ints;
    anything else (floats, datetimes, None) is returned unchanged.
    """
    fields = frozenset(_normalised(field) for field in customer_fields)
    return _Walk(fields, filter_keys=True).clean(obj)


def make_scrubber(extra_customer_fields: Iterable[str] = ()) -> Scrubber:
    """A scrubber that also filters the deployment's own customer field names."""
    return partial(scrub, customer_fields=DEFAULT_CUSTOMER_FIELDS | frozenset(extra_customer_fields))


class _Walk:
    """One recursive pass; ``filter_keys=False`` runs only the text patterns."""

    def __init__(self, customer_fields: frozenset[str], *, filter_keys: bool) -> None:
        self._fields = customer_fields
        self._filter_keys = filter_keys
        self._path: set[int] = set()  # containers being walked, to stop at cycles

    def clean(self, obj: Any) -> Any:
        if isinstance(obj, str):
            return scrub_text(obj)
        if isinstance(obj, bool) or obj is None or isinstance(obj, float):
            return obj
        if isinstance(obj, int):
            # A phone number held as an int is still a phone number.
            return obj if scrub_text(str(obj)) == str(obj) else FILTERED
        if isinstance(obj, (bytes, bytearray)):
            text = bytes(obj).decode("utf-8", "replace")
            cleaned = scrub_text(text)
            return obj if cleaned == text else cleaned
        if not isinstance(obj, (dict, list, tuple, set, frozenset)):
            return obj
        if id(obj) in self._path:
            return "[Circular]"
        self._path.add(id(obj))
        try:
            if isinstance(obj, dict):
                return self._clean_dict(obj)
            items = [self.clean(item) for item in obj]
            return tuple(items) if isinstance(obj, tuple) else items
        finally:
            self._path.discard(id(obj))

    def _clean_dict(self, obj: dict[Any, Any]) -> dict[Any, Any]:
        cleaned: dict[Any, Any] = {}
        for key, value in obj.items():
            if self._filter_keys and isinstance(key, str) and self._is_filtered_key(key):
                new_value: Any = FILTERED
            else:
                new_value = self.clean(value)
            # Keys can be personal data too: {"13812345678": order_id}.
            new_key = self.clean(key) if isinstance(key, (str, int)) else key
            while new_key in cleaned:  # two phone numbers as keys became one label
                new_key = f"{new_key}'"
            cleaned[new_key] = new_value
        return cleaned

    def _is_filtered_key(self, key: str) -> bool:
        return is_secret_key(key) or _normalised(key) in self._fields


# Parts of an event the SDK fills with facts about itself and the host. Their keys
# ("name" of the SDK, of the runtime) are not customer fields, so only the text pass
# runs there; every other part (exception, frames and their variables, breadcrumbs,
# extra, request, user, tags, logentry, user-set contexts, ...) gets the full scrubber.
_SDK_PARTS = frozenset({"sdk", "platform", "timestamp", "start_timestamp", "event_id",
                        "level", "release", "environment", "dist", "modules", "debug_meta",
                        "type"})
_SDK_CONTEXTS = frozenset({"runtime", "os", "device", "app", "trace", "otel",
                           "cloud_resource", "culture", "gpu"})


def scrub_event(event: dict[str, Any], scrubber: Scrubber = scrub) -> dict[str, Any]:
    """Scrub a whole Sentry event (or transaction): every part, every string in it.

    Before the general scrub: frame variables go (they hold the batch, the raw lines,
    the event being judged; the SDK is also told not to collect them), a log's
    parameters go (its template stays: developers wrote it, not customers), error
    messages lose their quoted values, and request bodies go.
    """
    event = _without_raw_data(event)
    text_only = _Walk(frozenset(), filter_keys=False).clean
    cleaned: dict[str, Any] = {}
    for key, value in event.items():
        if key in _SDK_PARTS:
            cleaned[key] = text_only(value)
        elif key == "contexts" and isinstance(value, dict):
            cleaned[key] = {name: text_only(ctx) if name in _SDK_CONTEXTS else scrubber(ctx)
                            for name, ctx in value.items()}
        else:
            cleaned[key] = scrubber(value)
    return cleaned


def _without_raw_data(event: dict[str, Any]) -> dict[str, Any]:
    event = dict(event)
    for part in ("exception", "threads"):
        values = (event.get(part) or {}).get("values") if isinstance(event.get(part), dict) else None
        if isinstance(values, list):
            event[part] = {**event[part], "values": [_without_frame_vars(v) for v in values]}
    logentry = event.get("logentry")
    if isinstance(logentry, dict):
        template = scrub_message(str(logentry.get("message", "")))
        event["logentry"] = {"message": template, "formatted": template}  # no params
    if isinstance(event.get("message"), str):
        event["message"] = scrub_message(event["message"])
    request = event.get("request")
    if isinstance(request, dict):
        event["request"] = {k: v for k, v in request.items() if k not in ("data", "cookies", "query_string")}
    return event


def _without_frame_vars(value: Any) -> Any:
    if not isinstance(value, dict):
        return value
    value = dict(value)
    if isinstance(value.get("value"), str):
        value["value"] = scrub_message(value["value"])
    stacktrace = value.get("stacktrace")
    if isinstance(stacktrace, dict) and isinstance(stacktrace.get("frames"), list):
        frames = [{k: v for k, v in frame.items() if k != "vars"} if isinstance(frame, dict) else frame
                  for frame in stacktrace["frames"]]
        value["stacktrace"] = {**stacktrace, "frames": frames}
    return value


def scrub_breadcrumb(crumb: dict[str, Any], hint: dict[str, Any] | None, scrubber: Scrubber = scrub) -> dict[str, Any]:
    """A log record's breadcrumb keeps its template, not the values formatted into it."""
    record = (hint or {}).get("log_record")
    if record is not None and getattr(record, "args", None):
        crumb = {**crumb, "message": str(record.msg)}
    if isinstance(crumb.get("message"), str):
        crumb = {**crumb, "message": scrub_message(crumb["message"])}
    return scrubber(crumb)


def scrub_log(log: dict[str, Any], scrubber: Scrubber = scrub) -> dict[str, Any]:
    """A Sentry Log (``enable_logs``): the template for the body, no parameters."""
    log = dict(log)
    attributes = dict(log.get("attributes") or {})
    template = attributes.get("sentry.message.template")
    if isinstance(template, str):
        log["body"] = template
    log["attributes"] = {k: v for k, v in attributes.items() if not k.startswith("sentry.message.parameter")}
    if isinstance(log.get("body"), str):
        log["body"] = scrub_message(log["body"])
    return scrubber(log)


def init_sentry(dsn: str | None, environment: str, release: str | None,
                scrubber: Scrubber = scrub, *, sample_rate: float = 1.0) -> bool:
    """Start reporting errors to Sentry; False (and nothing started) without a DSN."""
    if not dsn:
        return False

    def before_send(event: dict[str, Any], hint: dict[str, Any]) -> dict[str, Any]:
        return scrub_event(event, scrubber)

    def before_breadcrumb(crumb: dict[str, Any], hint: dict[str, Any]) -> dict[str, Any]:
        # Scrubbed on arrival too, so raw values do not sit in the breadcrumb buffer.
        return scrub_breadcrumb(crumb, hint, scrubber)

    with warnings.catch_warnings():
        # sentry-sdk 2.x deprecates send_default_pii in favour of data_collection, but
        # setting data_collection also switches off the SDK's own EventScrubber, which we
        # keep as a second layer behind ours.
        warnings.filterwarnings("ignore", message="The send_default_pii option is deprecated",
                                category=DeprecationWarning)
        sentry_sdk.init(
            dsn=dsn,
            environment=environment,
            release=release,
            send_default_pii=False,
            sample_rate=sample_rate,
            traces_sample_rate=None,  # errors only; no performance tracing
            # Frame variables hold the batch being processed: raw lines, customer ids,
            # names. No scrubber can tell a customer id from an order id, so they stay home.
            include_local_variables=False,
            max_request_body_size="never",
            max_breadcrumbs=50,
            before_send=before_send,
            before_send_transaction=before_send,
            before_send_log=lambda log, hint: scrub_log(log, scrubber),
            before_breadcrumb=before_breadcrumb,
        )
    return True
