"""A bounded number of ready sockets per reactor turn (imapsvc/reactor_turns.py),
on a real epoll reactor (not the one trial runs on) and real socket pairs."""

from __future__ import annotations

import socket

from twisted.internet.epollreactor import EPollReactor
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from imapsvc.reactor_turns import bound_events_per_turn, unbound


class Reader:
    """A readable selectable over one end of a socket pair."""

    def __init__(self, sock: socket.socket, log: list) -> None:
        self.sock = sock
        self.log = log

    def fileno(self) -> int:
        return self.sock.fileno()

    def doRead(self) -> None:  # noqa: N802
        self.log.append(self.sock.recv(100))

    def connectionLost(self, reason) -> None:  # noqa: N802
        pass

    def logPrefix(self) -> str:  # noqa: N802
        return "Reader"


class BoundedTurnTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = EPollReactor()
        self.addCleanup(self.close)
        self.log: list[bytes] = []
        self.pairs = []
        for n in range(5):
            a, b = socket.socketpair()
            self.pairs.append((a, b))
            self.reactor.addReader(Reader(a, self.log))
            b.send(b"%d" % n)

    def close(self) -> None:
        self.reactor.removeAll()
        for a, b in self.pairs:
            a.close()
            b.close()
        self.reactor._poller.close()

    def test_twisted_handles_every_ready_socket_in_one_turn(self):
        self.reactor.doIteration(0)
        self.assertEqual(sorted(self.log), [b"0", b"1", b"2", b"3", b"4"])

    def test_at_most_limit_sockets_a_turn_and_none_lost(self):
        self.assertTrue(bound_events_per_turn(self.reactor, 2))
        self.reactor.doIteration(0)
        self.assertEqual(len(self.log), 2)
        self.reactor.doIteration(0)
        self.assertEqual(len(self.log), 4)
        self.reactor.doIteration(0)
        self.assertEqual(sorted(self.log), [b"0", b"1", b"2", b"3", b"4"])
        self.reactor.doIteration(0)
        self.assertEqual(len(self.log), 5)

    def test_a_socket_removed_earlier_in_the_turn_is_skipped(self):
        """Whichever socket is handled first removes the others: their
        events of this turn are not handled."""
        bound_events_per_turn(self.reactor, 5)
        readers = self.reactor.getReaders()
        for reader in readers:
            def read_and_remove_the_rest(reader=reader) -> None:
                self.log.append(reader.sock.recv(100))
                for other in readers:
                    if other is not reader:
                        self.reactor.removeReader(other)
            reader.doRead = read_and_remove_the_rest
        self.reactor.doIteration(0)
        self.assertEqual(len(self.log), 1)

    def test_unbound_restores_twisted_poll(self):
        bound_events_per_turn(self.reactor, 1)
        unbound(self.reactor)
        self.reactor.doIteration(0)
        self.assertEqual(len(self.log), 5)

    def test_zero_leaves_the_reactor_alone(self):
        self.assertFalse(bound_events_per_turn(self.reactor, 0))
        self.assertNotIn("doIteration", vars(self.reactor))

    def test_not_an_epoll_reactor(self):
        clock = Clock()
        self.assertFalse(bound_events_per_turn(clock, 64))
        unbound(clock)
