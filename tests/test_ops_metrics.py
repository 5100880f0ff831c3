"""The metrics endpoint, scraped over real HTTP and parsed as Prometheus parses it."""

from __future__ import annotations

import datetime as dt
import shutil
import socket
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.process_collector import ProcessCollector

from auditd.config.located import Problems, parse_yaml
from auditd.config.typed import convert
from auditd.ops.metrics import Metrics
from auditd.ops.settings import MetricsSettings, OpsSettings
from auditd.ops.status import FileLag
from auditd.store.sqlite import Store
from store_helpers import insert_incident

CLOCK = 1_790_000_000.0  # 2026-09-21T14:13:20Z
UTC = dt.timezone.utc
Samples = dict[tuple[str, frozenset], float]


# -- helpers -------------------------------------------------------------------------------
@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    store = Store(tmp_path / "neo-auditd.db").open()
    yield store
    store.close()


@pytest.fixture
def metrics(store: Store) -> Iterator[Metrics]:
    m = Metrics(store.path, clock=lambda: CLOCK)
    yield m
    m.stop()


def scrape(port: int) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        assert response.status == 200
        text = response.read().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def names(samples: Samples) -> set[str]:
    return {name for name, _ in samples}


# -- the pushed figures --------------------------------------------------------------------
def test_scrape_reports_exact_values(store: Store, metrics: Metrics) -> None:
    with store.transaction() as conn:
        insert_incident(conn, "INC-1", "T2", "open")
        insert_incident(conn, "INC-2", "T2", "open")
        insert_incident(conn, "INC-3", "T5", "closed")
        from auditd.respond import steps
        from auditd.respond.due import Due
        from auditd.respond.playbook import Step

        # overdue as the metrics' clock sees it: due an hour before CLOCK, still open
        due = dt.datetime.fromtimestamp(CLOCK, UTC) - dt.timedelta(hours=1)
        for step_id in ("a", "b"):
            steps.insert(conn, "INC-1", "T2", Step(id=step_id, kind="task", title=step_id, due=Due(60.0)), due, due)
    port = metrics.start_http("127.0.0.1", 0)
    newer = dt.datetime(2026, 9, 21, 14, 0, tzinfo=UTC)
    metrics.observe_batch("app", events=100, quarantined=2, skipped=1, alerts_by_rule={"departed-access": 2},
                          eval_seconds=0.2, commit_seconds=0.03, last_event_ts=newer)
    # an older batch (another file of the source) must not move the timestamp back
    metrics.observe_batch("app", events=50, quarantined=0, skipped=0,
                          alerts_by_rule={"departed-access": 1, "bulk-export": 0},
                          eval_seconds=0.3, commit_seconds=0.2, last_event_ts=newer - dt.timedelta(hours=1))
    metrics.set_lag("app", "/var/log/app/access.log", 4096)
    metrics.reload_result(False)

    s = scrape(port)

    assert value(s, "neo_auditd_events_total", source="app") == 150
    assert value(s, "neo_auditd_quarantined_total", source="app") == 2
    assert value(s, "neo_auditd_skipped_total", source="app") == 1
    assert value(s, "neo_auditd_alerts_total", rule="departed-access") == 3
    assert ("neo_auditd_alerts_total", frozenset({("rule", "bulk-export")})) not in s
    assert value(s, "neo_auditd_last_event_timestamp_seconds", source="app") == newer.timestamp()
    assert value(s, "neo_auditd_rule_evaluation_seconds_count") == 2
    assert value(s, "neo_auditd_rule_evaluation_seconds_sum") == pytest.approx(0.5)
    assert value(s, "neo_auditd_batch_commit_seconds_bucket", le="0.05") == 1
    assert value(s, "neo_auditd_batch_commit_seconds_bucket", le="0.25") == 2
    assert value(s, "neo_auditd_lag_bytes", source="app", path="/var/log/app/access.log") == 4096
    # notices: read from the outbox at scrape time (tests/test_deliver_status.py)
    assert value(s, "neo_auditd_reload_success") == 0
    assert value(s, "neo_auditd_reload_timestamp_seconds") == CLOCK
    # read from the store at scrape time
    assert value(s, "neo_auditd_incidents", tier="T2", status="open") == 2
    assert value(s, "neo_auditd_incidents", tier="T5", status="closed") == 1
    assert value(s, "neo_auditd_playbook_steps_overdue") == 2
    assert value(s, "neo_auditd_store_scrape_success") == 1


