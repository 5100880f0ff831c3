"""What the respond stage renders: regulator reports with every CAC item and customer
notices with every PIPL art. 57 item, in both languages; recipients resolved from the
contact source, never the insider, the unresolved counted; nothing meant for the
security team carries a raw customer identifier or contact detail."""

from __future__ import annotations

import datetime as dt
import json
import os
import stat
import textwrap
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from types import SimpleNamespace

import pytest

from auditd.config.located import Problems
from auditd.correlate import Transition
from auditd.respond import people
from auditd.respond.contacts import load_contacts, read_manifests
from auditd.respond.register import register, render_register
from auditd.respond.reports import HEADINGS, ITEMS, render_report, set_finding
from auditd.respond.settings import ContactSettings, HttpContacts, ManifestSettings, Organisation
from auditd.store.sqlite import immediate

from respond_helpers import UTC, ZONE, Clock, World, alert

T0 = dt.datetime(2026, 11, 2, 2, 0, tzinfo=UTC)
ORG = Organisation(name="云岭零售有限公司", system="neo-crm", location="昆明市",
                   contact={"zh-CN": "客服热线 400-800-1234", "en": "hotline +86 400-800-1234"},
                   security_contact="security@yunling.example")
CUSTOMERS = {  # raw id -> (name, language, channel, address)
    "C00000001": ("张三", "zh-CN", "sms", "13800000001"),
    "C00000002": ("Alice Wong", "en", "email", "alice@example.com"),
    "C00000003": ("李四", "zh-CN", "email", "lisi@example.com"),
    "C00000004": ("谭晶", "zh-CN", "email", "Tan.Jing@Yunling.example"),  # the insider's own address
    "C00000005": ("王五", "zh-CN", "letter", "昆明市五华区某路 1 号"),
}
UNLISTED = ("C00000006", "C00000007")  # affected, no contact on file
INSIDER = "E10055"


def _contacts_csv(tmp_path: Path) -> Path:
    path = tmp_path / "contacts.csv"
    rows = ["customer_id,name,language,channel,address"] + [f"{c},{n},{lang},{ch},{a}"
                                                           for c, (n, lang, ch, a) in CUSTOMERS.items()]
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def leak(tmp_path):
    """A T4 insider leak of seven customers' identity and property data, its notices approved."""
    world = World(tmp_path, Clock(T0), directory=SimpleNamespace(employees={
        INSIDER: SimpleNamespace(email="tan.jing@yunling.example", phone=None)}))
    world.rebuild(organisation=ORG, contacts=ContactSettings(csv=_contacts_csv(tmp_path)))
    subjects = tuple(world.pseudonymiser(c) for c in (*CUSTOMERS, *UNLISTED))
    (change,) = world.apply([alert(1, T0, actor=INSIDER, kind="match", severity="critical", subjects=subjects,
                                   categories=("identity", "property"), sensitive=True, record_count=7)])
    assert change.tier == "T4"
    world.run()
    incident = change.incident_id
    people.done(world.conn, world.correlator, incident, "draft-customer-notice", "alice", world.clock())
    people.approve(world.conn, world.correlator, incident, "approve-customer-notice", "bob", world.clock())
    world.clock.advance(minutes=5)
    world.run()
    return world, incident


def _text(path: str) -> str:
    return Path(path).read_text(encoding="utf-8")


def _report(world: World, incident: str, kind: str):
    with immediate(world.conn):
        return render_report(world.conn, incident, kind, templates=world.responder.templates, organisation=ORG,
                             zone=ZONE, out_dir=world.responder.out_dir, now=world.clock(), who="alice")


# what each item must show, beyond its heading: (item, {language: text}), from the fixture's facts
INITIAL_VALUES = {
    "organisation": {"zh-CN": "云岭零售有限公司", "en": "neo-crm"},
    "discovery": {"zh-CN": "2026-11-02 10:00:00", "en": "2026-11-02 10:00:00"},
    "type": {"zh-CN": "数据泄露", "en": "data leak"},
    "grade": {"zh-CN": "T4 一般", "en": "T4 general"},
    "impact": {"zh-CN": "受影响个人：7 人", "en": "People affected: 7"},
    "measures": {"zh-CN": "Tell the security team", "en": "Tell the security team"},
    "development": {"zh-CN": "当前状态：", "en": "Status: "},
    "cause": {"zh-CN": "尚不明确", "en": "Not yet known"},
    "leads": {"zh-CN": INSIDER, "en": INSIDER},
    "planned": {"zh-CN": "Report to the provincial cyberspace office", "en": "Report to the provincial cyberspace"},
    "evidence": {"zh-CN": "哈希链校验通过", "en": "hash chain verified"},
    "other": {"zh-CN": "无", "en": "Nothing further"},
}


