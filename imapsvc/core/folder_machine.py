"""The state machine of one watched folder, as pure code (no I/O, no Twisted).

:func:`step` takes a :class:`Machine` and an :class:`Event` and returns the
next machine and the :data:`actions <SEND_DONE>` the Twisted shell
(:mod:`imapsvc.folder`) must carry out. A state change outside
:data:`TRANSITIONS` raises :class:`IllegalTransition`: the shell cannot make
one. What used to be loose flags of the folder service (stopping, a wake-up
waiting for the running sync, a token refresh due, why the coming reconnect
is planned, where an IDLE or poll wait stands) are fields of the machine.
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
#: Not a folder's state: the supervisor's name for a folder it has not
#: started (the provider waits for its lease or its configuration).
WAITING = "Waiting"

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
#: States of a folder that works (logged in, the folder found).
HEALTHY_STATES = (SELECTED, SYNCING, IDLING)

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
    STOPPED: frozenset({CONNECTING}),
}


def allowed(old: str, new: str) -> bool:
    """Whether ``old -> new`` is in :data:`TRANSITIONS` (staying put always is)."""
    return old == new or new in TRANSITIONS.get(old, frozenset())


class IllegalTransition(Exception):
    """An event asked for a state change outside :data:`TRANSITIONS`."""


# -- events ---------------------------------------------------------------------

# Events that move the folder to a state (event -> target state).
CONNECT = "connect"  # a connection attempt starts
GREETED = "greeted"  # the server greeted: log in
FOLDER_FOUND = "folder-found"  # logged in and the folder (or wildcard list) found
SYNC = "sync"  # a sync pass starts
IDLE = "idle"  # waiting for new mail with IDLE
POLL = "poll"  # waiting for the next poll
BACKED_OFF = "backed-off"  # the connection ended; a retry is scheduled
REAUTH = "reauth"  # credentials refused or missing: wait for the supervisor
STOPPED_EVENT = "stopped"  # service stopped, or the lease was lost

TARGETS: dict[str, str] = {
    CONNECT: CONNECTING,
    GREETED: AUTHENTICATING,
    FOLDER_FOUND: SELECTED,
    SYNC: SYNCING,
    IDLE: IDLING,
    POLL: SELECTED,
    BACKED_OFF: BACKOFF,
    REAUTH: NEEDS_REAUTH,
    STOPPED_EVENT: STOPPED,
}

# Events that change fields only (legal in every state).
START = "start"  # the service starts
STOP = "stop"  # the service is stopping
SESSION = "session"  # a new connection's session begins
WAKE = "wake"  # sync as soon as possible
END_IDLE = "end-idle"  # leave IDLE (why: Event.why)
IDLE_SENT = "idle-sent"  # IDLE submitted to the session
IDLE_ANSWERED = "idle-answered"  # the IDLE command ended
POLL_ENDED = "poll-ended"  # the poll wait ended
TOKEN_EXPIRING = "token-expiring"  # the access token is inside the refresh margin
PLAN_RECONNECT = "plan-reconnect"  # the coming reconnect is no failure (why: Event.why)
CONNECTION_ENDED = "connection-ended"  # consumed the planned reconnect, if any

#: Why an IDLE ended when the keep-alive ended it: re-issued, no sync.
IDLE_KEEPALIVE = "keep-alive"
#: Planned reconnects (:data:`PLAN_RECONNECT`), named as in the reconnect metric.
TOKEN_REFUSED = "token_refused"
TOKEN_REFRESH = "token_refresh"

# -- actions --------------------------------------------------------------------

#: The state changed: record, log and report it.
ENTERED = "entered"
#: Send DONE to end the running IDLE.
SEND_DONE = "send-done"
#: Release the running poll wait (sync now).
RELEASE_POLL = "release-poll"


@attr.s(frozen=True, auto_attribs=True)
class Event:
    """One event; ``why`` says why (a wake-up's cause, a planned reconnect),
    ``done_sent`` whether the session has DONE out for its IDLE already
    (the session owns that; see ``IIMAPSession.idle_ending``)."""

    name: str
    why: Optional[str] = None
    done_sent: bool = False


@attr.s(frozen=True, auto_attribs=True)
class Machine:
    """Where one folder stands."""

    state: str = DISCONNECTED
    #: The service is stopping: the session loop ends at its next check.
    stopping: bool = False
    #: A wake-up came while no wait could take it: sync once more.
    wake_pending: bool = False
    #: The access token expires soon: log out and in again before the next sync.
    token_refresh_due: bool = False
    #: Why the coming reconnect is planned (:data:`TOKEN_REFUSED`, ...), or None.
    planned_reconnect: Optional[str] = None
    #: A poll wait runs (in :data:`SELECTED`).
    polling: bool = False
    #: IDLE is submitted to the session and not answered yet.
    idle_sent: bool = False
    #: Why the running IDLE was ended (:data:`IDLE_KEEPALIVE`, a wake-up, ...).
    idle_ended_for: Optional[str] = None


Step = tuple[Machine, tuple[str, ...]]


def step(m: Machine, event: Event) -> Step:
    """The machine after ``event``, and the actions to carry out in order.

    :raises IllegalTransition: ``event`` asks for a state change outside
        :data:`TRANSITIONS`; ``m`` stays as it was.
    """
    name = event.name
    if name in TARGETS:
        return _move(m, TARGETS[name], event)
    if name == START:
        return attr.evolve(m, stopping=False), ()
    if name == STOP:
        # The shell stops the factory before it releases a poll wait itself,
        # or the session ending there would schedule a reconnect.
        return attr.evolve(m, stopping=True), ()
    if name == SESSION:
        return attr.evolve(m, token_refresh_due=False, planned_reconnect=None), ()
    if name == WAKE:
        return _wake(m, event.why or "wake-up", event.done_sent)
    if name == END_IDLE:
        return _end_idle(m, event.why or "", event.done_sent)
    if name == IDLE_SENT:
        return attr.evolve(m, idle_sent=True, idle_ended_for=None), ()
    if name == IDLE_ANSWERED:
        return attr.evolve(m, idle_sent=False), ()
    if name == POLL_ENDED:
        return attr.evolve(m, polling=False), ()
    if name == TOKEN_EXPIRING:
        if m.stopping:
            return m, ()
        due = attr.evolve(m, token_refresh_due=True)
        if m.state == IDLING:
            return _end_idle(due, "access token expiring", event.done_sent)
        return due, (RELEASE_POLL,) if m.polling else ()
    if name == PLAN_RECONNECT:
        return attr.evolve(m, planned_reconnect=event.why), ()
    if name == CONNECTION_ENDED:
        return attr.evolve(m, planned_reconnect=None), ()
    raise ValueError(f"unknown folder event {name!r}")


def _move(m: Machine, new: str, event: Event) -> Step:
    if not allowed(m.state, new):
        raise IllegalTransition(f"{m.state} -> {new} on {event.name!r}")
    if new == SYNCING:
        m = attr.evolve(m, wake_pending=False)
    elif new == IDLING:
        m = attr.evolve(m, idle_sent=False, idle_ended_for=None)
    elif new == SELECTED and event.name == POLL:
        m = attr.evolve(m, polling=True)
    if m.state == new:
        return m, ()
    return attr.evolve(m, state=new), (ENTERED,)


def _wake(m: Machine, why: str, done_sent: bool) -> Step:
    """At most one sync runs at a time: a wake-up during one runs another after it."""
    if m.state == IDLING:
        return _end_idle(m, why, done_sent)
    if m.polling:
        return m, (RELEASE_POLL,)
    return attr.evolve(m, wake_pending=True), ()


def _end_idle(m: Machine, why: str, done_sent: bool) -> Step:
    strong = why != IDLE_KEEPALIVE
    if done_sent:
        # DONE is out (say, for the keep-alive) and its answer not yet in:
        # keep the stronger reason, or this wake-up would only re-issue IDLE.
        return (attr.evolve(m, idle_ended_for=why) if strong else m), ()
    if not m.idle_sent:
        # IDLE not sent yet (or answered already): keep the wake-up for the loop.
        return (attr.evolve(m, wake_pending=True) if strong else m), ()
    # Also before the server's "+": the session sends DONE right after it.
    return attr.evolve(m, idle_ended_for=why), (SEND_DONE,)


def idle_again(m: Machine, exists_changed: bool) -> bool:
    """After an IDLE ended: whether to re-issue it at once (the keep-alive
    ended it and nothing was announced or asked for meanwhile)."""
    return (
        m.idle_ended_for == IDLE_KEEPALIVE
        and not m.wake_pending
        and not m.stopping
        and not m.token_refresh_due
        and not exists_changed
    )


@attr.s(frozen=True, auto_attribs=True)
class Transition:
    """One entry of a folder's history (kept for ``/status``)."""

    at: float
    old: str
    new: str
    reason: str
    error: Optional[str] = None

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {
            "at": self.at, "from": self.old, "to": self.new, "reason": self.reason,
        }
        if self.error:
            out["error"] = self.error
        return out
