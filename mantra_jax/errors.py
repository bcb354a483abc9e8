"""The error a user can fix: raised by the library, reported by the entry points without a trace."""
from __future__ import annotations

import functools
import sys


class UserError(Exception):
    """A mistake in the user's input (flags, folders, files, a work directory of another run).

    Its message says what is wrong, naming the file or setting, and how to go on. Entry points
    print it as one message on stderr and exit with status 2; any other exception is a bug and
    keeps its traceback.
    """


def exit_on_user_error(main):
    """Wraps an entry point's main: a UserError ends the program with `error: <message>` on
    stderr and exit status 2, without a traceback."""

    @functools.wraps(main)
    def wrapped(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except UserError as e:
            print(f"error: {e}", file=sys.stderr, flush=True)
            sys.exit(2)

    return wrapped
