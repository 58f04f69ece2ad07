"""What every part of the folder lifecycle shares: the machine and its shell.

Every state change and every flag of the lifecycle goes through
:meth:`FolderBase._fire`, which steps the pure machine
(:mod:`imapsvc.core.folder_machine`) and carries out the actions it returns:
record, log and report an entered state; send DONE; release a poll wait.
"""

from __future__ import annotations

import collections
from typing import Any, Optional

from twisted.application import service
from twisted.internet import defer
from twisted.logger import Logger

from imapsvc.core import folder_machine as M
from imapsvc.core.backoff import Rand
from imapsvc.folder.options import FolderOptions, Stopping
from imapsvc.folder.sync import SyncPass
from imapsvc.model import ProviderConfig

__all__ = ["FolderBase", "Stopping"]


class FolderBase(service.Service):
    """The shared part of :class:`imapsvc.folder.FolderService` (built there)."""

    log = Logger()

    provider: ProviderConfig
    folder_filter: str
    reactor: Any
    credentials: Any
    hooks: Any
    rand: Rand
    factory: Any
    sync: SyncPass
    machine: M.Machine
    history: collections.deque[M.Transition]
    invalid_transitions: int
    last_error: Optional[str]
    quarantined_until: Optional[float]
    _proto: Any
    _poll_wait: Optional[defer.Deferred]
    _poll_timer: Any

    @property
    def label(self) -> str:
        return f"imap:{self.provider.tenant}/{self.provider.provider_id}/{self.folder_filter}"

    # The sync pass keeps what it uses; set here, it reaches the pass too.
    @property
    def store(self) -> Any:
        return self.sync.store

    @store.setter
    def store(self, value: Any) -> None:
        self.sync.store = self.sync.write_back.store = value

    @property
    def pipeline(self) -> Any:
        return self.sync.pipeline

    @pipeline.setter
    def pipeline(self, value: Any) -> None:
        self.sync.pipeline = value

    @property
    def options(self) -> FolderOptions:
        return self.sync.options

    @options.setter
    def options(self, value: FolderOptions) -> None:
        self.sync.options = value

    @property
    def state(self) -> str:
        """The machine's state (a name of :mod:`imapsvc.core.folder_machine`)."""
        return self.machine.state

    def quarantined(self) -> bool:
        """Whether this folder's server is in quarantine now."""
        until = self.quarantined_until
        return until is not None and until > self.reactor.seconds()

    def _fire(self, name: str, reason: str = "", error: Optional[str] = None,
              why: Optional[str] = None) -> None:
        """Step the machine with event ``name`` and carry out its actions.

        :raises IllegalTransition: the event asked for a state change the
            table refuses (counted and logged first; the machine stays).
        """
        proto = self._proto
        # The session owns whether DONE is out for its IDLE (one place).
        done_sent = bool(proto.idle_ending) if proto is not None else False
        old = self.machine
        try:
            new, actions = M.step(old, M.Event(name, why, done_sent))
        except M.IllegalTransition:
            self.invalid_transitions += 1
            self.log.error(
                "{label}: refused transition from {old} on {event} ({reason})",
                label=self.label, old=old.state, event=name, reason=reason,
            )
            raise
        if error is not None:
            self.last_error = error
        self.machine = new
        self.sync.stopping = new.stopping  # the pass reads it; no callback
        for action in actions:
            if action == M.ENTERED:
                self._entered(old.state, new.state, reason, error)
            elif action == M.SEND_DONE:
                if proto is not None:
                    self.log.debug("{label}: leaving IDLE ({why})", label=self.label, why=why)
                    proto.done()
            elif action == M.RELEASE_POLL:
                self._release_poll()

    def _entered(self, old: str, new: str, reason: str, error: Optional[str]) -> None:
        self.history.append(M.Transition(self.reactor.seconds(), old, new, reason, error))
        self.log.info(
            "{label}: {old} -> {new} ({reason})",
            label=self.label,
            tenant=self.provider.tenant,
            provider=self.provider.provider_id,
            folder=self.folder_filter,
            old=old,
            new=new,
            reason=reason,
            error=error,
        )
        self._hook("state_changed", new, reason, error)

    def _release_poll(self) -> None:
        wait = self._poll_wait
        if wait is None or wait.called:
            return
        if self._poll_timer is not None and self._poll_timer.active():
            self._poll_timer.cancel()
        wait.callback(None)

    def _hook(self, name: str, *args: Any) -> None:
        fn = getattr(self.hooks, name, None) if self.hooks is not None else None
        if fn is None:
            return
        try:
            fn(*args)
        except Exception:
            self.log.failure("{label}: hook {hook} failed", label=self.label, hook=name)

    def _check(self) -> None:
        self.sync.check()  # raises Stopping once the machine is stopping

    def _lose(self, proto: Any) -> None:
        transport = proto.transport
        if transport is not None:
            transport.loseConnection()
