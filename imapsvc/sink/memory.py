"""An in-memory :class:`~imapsvc.interfaces.ISink` for tests.

It passes the same contract tests as the Redis and JSON Lines sinks (an
event it took within the dedupe window is not appended again), and it
can be told to fail (Redis down) or to hold publishes until released (a slow
Redis), so the relay's retry and coalescing can be tested with a fake clock.
"""

from __future__ import annotations

import time
from typing import Any, Mapping, Optional, Sequence

from twisted.internet import defer
from zope.interface import implementer

from imapsvc.interfaces import ISink


class SinkDown(Exception):
    """The fake sink is configured to fail."""


@implementer(ISink)
class MemorySink:
    """Appends ``(stream_id, event_id, fields)`` to :attr:`entries`.

    :param clock: ``IReactorTime`` for the dedupe window (default: the
        wall clock).
    :param dedupe_window_ms: how long an event id is remembered; 0 appends
        every publish.

    :ivar entries: everything appended so far, in order.
    :ivar skipped_ids: event ids a publish offered again within the window.
    :ivar calls: how many times :meth:`publish` was called.
    """

    def __init__(self, stream: str = "workflow:events:global", clock: Optional[Any] = None,
                 dedupe_window_ms: int = 86_400_000) -> None:
        self.stream = stream
        self._now = clock.seconds if clock is not None else time.time
        self._window_s = dedupe_window_ms / 1000.0
        # event id -> (stream id, when it was appended)
        self._seen: dict[str, tuple[str, float]] = {}
        self.skipped_ids: list[str] = []
        self.entries: list[tuple[str, str, dict[str, str]]] = []
        self.calls = 0
        self._failure: Optional[BaseException] = None
        self._fail_after: Optional[int] = None
        self._held: Optional[list[defer.Deferred[None]]] = None
        self._seq = 0

    # -- test controls -------------------------------------------------

    def fail(self, exc: Optional[BaseException] = None, after: int = 0) -> None:
        """Make every publish/ping fail with ``exc`` (default :class:`SinkDown`).
        With ``after`` > 0 a publish first appends that many entries (a
        prefix, as a connection dropped mid-batch would)."""
        self._failure = exc if exc is not None else SinkDown("sink is down")
        self._fail_after = after

    def recover(self) -> None:
        """Stop failing."""
        self._failure = None
        self._fail_after = None

    def hold(self) -> None:
        """Make publishes wait until :meth:`release`."""
        if self._held is None:
            self._held = []

    def release(self) -> None:
        """Let held publishes proceed (in order)."""
        held, self._held = self._held or [], None
        for d in held:
            d.callback(None)

    @property
    def skipped(self) -> int:
        """Entries not appended again (as the Redis sink counts them)."""
        return len(self.skipped_ids)

    @property
    def event_ids(self) -> list[str]:
        return [event_id for _, event_id, _ in self.entries]

    # -- ISink ---------------------------------------------------------

    def publish(
        self, entries: Sequence[tuple[str, Mapping[str, str]]]
    ) -> defer.Deferred[list[str]]:
        self.calls += 1
        batch = [(event_id, dict(fields)) for event_id, fields in entries]
        for _, fields in batch:
            for key, value in fields.items():
                if not isinstance(key, str) or not isinstance(value, str):
                    return defer.fail(TypeError("stream fields must be strings"))
        if self._held is not None:
            gate: defer.Deferred[None] = defer.Deferred()
            self._held.append(gate)
            return gate.addCallback(lambda _: self._append(batch))
        return defer.maybeDeferred(self._append, batch)

    def _append(self, batch: list[tuple[str, dict[str, str]]]) -> list[str]:
        limit = len(batch)
        if self._failure is not None:
            limit = min(limit, self._fail_after or 0)
        ids = []
        now = self._now()
        for event_id, fields in batch[:limit]:
            known = self._seen.get(event_id)
            if self._window_s and known is not None and now - known[1] < self._window_s:
                self.skipped_ids.append(event_id)
                ids.append(known[0])
                continue
            self._seq += 1
            stream_id = f"0-{self._seq}"
            self.entries.append((stream_id, event_id, fields))
            ids.append(stream_id)
            if self._window_s:
                self._seen[event_id] = (stream_id, now)
        if self._failure is not None:
            raise self._failure
        return ids

    def ping(self) -> defer.Deferred[Any]:
        if self._failure is not None:
            return defer.fail(self._failure)
        return defer.succeed(True)

    def start(self) -> defer.Deferred[None]:
        return defer.succeed(None)

    def stop(self) -> defer.Deferred[None]:
        return defer.succeed(None)