@pytest.mark.parametrize("language", ["zh-CN", "en"])
@pytest.mark.parametrize("item", ITEMS["initial"])
def test_the_initial_report_carries_each_cac_item(leak, item, language):
    world, incident = leak
    rendered = _report(world, incident, "initial")
    text = _text(rendered.paths[f"{language}.md"])
    section = text.split(f"{HEADINGS[language][item]}\n", 1)
    assert len(section) == 2, f"no heading for {item}"
    body = section[1].split("\n## ", 1)[0]
    assert INITIAL_VALUES[item][language] in body
    document = json.loads(_text(rendered.paths["json"]))
    assert item in document["items"] and document["items"][item] not in (None, {}, [])
    assert HEADINGS[language][item] in _text(rendered.paths[f"{language}.html"])
    assert rendered.cause_known is False and "cause" in document["items"]


CLOSING_FINDINGS = {"cause": "员工利用导出权限批量导出", "harm": "可能被用于电信诈骗", "accountability": "涉事员工已移交公安",
                    "remediation": "导出需双人审批", "lessons": "批量导出应实时告警"}


@pytest.mark.parametrize("language", ["zh-CN", "en"])
@pytest.mark.parametrize("item", ITEMS["closing"])
def test_the_closing_report_carries_each_item(leak, item, language):
    world, incident = leak
    with pytest.raises(Exception, match="not resolved"):
        _report(world, incident, "closing")
    world.apply(actions=[Transition(incident_id=incident, who="alice", status="triaged", why="x"),
                         Transition(incident_id=incident, who="alice", status="resolved", why="y")])
    with immediate(world.conn):
        for name, text in CLOSING_FINDINGS.items():
            set_finding(world.conn, incident, name, text, "alice", world.clock())
    rendered = _report(world, incident, "closing")
    text = _text(rendered.paths[f"{language}.md"])
    body = text.split(f"{HEADINGS[language][item]}\n", 1)[1].split("\n## ", 1)[0]
    expected = {"organisation": ORG.name, "grade": "T4", "measures": "Tell the security team"}.get(
        item, CLOSING_FINDINGS.get(item))
    assert expected in body
    assert rendered.cause_known is True


NOTICE_VALUES = {
    "zh-CN": ["涉及的个人信息种类", "身份信息", "财产信息", "事件原因", "可能造成的危害", "财产损失", "我们已采取的补救措施",
              "您可以采取的措施", "不要透露验证码", "联系我们", "客服热线 400-800-1234"],
    "en": ["Personal information concerned", "identity", "property", "Cause", "Possible harm", "financial loss",
           "What we have done", "What you can do", "verification codes", "How to reach us", "hotline +86 400-800-1234"],
}


def _customer_files(world: World, incident: str) -> dict[str, dict]:
    rows = world.conn.execute("SELECT recipient, body_path FROM notices WHERE incident_id = ? AND audience = 'customers'",
                              (incident,)).fetchall()
    return {recipient: json.loads(_text(path)) for recipient, path in rows}


def test_one_notice_per_resolved_customer_in_their_language_never_the_insider(leak):
    world, incident = leak
    step = world.step(incident, "notify-customers")
    assert step.state == "done"
    assert step.result["recipients"] == 4 and step.result["unresolved"] == 2 and step.result["insider_excluded"] == 1
    files = _customer_files(world, incident)
    by_address = {body["to"]["address"]: body for body in files.values()}
    assert set(by_address) == {"13800000001", "alice@example.com", "lisi@example.com", "昆明市五华区某路 1 号"}
    assert by_address["alice@example.com"]["language"] == "en" and by_address["13800000001"]["language"] == "zh-CN"
    assert by_address["13800000001"]["to"]["channel"] == "sms"
    assert all(r.startswith("p:") for r in files)  # the store knows them by pseudonym only
    for recipient, path in world.conn.execute("SELECT recipient, body_path FROM notices WHERE audience = 'customers'"):
        mode = stat.S_IMODE(os.stat(path).st_mode)
        assert mode == 0o600, oct(mode)


@pytest.mark.parametrize("language", ["zh-CN", "en"])
def test_each_customer_notice_carries_the_art_57_items(leak, language):
    world, incident = leak
    (body,) = [b for b in _customer_files(world, incident).values() if b["language"] == language][:1]
    for needed in NOTICE_VALUES[language]:
        assert needed in body["text"], needed
    assert body["subject"]


