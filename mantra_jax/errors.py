"""The error a user can fix, and a stop asked for by SIGTERM: raised by the library, reported by
the entry points (experiments/common.py, `run`) without a traceback."""
from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator


class UserError(Exception):
    """A mistake in the user's input (flags, folders, files, a work directory of another run).

    Its message says what is wrong, naming the file or setting, and how to go on. Entry points
    print it as one message on stderr and exit with status 2; any other exception is a bug and
    keeps its traceback.
    """


class BadSetting(UserError, ValueError):
    """A setting out of its range (a library argument that a user's flag sets); the message names it."""


class Stopped(BaseException):
    """SIGTERM arrived where stopping at once loses nothing (see `sigterm`); the message says what
    was kept. A BaseException, so that no `except Exception` on the way up swallows it."""


class _SigtermState:
    """What SIGTERM does now: raise Stopped (with `where` in its message), or, inside `deferred`,
    set `requested` for a loop to act on at a safe point."""

    def __init__(self):
        self.deferred = 0
        self.requested = False
        self.where = "while starting; nothing was lost"


SIGTERM = _SigtermState()


def _on_sigterm(signum, frame):
    SIGTERM.requested = True
    if not SIGTERM.deferred:
        raise Stopped(SIGTERM.where)


@contextlib.contextmanager
def sigterm() -> Iterator[_SigtermState]:
    """Installs the one SIGTERM handler for the block (an entry point's whole main): SIGTERM
    raises Stopped, so that every `with`/`finally` on the way up runs (locks are released), except
    inside `deferred_sigterm`, where it only sets `SIGTERM.requested`. Outside the main thread
    (no handler can be installed there), or inside another `sigterm` block, it does nothing."""
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGTERM) is _on_sigterm):  # not the main thread; already installed
        yield SIGTERM
        return
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    SIGTERM.requested, SIGTERM.deferred = False, 0
    try:
        yield SIGTERM
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def deferred_sigterm() -> Iterator[_SigtermState]:
    """Inside the block SIGTERM only sets `SIGTERM.requested` (a training loop checks it after each
    step and saves); a SIGTERM that came during the block raises Stopped when it ends."""
    SIGTERM.deferred += 1
    try:
        yield SIGTERM
    finally:
        SIGTERM.deferred -= 1


def stop_point(where: str):
    """Says what a SIGTERM from now on keeps (`where`: the end of the Stopped message), and raises
    Stopped at once when one came during a deferred block."""
    SIGTERM.where = where
    if SIGTERM.requested and not SIGTERM.deferred:
        raise Stopped(where)
