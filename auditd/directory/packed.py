"""A loaded directory as bytes, for another process of the same daemon.

Parsing the HR files of 10,000 employees takes about half a second of the interpreter;
unpickling the loaded directory a third of that. The daemon loads a changed directory
in a child process (`load_apart`), where the parsing cannot take the interpreter lock
from the pipeline's thread, and hands the packed result to its worker processes too,
which then hold exactly the directory it holds (never a version of the files written
in between). Only between processes of one daemon, from one version of the code:
never stored, never read from elsewhere.
"""

from __future__ import annotations

import copyreg
import multiprocessing
import os
import pickle
from collections.abc import Iterable
from pathlib import Path
from types import MappingProxyType

from auditd.config.located import Problems
from auditd.directory.load import load_directory
from auditd.directory.model import Directory


def _proxy(items: dict) -> MappingProxyType:
    return MappingProxyType(items)


# the directory's frozen mappings: a mappingproxy does not pickle by itself
copyreg.pickle(MappingProxyType, lambda proxy: (_proxy, (dict(proxy),)))


def pack(directory: Directory) -> bytes:
    return pickle.dumps(directory, protocol=pickle.HIGHEST_PROTOCOL)


def unpack(data: bytes) -> Directory:
    directory = pickle.loads(data)  # noqa: S301 - written by this daemon's own main process
    if not isinstance(directory, Directory):
        raise TypeError(f"expected a Directory, got {type(directory).__name__}")
    return directory


def load_apart(path: Path, problems: Problems, *, categories: Iterable[str] | None = None,
               nice: int = 0) -> tuple[Directory | None, bytes | None]:
    """`load_directory` in a spawned child process (`nice` added to its niceness): the
    directory, and its packed form for the workers; None for both when it has
    problems (added to `problems`). A child that fails or dies raises RuntimeError.

    The child is a daemonic process: when the daemon stops in the middle of a load, it
    ends the child on its way out instead of waiting for a result nobody wants."""
    context = multiprocessing.get_context("spawn")  # never fork a process with threads
    receive, send = context.Pipe(duplex=False)
    child = context.Process(target=_load_packed, name="neo-auditd-directory-load", daemon=True,
                            args=(send, str(path), frozenset(categories) if categories is not None else None, nice))
    child.start()
    send.close()  # the child's end: an EOF here once the child is gone
    try:
        answer = receive.recv()
    except EOFError:
        raise RuntimeError(f"the process loading {path} ended without an answer") from None
    finally:
        receive.close()
        child.join()
    if isinstance(answer, str):
        raise RuntimeError(f"loading {path} apart failed: {answer}")
    packed, items, warnings = answer
    problems.items += items
    problems.warnings += warnings
    return (unpack(packed) if packed is not None else None), packed


def _load_packed(conn, path: str, categories: frozenset[str] | None, nice: int) -> None:
    os.nice(nice)
    try:
        problems = Problems()
        directory = load_directory(Path(path), problems, categories=categories)
        packed = pack(directory) if directory is not None and not problems else None
        answer = (packed, problems.items, problems.warnings)
    except Exception as exc:  # noqa: BLE001 - said to the parent, which treats it as a rejected file
        answer = f"{type(exc).__name__}: {exc}"
    conn.send(answer)
    conn.close()
