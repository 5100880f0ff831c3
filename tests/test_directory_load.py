"""Loading the HR directory: frozen, indexed types; every problem located and collected."""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path

import pytest

from auditd.config.located import Problems
from auditd.directory import load_directory

REPO = Path(__file__).resolve().parents[1]
CATEGORIES = ("identity", "contact", "media", "property", "location", "device", "biometric", "order")
SHANGHAI = dt.timezone(dt.timedelta(hours=8))

BASE = """\
regions:
  - {id: R-KM, name: 昆明}
  - {id: R-QJ}
stores:
  - {id: S011, region: R-KM, hours: "08:30-21:30"}
  - {id: S021, region: R-QJ}
shifts:
  early: "08:30-17:00 mon-sat"
roles:
  - id: store_clerk
    grants:
      - {categories: [identity, contact, order], actions: [read, search], scope: own_store}
  - id: store_manager
    grants:
      - {categories: [property], actions: [read], scope: own_store, purpose_required: true}
partners:
  - {id: P-LOGI, allowed_fields: [name, phone, address], countries: [CN]}
employees:
"""


def load(tmp_path: Path, employees: str, *, base: str = BASE, csv: str | None = None):
    path = tmp_path / "directory.yaml"
    text = base + employees if employees else base.replace("employees:\n", "employees: []\n")
    if csv is not None:
        (tmp_path / "staff.csv").write_text(csv, encoding="utf-8")
        text += "employees_csv: [staff.csv]\n"
    path.write_text(text, encoding="utf-8")
    problems = Problems()
    directory = load_directory(path, problems, categories=CATEGORIES)
    return directory, [str(p) for p in problems.items]


def test_the_example_directory_loads_without_problems():
    problems = Problems()
    directory = load_directory(REPO / "examples" / "directory.yaml", problems, categories=CATEGORIES)
    assert problems.items == []
    assert len(directory) == 60
    assert len(directory.stores) == 8 and len(directory.regions) == 3
    assert {e.region for e in directory.employees.values()} == {"R-KM", "R-QJ", "R-DL"}
    departed = [e.id for e in directory.employees.values() if e.status == "departed"]
    assert departed == ["E10007", "E10046"]


def test_records_are_frozen_indexed_and_derived(tmp_path):
    d, problems = load(tmp_path, "  - {id: E1, name: 张伟, roles: [store_clerk], store: S011, shift: early}\n")
    assert problems == []
    emp = d.employees["E1"]
    assert emp.region == "R-KM"  # from the store
    assert str(emp.shift) == "08:30-17:00 mon,tue,wed,thu,fri,sat"
    assert d.store_region("S021") == "R-QJ" and d.store_region("S999") is None
    grants = d.roles["store_clerk"].by_category_action[("contact", "search")]
    assert grants[0].scope == "own_store"
    assert d.partners["P-LOGI"].allowed_fields == ("name", "phone", "address")
    with pytest.raises(dataclasses.FrozenInstanceError):
        emp.status = "departed"  # type: ignore[misc]
    with pytest.raises(TypeError):
        d.employees["E2"] = emp  # type: ignore[index]


def test_store_staff_without_a_shift_work_the_store_hours(tmp_path):
    d, _ = load(tmp_path, "  - {id: E1, name: a, roles: [store_clerk], store: S011}\n"
                          "  - {id: E2, name: b, roles: [store_clerk], region: R-KM}\n")
    assert str(d.employees["E1"].shift) == "08:30-21:30 mon,tue,wed,thu,fri,sat,sun"
    assert d.employees["E2"].shift is None


def test_unknown_key_wrong_type_and_unknown_role_are_all_reported_with_locations(tmp_path):
    employees = (
        "  - {id: E1, name: a, roles: [store_clerk], store: S011, favourite: tea}\n"
        "  - {id: E2, name: b, roles: [store_clerk], store: S011, hire_date: yesterday}\n"
        "  - {id: E3, name: c, roles: [{role: cashier, from: 2026-01-01}], store: S011}\n"
    )
    d, problems = load(tmp_path, employees)
    f = str(tmp_path / "directory.yaml")
    assert d is None
    assert any(p.startswith(f"{f}:19:58: employees[0].favourite: unknown key 'favourite'") for p in problems)
    assert f"{f}:20:69: employees[1].hire_date: expected date, got str 'yesterday'" in problems
    assert any(p.startswith(f"{f}:21:38: employees[2].roles[0].role: unknown role 'cashier' (known: store_clerk, "
                            "store_manager)") for p in problems), problems
    assert len(problems) == 3


def test_overlapping_validity_of_one_role_is_an_error(tmp_path):
    employees = (
        "  - id: E1\n    name: a\n    store: S011\n    roles:\n"
        "      - {role: store_clerk, from: 2024-01-01, until: 2026-10-27}\n"
        "      - {role: store_clerk, from: 2026-10-01}\n"
        "      - {role: store_manager, from: 2026-10-28}\n"  # another role may overlap
    )
    _, problems = load(tmp_path, employees)
    assert problems == [f"{tmp_path / 'directory.yaml'}:24:9: employees[0].roles[1]: "
                        "role 'store_clerk' overlaps its validity at roles[0]"]