@pytest.mark.parametrize("language", ["zh-CN", "en"])
def test_the_announcement_carries_the_same_items_for_the_unresolved(leak, language):
    world, incident = leak
    step = world.step(incident, "announce")
    assert step.state == "done" and step.result["unresolved"] == 2
    (path,) = world.conn.execute("SELECT body_path FROM notices WHERE step_id = 'announce' AND language = ?",
                                 (language,)).fetchone()
    text = json.loads(_text(path))["text"]
    for needed in NOTICE_VALUES[language]:
        assert needed in text, needed


def test_an_art_57_2_exemption_is_recorded_with_its_reason_and_the_announcement_stands_down(tmp_path):
    world = World(tmp_path, Clock(T0))
    (change,) = world.apply([alert(1, T0, kind="match", severity="critical", sensitive=True,
                                   categories=("property",), subjects=("p:1",))])
    world.run()
    people.skip(world.conn, world.correlator, change.incident_id, "notify-customers", "dpo-li", world.clock(),
                "art. 57(2): the data was encrypted and the key was not taken")
    world.run()
    assert world.step(change.incident_id, "announce").state == "skipped"
    (entry,) = register(world.conn, ZONE)
    assert entry["exemptions"][0]["reason"].startswith("art. 57(2)")
    assert "exemption PIPL art. 57(2)" in render_register([entry], ZONE)


def test_nothing_meant_for_the_security_team_carries_a_raw_identifier(leak):
    world, incident = leak
    _report(world, incident, "initial")
    raw = [*CUSTOMERS, *UNLISTED] + [v for (n, _, _, a) in CUSTOMERS.values() for v in (n, a)]
    customer_files = {path for (path,) in world.conn.execute(
        "SELECT body_path FROM notices WHERE audience IN ('customers')")}
    checked = 0
    for path in world.responder.out_dir.rglob("*"):
        if path.is_file() and str(path) not in customer_files:
            text = path.read_text(encoding="utf-8")
            checked += 1
            for value in raw:
                assert value not in text, f"{value!r} in {path}"
    assert checked >= 10
    world.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    store = (world.tmp / "neo.db").read_bytes()
    for value in raw:
        assert value.encode("utf-8") not in store, value
    assert json.dumps(register(world.conn, ZONE), default=str, ensure_ascii=False).count("C0000") == 0


def test_the_contact_csv_is_pseudonymised_at_load_and_bad_rows_are_located(tmp_path):
    from auditd.enrich.pseudonym import Pseudonymiser

    pseudonymise = Pseudonymiser(b"k" * 32)
    path = tmp_path / "contacts.csv"
    path.write_text(textwrap.dedent("""\
        customer_id,name,language,channel,address
        C1,张三,zh-CN,sms,13800000001
        C2,Bob,fr,email,bob@example.com
        C3,,en,email,x@example.com
        C4,Eve,en,pigeon,eve@example.com
        """), encoding="utf-8")
    problems = Problems()
    book = load_contacts(ContactSettings(csv=path), pseudonymise, problems)
    assert [str(p) for p in problems.items] == [
        f"{path}:3:1: language: unknown language (valid: zh-CN, en)",
        f"{path}:4:1: name: must not be empty",
        f"{path}:5:1: channel: unknown channel (valid: email, sms, chat, phone, letter, push, webhook, portal)"]
    assert book.lookup(pseudonymise("C1")).address == "13800000001"
    assert book.lookup("C1") is None  # known by pseudonym only
    assert "13800000001" not in repr(book.lookup(pseudonymise("C1")))


def test_a_contact_csv_that_is_a_link_or_a_fifo_is_refused(tmp_path):
    target = tmp_path / "real.csv"
    target.write_text("customer_id,name,language,channel,address\n")
    link = tmp_path / "link.csv"
    link.symlink_to(target)
    fifo = tmp_path / "fifo.csv"
    os.mkfifo(fifo)
    for path in (link, fifo):
        problems = Problems()
        load_contacts(ContactSettings(csv=path), lambda raw: raw, problems)
        assert problems.items and "cannot read" in str(problems.items[0])


