"""The `neo-auditd` command: the parser and `main`; each group of subcommands lives in a
module of its own (daemon, incidents, respond, store), with its arguments."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from typing import Sequence

from auditd import __version__
from auditd.cli import daemon, incidents, respond, store
from auditd.cli.common import EscapedText
from auditd.errors import EX_CONFIG, StoreFormatError
from auditd.logs import setup_command_logging
from auditd.ops.privacy import make_private
from auditd.store.health import StoreDamaged

DESCRIPTION = """\
neo-auditd checks every access to customers' personal information against the
employee's grants and normal behaviour, opens incidents, and runs the response
playbook of the incident's tier on the legal clocks.

Start with:  neo-auditd check -c CONFIG     (validate everything, exit 78 on errors)
             neo-auditd replay -c CONFIG FILE...   (run the pipeline over old logs)
             neo-auditd run -c CONFIG       (the daemon; SIGHUP reloads, SIGTERM drains)
             neo-auditd status -c CONFIG    (what the running daemon has read, found and held back)

Every command explains itself:  neo-auditd COMMAND --help
A first run on example data, and the tests:  README.md, "Two commands for a fresh machine".
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="neo-auditd", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"neo-auditd {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    daemon.add_parsers(sub)  # run, check, replay, test-rules, keygen, status
    incidents.add_review_parsers(sub)
    incidents.add_incident_parsers(sub)
    respond.add_parsers(sub)  # playbook, report, register, outbox
    incidents.add_suppress_parsers(sub)
    store.add_parsers(sub)
    _describe(parser)
    return parser


def _describe(parser: argparse.ArgumentParser) -> None:
    """A subcommand's own --help opens with what it does: its one-line help from the
    parent's list, where no longer description was written."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help for choice in action._choices_actions}
            for name, subparser in action.choices.items():
                if not subparser.description and helps.get(name):
                    subparser.description = helps[name][0].upper() + helps[name][1:] + "."
                _describe(subparser)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Everything this program creates (store, WAL, quarantine, keys, reviews) holds or
    # guards personal information: its user's alone, also outside systemd's UMask=0077.
    make_private()
    stdout, stderr = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = EscapedText(stdout), EscapedText(stderr)
    setup_command_logging()  # after the wrap: a peer's reply in a log line is escaped like all else
    try:
        code = args.func(args)
        stdout.flush()  # a reader that went away (`| head`) is found here, not at exit
        return code
    except BrokenPipeError:
        if not _reader_gone(stdout):
            raise  # a socket's, say: a fault to report, not a reader that had enough
        # `status | head`: the reader has what it wanted; no traceback, and no second
        # one when Python flushes stdout at exit. 141 as a shell reports SIGPIPE.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, stdout.fileno())
        os.close(devnull)
        return 128 + signal.SIGPIPE
    except StoreFormatError as exc:  # a newer version's store: restarting will not help
        print(f"neo-auditd: {exc}", file=sys.stderr)
        return EX_CONFIG
    except StoreDamaged as exc:  # missing, not ours, or damaged: restarting will not help either
        print(f"neo-auditd: {exc}", file=sys.stderr)
        return exc.exit_code
    finally:
        sys.stdout, sys.stderr = stdout, stderr


def _reader_gone(stream) -> bool:
    """Whether the pipe or socket `stream` writes to has no reader any more."""
    import select

    try:
        poller = select.poll()
        poller.register(stream.fileno(), select.POLLOUT)
        return any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0))
    except (OSError, ValueError):
        return False