def test_labels_carry_no_event_data(store: Store, metrics: Metrics) -> None:
    port = metrics.start_http("127.0.0.1", 0)
    metrics.observe_batch("app", events=1, quarantined=0, skipped=0, alerts_by_rule={"r1": 1},
                          eval_seconds=0.0, commit_seconds=0.0, last_event_ts=None)
    label_names = {k for _, labels in scrape(port) for k, _ in labels}
    assert label_names <= {"source", "path", "rule", "tier", "status", "channel", "state", "le",
                           "implementation", "major", "minor", "patchlevel", "version", "generation"}


def test_reload_success_starts_at_one_and_follows_results(metrics: Metrics) -> None:
    port = metrics.start_http("127.0.0.1", 0)
    assert value(scrape(port), "neo_auditd_reload_success") == 1
    metrics.reload_result(False)
    assert value(scrape(port), "neo_auditd_reload_success") == 0
    metrics.reload_result(True)
    assert value(scrape(port), "neo_auditd_reload_success") == 1


def test_declared_sources_show_zero_before_traffic(metrics: Metrics) -> None:
    port = metrics.start_http("127.0.0.1", 0)
    metrics.declare_sources(["app", "crm"])
    s = scrape(port)
    assert value(s, "neo_auditd_events_total", source="crm") == 0
    assert value(s, "neo_auditd_quarantined_total", source="app") == 0


def test_forget_lag_drops_the_series(metrics: Metrics) -> None:
    port = metrics.start_http("127.0.0.1", 0)
    metrics.set_lag("app", "/a.log", 10)
    metrics.forget_lag("app", "/a.log")
    metrics.forget_lag("app", "/never-set.log")
    assert "neo_auditd_lag_bytes" not in names(scrape(port))


def test_set_lags_replaces_the_whole_set(metrics: Metrics) -> None:
    port = metrics.start_http("127.0.0.1", 0)
    metrics.set_lags([FileLag(source="app", path="/a.log", offset=0, size=10, lag_bytes=10),
                      FileLag(source="app", path="/b.log", offset=5, size=10, lag_bytes=5)])
    metrics.set_lags([FileLag(source="app", path="/b.log", offset=10, size=10, lag_bytes=0)])
    s = scrape(port)
    assert value(s, "neo_auditd_lag_bytes", source="app", path="/b.log") == 0
    assert ("neo_auditd_lag_bytes", frozenset({("source", "app"), ("path", "/a.log")})) not in s


def test_rejects_naive_times(metrics: Metrics) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        metrics.observe_batch("app", events=1, quarantined=0, skipped=0, alerts_by_rule={},
                              eval_seconds=0.0, commit_seconds=0.0, last_event_ts=dt.datetime(2026, 1, 1))
    assert metrics.registry.get_sample_value("neo_auditd_events_total", {"source": "app"}) is None


def test_instances_share_no_state(tmp_path: Path) -> None:
    first, second = Metrics(clock=lambda: CLOCK), Metrics(clock=lambda: CLOCK)
    first.observe_batch("app", events=7, quarantined=0, skipped=0, alerts_by_rule={},
                        eval_seconds=0.0, commit_seconds=0.0, last_event_ts=None)
    assert first.registry.get_sample_value("neo_auditd_events_total", {"source": "app"}) == 7
    assert second.registry.get_sample_value("neo_auditd_events_total", {"source": "app"}) is None