class _Contacts(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802
        if self.path.endswith("p%3Aknown"):
            body = json.dumps({"name": "Carol", "language": "en", "channel": "email", "address": "c@example.com"})
            self.send_response(200)
            self.end_headers()
            self.wfile.write(body.encode())
        elif self.path.endswith("p%3Aboom"):
            self.send_response(500)
            self.end_headers()
        else:
            self.send_response(404)
            self.end_headers()

    def log_message(self, *args):
        pass


def test_an_http_contact_source_is_asked_by_pseudonym(tmp_path):
    from auditd.respond.contacts import ContactError

    server = HTTPServer(("127.0.0.1", 0), _Contacts)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/contact/{{pseudonym}}"
        book = load_contacts(ContactSettings(http=HttpContacts(url=url)), lambda raw: raw, Problems())
        assert book.lookup("p:known").address == "c@example.com"
        assert book.lookup("p:nobody") is None
        with pytest.raises(ContactError):
            book.lookup("p:boom")
    finally:
        server.shutdown()


def test_an_export_manifest_names_the_customers_the_log_did_not(tmp_path):
    manifest = tmp_path / "exports-1.jsonl"
    manifest.write_text('{"req": "r-9", "customers": ["C1", "C2"]}\nnot json\n{"req": "r-8", "customers": ["C3"]}\n'
                        '{"req": "r-9", "customers": [3]}\n', encoding="utf-8")
    read = read_manifests([ManifestSettings(name="crm", paths=[tmp_path / "exports-*.jsonl"])], {"r-9"},
                          lambda raw: f"p:{raw}")
    assert read.customers == {"r-9": {"p:C1", "p:C2"}} and read.bad_lines == 2


def test_values_from_log_lines_cannot_inject_markup(tmp_path):
    world = World(tmp_path, Clock(T0))
    actor = "<img src=x onerror=alert(1)>*bold*"
    (change,) = world.apply([alert(1, T0, actor=actor, kind="match", severity="critical", sensitive=True,
                                   categories=("property",), subjects=("p:1",))])
    world.run()
    paths = world.step(change.incident_id, "report-initial").result["paths"]
    for language in ("zh-CN", "en"):
        html = _text(paths[f"{language}.html"])
        assert "<img" not in html and ("\\u003cimg" in html or "&lt;img" in html)
        markdown = _text(paths[f"{language}.md"])
        assert "\\<img src=x onerror=alert(1)\\>\\*bold\\*" in markdown


def test_the_register_lines_up_every_step_even_the_longest_ids(tmp_path):
    world = World(tmp_path, Clock(T0))
    (change,) = world.apply([alert(1, T0, kind="match", severity="critical", sensitive=True,
                                   categories=("property",), subjects=("p:1",))])
    world.run()
    (entry,) = register(world.conn, ZONE)
    rows = [line for line in render_register([entry], ZONE).splitlines() if " due " in line]
    assert any(len(c["step"]) > 22 for c in entry["clocks"]), "the playbook should have a long step id"
    assert len({line.index(" due ") for line in rows}) == 1  # one column, whatever the step's id


def test_the_register_steps_and_outbox_say_which_zone_their_times_are_in(tmp_path):
    """Their times carry no offset; without the zone named, 21:04 could be read as UTC."""
    from auditd.deliver.view import render_list
    from auditd.respond import steps
    from auditd.respond.view import render_steps

    world = World(tmp_path, Clock(T0))
    (change,) = world.apply([alert(1, T0, kind="match", severity="critical", subjects=("p:1",))])
    world.run()
    text = render_steps(change.incident_id, steps.of_incident(world.conn, change.incident_id), T0, ZONE)
    assert text.splitlines()[0] == f"{change.incident_id}: playbook T4; times Asia/Shanghai"

    assert render_register([], ZONE).startswith("the breach register is empty")
    world_free_entry = {"incident_id": "INC-1", "tier": "T4", "status": "open", "discovered_at": T0,
                        "affected_count": 1, "title": "t", "clocks": [], "reports": [], "notices": [],
                        "exemptions": [], "unresolved_customers": 0}
    assert render_register([world_free_entry], ZONE).splitlines()[0] == (
        "breach register: 1 incident(s) of tiers T1–T4; times Asia/Shanghai")
    assert render_steps("INC-1", [], T0, ZONE).startswith("INC-1: no playbook steps yet")
    row = {"id": 1, "state": "delivered", "attempts": 1, "possible_repeat": False, "delivered_at": T0,
           "next_attempt_at": None, "receipt": {"queue_id": "q"}, "covered_by": None, "last_error": None,
           "route": "email", "audience": "security", "recipient": "security"}
    assert render_list([row], ZONE).splitlines()[-1] == "times Asia/Shanghai"


def test_a_misspelt_finding_says_which_was_meant(tmp_path):
    from auditd.respond.reports import ReportError

    world = World(tmp_path, Clock(T0))
    (change,) = world.apply([alert(1, T0, kind="match", severity="critical", subjects=("p:1",))])
    with pytest.raises(ReportError, match=r"unknown finding 'caus' \(did you mean 'cause'\?\) \(valid: cause, "):
        set_finding(world.conn, change.incident_id, "caus", "x", "alice", world.clock())
