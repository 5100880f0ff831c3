"""Hostile input on the respond path: contact files and export manifests that a careless
operator or a hostile source system could produce."""

from __future__ import annotations

from auditd.config.located import Problems
from auditd.enrich.pseudonym import create_key_file
from auditd.respond.contacts import load_contacts, read_manifests
from auditd.respond.settings import ContactSettings, ManifestSettings

HEADER = "customer_id,name,language,channel,address\n"


def test_a_contact_field_over_the_csv_limit_is_a_located_bad_row_and_the_rest_loads(tmp_path):
    path = tmp_path / "contacts.csv"
    path.write_text(HEADER + "C00000001," + "A" * 200_000 + ",en,email,a@example.com\n"
                    "C00000002,Bob,en,email,bob@example.com\n", encoding="utf-8")
    problems = Problems()
    book = load_contacts(ContactSettings(csv=path), lambda raw: "p:" + raw, problems)
    assert [str(p) for p in problems.items] == [
        f"{path}:2:1: not a CSV row: field larger than field limit (131072)"]
    assert book.lookup("p:C00000002").address == "bob@example.com" and len(book) == 1


def test_check_says_where_the_oversized_contact_field_is_and_exits_78(tmp_path):
    from test_cli_check import check, write_config

    create_key_file(tmp_path / "pseudonym.key")
    (tmp_path / "contacts.csv").write_text(HEADER + "C00000001," + "A" * 200_000 + ",en,email,a@example.com\n")
    write_config(tmp_path, extra="respond:\n  contacts: {csv: contacts.csv}\n")
    done = check(tmp_path)
    assert done.returncode == 78, done.stderr
    assert "Traceback" not in done.stderr
    assert "contacts.csv:2:1: not a CSV row" in done.stderr


def test_an_oversized_field_in_a_csv_manifest_is_a_bad_line_not_a_crash(tmp_path):
    manifest = tmp_path / "exports-1.csv"
    manifest.write_text("req,customer_id\nr-9," + "9" * 200_000 + "\nr-9,C2\n", encoding="utf-8")
    read = read_manifests([ManifestSettings(name="crm", paths=[tmp_path / "exports-*.csv"], format="csv")],
                          {"r-9"}, lambda raw: "p:" + raw)
    assert read.customers == {"r-9": {"p:C2"}} and read.bad_lines == 1
