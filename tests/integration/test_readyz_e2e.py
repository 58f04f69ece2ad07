"""``/readyz`` of a real ``twistd imapsvc`` process follows its dependencies.

Redis: a private ``redis-server`` the test stops and starts again.
Postgres: the shared server keeps running (other tests use it); the service
reaches it through a TCP forwarder run by this test, so "the database went
away" is the forwarder refusing new connections and cutting the open ones
(or, for a partition, holding every byte). When it comes back the store must
heal by itself (dead-connection detection) and readiness returns.

All HTTP from the test goes through the test's reactor (treq): the forwarder
runs on that reactor too, and a blocking client would stall it.
"""

from __future__ import annotations

import json
import signal
import uuid
from typing import Any, Optional

import treq
from twisted.internet import defer, endpoints, protocol, reactor, task
from twisted.trial import unittest
from twisted.web.client import Agent, HTTPConnectionPool

from tests.rig import postgres as pg
from tests.rig.redis import PrivateRedis, shared_redis, unique_stream
from tests.rig.service import ServiceProcess, database_url, free_port, wait_for


class _Outbound(protocol.Protocol):
    """The forwarder's connection to the real server."""

    def __init__(self, inbound: _Inbound) -> None:
        self.inbound = inbound

    def connectionMade(self) -> None:
        self.inbound.linked(self)

    def dataReceived(self, data: bytes) -> None:
        self.inbound.transport.write(data)

    def connectionLost(self, reason: Any) -> None:
        self.inbound.transport.loseConnection()


class _Inbound(protocol.Protocol):
    """One client connection to the forwarder."""

    def __init__(self, forwarder: TCPForwarder) -> None:
        self.forwarder = forwarder
        self.outbound: Optional[_Outbound] = None
        self.closed: defer.Deferred = defer.Deferred()

    def connectionMade(self) -> None:
        self.forwarder.connections.add(self)
        # Nothing is read until the server side is connected.
        self.transport.pauseProducing()
        ep = endpoints.TCP4ClientEndpoint(
            reactor, self.forwarder.target_host, self.forwarder.target_port, timeout=5
        )
        d = endpoints.connectProtocol(ep, _Outbound(self))
        d.addErrback(lambda _f: self.transport.abortConnection())

    def linked(self, outbound: _Outbound) -> None:
        self.outbound = outbound
        if self.transport.disconnected:
            outbound.transport.loseConnection()
            return
        if self.forwarder.paused:
            outbound.transport.pauseProducing()
        else:
            self.transport.resumeProducing()

    def dataReceived(self, data: bytes) -> None:
        assert self.outbound is not None
        self.outbound.transport.write(data)

    def connectionLost(self, reason: Any) -> None:
        self.forwarder.connections.discard(self)
        if self.outbound is not None:
            self.outbound.transport.loseConnection()
        self.closed.callback(None)

    def pause(self) -> None:
        self.transport.pauseProducing()
        if self.outbound is not None:
            self.outbound.transport.pauseProducing()

    def resume(self) -> None:
        if self.outbound is not None:
            self.transport.resumeProducing()
            self.outbound.transport.resumeProducing()

    def abort(self) -> defer.Deferred:
        self.transport.abortConnection()
        if self.outbound is not None:
            self.outbound.transport.abortConnection()
        return self.closed


class _Factory(protocol.Factory):
    def __init__(self, forwarder: TCPForwarder) -> None:
        self.forwarder = forwarder

    def buildProtocol(self, addr: Any) -> _Inbound:
        return _Inbound(self.forwarder)


class TCPForwarder:
    """Forwards ``127.0.0.1:<port>`` to a target, on the test's reactor.

    :meth:`close` stops listening and cuts every connection (the server is
    gone: connects are refused); :meth:`pause` keeps the connections but
    moves no bytes (a partition); :meth:`open`/:meth:`resume` undo them.
    """

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.port = free_port()
        self.connections: set[_Inbound] = set()
        self.paused = False
        self._listening: Any = None

    def open(self) -> None:
        if self._listening is None:
            self._listening = reactor.listenTCP(self.port, _Factory(self), interface="127.0.0.1")

    @defer.inlineCallbacks
    def close(self):
        listening, self._listening = self._listening, None
        if listening is not None:
            yield listening.stopListening()
        yield defer.gatherResults([c.abort() for c in list(self.connections)])

    def pause(self) -> None:
        self.paused = True
        for c in self.connections:
            c.pause()

    def resume(self) -> None:
        self.paused = False
        for c in list(self.connections):
            c.resume()


