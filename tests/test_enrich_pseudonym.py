"""Keyed pseudonyms and the key file."""

from __future__ import annotations

import hmac
import os
import re
import stat

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from auditd.config.located import Problems, parse_yaml
from auditd.enrich import Pseudonymiser, create_key_file, load_key

KEY = bytes(range(32))


def test_pseudonyms_are_stable_keyed_and_carry_no_raw_id():
    p = Pseudonymiser(KEY)
    out = p("C00012345")
    assert re.fullmatch(r"p:[0-9a-f]{32}", out)
    assert "12345" not in out and "C000" not in out
    assert p("C00012345") == out == Pseudonymiser(KEY)("C00012345")  # stable, across instances
    assert Pseudonymiser(os.urandom(32))("C00012345") != out  # keyed
    assert p("C00012346") != out
    assert p.many(["C00012345", "C00012346"]) == (out, p("C00012346"))


@pytest.mark.parametrize("key_len", [16, 32, 64, 65, 200])
def test_it_is_hmac_sha256_truncated_to_16_bytes(key_len):
    key = os.urandom(key_len)
    for raw in ("C00012345", "", "客户-1"):
        assert Pseudonymiser(key)(raw) == "p:" + hmac.digest(key, raw.encode(), "sha256")[:16].hex()


def test_the_cache_is_bounded_and_the_key_never_shows():
    p = Pseudonymiser(KEY, cache_size=4)
    for i in range(100):
        p(f"C{i:08d}")
    assert p._cached.cache_info().currsize == 4
    assert KEY.hex() not in repr(p) and repr(KEY) not in repr(p)
    with pytest.raises(ValueError):
        Pseudonymiser(b"short")


def test_create_key_file_is_owner_only_and_never_overwrites(tmp_path):
    path = create_key_file(tmp_path / "pseudonym.key")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    key = load_key(path, Problems())
    assert key is not None and len(key) == 64  # 32 random bytes as hex text, newline dropped
    with pytest.raises(FileExistsError):
        create_key_file(path)
    assert load_key(path, Problems()) == key


def test_binary_keys_are_used_byte_for_byte(tmp_path):
    path = tmp_path / "k"
    path.write_bytes(b"\x00\xff" * 8 + b"\n")
    path.chmod(0o600)
    assert load_key(path, Problems()) == b"\x00\xff" * 8 + b"\n"


def test_key_file_problems_are_located_at_the_config_key(tmp_path):
    problems = Problems()
    config = parse_yaml("pseudonym:\n  key_file: /nowhere/key\n", "/etc/neo/config.yaml", problems)
    assert load_key(tmp_path / "missing", problems, referrer=config, key_path=("pseudonym", "key_file")) is None
    (tmp_path / "empty").write_bytes(b"")
    assert load_key(tmp_path / "empty", problems) is None
    (tmp_path / "short").write_bytes(b"abc\n")
    assert load_key(tmp_path / "short", problems) is None
    assert [str(p) for p in problems.items] == [
        f"/etc/neo/config.yaml:2:13: pseudonym.key_file: pseudonym key file not found: {tmp_path / 'missing'}; on a "
        f"first start create it with `neo-auditd keygen {tmp_path / 'missing'}` (a new key, not a lost one "
        "restored, changes every pseudonym)",
        f"<config>: pseudonym key file is empty: {tmp_path / 'empty'}",
        f"<config>: pseudonym key file {tmp_path / 'short'} holds 3 bytes; at least 16 are needed",
    ]


def test_a_world_readable_key_works_with_a_located_warning_that_does_not_show_the_key(tmp_path):
    path = tmp_path / "k"
    path.write_text("s3cret-key-material-0123456789\n")
    path.chmod(0o644)
    problems = Problems()
    config = parse_yaml("pseudonym:\n  key_file: k\n", "/etc/neo/config.yaml", problems)
    assert load_key(path, problems, referrer=config, key_path=("pseudonym", "key_file")) \
        == b"s3cret-key-material-0123456789"
    assert not problems.items
    [warning] = [str(w) for w in problems.warnings]
    assert warning == (f"/etc/neo/config.yaml:2:13: pseudonym.key_file: pseudonym key file {path} is readable "
                       f"by every user (mode 0644); chmod 600 it")
    assert "s3cret" not in warning


def test_the_cache_forgets_the_oldest_first_and_recomputes_the_same_pseudonym():
    p = Pseudonymiser(KEY, cache_size=3)
    first = [p(f"C{i}") for i in range(3)]
    p("C3")  # evicts C0, the oldest
    assert set(p._cached.table) == {"C1", "C2", "C3"}
    misses = p._cached.misses
    assert p("C0") == first[0] and p._cached.misses == misses + 1  # computed again, same value
    assert p.many(("C2", "C3", "C0")) == (first[2], p("C3"), first[0])
    assert p._cached.misses == misses + 1  # all three were cached


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(st.sampled_from([f"C{i:08d}" for i in range(12)] + ["", "客户-7", "x" * 300]),
                         max_size=40), max_size=6),
       st.integers(min_value=1, max_value=16))
def test_a_list_of_ids_gets_each_its_hmac_whatever_is_cached_or_repeated(lists, cache_size):
    p = Pseudonymiser(KEY, cache_size=cache_size)
    for raws in lists:  # each list meets what the lists before it left in the cache
        assert p.each(list(raws)) == [
            "p:" + hmac.digest(KEY, raw.encode(), "sha256")[:16].hex() for raw in raws]
        assert len(p._cached.table) <= cache_size
