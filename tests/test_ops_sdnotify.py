"""sd_notify against a real AF_UNIX datagram socket standing in for systemd."""

from __future__ import annotations

import datetime as dt
import os
import select
import socket
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from auditd.ops.sdnotify import Notifier


class FakeManager:
    """The receiving end of $NOTIFY_SOCKET, as systemd binds it."""

    def __init__(self, sock: socket.socket, notify_socket: str) -> None:
        self.sock = sock
        self.notify_socket = notify_socket

    def receive(self) -> str:
        return self.sock.recv(4096).decode()

    def nothing_pending(self) -> bool:
        readable, _, _ = select.select([self.sock], [], [], 0)
        return not readable


@pytest.fixture
def manager() -> Iterator[FakeManager]:
    # Not pytest's tmp_path: an AF_UNIX path must fit in 108 bytes.
    with tempfile.TemporaryDirectory(prefix="sdn-") as directory:
        path = str(Path(directory) / "notify")
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.bind(path)
            sock.settimeout(2)
            yield FakeManager(sock, path)


@pytest.fixture
def abstract_manager() -> Iterator[FakeManager]:
    name = f"neo-auditd-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(b"\0" + name.encode())
        sock.settimeout(2)
        yield FakeManager(sock, "@" + name)


def test_state_changes_arrive_as_exact_messages(manager: FakeManager) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": manager.notify_socket}, monotonic_usec=lambda: 1234567)
    assert notifier.enabled

    assert notifier.ready() is True
    assert manager.receive() == "READY=1"
    assert notifier.reloading() is True
    assert manager.receive() == "RELOADING=1\nMONOTONIC_USEC=1234567"
    assert notifier.status("tailing 3 files, 0 incidents open")
    assert manager.receive() == "STATUS=tailing 3 files, 0 incidents open"
    assert notifier.watchdog()
    assert manager.receive() == "WATCHDOG=1"
    assert notifier.stopping()
    assert manager.receive() == "STOPPING=1"
    assert manager.nothing_pending()


def test_status_is_kept_on_one_line(manager: FakeManager) -> None:
    Notifier({"NOTIFY_SOCKET": manager.notify_socket}).status("reload failed:\nrules/pii.yaml:3:1")
    assert manager.receive() == "STATUS=reload failed: rules/pii.yaml:3:1"


def test_reloading_uses_the_monotonic_clock_by_default(manager: FakeManager) -> None:
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    Notifier({"NOTIFY_SOCKET": manager.notify_socket}).reloading()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    first, second = manager.receive().split("\n")
    assert first == "RELOADING=1"
    key, value = second.split("=")
    assert key == "MONOTONIC_USEC"
    assert before <= int(value) <= after


def test_abstract_namespace_socket(abstract_manager: FakeManager) -> None:
    assert Notifier({"NOTIFY_SOCKET": abstract_manager.notify_socket}).ready()
    assert abstract_manager.receive() == "READY=1"


def test_without_notify_socket_every_call_is_a_no_op() -> None:
    notifier = Notifier({})
    assert not notifier.enabled
    assert notifier.ready() is False
    assert notifier.reloading() is False
    assert notifier.stopping() is False
    assert notifier.status("x") is False
    assert notifier.watchdog() is False
    assert notifier.watchdog_interval() is None


def test_unsupported_socket_kinds_disable_notifications() -> None:
    assert not Notifier({"NOTIFY_SOCKET": "vsock:2:1234"}).enabled
    assert not Notifier({"NOTIFY_SOCKET": ""}).enabled


def test_a_vanished_socket_is_reported_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    with tempfile.TemporaryDirectory(prefix="sdn-") as directory:
        notifier = Notifier({"NOTIFY_SOCKET": str(Path(directory) / "gone")})
        assert notifier.ready() is False
    assert "sd_notify 'READY' failed" in caplog.text


def test_constructor_does_no_io() -> None:
    # A socket that does not exist yet is fine at construction; only sending touches it:
    # the manager may bind it after the notifier was made, and still gets the message.
    with tempfile.TemporaryDirectory(prefix="sdn-") as directory:
        path = str(Path(directory) / "notify")
        notifier = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "30000000"})
        assert notifier.enabled and not Path(path).exists()  # nothing created or connected
        assert notifier.watchdog_interval() == dt.timedelta(seconds=30)
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.bind(path)
            sock.settimeout(2)
            manager = FakeManager(sock, path)
            assert manager.nothing_pending()  # constructing sent nothing
            assert notifier.ready()
            assert manager.receive() == "READY=1"


def test_watchdog_interval() -> None:
    pid = os.getpid()
    assert Notifier({"WATCHDOG_USEC": "30000000"}).watchdog_interval() == dt.timedelta(seconds=30)
    assert Notifier({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(pid)}).watchdog_interval() \
        == dt.timedelta(seconds=30)
    # Meant for another process: a child that inherited the environment must not ping.
    assert Notifier({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(pid + 1)}).watchdog_interval() is None
    assert Notifier({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "7"},
                    pid=lambda: 7).watchdog_interval() == dt.timedelta(seconds=30)
    assert Notifier({"WATCHDOG_USEC": "0"}).watchdog_interval() is None
    assert Notifier({"WATCHDOG_USEC": "soon"}).watchdog_interval() is None
    assert Notifier({}).watchdog_interval() is None


def test_a_manager_that_does_not_read_never_blocks_the_daemon(tmp_path):
    """A full notify socket (its reader fell behind) drops the message; it never waits."""
    import socket
    import time

    from auditd.ops.sdnotify import Notifier

    path = str(tmp_path / "n")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        notifier = Notifier({"NOTIFY_SOCKET": path})
        started = time.monotonic()
        results = [notifier.notify("STATUS=" + "x" * 1000) for _ in range(5000)]  # far beyond the queue
        assert time.monotonic() - started < 30
        assert results[0] is True and results[-1] is False  # the queue filled: dropped, not waited for
