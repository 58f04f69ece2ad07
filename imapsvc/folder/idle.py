"""Waiting between sync passes: IDLE (with its restart and keep-alive) or a poll."""

from __future__ import annotations

from typing import Any, Optional

from twisted.internet import defer

from imapsvc.config import IDLE_RESTART_LIMIT_MS
from imapsvc.core import folder_machine as M
from imapsvc.core.backoff import timer_delay
from imapsvc.folder.base import FolderBase

#: Why an IDLE ended when the keep-alive timer ended it (see ``_idle``).
IDLE_KEEPALIVE = M.IDLE_KEEPALIVE
#: Share of the inactivity watchdog the IDLE keep-alive may use at most, so
#: DONE's answer arrives before the watchdog fires.
KEEPALIVE_SHARE = 0.9


class IdleWaits(FolderBase):
    """The waits of :class:`imapsvc.folder.FolderService`."""

    idle_wakeups: int
    idle_keepalives: int
    _idle_timer: Any
    _keepalive_timer: Any
    _token_timer: Any

    @defer.inlineCallbacks
    def _idle(self, proto: Any):  # type: ignore[no-untyped-def]
        """Idle until new mail, a wake-up or the IDLE restart (then the loop
        syncs). Meanwhile the keep-alive ends and re-issues IDLE, with no
        sync, well before the inactivity watchdog: servers that send
        nothing while idling (Exchange Online) are not dropped as dead, and
        a dead one still is (DONE unanswered within the command deadline,
        or the watchdog)."""
        self._fire(M.IDLE, "waiting for new mail (IDLE)")
        if self.machine.wake_pending or self.machine.stopping:
            # A hook reacting to Idling woke or stopped us: IDLE would only
            # have to be ended again.
            return
        jitter, rand = self.options.timer_jitter_pct, self.rand
        # Capped just below the 29 minutes whatever the jitter drew.
        delay = timer_delay(
            self.options.idle_restart_ms, jitter, rand, ceiling_s=IDLE_RESTART_LIMIT_MS / 1e3 - 1
        )
        self._idle_timer = self.reactor.callLater(delay, self._end_idle, "IDLE restart")
        try:
            while True:
                keepalive = self._keepalive_delay()
                if keepalive is not None:
                    self._keepalive_timer = self.reactor.callLater(
                        keepalive, self._end_idle, IDLE_KEEPALIVE
                    )
                self._fire(M.IDLE_SENT)
                try:
                    yield proto.idle(self._on_exists)
                finally:
                    self._fire(M.IDLE_ANSWERED)
                    if self._keepalive_timer is not None and self._keepalive_timer.active():
                        self._keepalive_timer.cancel()
                    self._keepalive_timer = None
                changed = proto.last_exists != self.sync.exists_at_start
                if not M.idle_again(self.machine, changed):
                    return
                # Nothing announced and nothing asked: idle on at once.
                self.idle_keepalives += 1
        finally:
            if self._idle_timer is not None and self._idle_timer.active():
                self._idle_timer.cancel()
            self._idle_timer = None

    def _keepalive_delay(self) -> Optional[float]:
        """Seconds until the next keep-alive, jittered, below the watchdog."""
        ceiling = None
        if self.options.inactivity_timeout_ms:
            ceiling = self.options.inactivity_timeout_ms / 1000.0 * KEEPALIVE_SHARE
        return timer_delay(
            self.options.idle_keepalive_ms, self.options.timer_jitter_pct, self.rand, ceiling
        )

    def _on_exists(self, count: int) -> None:
        self.idle_wakeups += 1
        self._end_idle(f"EXISTS {count}")

    def _end_idle(self, why: str) -> None:
        if self._proto is None:
            return
        self._fire(M.END_IDLE, why=why)

    @defer.inlineCallbacks
    def _poll(self):  # type: ignore[no-untyped-def]
        delay = timer_delay(self.options.poll_interval_ms, self.options.timer_jitter_pct, self.rand)
        self._poll_wait = wait = defer.Deferred()
        self._fire(M.POLL, "waiting for the next poll")
        if not wait.called:  # a hook reacting to Selected may have woken us
            self._poll_timer = self.reactor.callLater(delay, wait.callback, None)
        try:
            yield wait
        finally:
            self._poll_wait = None
            self._poll_timer = None
            self._fire(M.POLL_ENDED)

    def _cancel_timers(self) -> None:
        timers = (self._idle_timer, self._keepalive_timer, self._poll_timer, self._token_timer)
        for timer in timers:
            if timer is not None and timer.active():
                timer.cancel()
        self._idle_timer = self._keepalive_timer = self._poll_timer = self._token_timer = None
