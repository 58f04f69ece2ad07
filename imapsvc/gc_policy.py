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
dozen) are not collected while frozen. A frozen object that is freed by its
reference count leaves the frozen set, so the set grows only by what became
live (more folders) or what was lost in cycles: every ``IMAP_GC_FULL_PASS_MS``
the policy looks at its size, and when it grew by more than a tenth since the
last full pass, hands it back and walks everything once (one full pass at a
known, usually calm moment, instead of several at random moments of a storm),
then freezes the survivors again. A replica whose folders just idle never pays
for it; one that lost sessions pays once, within one interval.
"""

from __future__ import annotations

import gc
from typing import Any

from twisted.application import service
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

log = Logger(namespace="imapsvc.gc_policy")

#: How much the frozen set may grow between full passes.
GROWTH = 1.1


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
        #: The frozen set's size after the last full pass (None: none yet).
        self._baseline: int | None = None
        self._measure_baseline = False
        self._loop = LoopingCall(self._check)
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

    def _check(self) -> None:
        if self._baseline is not None and self.frozen() <= self._baseline * GROWTH:
            return
        self.full_pass()

    def full_pass(self) -> None:
        """Hand the frozen objects back and collect everything once; the
        callback then freezes the survivors."""
        self.full_passes += 1
        self._measure_baseline = True
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
        if self._measure_baseline:
            self._measure_baseline = False
            self._baseline = self.frozen()
