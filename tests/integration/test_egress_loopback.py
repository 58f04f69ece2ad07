"""The token client through the production HTTP client
(:func:`imapsvc.egress.guarded_http_client`) against real hostile token
endpoints on 127.0.0.1: loopback refused unless allowlisted, a redirect not
followed, an oversized and a silent endpoint cut off."""

from __future__ import annotations

import json

from twisted.internet import defer, reactor
from twisted.trial import unittest
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

from imapsvc.core.netguard import parse_allowlist
from imapsvc.egress import guarded_http_client
from imapsvc.oauth import TokenClient, TokenEndpointError


class Endpoint(Resource):
    isLeaf = True

    def __init__(self):
        super().__init__()
        self.hits: list[bytes] = []
        self.pending = []

    def render_POST(self, request):
        self.hits.append(request.path)
        if request.path == b"/redirect":
            request.setResponseCode(308)
            request.setHeader(b"location", b"/token")
            return b""
        if request.path == b"/huge":
            request.setHeader(b"content-type", b"application/json")
            # Streams 8 MiB without a Content-Length; the client stops early.
            for _ in range(128):
                request.write(b"x" * 65536)
            request.finish()
            return NOT_DONE_YET
        if request.path == b"/silent":
            self.pending.append(request)
            return NOT_DONE_YET
        request.setHeader(b"content-type", b"application/json")
        return json.dumps({"access_token": "at", "expires_in": 60}).encode()


class GuardedTokenClientTests(unittest.TestCase):
    timeout = 30

    def setUp(self):
        self.endpoint = Endpoint()
        self.port = reactor.listenTCP(0, Site(self.endpoint), interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)
        self.base = f"http://127.0.0.1:{self.port.getHost().port}"

        def close_pending():
            for request in self.endpoint.pending:
                if not request.finished and request.channel is not None:
                    request.channel.transport.abortConnection()

        self.addCleanup(close_pending)

    def client(self, allow=("127.0.0.0/8",), timeout_s=10.0):
        http = guarded_http_client(reactor, parse_allowlist(allow))
        return TokenClient(http, timeout_s=timeout_s, clock=reactor, allow_http_loopback=True)

    @defer.inlineCallbacks
    def refused(self, d):
        try:
            yield d
        except TokenEndpointError as e:
            return e
        except Exception as e:
            return e
        self.fail("not refused")

    @defer.inlineCallbacks
    def test_loopback_needs_the_allowlist(self):
        error = yield self.refused(self.client(allow=()).post(self.base + "/token", {}))
        self.assertIn("loopback", str(error))
        self.assertEqual(self.endpoint.hits, [])
        data = yield self.client().post(self.base + "/token", {})
        self.assertEqual(data["access_token"], "at")
        self.assertEqual(self.endpoint.hits, [b"/token"])

    @defer.inlineCallbacks
    def test_redirect_not_followed(self):
        error = yield self.refused(self.client().post(self.base + "/redirect", {}))
        self.assertEqual(error.code, "redirect_refused")
        self.assertEqual(self.endpoint.hits, [b"/redirect"])

    @defer.inlineCallbacks
    def test_oversized_answer_cut_off(self):
        error = yield self.refused(self.client().post(self.base + "/huge", {}))
        self.assertEqual(error.code, "response_too_large")

    @defer.inlineCallbacks
    def test_silent_endpoint_cut_off_at_the_deadline(self):
        started = reactor.seconds()
        error = yield self.refused(self.client(timeout_s=0.5).post(self.base + "/silent", {}))
        self.assertEqual(error.code, "timeout")
        self.assertLess(reactor.seconds() - started, 5)