# -- the store-backed figures --------------------------------------------------------------
def test_scrape_does_not_wait_for_the_pipelines_write_transaction(store: Store, metrics: Metrics) -> None:
    with store.transaction() as conn:
        insert_incident(conn, "INC-1", "T3", "open")
    port = metrics.start_http("127.0.0.1", 0)
    with store.transaction() as conn:  # a batch mid-commit holds the write lock
        insert_incident(conn, "INC-2", "T3", "open")
        s = scrape(port)
    # a reader that had to wait for the lock would have given up (busy timeout) and said so
    assert value(s, "neo_auditd_store_scrape_success") == 1
    assert value(s, "neo_auditd_incidents", tier="T3", status="open") == 1  # committed rows only


def test_unreadable_store_is_reported_not_a_failed_scrape(tmp_path: Path) -> None:
    metrics = Metrics(tmp_path / "missing.db", clock=lambda: CLOCK)
    try:
        port = metrics.start_http("127.0.0.1", 0)
        s = scrape(port)
    finally:
        metrics.stop()
    assert value(s, "neo_auditd_store_scrape_success") == 0
    assert "neo_auditd_incidents" not in names(s)
    assert value(s, "neo_auditd_reload_success") == 1  # the rest of the page is intact
    assert not (tmp_path / "missing.db").exists()  # a read-only scrape never creates the store


# -- process metrics under systemd's ProcSubset=pid ----------------------------------------
def fake_proc(root: Path, stat_text: str | None = None) -> Path:
    """A /proc as ProcSubset=pid leaves it: the process's own files, no /proc/stat."""
    me = root / "self"
    (me / "fd").mkdir(parents=True)
    (me / "stat").write_text(stat_text if stat_text is not None else Path("/proc/self/stat").read_text())
    shutil.copyfile("/proc/self/limits", me / "limits")
    for name in ("0", "1", "2"):
        (me / "fd" / name).touch()
    return root


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
def test_process_metrics_survive_hidden_proc_stat(tmp_path: Path) -> None:
    proc = fake_proc(tmp_path / "proc")
    assert list(ProcessCollector(proc=str(proc), registry=None).collect()) == []  # the stock one goes blank

    metrics = Metrics(proc=str(proc))
    start = metrics.registry.get_sample_value("process_start_time_seconds")
    assert metrics.registry.get_sample_value("process_open_fds") == 3

    real = list(ProcessCollector(registry=None).collect())  # the real /proc, with /proc/stat
    real_start = next(m.samples[0].value for m in real if m.name == "process_start_time_seconds")
    # /proc/stat's btime is whole seconds; the clocks are finer
    assert start == pytest.approx(real_start, abs=1.5)


@pytest.mark.skipif(not Path("/proc/self/limits").exists(), reason="needs Linux /proc")
def test_broken_process_collector_leaves_the_rest_of_the_page(tmp_path: Path) -> None:
    metrics = Metrics(proc=str(fake_proc(tmp_path / "proc", stat_text="1 (x) S 1\n")))  # truncated stat
    try:
        port = metrics.start_http("127.0.0.1", 0)
        s = scrape(port)
    finally:
        metrics.stop()
    assert "process_start_time_seconds" not in names(s)
    assert value(s, "neo_auditd_reload_success") == 1
    assert b"neo_auditd_reload_success" in generate_latest(metrics.registry)


# -- the HTTP endpoint ---------------------------------------------------------------------
def test_only_the_metrics_path_is_served(metrics: Metrics) -> None:
    port = metrics.start_http("127.0.0.1", 0)
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5)
    assert caught.value.code == 404


def test_stop_releases_the_port_and_start_twice_is_an_error(metrics: Metrics) -> None:
    port = metrics.start_http("127.0.0.1", 0)
    with pytest.raises(RuntimeError, match="already running"):
        metrics.start_http("127.0.0.1", 0)
    metrics.stop()
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2)
    metrics.stop()  # idempotent


