"""The token-endpoint client against hostile endpoints (StubTreq, fake clock):
https only, redirects refused, a size cap and one deadline."""

from __future__ import annotations

import json

from treq.testing import StubTreq
from twisted.internet.task import Clock
from twisted.trial import unittest
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from imapsvc.oauth import MAX_TOKEN_RESPONSE_BYTES, TokenClient, TokenEndpointError

GOOD = {"access_token": "at-1", "expires_in": 3600}


class Hostile(Resource):
    isLeaf = True

    def __init__(self):
        super().__init__()
        self.paths: list[bytes] = []
        self.mode = "good"
        self.pending = []

    def render_POST(self, request):
        self.paths.append(request.path)
        request.setHeader(b"content-type", b"application/json")
        if request.path == b"/elsewhere":
            return json.dumps(GOOD).encode()
        if self.mode == "redirect":
            request.setResponseCode(307)
            request.setHeader(b"location", b"https://auth.example.com/elsewhere")
            return b""
        if self.mode == "huge":
            return b'{"access_token": "' + b"x" * (MAX_TOKEN_RESPONSE_BYTES + 10) + b'"}'
        if self.mode == "silent":
            self.pending.append(request)
            return NOT_DONE_YET
        if self.mode == "trickle":
            request.write(b'{"access_token": ')
            self.pending.append(request)
            return NOT_DONE_YET
        return json.dumps(GOOD).encode()


class TokenClientTests(unittest.TestCase):
    def setUp(self):
        self.clock = Clock()
        self.endpoint = Hostile()
        self.http = StubTreq(self.endpoint)
        self.client = TokenClient(self.http, timeout_s=15, clock=self.clock)

    def post(self, url="https://auth.example.com/token", client=None):
        form = {"grant_type": "refresh_token", "refresh_token": "rt"}
        d = (client or self.client).post(url, form)
        self.http.flush()
        return d

    def refused(self, d) -> TokenEndpointError:
        return self.failureResultOf(d, TokenEndpointError).value

    def test_good_answer(self):
        self.assertEqual(self.successResultOf(self.post())["access_token"], "at-1")

    def test_http_refused_before_any_request(self):
        for url in ("http://auth.example.com/token", "http://127.0.0.1/token",
                    "ftp://auth.example.com/", "https://user:pw@auth.example.com/token"):
            self.assertEqual(self.refused(self.post(url)).code, "insecure_endpoint", url)
        self.assertEqual(self.endpoint.paths, [])

    def test_http_to_loopback_only_when_allowed(self):
        client = TokenClient(self.http, clock=self.clock, allow_http_loopback=True)
        self.assertEqual(self.successResultOf(self.post("http://127.0.0.1/token", client))
                         ["access_token"], "at-1")
        self.assertEqual(
            self.refused(self.post("http://auth.example.com/token", client)).code,
            "insecure_endpoint",
        )

    def test_redirect_not_followed(self):
        self.endpoint.mode = "redirect"
        error = self.refused(self.post())
        self.assertEqual((error.code, error.status), ("redirect_refused", 307))
        # The client secret and refresh token were posted once, never re-posted.
        self.assertEqual(self.endpoint.paths, [b"/token"])
        self.assertFalse(error.auth_failure)

    def test_oversized_answer_refused(self):
        self.endpoint.mode = "huge"
        self.assertEqual(self.refused(self.post()).code, "response_too_large")

    def test_silent_endpoint_hits_the_deadline(self):
        self.endpoint.mode = "silent"
        d = self.post()
        self.assertNoResult(d)
        self.clock.advance(14.9)
        self.assertNoResult(d)
        self.clock.advance(0.2)
        self.assertEqual(self.refused(d).code, "timeout")

    def test_trickling_body_hits_the_same_deadline(self):
        # Headers and a first byte come at once; the rest never: the deadline
        # covers the body too, not only the wait for the headers.
        self.endpoint.mode = "trickle"
        d = self.post()
        self.http.flush()
        self.assertNoResult(d)
        self.clock.advance(15.1)
        self.assertEqual(self.refused(d).code, "timeout")
