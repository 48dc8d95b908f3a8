"""One error hierarchy for every cdca package, so CLIs and servers can tell user errors from bugs."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class CdcaError(Exception):
    """Base for errors cdca raises on purpose; the message says what went wrong and how to fix it."""


class ConfigError(CdcaError, ValueError):
    """A configuration value or command-line argument is not acceptable."""


class DataError(CdcaError):
    """A dataset, array file or model file is missing, unreadable or has the wrong layout."""


class UnknownNameError(ConfigError, KeyError):
    """A registry lookup (method, corruption, architecture, ...) used a name that does not exist."""

    def __str__(self) -> str:
        # KeyError quotes its argument; a user-facing message should read as plain text.
        return str(self.args[0]) if self.args else ""


def unknown_name(kind: str, name: str, known: Iterable[str]) -> UnknownNameError:
    """Build the error for an unknown registry key, listing the known keys and a close match.

    Args:
        kind: what was looked up, e.g. ``"corruption"``.
        name: the key the user gave.
        known: every valid key.

    Returns:
        An ``UnknownNameError`` whose message names the bad key, the closest match and all keys.
    """
    known = sorted(known)
    close = difflib.get_close_matches(name, known, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return UnknownNameError(f"unknown {kind} {name!r}.{hint} Known: {', '.join(known)}.")