def has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not has_ipv6_loopback(), reason="::1 is not configured on this host")
def test_serves_on_ipv6_loopback() -> None:
    metrics = Metrics(clock=lambda: CLOCK)
    try:
        port = metrics.start_http("::1", 0)
        with urllib.request.urlopen(f"http://[::1]:{port}/metrics", timeout=5) as response:
            assert b"neo_auditd_reload_success 1.0" in response.read()
    finally:
        metrics.stop()


# -- settings --------------------------------------------------------------------------------
def load_ops(text: str) -> tuple[OpsSettings | None, list[str]]:
    problems = Problems()
    doc = parse_yaml(text, "/etc/neo-auditd/config.yaml", problems)
    out = convert(OpsSettings, doc.data, doc, (), problems)
    return out, [str(p) for p in problems.items]


def test_metrics_settings_default_to_loopback() -> None:
    assert MetricsSettings() == MetricsSettings(enabled=True, listen="127.0.0.1", port=9464)
    ops, problems = load_ops("metrics: {listen: '::1', port: 9100}\n")
    assert problems == []
    assert ops.metrics.listen == "::1" and ops.metrics.port == 9100


def test_metrics_settings_reject_host_names_and_bad_ports() -> None:
    _, problems = load_ops("metrics:\n  listen: localhost\n  port: 0\n")
    assert problems == [
        "/etc/neo-auditd/config.yaml:2:11: metrics.listen: expected an IP address such as 127.0.0.1 or ::1,"
        " got 'localhost'",
        "/etc/neo-auditd/config.yaml:3:9: metrics.port: expected a port from 1 to 65535, got 0",
    ]


def test_sentry_settings_check_the_dsn_without_echoing_it() -> None:
    _, problems = load_ops("sentry: {dsn: 'https://secretkey@sentry.example.com/', sample_rate: 2}\n")
    assert len(problems) == 2
    assert "sentry.dsn: not a Sentry DSN" in problems[0] and "secretkey" not in problems[0]
    assert "sentry.sample_rate: expected a number from 0 to 1, got 2.0" in problems[1]
    ops, problems = load_ops("sentry: {dsn: 'https://k@sentry.example.com/42', environment: staging}\n")
    assert problems == [] and ops.sentry.environment == "staging"


def test_each_rule_shows_its_matches_and_what_its_detector_and_condition_cost(tmp_path: Path, metrics: Metrics):
    from behaviour_helpers import ev, memory_conn, rules_from

    rules, _ = rules_from(tmp_path, """
- rule: many_exports
  desc: Many exports within an hour.
  kind: threshold
  params: {gte: 5, timespan: 1h}
  condition: event.action = export
  severity: high
  tags: [incubating]
- rule: any_export_of_many
  desc: An export of many records.
  condition: event.action = export and neo.data.record_count > 10
  severity: low
  tags: [incubating]
""", memory_conn())
    events = [ev(dt.timedelta(seconds=i), f"e{i}", action="export" if i % 3 == 0 else "read", record_count=i)
              for i in range(3000)]
    for start in range(0, len(events), 256):
        rules.evaluate_all(events[start:start + 256])
    metrics.watch_rules(lambda: rules.stats)
    samples = scrape(metrics.start_http("127.0.0.1", 0))
    assert value(samples, "neo_auditd_rule_matches_total", rule="many_exports") == 1000
    assert value(samples, "neo_auditd_rule_matches_total", rule="any_export_of_many") == 996  # 12, 15, ... 2997
    assert value(samples, "neo_auditd_rule_detector_seconds_total", rule="many_exports") > 0
    assert ("neo_auditd_rule_detector_seconds_total", frozenset({("rule", "any_export_of_many")})) not in samples
    assert value(samples, "neo_auditd_rule_condition_seconds_total", rule="any_export_of_many") > 0
