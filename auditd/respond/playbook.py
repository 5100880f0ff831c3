"""Playbooks: YAML files under ``playbooks/`` (one per tier), parsed once into frozen types.

    playbook: T4
    description: 一般 — a confirmed leak below the T3 band
    escalation: {ladder: [responder, security, dpo, management], every: 1h}
    steps:
      - {id: notify-security, kind: notify, title: Tell the security team, audience: security,
         channel: chat, template: security-alert, due: 1h}
      - {id: contain-account, kind: contain, title: Disable the account, action: disable-account, due: 1h}
      - {id: report-initial, kind: report, report: initial, title: Initial report, due: 20h}
      - {id: approve-initial, kind: approval, approves: report-initial, owner: dpo, due: 22h}
      - {id: notify-regulator, kind: notify, audience: regulator, channel: email, template: regulator-cover,
         attach: report-initial, waits_for: [approve-initial], due: 24h, due_cii: 1h}

Loaded with the project's one mechanism (``config.located`` + ``config.typed``): every
problem names file, line and key, unknown keys are errors, and all problems are
reported together (exit 78). A reload that finds any problem keeps the old set.

Step kinds (``KINDS``): notify, contain, task, approval, report, announce, escalate.
Automatic kinds (notify, contain, report, announce, escalate) are fired by the
``respond-due`` job once their waits are done (a contain step whose action is not
configured waits for a person instead); task and approval steps wait for people
(``neo-auditd playbook done|approve|skip``). A report step is rendered by the job and
then reviewed by a person (``done``): that person is the requester whom the four-eyes
approval of it may not be.
"""

from __future__ import annotations

import datetime as dt
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Callable, Iterable, Iterator, Literal, Mapping

from auditd.config.located import Doc, Problems, load_yaml_file
from auditd.config.typed import MISSING, Duration, convert, key
from auditd.correlate.settings import TIERS
from auditd.respond.due import Due
from auditd.respond.settings import Audience, Channel
from auditd.workdays import WorkingCalendar

KINDS = ("notify", "contain", "task", "approval", "report", "announce", "escalate")
AUTOMATIC = frozenset({"notify", "contain", "report", "announce", "escalate"})
REPORT_KINDS = ("initial", "followup", "closing", "notice-draft")
# contain actions a playbook may name without configuring them: until respond.contain
# configures one, its step waits for a person to do it by hand (and escalates if late)
STANDARD_ACTIONS = ("disable-account", "revoke-sessions", "block-exports")
_ID = re.compile(r"[a-z0-9][a-z0-9-]{0,63}\Z")
Kind = Literal["notify", "contain", "task", "approval", "report", "announce", "escalate"]


def _shipped() -> Path:
    """playbooks/ of the checkout (editable install), else the copy a wheel installed."""
    checkout = Path(__file__).resolve().parents[2] / "playbooks"
    if checkout.is_dir():
        return checkout
    return Path(sys.prefix) / "share" / "neo-auditd" / "playbooks"


SHIPPED_PLAYBOOKS = _shipped()


@dataclass(frozen=True, slots=True)
class Step:
    id: str
    kind: Kind
    title: str
    due: Due
    due_cii: Due | None = None  # the clock when critical information infrastructure is hit
    anchor: Literal["discovery", "resolution"] = key("from", default="discovery")
    waits_for: tuple[str, ...] = ()
    when: Literal["always", "band_reached"] = "always"  # band_reached: the police step
    owner: str | None = None  # who does a task or approves (a role: responder, dpo, ...)
    audience: Audience | None = None
    channel: Channel | None = None
    template: str | None = None
    action: str | None = None  # contain: a name under respond.contain
    report: Literal["initial", "followup", "closing", "notice-draft"] | None = None
    approves: str | None = None  # approval: the step whose output it approves
    attach: str | None = None  # notify: the report step whose latest report goes with it
    watch: tuple[str, ...] = ()  # escalate: fires only if one of these is still open
    checklist: tuple[str, ...] = ()
    escalate_to: Audience | None = None  # the first rung when this step is overdue

    def check(self) -> Iterable[tuple[str, str]]:
        if not _ID.match(self.id):
            yield "id", "an id is lower-case letters, digits and '-' (at most 64)"
        needs = {
            "notify": ("audience", "channel", "template"),
            "contain": ("action",),
            "approval": ("approves",),
            "report": ("report",),
            "escalate": ("audience",),
            "announce": ("template",),
        }.get(self.kind, ())
        if self.kind == "notify" and self.audience == "customers":
            needs = ("template",)  # each through the channel on file
        for name in needs:
            if getattr(self, name) is None:
                yield name, f"a {self.kind} step needs '{name}'"
        if self.kind == "escalate" and not self.watch:
            yield "watch", "an escalate step watches at least one step"
        if self.audience == "customers" and self.kind == "notify" and self.channel is not None:
            yield "channel", "customers are reached through the channel on file: leave channel out"
        if self.anchor == "resolution" and self.due_cii is not None:
            yield "due_cii", "only clocks from the discovery have a CII variant"

    @property
    def automatic(self) -> bool:
        return self.kind in AUTOMATIC


