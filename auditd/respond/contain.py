"""Containment actions: a configured command or webhook, given the incident's values as data.

The values (the actor's user id, the incident id, ...) come from log lines that an
attacker can write, so they never become part of a command line: the command is the
configured argv list, run without a shell (``subprocess`` with a list, ``shell=False``),
and the values reach it in its environment (``NEO_*``) and as JSON on stdin. The
environment is otherwise only PATH and LANG: nothing of the daemon's leaks into it.
A command that outlives its timeout is killed with its whole process group, and the
step is marked failed. The exit status goes on the incident's timeline.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from typing import IO, Any

from auditd.httpcall import http_call
from auditd.respond.settings import ContainAction

OUTPUT_LIMIT = 2000  # characters of stdout/stderr kept on the timeline


@dataclass(frozen=True, slots=True)
class Outcome:
    ok: bool
    detail: dict[str, Any]  # exit status or HTTP status, timed out, a little output


def payload(incident_id: str, step_id: str, actor: str | None, tier: str, categories: tuple[str, ...]) -> dict:
    return {"incident_id": incident_id, "step": step_id, "actor": actor, "tier": tier,
            "categories": list(categories)}


def run_action(action: ContainAction, values: dict[str, Any]) -> Outcome:
    if action.command is not None:
        return run_command(action.command, values, action.timeout_s)
    assert action.webhook is not None
    return call_webhook(action.webhook.url, values, action.timeout_s)


def run_command(argv: list[str], values: dict[str, Any], timeout_s: float) -> Outcome:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8",
           "NEO_INCIDENT_ID": str(values.get("incident_id") or ""), "NEO_STEP": str(values.get("step") or ""),
           "NEO_ACTOR": str(values.get("actor") or ""), "NEO_TIER": str(values.get("tier") or "")}
    data = json.dumps(values, ensure_ascii=False).encode("utf-8")
    started = time.monotonic()
    try:
        proc = subprocess.Popen(list(argv), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                env=env, shell=False, start_new_session=True, close_fds=True)
    except OSError as exc:
        return Outcome(False, {"error": f"cannot start {argv[0]}: {exc.strerror or exc}"})
    # not communicate(): it keeps all the output (a chatty command's gigabytes in the
    # daemon's memory) and, after the kill, waits for every holder of the pipes to close them
    out, err = _Head(proc.stdout), _Head(proc.stderr)
    threading.Thread(target=_feed, args=(proc.stdin, data), daemon=True).start()
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        proc.wait()
        return Outcome(False, {"timed_out": True, "timeout_s": timeout_s, "exit_status": proc.returncode,
                               "seconds": round(time.monotonic() - started, 3)})
    return Outcome(proc.returncode == 0, {
        "exit_status": proc.returncode, "seconds": round(time.monotonic() - started, 3),
        "stdout": out.text(), "stderr": err.text(),
    })


def _feed(stdin: IO[bytes], data: bytes) -> None:
    try:
        stdin.write(data)
        stdin.close()
    except OSError:  # the command does not read its stdin, or has gone
        pass


class _Head:
    """A pipe read to its end on a thread of its own, keeping only its first OUTPUT_LIMIT bytes."""

    def __init__(self, pipe: IO[bytes]):
        self._kept = bytearray()
        self._thread = threading.Thread(target=self._read, args=(pipe,), daemon=True)
        self._thread.start()

    def _read(self, pipe: IO[bytes]) -> None:
        with pipe:
            while chunk := pipe.read1(1 << 16):  # type: ignore[attr-defined]
                if len(self._kept) < OUTPUT_LIMIT * 4:  # a character is at most four bytes
                    self._kept += chunk[:OUTPUT_LIMIT * 4 - len(self._kept)]

    def text(self) -> str:
        self._thread.join(1.0)  # a child of the command may hold the pipe open long after it exited
        return bytes(self._kept).decode("utf-8", "replace")[:OUTPUT_LIMIT]


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # its own session: the group is its children too
    except ProcessLookupError:
        pass


def call_webhook(url: str, values: dict[str, Any], timeout_s: float) -> Outcome:
    """POST the values; done only on a 2xx. A redirect is not followed: urllib used to
    follow a 302 to a single sign-on login page with a GET, and that page's 200 counted as
    the account disabled. The whole answer must come within `timeout_s` (a trickled one
    would hold the respond job, and every playbook clock, for ever)."""
    try:
        status, _ = http_call("POST", url, timeout_s, body=json.dumps(values, ensure_ascii=False).encode("utf-8"),
                              headers={"Content-Type": "application/json"}, limit=OUTPUT_LIMIT)
    except (OSError, ValueError, http.client.HTTPException) as exc:
        return Outcome(False, {"error": f"{type(exc).__name__}: {exc}"[:OUTPUT_LIMIT]})
    return Outcome(200 <= status < 300, {"http_status": status})
