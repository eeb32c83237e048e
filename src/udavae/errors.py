"""Exceptions whose message is meant for the user (printed by the CLI without a traceback)."""


class UserError(Exception):
    """A problem the user can fix: bad input file, wrong argument, unusable folder."""


class DataError(UserError):
    """A data file is missing, unreadable or inconsistent; the message names the file."""
