"""The HTTP server around the Klein app: 413 before any buffering, and
security headers on every response, at byte level (a string transport) and
once against a real listening Site on loopback."""

from __future__ import annotations

import json
import socket
import tempfile

from twisted.internet import defer, reactor, threads
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial import unittest
from twisted.web import http
from twisted.web.resource import Resource

from imapsvc.web_site import GuardedRequest, GuardedSite


class Echo(Resource):
    """Counts the requests that reached a handler; echoes the body size."""

    isLeaf = True

    def __init__(self):
        super().__init__()
        self.rendered = 0

    def render(self, request):
        self.rendered += 1
        request.setHeader(b"content-type", b"application/json")
        return json.dumps({"size": len(request.content.read())}).encode()


class NoTempFiles:
    """Fails the test if Twisted reaches for a temporary file (where it
    buffers large and chunked bodies)."""

    def __init__(self, case: unittest.TestCase):
        self.calls = 0
        original = tempfile.TemporaryFile

        def counting(*a, **kw):
            self.calls += 1
            return original(*a, **kw)

        case.patch(http.tempfile, "TemporaryFile", counting)


class ByteLevelTests(unittest.TestCase):
    def setUp(self):
        self.echo = Echo()
        self.temp = NoTempFiles(self)

    def connect(self, **kw):
        site = GuardedSite(self.echo, max_body=1000, reactor=Clock(), **kw)
        proto = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 5555))
        transport = StringTransport()
        proto.makeConnection(transport)
        return proto, transport

    def headers(self, raw: bytes) -> dict:
        head = raw.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
        out = {}
        for line in head[1:]:
            name, _, value = line.partition(b":")
            out[name.strip().lower()] = value.strip()
        return out

    def test_huge_content_length_refused_before_body(self):
        proto, transport = self.connect()
        proto.dataReceived(
            b"POST /api/email/imap/reconnect HTTP/1.1\r\nHost: x\r\n"
            b"Content-Length: 68719476736\r\nExpect: 100-continue\r\n\r\n"
        )
        out = transport.value()
        self.assertTrue(out.startswith(b"HTTP/1.1 413 "), out)
        self.assertNotIn(b"100 Continue", out)
        self.assertTrue(transport.disconnecting)
        # The body arrives anyway: it is dropped, never buffered or routed.
        requests = proto._channel.requests
        request = requests[-1] if requests else None
        proto.dataReceived(b"x" * 100_000)
        if request is not None:
            self.assertEqual(request.content.getvalue(), b"")
        self.assertEqual(self.echo.rendered, 0)
        self.assertEqual(self.temp.calls, 0)
        self.assertEqual(self.headers(out)[b"x-content-type-options"], b"nosniff")

    def test_chunked_body_counted_as_it_arrives(self):
        proto, transport = self.connect()
        proto.dataReceived(
            b"POST /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        self.assertEqual(transport.value(), b"")
        request = proto._channel.requests[-1]
        for _ in range(3):
            proto.dataReceived(b"190\r\n" + b"y" * 400 + b"\r\n")  # 3 x 400 > 1000
        out = transport.value()
        self.assertTrue(out.startswith(b"HTTP/1.1 413 "), out)
        self.assertTrue(transport.disconnecting)
        self.assertLessEqual(len(request.content.getvalue()), 1000)
        self.assertEqual(self.echo.rendered, 0)
        self.assertEqual(self.temp.calls, 0)

    def test_body_within_limit_is_served(self):
        proto, transport = self.connect()
        body = b"z" * 1000
        proto.dataReceived(
            b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n" + body
        )
        out = transport.value()
        self.assertTrue(out.startswith(b"HTTP/1.1 200 "), out)
        self.assertIn(b'{"size": 1000}', out)
        # Chunked and small: served too, in memory.
        transport.clear()
        proto.dataReceived(
            b"POST /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5\r\nhello\r\n0\r\n\r\n"
        )
        self.assertIn(b'{"size": 5}', transport.value())
        self.assertEqual(self.temp.calls, 0)

    def test_security_headers_on_every_response(self):
        proto, transport = self.connect()
        proto.dataReceived(b"GET /anything HTTP/1.1\r\nHost: x\r\n\r\n")
        headers = self.headers(transport.value())
        self.assertEqual(headers[b"x-content-type-options"], b"nosniff")
        self.assertIn(b"frame-ancestors 'none'", headers[b"content-security-policy"])
        self.assertEqual(headers[b"referrer-policy"], b"no-referrer")
        self.assertEqual(headers[b"x-frame-options"], b"DENY")
        # Plain http and no https public URL: no HSTS (it would be ignored,
        # or pin a host that is never served over TLS).
        self.assertNotIn(b"strict-transport-security", headers)

    def test_hsts_when_served_over_https(self):
        proto, transport = self.connect(hsts=True)
        proto.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        headers = self.headers(transport.value())
        self.assertIn(b"max-age=", headers[b"strict-transport-security"])

    def test_access_log_leaves_out_the_query(self):
        from imapsvc.web_site import access_log_line

        proto, transport = self.connect()
        lines = []
        proto._channel.site._logFile = type("F", (), {"write": lambda self, x: lines.append(x)})()
        proto.dataReceived(
            b"GET /api/email/oauth/imap/callback?code=SECRETCODE&state=S HTTP/1.1\r\n"
            b"Host: x\r\nReferer: https://idp/?code=SECRETCODE\r\n\r\n"
        )
        self.assertEqual(len(lines), 1, lines)
        self.assertIn("GET /api/email/oauth/imap/callback HTTP/1.1", lines[0])
        self.assertNotIn("SECRETCODE", lines[0])
        self.assertIs(proto._channel.site._logFormatter, access_log_line)

    def test_request_class(self):
        self.assertIs(GuardedSite(self.echo).requestFactory, GuardedRequest)


class RealSocketTests(unittest.TestCase):
    """A listening Site on 127.0.0.1 and a raw TCP client (in a thread, so
    the reactor serves meanwhile)."""

    def setUp(self):
        self.echo = Echo()
        self.temp = NoTempFiles(self)
        site = GuardedSite(self.echo, max_body=65536)
        self.port = reactor.listenTCP(0, site, interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)

    def exchange(self, head: bytes, body_chunks, timeout=10.0) -> bytes:
        def run() -> bytes:
            sock = socket.create_connection(("127.0.0.1", self.port.getHost().port), timeout)
            try:
                sock.sendall(head)
                sent = 0
                try:
                    for chunk in body_chunks:
                        sock.sendall(chunk)
                        sent += len(chunk)
                except OSError:
                    pass  # the server closed on us: expected after a 413
                data = b""
                while True:
                    try:
                        piece = sock.recv(65536)
                    except OSError:
                        break
                    if not piece:
                        break
                    data += piece
                return data
            finally:
                sock.close()

        return threads.deferToThread(run)

    @defer.inlineCallbacks
    def test_huge_content_length_gets_413(self):
        head = (b"POST /api/email/imap/reconnect HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                b"Content-Length: 68719476736\r\n\r\n")
        out = yield self.exchange(head, [b"a" * 65536] * 4)
        self.assertTrue(out.startswith(b"HTTP/1.1 413 "), out[:200])
        self.assertEqual(self.echo.rendered, 0)
        self.assertEqual(self.temp.calls, 0)

    @defer.inlineCallbacks
    def test_endless_chunked_body_gets_413(self):
        head = b"POST /x HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n"
        chunk = b"4000\r\n" + b"b" * 0x4000 + b"\r\n"
        out = yield self.exchange(head, [chunk] * 64)  # 1 MiB offered
        self.assertTrue(out.startswith(b"HTTP/1.1 413 "), out[:200])
        self.assertEqual(self.echo.rendered, 0)
        self.assertEqual(self.temp.calls, 0)