def test_cross_reference_and_date_rules(tmp_path):
    employees = (
        "  - {id: E1, name: a, roles: [store_clerk], store: S999}\n"
        "  - {id: E2, name: b, roles: [store_clerk], store: S011, region: R-QJ}\n"
        "  - {id: E3, name: c, roles: [store_clerk], region: R-KM, shift: night}\n"
        "  - {id: E4, name: d, roles: [store_clerk], region: R-KM, status: departed}\n"
        "  - {id: E1, name: e, roles: [store_clerk], region: R-KM}\n"
        "  - {id: E6, name: f, roles: [{role: store_clerk, from: 2026-05-01, until: 2026-04-01}], region: R-KM}\n"
        "  - {id: E7, name: g, roles: [store_clerk], region: R-KM, account_disabled_at: 2026-11-01T10:00:00}\n"
    )
    _, problems = load(tmp_path, employees)
    text = "\n".join(problems)
    for expected in (
        "employees[0].store: unknown store 'S999' (known: S011, S021)",
        "employees[1].region: region 'R-QJ' differs from store S011's region 'R-KM'",
        "employees[2].shift: unknown shift 'night' (known: early)",
        "employees[3].departure: a departed employee needs a departure time",
        "employees[4].id: duplicate employee id 'E1' (first at",
        "employees[5].roles[0].until: 'until' is before 'from'",
        "employees[6].account_enabled: account_disabled_at is set, so account_enabled must be false",
    ):
        assert expected in text
    assert len(problems) == 7


def test_grants_are_checked_against_actions_and_the_configured_categories(tmp_path):
    base = (BASE.replace("actions: [read], scope: own_store, purpose_required: true", "actions: [peek]")
            .replace("[property]", "[propery]").replace("actions: [read, search], scope: own_store",
                                                        "actions: [read, search], scope: everywhere"))
    _, problems = load(tmp_path, "", base=base)
    text = "\n".join(problems)
    assert "roles[1].grants[0].actions[0]: unknown action 'peek'" in text
    assert "roles[0].grants[0].scope: expected one of 'all', 'own_store', 'own_region', 'assigned'" in text
    assert "roles[1].grants[0].categories[0]: unknown data category 'propery'" in text


def test_a_grant_with_the_unmask_action_must_say_unmask_true(tmp_path):
    base = BASE.replace("actions: [read], scope: own_store, purpose_required: true", "actions: [unmask]")
    _, problems = load(tmp_path, "", base=base)
    assert [p.split(": ", 1)[1] for p in problems] == [
        "roles[1].grants[0].unmask: a grant with action 'unmask' must set unmask: true"
    ]


def test_employees_from_csv_join_the_yaml_ones(tmp_path):
    csv = (
        "id,name,roles,store,shift,status,hire_date,departure,account_enabled,account_disabled_at\n"
        "E20,王芳,store_clerk@2024-03-01..2026-10-27; store_manager@2026-10-28..,S011,early,active,"
        "2024-03-01,,yes,\n"
        '"E21","李, 娜",store_clerk,S021,09:00-18:00 mon-fri,departed,2023-01-09,2026-10-30T18:00,no,'
        "2026-11-02T10:30:00+08:00\n"
    )
    d, problems = load(tmp_path, "  - {id: E1, name: a, roles: [store_clerk], store: S011}\n", csv=csv)
    assert problems == []
    assert sorted(d.employees) == ["E1", "E20", "E21"]
    e20, e21 = d.employees["E20"], d.employees["E21"]
    assert [a.role.id for a in e20.assignments] == ["store_clerk", "store_manager"]
    assert e21.name == "李, 娜" and e21.region == "R-QJ" and str(e21.shift) == "09:00-18:00 mon,tue,wed,thu,fri"
    assert e21.departure == dt.datetime(2026, 10, 30, 18, tzinfo=SHANGHAI)
    assert e21.account_enabled is False
    assert [s.path.name for s in d.sources] == ["directory.yaml", "staff.csv"]


def test_csv_problems_name_the_cell(tmp_path):
    csv = (
        "id,name,roles,store,team\n"
        "E20,a,store_clerk,S011,x\n"
        'E21,"b",cashier@2024-01-01..,S011,y\n'
        "E1,c,store_clerk,S011,z\n"
    )
    _, problems = load(tmp_path, "  - {id: E1, name: a, roles: [store_clerk], store: S011}\n", csv=csv)
    f = tmp_path / "staff.csv"
    assert problems[0].startswith(f"{f}:1:21: columns[4]: unknown column 'team'")
    assert problems[1].startswith(f"{f}:3:9: employees[1].roles[0].role: unknown role 'cashier'")
    assert problems[2].startswith(f"{f}:4:1: employees[2].id: duplicate employee id 'E1' (first at "
                                  f"{tmp_path / 'directory.yaml'}:19:10)")
    assert len(problems) == 3


def test_a_missing_csv_is_reported_where_the_yaml_names_it(tmp_path):
    path = tmp_path / "directory.yaml"
    path.write_text(BASE.replace("employees:\n", "employees: []\nemployees_csv: [gone.csv]\n"), encoding="utf-8")
    problems = Problems()
    assert load_directory(path, problems) is None
    assert [str(p) for p in problems.items] == [
        f"{path}:19:17: employees_csv[0]: file not found: {tmp_path / 'gone.csv'}"
    ]