@dataclass(frozen=True, slots=True)
class Escalation:
    ladder: tuple[Audience, ...] = ("responder", "security", "dpo", "management")
    every: Duration = field(default_factory=lambda: Duration(3600.0))
    channel: Channel = "chat"

    def check(self) -> Iterable[tuple[str, str]]:
        if not self.ladder:
            yield "ladder", "name at least one audience"
        if self.every.seconds <= 0:
            yield "every", "must be more than 0"


@dataclass(frozen=True, slots=True)
class Sample:
    """A worked example `check` (and every load) holds the steps to: an incident
    discovered at `discovered_at` (with the flags given) has these steps due at these
    local times, on the configured working-day calendar."""

    discovered_at: str  # ISO 8601 with offset
    cii: bool = False
    band_reached: bool = False
    due: dict[str, str] = field(default_factory=dict)  # step id -> ISO 8601 local time
    absent: tuple[str, ...] = ()  # steps not planned under these flags


@dataclass(frozen=True, slots=True)
class Playbook:
    playbook: Literal["T1", "T2", "T3", "T4", "T5", "T6"]
    steps: tuple[Step, ...]
    description: str = ""
    escalation: Escalation = field(default_factory=Escalation)
    samples: tuple[Sample, ...] = ()
    file: str = field(default="", compare=False, metadata={"key": "\0loaded-from"})  # not a YAML key

    def step(self, step_id: str) -> Step | None:
        return next((s for s in self.steps if s.id == step_id), None)

    def check(self) -> Iterable[tuple[str | tuple[str | int, ...], str]]:
        ids: dict[str, int] = {}
        for i, step in enumerate(self.steps):
            if step is MISSING:
                continue
            if step.id in ids:
                yield ("steps", i, "id"), f"duplicate step id {step.id!r} (first at steps[{ids[step.id]}])"
            ids.setdefault(step.id, i)
        steps = {s.id: s for s in self.steps if s is not MISSING}
        for i, step in enumerate(self.steps):
            if step is MISSING:
                continue
            for j, other in enumerate(step.waits_for):
                if other not in steps:
                    yield ("steps", i, "waits_for", j), f"unknown step {other!r} (steps: {', '.join(steps)})"
            for j, other in enumerate(step.watch):
                if other not in steps:
                    yield ("steps", i, "watch", j), f"unknown step {other!r}"
            if step.approves is not None:
                target = steps.get(step.approves)
                if target is None:
                    yield ("steps", i, "approves"), f"unknown step {step.approves!r}"
                elif target.kind not in ("report", "task"):
                    yield ("steps", i, "approves"), "an approval approves a report or task step (a person's work)"
            if step.attach is not None and (steps.get(step.attach) is None or steps[step.attach].kind != "report"):
                yield ("steps", i, "attach"), f"{step.attach!r} is not a report step of this playbook"
        cycle = _cycle(steps)
        if cycle:
            yield "steps", "steps wait for each other in a circle: " + " -> ".join(cycle)


def _cycle(steps: Mapping[str, Step]) -> list[str]:
    """A circle of waits (and approvals, which wait for what they approve), if any."""
    edges = {sid: set(s.waits_for) | ({s.approves} if s.approves else set()) for sid, s in steps.items()}
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> list[str]:
        state[node] = 1
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return path + [node, nxt]
            if nxt in edges and state.get(nxt) is None:
                found = visit(nxt, path + [node])
                if found:
                    return found
        state[node] = 2
        return []

    for node in sorted(edges):
        if state.get(node) is None:
            found = visit(node, [])
            if found:
                return found
    return []


@dataclass(frozen=True)
class PlaybookSet:
    by_tier: Mapping[str, Playbook]

    def get(self, tier: str) -> Playbook | None:
        return self.by_tier.get(tier)

    def __len__(self) -> int:
        return len(self.by_tier)


def _files(paths: Iterable[Path], problems: Problems, referrer: Doc | None) -> list[Path]:
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found.extend(sorted(p for p in path.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file()))
        elif path.is_file():
            found.append(path)
        else:
            problems.add(referrer, ("respond", "playbooks", "paths"), f"no such file or folder: {path}")
    return found