class ReadyzTests(unittest.TestCase):
    timeout = 120

    def setUp(self):
        self.dsn = pg.database_dsn()
        shared_redis()  # skip (or fail on CI) like the other service tests
        if not PrivateRedis.available():
            raise unittest.SkipTest("redis-server is not installed")
        self.pool = HTTPConnectionPool(reactor, persistent=False)
        self.http = treq.client.HTTPClient(Agent(reactor, pool=self.pool))
        self.redis = PrivateRedis(reactor)
        self.addCleanup(self.redis.destroy)
        params = pg.parse_dsn(self.dsn)
        self.forwarder = TCPForwarder(
            params.get("host", "127.0.0.1"), int(params.get("port", 5432))
        )
        self.forwarder.open()
        self.addCleanup(self.forwarder.close)
        return self.redis.start()

    def service(self):
        url = database_url(self.dsn).replace(
            f":{self.forwarder.target_port}/", f":{self.forwarder.port}/"
        )
        self.assertIn(f"127.0.0.1:{self.forwarder.port}/", url)
        proc = ServiceProcess(
            {
                "DATABASE_URL": url,
                "REDIS_URL": self.redis.url,
                "IMAP_EVENT_STREAM": unique_stream("readyz"),
                "IMAP_PROVIDER_REFRESH_MS": "1000",
                # The run's database is shared: run none of the other tests'
                # providers (their connections would be part of every outage here).
                "IMAPSVC_TENANTS": str(uuid.uuid4()),
            },
            "readyz-w1",
        )
        self.addCleanup(proc.cleanup)
        proc.start()
        self.proc = proc
        return proc

    @defer.inlineCallbacks
    def readyz(self):
        """``(status, body)`` of ``/readyz``; ``(0, {})`` when nothing answers."""
        try:
            response = yield self.http.get(self.proc.url("/readyz"), timeout=5)
            body = yield response.content()
        except Exception as e:
            return 0, {"error": repr(e)}
        try:
            data = json.loads(body)
        except ValueError:
            data = {}
        return response.code, data

    @defer.inlineCallbacks
    def until(self, status: int, within: float, what: str):
        """Poll ``/readyz`` until it answers ``status``; the seconds it took."""
        start = reactor.seconds()
        last: Any = None
        while reactor.seconds() - start < within:
            code, body = yield self.readyz()
            last = (code, body)
            if code == status:
                return reactor.seconds() - start, body
            yield task.deferLater(reactor, 0.1, lambda: None)
        self.fail(f"/readyz not {status} within {within}s ({what}); last {last}\n"
                  + self.proc.log_text()[-3000:])

    @defer.inlineCallbacks
    def test_redis_down_and_back(self):
        self.service()
        yield self.until(200, 30, "start-up")
        yield self.redis.stop()
        took, body = yield self.until(503, 8, "Redis stopped")
        self.assertTrue(any("event stream" in r for r in body["reasons"]), body)
        self.assertFalse(any("database" in r for r in body["reasons"]), body)
        yield self.redis.start()
        yield self.until(200, 20, "Redis back")
        # Liveness never depended on Redis.
        response = yield self.http.get(self.proc.url("/healthz"), timeout=5)
        yield response.content()
        self.assertEqual(response.code, 200)

    @defer.inlineCallbacks
    def test_postgres_gone_and_back_heals(self):
        self.service()
        yield self.until(200, 30, "start-up")
        self.assertTrue(self.forwarder.connections, "the service does not use the forwarder")
        yield self.forwarder.close()
        _took, body = yield self.until(503, 8, "Postgres gone")
        self.assertTrue(any("database" in r for r in body["reasons"]), body)
        self.assertFalse(any("event stream" in r for r in body["reasons"]), body)
        # Still down a little later: readiness does not flap back by itself.
        yield task.deferLater(reactor, 1.0, lambda: None)
        code, _ = yield self.readyz()
        self.assertEqual(code, 503)
        self.forwarder.open()
        yield self.until(200, 30, "Postgres back (store healed)")
        # Healed for real: the new connections go through the forwarder.
        self.assertTrue(self.forwarder.connections)
        code, _ = yield self.readyz()
        self.assertEqual(code, 200)
        # The drain goes through the forwarder on this reactor: never block it.
        self.proc.signal(signal.SIGTERM)
        yield wait_for(lambda: self.proc.proc.poll() is not None, 30, "exit after SIGTERM")
        self.assertEqual(self.proc.proc.returncode, 0, self.proc.log_text()[-2000:])

    @defer.inlineCallbacks
    def test_postgres_partition_and_back(self):
        """No byte moves (connections stay open): the readiness deadline
        answers 503 instead of hanging, and traffic resumes after."""
        self.service()
        yield self.until(200, 30, "start-up")
        self.forwarder.pause()
        _took, body = yield self.until(503, 8, "Postgres partitioned")
        self.assertTrue(any("database" in r for r in body["reasons"]), body)
        self.forwarder.resume()
        yield self.until(200, 30, "partition over")
