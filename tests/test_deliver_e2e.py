"""End to end on the example deployment, through real receivers on loopback: a generated
log replayed, the T4 playbook's due steps (the four eyes on the report and the customer
notice given by the command line), then ``neo-auditd outbox send`` as an operator runs
it. The security team gets chat (Apprise json://) and e-mail carrying pseudonyms only;
every affected customer one notice through the channel on file (e-mail, SMS, push,
letter), none to the insider; the regulator an e-mail with the report attached; and the
breach register shows a receipt for every message."""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from auditd.respond.contacts import normalise_address
from deliver_helpers import SMTP_PASSWORD, SMTP_USER, HttpReceiver, SmtpServer

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
SECURITY_EMAIL, REGULATOR_EMAIL = "security@neo-retail.example", "report@yunnan-cac.example"


def _cli(*args: str) -> dict | list:
    proc = subprocess.run([sys.executable, "-m", "auditd.cli", *args], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return json.loads(proc.stdout) if proc.stdout.lstrip().startswith(("{", "[")) else {}


def _config(tmp: Path, logs: Path, smtp: SmtpServer, chat: HttpReceiver, sms: HttpReceiver,
            push: HttpReceiver) -> str:
    (tmp / "smtp.password").write_text(SMTP_PASSWORD + "\n")
    (tmp / "smtp.password").chmod(0o600)
    config = yaml.safe_load((EXAMPLES / "config.yaml").read_text(encoding="utf-8"))
    config["state_dir"] = str(tmp / "state")
    config["sources"][0]["paths"] = [str(logs / "access.log")]
    config["pseudonym"]["key_file"] = str(tmp / "key")
    config["directory"]["path"] = str(EXAMPLES / "directory.yaml")
    config["rules"]["paths"] = [str(EXAMPLES / "rules.d")]
    config["respond"]["contacts"]["csv"] = str(EXAMPLES / "contacts.csv")
    config["respond"]["export_manifests"][0]["paths"] = [str(logs / "exports*.jsonl")]
    config["ops"]["metrics"]["enabled"] = False
    config["deliver"] = {
        "retry": {"attempts": 3, "initial": "1s", "max": "1s", "jitter": "0s"},
        "channels": {
            "email": {"host": "127.0.0.1", "port": smtp.port, "security": "starttls", "username": SMTP_USER,
                      "password": {"file": str(tmp / "smtp.password")}, "sender": "neo-auditd@neo-retail.example",
                      "ca_file": str(smtp.cert)},
            "sms": {"url": sms.url + "/sms"},
            "push": {"url": push.url + "/push"},
            "letter": {"spool": str(tmp / "letters"), "format": "html"},
            "portal": {"folder": str(tmp / "portal")},
        },
        "to": {
            "security-team": [{"channel": "chat", "chat": {"service": "json",
                                                           "url": f"json://127.0.0.1:{chat.port}/security"}},
                              {"channel": "email", "address": SECURITY_EMAIL}],
            "dpo": [{"channel": "email", "address": "dpo@neo-retail.example"}],
            "yunnan-cac": [{"channel": "email", "address": REGULATOR_EMAIL}],
            "kunming-psb": [{"channel": "letter", "address": "昆明市公安局网安支队", "name": "网安支队"}],
            "management": [{"channel": "email", "address": "management@neo-retail.example"}],
        },
    }
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
    return str(path)


@pytest.fixture(scope="module")
def delivered(tmp_path_factory):
    from auditd.enrich.pseudonym import create_key_file

    tmp = tmp_path_factory.mktemp("example")
    logs = tmp / "logs"
    subprocess.run([sys.executable, str(EXAMPLES / "generate.py"), "--out", str(logs), "--lines", "30000",
                    "--seed", "1"], check=True, capture_output=True)
    subprocess.run([sys.executable, str(EXAMPLES / "exports.py"), "--log", str(logs / "access.log"),
                    "--out", str(logs / "exports.jsonl")], check=True, capture_output=True)
    create_key_file(tmp / "key")
    with SmtpServer(tmp) as smtp, HttpReceiver() as chat, HttpReceiver() as sms, HttpReceiver() as push:
        c = _config(tmp, logs, smtp, chat, sms, push)
        _cli("replay", "-c", c, "--no-progress", "--json", str(logs / "access.log"))
        _cli("playbook", "run-due", "-c", c, "--json")
        truth = [json.loads(line) for line in (logs / "ground_truth.jsonl").read_text().splitlines()]
        bulk = next(t for t in truth if t["scenario"] == "bulk_export" and "customers' records" in t["description"])
        incident = None
        for summary in _cli("incidents", "list", "-c", c, "--json"):
            detail = _cli("incidents", "show", "-c", c, summary["incident_id"], "--json")
            if set(detail["evidence_event_ids"]) & set(bulk["event_ids"]):
                incident = summary["incident_id"]
        assert incident is not None, "the planted bulk export opened no incident"
        _cli("playbook", "done", "-c", c, incident, "report-initial", "--who", "alice", "--json")
        _cli("playbook", "approve", "-c", c, incident, "approve-initial", "--who", "bob", "--json")
        _cli("playbook", "done", "-c", c, incident, "draft-customer-notice", "--who", "alice", "--json")
        _cli("playbook", "approve", "-c", c, incident, "approve-customer-notice", "--who", "bob", "--json")
        _cli("playbook", "run-due", "-c", c, "--json")
        sent = _cli("outbox", "send", "-c", c, "--json")
        states = {}
        for _ in range(10):  # retries come a second later: send again until nothing waits
            states = {r["state"] for r in _cli("outbox", "list", "-c", c, "--limit", "100000", "--json")}
            if not states & {"pending", "sending"}:
                break
            subprocess.run(["sleep", "1.5"])
            _cli("outbox", "send", "-c", c, "--json")
        steps = {s["step_id"]: s for s in _cli("playbook", "show", "-c", c, incident, "--json")}
        register = _cli("register", "-c", c, "--json")
        outbox = _cli("outbox", "list", "-c", c, "--limit", "100000", "--json")
        return {"config": c, "tmp": tmp, "incident": incident, "insider": bulk["actor"], "sent": sent,
                "states": states, "outbox": outbox, "steps": steps, "register": register, "mail": list(smtp.received),
                "chat": list(chat.requests), "sms": list(sms.requests), "push": list(push.requests)}


def _contacts() -> list[dict[str, str]]:
    return list(csv.DictReader((EXAMPLES / "contacts.csv").open(encoding="utf-8")))


def _insider_addresses(insider: str) -> set[str]:
    directory = yaml.safe_load((EXAMPLES / "directory.yaml").read_text(encoding="utf-8"))
    employee = next(e for e in directory["employees"] if e["id"] == insider)
    return {normalise_address(employee["email"]), normalise_address(employee["phone"])}


def _raw_identifiers() -> list[str]:
    """What must never reach the security team: customers' ids, names, phones, addresses."""
    out = []
    for row in _contacts():
        out += [row["customer_id"], row["name"], row["address"]]
    return out


def test_everything_due_was_delivered(delivered):
    waiting = [r for r in delivered["outbox"] if r["state"] != "delivered"]
    # only T6 anomalies wait, held for tomorrow's digest
    assert waiting and all(r["state"] == "held" and "/digest/" in r["wire_key"] for r in waiting)
    assert delivered["sent"]["delivered"] > 0 and delivered["sent"]["failed"] == 0


def test_security_team_gets_chat_and_email_with_pseudonyms_only(delivered):
    incident = delivered["incident"]
    chats = [r for r in delivered["chat"] if incident in r.json()["title"]]
    mails = [m for m in delivered["mail"] if m.recipients == [SECURITY_EMAIL] and incident in m.message["Subject"]]
    assert chats and mails
    raw = _raw_identifiers()
    for text in [r.json()["title"] + r.json()["message"] for r in chats] + \
                [m.message["Subject"] + m.message.get_body(("plain",)).get_content() for m in mails]:
        assert f"neo-auditd incidents show {incident}" in text  # the command that opens it
        assert not [x for x in raw if x in text]
        assert not re.search(r"\bC\d{8}\b|\b1[3-9]\d{9}\b", text)  # no customer id, no mobile number


def test_one_notice_per_affected_customer_through_their_channel_none_to_the_insider(delivered):
    contacts = [row for row in _contacts()
                if normalise_address(row["address"]) not in _insider_addresses(delivered["insider"])]
    assert len(contacts) == len(_contacts()) - 1  # the insider is among the contacts, and left out
    step = delivered["steps"]["notify-customers"]
    assert step["state"] == "done" and step["result"]["recipients"] == len(contacts)
    by_channel: dict[str, list[str]] = {}
    for row in contacts:
        by_channel.setdefault(row["channel"], []).append(normalise_address(row["address"]))
    customer_mail = [m for m in delivered["mail"] if "/notify-customers/" in m.message["X-Neo-Idempotency-Key"]]
    got = {
        "email": [normalise_address(m.recipients[0]) for m in customer_mail],
        "sms": [normalise_address(r.json()["to"]) for r in delivered["sms"]],
        "push": [normalise_address(r.json()["to"]) for r in delivered["push"]],
    }
    for channel in ("email", "sms", "push"):
        assert sorted(got[channel]) == sorted(by_channel.get(channel, [])), channel  # each once, nobody else
    letters = [r for r in delivered["outbox"] if r["incident_id"] == delivered["incident"]
               and r["audience"] == "customers" and r["channel"] == "letter"]
    assert len(letters) == len(by_channel.get("letter", []))
    assert all(Path(r["receipt"]["path"]).is_file() for r in letters)  # one printable file each
    for channel, addresses in got.items():
        assert not set(addresses) & _insider_addresses(delivered["insider"])
    keys = [m.message["X-Neo-Idempotency-Key"] for m in customer_mail] + \
           [r.headers["X-Neo-Idempotency-Key"] for r in delivered["sms"] + delivered["push"]]
    assert len(keys) == len(set(keys))
    # what the law asks a notice to say (PIPL art. 57), in the customer's language
    for m in customer_mail:
        text = m.message.get_body(("plain",)).get_content()
        if m.message["Content-Language"] == "en":
            for heading in ("Personal information concerned", "Cause", "Possible harm", "What we have done",
                            "What you can do", "How to reach us"):
                assert f"## {heading}" in text


def test_the_regulator_gets_the_report_attached(delivered):
    [mail] = [m for m in delivered["mail"] if m.recipients == [REGULATOR_EMAIL]]
    message = mail.message
    names = [part.get_filename() for part in message.iter_attachments()]
    report = delivered["steps"]["report-initial"]["result"]["paths"]
    assert Path(report["json"]).name in names
    assert any(n.endswith(".html") for n in names)
    attached = next(p for p in message.iter_attachments() if p.get_filename() == Path(report["json"]).name)
    assert json.loads(attached.get_content()) == json.loads(Path(report["json"]).read_text(encoding="utf-8"))


def test_every_receipt_is_in_the_breach_register(delivered):
    incident = delivered["incident"]
    entry = next(e for e in delivered["register"] if e["incident_id"] == incident)
    deliveries = entry["deliveries"]
    mine = [r for r in delivered["outbox"] if r["incident_id"] == incident]
    assert {d["key"] for d in deliveries} == {r["wire_key"] for r in mine}
    assert all(d["state"] == "delivered" and d["receipt"] for d in deliveries)
    by_route = {d["key"] + " " + d["route"]: d["receipt"] for d in deliveries}
    # what each receiver saw, by key, is what the register holds a receipt for
    fleet = deliveries[0]["key"].split("/")[0] + "/"

    def keys(route_prefix: str) -> set[str]:
        return {d["key"] for d in deliveries if d["route"].startswith(route_prefix)}

    assert {m.message["X-Neo-Idempotency-Key"] for m in delivered["mail"]
            if m.message["X-Neo-Idempotency-Key"].startswith(fleet)} == keys("email")
    assert {r.headers["X-Neo-Idempotency-Key"] for r in delivered["sms"]} == keys("sms")
    assert {r.headers["X-Neo-Idempotency-Key"] for r in delivered["chat"]
            if r.headers["X-Neo-Idempotency-Key"].startswith(fleet)} == keys("chat")
    assert all(r.get("queue_id") for k, r in by_route.items() if k.split(" ")[1].startswith("email"))
    assert all(r.get("http_status") == 200 for k, r in by_route.items() if k.split(" ")[1] == "sms")
    assert all(r.get("apprise") == "sent" for k, r in by_route.items() if k.split(" ")[1].startswith("chat"))
    assert all(Path(r["path"]).is_file() for k, r in by_route.items() if k.split(" ")[1].startswith("letter"))
    assert all(Path(r["path"]).is_dir() for k, r in by_route.items() if k.split(" ")[1] == "portal")
    counted = {d["audience"] for d in deliveries}
    assert {"security", "customers", "regulator", "police", "public"} <= counted
