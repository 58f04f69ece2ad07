"""The states of one watched folder and the transitions allowed between them.

Kept apart from :mod:`imapsvc.folder` so the table reads on its own and
tests can check it without a connection.
"""

from __future__ import annotations

from typing import Optional

import attr

DISCONNECTED = "Disconnected"
CONNECTING = "Connecting"
AUTHENTICATING = "Authenticating"
SELECTED = "Selected"  # logged in, folder examined; between polls too
SYNCING = "Syncing"
IDLING = "Idling"
BACKOFF = "Backoff"
NEEDS_REAUTH = "NeedsReauth"
STOPPED = "Stopped"

ALL_STATES = (
    DISCONNECTED,
    CONNECTING,
    AUTHENTICATING,
    SELECTED,
    SYNCING,
    IDLING,
    BACKOFF,
    NEEDS_REAUTH,
    STOPPED,
)

_LIVE = {BACKOFF, STOPPED}

#: state -> states it may move to.
TRANSITIONS: dict[str, frozenset[str]] = {
    DISCONNECTED: frozenset({CONNECTING, BACKOFF, STOPPED}),
    CONNECTING: frozenset({AUTHENTICATING, BACKOFF, NEEDS_REAUTH} | _LIVE),
    AUTHENTICATING: frozenset({SELECTED, NEEDS_REAUTH} | _LIVE),
    SELECTED: frozenset({SYNCING} | _LIVE),
    SYNCING: frozenset({IDLING, SELECTED} | _LIVE),
    IDLING: frozenset({SYNCING} | _LIVE),
    BACKOFF: frozenset({CONNECTING, NEEDS_REAUTH, STOPPED}),
    NEEDS_REAUTH: frozenset({CONNECTING, STOPPED}),
    STOPPED: frozenset({CONNECTING, DISCONNECTED}),
}


def allowed(old: str, new: str) -> bool:
    """Whether ``old -> new`` is in :data:`TRANSITIONS`."""
    return new in TRANSITIONS.get(old, frozenset())


@attr.s(frozen=True, auto_attribs=True)
class Transition:
    """One entry of a folder's history (kept for ``/status``)."""

    at: float
    old: str
    new: str
    reason: str
    error: Optional[str] = None

    def to_json(self) -> dict:
        out = {"at": self.at, "from": self.old, "to": self.new, "reason": self.reason}
        if self.error:
            out["error"] = self.error
        return out
