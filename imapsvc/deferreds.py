"""Small Deferred helpers shared by the Twisted shells.

- :func:`with_deadline`: every call to an external peer gets a deadline
  (txredisapi waits forever for a connection while Redis is down).
- :func:`fire_and_forget`: a background Deferred that nobody waits for still
  ends in an errback that logs (and optionally counts) its failure.
- :func:`thread_runner` / :func:`synchronous_runner`: how heavy pure work is
  moved off the reactor thread, injectable so tests stay synchronous.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, TypeVar

from twisted.internet import defer, error
from twisted.internet.task import LoopingCall
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure

from imapsvc.interfaces import StoreUnavailable

T = TypeVar("T")

_log = Logger()

#: ``runner(f, *args, **kwargs) -> Deferred`` of ``f``'s result.
Runner = Callable[..., "defer.Deferred[Any]"]


class DeadlineExceeded(Exception):
    """An operation did not finish within its deadline."""


def with_deadline(
    d: defer.Deferred[T], seconds: float, clock: Any, what: str = "operation"
) -> defer.Deferred[T]:
    """Fail ``d`` with :class:`DeadlineExceeded` (and cancel what it waits
    for) when it has not fired within ``seconds`` on ``clock``.

    :param what: a short, secret-free description for the error message.
    """

    def on_timeout(result: Any, timeout: float) -> Any:
        # Called only when the deadline hit; ``result`` is what cancelling
        # produced: a CancelledError, or whatever the cancelled chain turned
        # it into (e.g. a FirstError from gatherResults).
        if isinstance(result, Failure):
            raise DeadlineExceeded(f"{what} did not finish within {timeout:g}s")
        return result

    return d.addTimeout(seconds, clock, onTimeoutCancel=on_timeout)


#: Failures that mean "a peer is away for now" (database restarting, Redis
#: down, a deadline hit), as opposed to a bug.
EXPECTED_OUTAGES: tuple[type[BaseException], ...] = (
    DeadlineExceeded,
    StoreUnavailable,
    ConnectionError,
    error.ConnectError,
    error.ConnectionLost,
    error.ConnectionDone,
    defer.TimeoutError,
)


def _one_line(failure: Failure) -> str:
    text = " ".join(str(failure.value).split())
    return f"{type(failure.value).__name__}: {text}" if text else type(failure.value).__name__


def fire_and_forget(
    d: defer.Deferred[Any],
    log: Optional[Logger] = None,
    what: str = "background task",
    on_error: Optional[Callable[[Failure], None]] = None,
) -> defer.Deferred[None]:
    """Make ``d`` safe to drop: a failure is logged (and handed to
    ``on_error``, e.g. a metrics counter) instead of becoming an
    "Unhandled error in Deferred".

    :return: ``d``, which now always succeeds with ``None``.
    """
    logger = log or _log

    def failed(failure: Failure) -> None:
        if failure.check(*EXPECTED_OUTAGES):
            # A peer that is away is retried by whoever scheduled this: worth a
            # line, not a critical entry with a traceback per attempt.
            logger.warn("{what} failed: {err}", what=what, err=_one_line(failure))
        else:
            logger.failure("{what} failed", failure=failure, what=what)
        if on_error is not None:
            try:
                on_error(failure)
            except Exception:
                logger.failure("error hook of {what} failed", what=what)

    return d.addCallbacks(lambda _: None, failed)


def synchronous_runner(f: Callable[..., T], *args: Any, **kwargs: Any) -> defer.Deferred[T]:
    """Run ``f`` right here and wrap its outcome in a Deferred (for tests and
    for the embedded setup where nothing is heavy)."""
    return defer.maybeDeferred(f, *args, **kwargs)


def thread_runner(reactor: Any, pool: Any) -> Runner:
    """A runner that calls ``f`` in ``pool`` (a started
    :class:`~twisted.python.threadpool.ThreadPool`) and fires on ``reactor``."""

    def run(f: Callable[..., Any], *args: Any, **kwargs: Any) -> defer.Deferred[Any]:
        return deferToThreadPool(reactor, pool, f, *args, **kwargs)

    return run


def start_loop(clock: Any, interval_s: float, f: Callable[[], Any], log: Logger,
               what: str) -> LoopingCall:
    """Call ``f`` now and then every ``interval_s`` seconds on ``clock``.
    A failure that ends the loop is logged as "``what`` failed" (a loop
    that dies silently is a feature that stops without a word)."""
    loop = LoopingCall(f)
    loop.clock = clock
    loop.start(interval_s, now=True).addErrback(lambda failure: log.failure(
        "{what} failed", failure, what=what))
    return loop
