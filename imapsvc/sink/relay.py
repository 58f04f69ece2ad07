"""The outbox relay: committed outbox rows -> the sink, oldest first.

Delivery is at-least-once. A row is marked published only after the sink
acknowledged it, so a crash (or a failed ``mark_published``) between the two
publishes the row again later, with the same ``event_id`` (the id is in the
row, decided when the message was recorded). The sink takes an event once
within its dedupe window (``IMAP_EVENT_DEDUPE_WINDOW_MS``), so the stream gets
no copy; with the window off, consumers deduplicate by the id.

Scheduling:

- :meth:`Relay.offer` hands over the rows a commit just queued (the store
  reports them); while the relay is *caught up* (its last outbox read found
  nothing left) it publishes them from memory, in commit order, without
  reading them back. The outbox stays the durable record: the rows are
  marked published exactly as on the read path, and any failure, a full
  memory queue or a run of the read path drops the memory queue and goes
  back to reading the outbox, so a crash after the commit re-publishes the
  rows from the outbox with the same ``event_id``.
- :meth:`Relay.wake` (after a commit the relay was not offered, e.g. an
  auto-pause entry) makes it read the outbox. Runs are coalesced:
  one at a time, and a wake during a run makes one more run follow it, so a
  row committed while a fetch was in flight is never left behind.
- A periodic timer (``interval_s``) wakes the relay too, for rows that other
  replicas or an earlier process left behind, and refreshes the backlog.
- When the sink (or the store) fails, the relay waits with exponential
  backoff up to ``max_backoff_s`` before it tries again; wakes meanwhile do
  not cause a retry (no busy loop). Ingestion is not blocked: the outbox
  simply grows until the sink is back.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Mapping, Optional, Sequence

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from imapsvc.deferreds import DeadlineExceeded, fire_and_forget, with_deadline
from imapsvc.interfaces import IOutboxStore

_log = Logger()

#: The field order of CONTRACT section 2. A store may not keep the order of
#: a row's fields (Postgres ``jsonb`` does not), so the relay restores it;
#: unknown fields follow in their stored order.
FIELD_ORDER = (
    "event_id",
    "execution_id",
    "event_name",
    "event_type",
    "tenant",
    "timestamp",
    "user_id",
    "from_state",
    "to_state",
    "payload_json",
)
_RANK = {name: i for i, name in enumerate(FIELD_ORDER)}


def ordered_fields(fields: Mapping[str, str]) -> dict[str, str]:
    """``fields`` in the contract's order (pure)."""
    keys = sorted(fields, key=lambda k: _RANK.get(k, len(_RANK)))
    return {k: fields[k] for k in keys}


