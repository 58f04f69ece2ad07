"""Short passes of the cyclic garbage collector, so they do not stall the reactor.

A full collection (generation 2) walks every object the collector tracks: at
2,000 idle folders about 400 ms on this project's 2-core machine, a reactor
stall during which no mail moves. A reconnect storm makes one every few
seconds (each new session is new long-lived objects), so before this policy
the largest stalls of a storm were the collector's (docs/performance.md).

What survived a full pass is, almost all of it, what stays: modules, classes,
the folders and their sessions. Right after each full pass those survivors are
frozen (``gc.freeze()``): later passes walk only what was made since. Frozen
objects that later end up as cyclic garbage (a lost session leaves a few
dozen) are not collected while frozen, so every ``IMAP_GC_FULL_PASS_MS`` the
frozen set is handed back and walked once (one full pass at a known time,
instead of several at random moments of a storm), and its survivors are frozen
again. That bounds what frozen garbage can hold to one interval's worth.
"""

from __future__ import annotations

import gc
from typing import Any

from twisted.application import service
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

log = Logger(namespace="imapsvc.gc_policy")


class CollectorPolicy(service.Service):
    """Freezes the survivors of every full collection; thaws and collects
    everything every ``full_pass_interval`` seconds.

    :param collector: the ``gc`` module (a fake in unit tests).
    """

    def __init__(self, reactor: Any, full_pass_interval: float, collector: Any = gc):
        self.reactor = reactor
        self.interval = full_pass_interval
        self.gc = collector
        #: Freezes done and scheduled full passes made (for /metrics and tests).
        self.freezes = 0
        self.full_passes = 0
        self._freeze_pending = False
        self._loop = LoopingCall(self.full_pass)
        self._loop.clock = reactor

    def startService(self) -> None:
        super().startService()
        self.gc.callbacks.append(self._collected)
        # What start-up built (modules, settings, pools) is frozen at once.
        self.full_pass()
        self._loop.start(self.interval, now=False)

    def stopService(self) -> Any:
        if self._collected in self.gc.callbacks:
            self.gc.callbacks.remove(self._collected)
        if self._loop.running:
            self._loop.stop()
        self.gc.unfreeze()
        return super().stopService()

    def frozen(self) -> int:
        return int(self.gc.get_freeze_count())

    def full_pass(self) -> None:
        """Hand the frozen objects back and collect everything once; the
        callback then freezes the survivors."""
        self.full_passes += 1
        self.gc.unfreeze()
        self.gc.collect(2)

    def _collected(self, phase: str, info: dict[str, Any]) -> None:
        # Runs inside the collector, in whichever thread allocated: freeze
        # from the reactor thread, after the pass has finished.
        if phase != "stop" or info.get("generation") != 2 or self._freeze_pending:
            return
        self._freeze_pending = True
        self.reactor.callFromThread(self._freeze)

    def _freeze(self) -> None:
        self._freeze_pending = False
        if not self.running:
            return
        self.gc.freeze()
        self.freezes += 1