def sample_problems(playbook: Playbook, calendar: WorkingCalendar,
                    zone: dt.tzinfo) -> Iterator[tuple[tuple, str]]:
    """(key path, problem) for each of the playbook's samples that its steps contradict:
    a due time the steps do not give on `calendar`, a step planned that should be absent."""
    for i, sample in enumerate(playbook.samples):
        try:
            discovered = dt.datetime.fromisoformat(sample.discovered_at)
        except ValueError:
            discovered = None
        if discovered is None or discovered.tzinfo is None:
            yield ("samples", i, "discovered_at"), ("expected an ISO 8601 time with its offset, "
                                                    "e.g. 2026-11-02T10:00:00+08:00")
            continue
        planned = {s.id for s in playbook.steps if s.when == "always" or sample.band_reached}
        for step_id, expected in sample.due.items():
            step = playbook.step(step_id)
            if step is None or step_id not in planned:
                yield ("samples", i, "due", step_id), f"step {step_id!r} is not planned for this sample"
                continue
            if step.anchor != "discovery":
                yield ("samples", i, "due", step_id), f"step {step_id!r} is due after the resolution, not the discovery"
                continue
            try:
                wanted = dt.datetime.fromisoformat(expected)
            except ValueError:
                wanted = None
            if wanted is None or wanted.tzinfo is None:
                yield ("samples", i, "due", step_id), "expected an ISO 8601 time with its offset"
                continue
            due = step.due_cii if sample.cii and step.due_cii is not None else step.due
            try:  # a time near year 1 or 9999 has no due time: a located problem, not a traceback
                found = due.after(discovered, calendar, zone)
                given = found.astimezone(wanted.tzinfo).isoformat()
            except (OverflowError, ValueError):
                yield (("samples", i, "discovered_at"),
                       f"the due time of step {step_id!r} after this time is out of the calendar's range")
                continue
            if found != wanted:
                yield (("samples", i, "due", step_id), f"expected {expected}, the steps give {given}")
        for step_id in sorted(planned & set(sample.absent)):
            yield ("samples", i, "absent"), f"step {step_id!r} is planned for this sample"


def load_playbooks(paths: Iterable[Path], problems: Problems, *, referrer: Doc | None = None,
                   actions: Iterable[str] = (), template_exists: Callable[[str], bool] = lambda name: True,
                   calendar: WorkingCalendar | None = None, zone: dt.tzinfo | None = None) -> PlaybookSet:
    """Every playbook file in `paths` (files, or folders of *.yaml), later files replacing
    a tier's earlier playbook; cross-checked against the configured contain actions and
    the templates, and (given a calendar and zone) an operator's samples against its steps.
    Problems are added to `problems` (the caller raises)."""
    actions = frozenset(actions) | frozenset(STANDARD_ACTIONS)
    by_tier: dict[str, Playbook] = {}
    for path in _files(paths, problems, referrer):
        doc = load_yaml_file(path, problems)
        if doc is None:
            continue
        if not isinstance(doc.data, dict):
            problems.add(doc, (), "a playbook file is a mapping with 'playbook' and 'steps'")
            continue
        before = len(problems.items)
        playbook = convert(Playbook, doc.data, doc, (), problems)
        if playbook is MISSING:
            continue
        for i, step in enumerate(playbook.steps):
            if step is MISSING:
                continue
            if step.kind == "contain" and step.action is not None and step.action not in actions:
                valid = ", ".join(sorted(actions)) or "none configured"
                problems.add(doc, ("steps", i, "action"),
                             f"unknown contain action {step.action!r} (respond.contain has: {valid})")
            if step.template is not None and not template_exists(step.template):
                problems.add(doc, ("steps", i, "template"),
                             f"no template {step.template!r} in both languages (zh-CN and en)")
        # the shipped samples hold on the built-in calendar (the test suite checks them); a
        # deployment's holiday overrides may move their working-day clocks, and rightly
        if calendar is not None and zone is not None and len(problems.items) == before \
                and not path.resolve().is_relative_to(SHIPPED_PLAYBOOKS.resolve()):
            for key_path, problem in sample_problems(playbook, calendar, zone):
                problems.add(doc, key_path, problem)
        if len(problems.items) == before:
            by_tier[playbook.playbook] = Playbook(playbook.playbook, playbook.steps, playbook.description,
                                                  playbook.escalation, playbook.samples, file=str(path))
    return PlaybookSet(MappingProxyType(dict(sorted(by_tier.items(), key=lambda kv: TIERS.index(kv[0])))))
