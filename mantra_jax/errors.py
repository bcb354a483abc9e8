"""The project's user-facing error: entry points print it in one line and exit non-zero."""


class UserError(Exception):
    """A mistake of the user's (bad flag, file or folder): reported in one line, no traceback."""
