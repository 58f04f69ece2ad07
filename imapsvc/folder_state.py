"""The folder-state names, re-exported from :mod:`imapsvc.core.folder_machine`
(where the states, their transitions and the machine live)."""

from imapsvc.core.folder_machine import (
    ALL_STATES,
    AUTHENTICATING,
    BACKOFF,
    CONNECTING,
    DISCONNECTED,
    HEALTHY_STATES,
    IDLING,
    NEEDS_REAUTH,
    SELECTED,
    STOPPED,
    SYNCING,
    TRANSITIONS,
    WAITING,
    Transition,
    allowed,
)

__all__ = [
    "ALL_STATES",
    "AUTHENTICATING",
    "BACKOFF",
    "CONNECTING",
    "DISCONNECTED",
    "HEALTHY_STATES",
    "IDLING",
    "NEEDS_REAUTH",
    "SELECTED",
    "STOPPED",
    "SYNCING",
    "TRANSITIONS",
    "WAITING",
    "Transition",
    "allowed",
]