class Relay(Service):
    """Moves outbox rows to the sink.

    :param store: an :class:`~imapsvc.interfaces.IStore` (``fetch_outbox``,
        ``mark_published``, ``outbox_stats``).
    :param sink: an :class:`~imapsvc.interfaces.ISink`.
    :param clock: ``IReactorTime``.
    :param batch_size: rows per fetch/publish.
    :param interval_s: period of the safety-net timer.
    :param max_backoff_s: ceiling of the retry delay after failures.
    :param base_backoff_s: the first retry delay.
    :param max_memory_rows: offered rows held in memory at most; beyond it
        the relay reads the outbox instead.
    :param owner: this replica's lease owner name: rows of providers another
        replica leases are left to it.
    :param tenants: ``IMAPSVC_TENANTS``; when not empty only their rows.

    :ivar stats: counters for metrics: ``published`` (entries acknowledged
        by the sink), ``errors`` (failed runs), ``backlog`` and
        ``oldest_age_s`` (last known outbox state), ``consecutive_failures``,
        ``last_error`` (text), ``last_published_at`` (clock seconds),
        ``runs``, ``from_memory`` (entries published without a read-back).
    """

    name = "relay"  # type: ignore[assignment]

    def __init__(
        self,
        store: IOutboxStore,
        sink: Any,
        clock: Any,
        batch_size: int = 500,
        interval_s: float = 1.0,
        max_backoff_s: float = 30.0,
        base_backoff_s: float = 0.5,
        max_memory_rows: int = 10_000,
        owner: Optional[str] = None,
        tenants: Sequence[str] = (),
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self._store = store
        self._sink = sink
        self._clock = clock
        # With several replicas each relays only the rows of providers it
        # leases (or that nobody leases): two relays never XADD one row.
        self._owner = owner
        # A replica that serves some tenants relays only their rows: another
        # tenant group's rows belong on its own replicas' stream.
        self._tenants = tuple(sorted(tenants))
        self._batch_size = batch_size
        self._interval_s = interval_s
        self._max_backoff_s = max_backoff_s
        self._base_backoff_s = min(base_backoff_s, max_backoff_s)
        self.stats: dict[str, Any] = {
            "published": 0,
            "errors": 0,
            "backlog": 0,
            "oldest_age_s": None,
            "consecutive_failures": 0,
            "last_error": None,
            "last_published_at": None,
            "runs": 0,
            "from_memory": 0,
        }
        self._max_memory = max_memory_rows
        # Offered rows not yet published; only filled while caught up.
        self._memory: deque[Any] = deque()
        self._caught_up = False
        self._full_run = False  # the run in progress reads the outbox
        self._run_no = 0
        self._in_run = False
        self._again = False
        self._retry_call: Any = None
        self._stats_pending = False
        self._timer: Optional[LoopingCall] = None
        # (first run number that may satisfy it, Deferred[bool])
        self._flush_waiters: list[tuple[int, defer.Deferred[bool]]] = []
        self._idle_waiters: list[defer.Deferred[None]] = []

    # -- service -------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self._timer = LoopingCall(self._tick)
        self._timer.clock = self._clock
        fire_and_forget(self._timer.start(self._interval_s, now=False), _log, "relay timer")
        # Rows left by an earlier process go out first.
        self.wake()

    def stopService(self) -> defer.Deferred[None]:
        """Stop the timers; fires when the run in progress (if any) ended.
        Call :meth:`flush` first for a graceful drain."""
        super().stopService()
        if self._timer is not None and self._timer.running:
            self._timer.stop()
        self._timer = None
        self._cancel_retry()
        if not self._in_run:
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        self._idle_waiters.append(d)
        return d

    # -- public --------------------------------------------------------

    @property
    def backing_off(self) -> bool:
        """Whether the relay is waiting before a retry."""
        return self._retry_call is not None and self._retry_call.active()

    def wake(self) -> None:
        """There may be new outbox rows (call after each commit). Cheap and
        safe to call often."""
        if not self.running:
            return
        if self._in_run:
            self._again = True
            return
        if self.backing_off:
            return  # the pending retry will pick the rows up
        self._start_run()

    def offer(self, rows: Sequence[Any]) -> None:
        """Rows (:class:`~imapsvc.model.OutboxRow`) a commit just queued, in
        commit order; they are published from memory when possible, else
        (not caught up, queue full) read from the outbox. Call it instead of
        :meth:`wake` after a commit."""
        if not self.running:
            return
        if not self._caught_up or (self._in_run and self._full_run):
            # The outbox holds them; make sure a read follows that sees them.
            self.wake()
            return
        if len(self._memory) + len(rows) > self._max_memory:
            self._drop_memory()
            self.wake()
            return
        self._memory.extend(rows)
        if self._in_run or self.backing_off:
            return  # the memory run in progress picks them up
        self._start_run(full=False)

    def _drop_memory(self) -> None:
        self._memory.clear()
        self._caught_up = False

    def flush(self, timeout_s: float = 10.0) -> defer.Deferred[bool]:
        """Publish everything committed so far, now (skipping a pending
        backoff): fires ``True`` once a run that started after this call
        found the outbox empty, ``False`` when that run failed or after
        ``timeout_s``. Never fails."""
        d: defer.Deferred[bool] = defer.Deferred()
        self._flush_waiters.append((self._run_no + 1, d))
        if self._in_run:
            self._again = True
        else:
            self._cancel_retry()
            self._start_run(force=True)

        def timed_out(result: Any, timeout: float) -> Any:
            # Called only when the deadline hit (result: the CancelledError).
            if isinstance(result, Failure) and result.check(defer.CancelledError):
                self._flush_waiters[:] = [(n, w) for n, w in self._flush_waiters if w is not d]
                _log.warn("Relay flush did not finish within {timeout}s", timeout=timeout)
                return False
            return result

        return d.addTimeout(timeout_s, self._clock, onTimeoutCancel=timed_out)

    # -- the run -------------------------------------------------------

    def _start_run(self, force: bool = False, full: bool = True) -> None:
        if not (self.running or force):
            return
        self._in_run = True
        self._full_run = full
        if full:
            self._again = False
            # The outbox holds everything offered so far: read it instead.
            self._drop_memory()
        self._run_no += 1
        run_no = self._run_no
        self.stats["runs"] += 1
        d = self._drain() if full else self._drain_memory()
        d.addBoth(self._run_done, run_no)
        fire_and_forget(d, _log, "relay run")

    @defer.inlineCallbacks
    def _drain(self) -> Any:
        while True:
            rows = yield self._store.fetch_outbox(self._batch_size, self._owner, self._tenants)
            if not rows:
                self.stats["backlog"] = 0
                self.stats["oldest_age_s"] = None
                # Rows committed from now on are offered (or woken for).
                self._caught_up = True
                return
            yield self._sink.publish([(row.event_id, ordered_fields(row.fields)) for row in rows])
            # A crash here publishes these rows again later: same event_ids.
            yield self._store.mark_published([row.id for row in rows])
            self.stats["published"] += len(rows)
            self.stats["last_published_at"] = self._clock.seconds()
            self.stats["consecutive_failures"] = 0
            _log.debug("Relay published {count} entries", count=len(rows))
            if not self.running and not self._flush_waiters:
                return  # stopping: the next process picks up the rest

    @defer.inlineCallbacks
    def _drain_memory(self) -> Any:
        while self._memory and (self.running or self._flush_waiters):
            count = min(len(self._memory), self._batch_size)
            rows = [self._memory.popleft() for _ in range(count)]
            yield self._sink.publish([(row.event_id, row.fields) for row in rows])
            # A crash here publishes these rows again from the outbox.
            yield self._store.mark_published([row.id for row in rows])
            self.stats["published"] += len(rows)
            self.stats["from_memory"] += len(rows)
            self.stats["last_published_at"] = self._clock.seconds()
            self.stats["consecutive_failures"] = 0

    def _run_done(self, result: Any, run_no: int) -> None:
        self._in_run = False
        self._full_run = False
        ok = not isinstance(result, Failure)
        if ok:
            self.stats["consecutive_failures"] = 0
        else:
            assert isinstance(result, Failure)
            # Whatever was offered is in the outbox; the retry reads it.
            self._drop_memory()
            self.stats["errors"] += 1
            self.stats["consecutive_failures"] += 1
            self.stats["last_error"] = f"{type(result.value).__name__}: {result.getErrorMessage()}"
        self._notify_flush(run_no, ok)
        if self._idle_waiters and not self.running:
            waiters, self._idle_waiters = self._idle_waiters, []
            for w in waiters:
                w.callback(None)
            return
        if not self.running:
            return
        if not ok:
            delay = self._backoff_delay()
            _log.warn(
                "Relay could not publish ({error}); retry {attempt} in {delay:.1f}s",
                error=self.stats["last_error"],
                attempt=self.stats["consecutive_failures"],
                delay=delay,
            )
            self._again = False
            self._retry_call = self._clock.callLater(delay, self._retry)
            self._refresh_backlog()
            return
        if self._again:
            self._start_run()
        elif self._memory and self._caught_up:
            self._start_run(full=False)

    def _retry(self) -> None:
        self._retry_call = None
        if self.running and not self._in_run:
            self._start_run()

    def _cancel_retry(self) -> None:
        if self._retry_call is not None and self._retry_call.active():
            self._retry_call.cancel()
        self._retry_call = None

    def _backoff_delay(self) -> float:
        n = min(self.stats["consecutive_failures"], 32)
        return float(min(self._max_backoff_s, self._base_backoff_s * (2 ** (n - 1))))

    def _notify_flush(self, run_no: int, ok: bool) -> None:
        ready = [(n, d) for n, d in self._flush_waiters if n <= run_no]
        if not ready:
            return
        self._flush_waiters = [(n, d) for n, d in self._flush_waiters if n > run_no]
        for _, d in ready:
            if not d.called:
                d.callback(ok)

    # -- timer ---------------------------------------------------------

    def _tick(self) -> None:
        if self.backing_off:
            return  # the failed run refreshed the backlog; spare the store
        self.wake()
        self._refresh_backlog()

    def _refresh_backlog(self) -> None:
        if self._stats_pending:
            # The last query still waits for the store (a pool busy with a
            # reconnect storm): one more a second would only queue behind it.
            return

        def got(stats: Any) -> None:
            count, age = stats
            self.stats["backlog"] = count
            self.stats["oldest_age_s"] = age

        def settled(result: Any) -> Any:
            self._stats_pending = False
            return result

        def busy(failure: Failure) -> None:
            # A store too busy to count (thousands of folders starting, a
            # reconnect storm) is not a fault: the figure waits a tick. An
            # outage shows in the relay's own runs, which warn.
            failure.trap(DeadlineExceeded)
            _log.info("Outbox backlog not refreshed: the store did not answer within"
                      " {timeout:.0f}s", timeout=timeout)

        self._stats_pending = True
        timeout = max(self._interval_s, 1.0) * 5
        d = with_deadline(
            defer.maybeDeferred(self._store.outbox_stats, self._tenants),
            timeout,
            self._clock,
            "outbox stats",
        )
        d.addBoth(settled).addCallbacks(got, busy)
        fire_and_forget(d, _log, "outbox stats")
