"""The Klein app through StubTreq: auth, readiness, metrics, admin, OAuth errors."""

import json
from urllib.parse import parse_qs, urlencode, urlsplit

from treq.testing import StubTreq
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial import unittest

from imapsvc.core import oauth_state as o
from imapsvc.metrics import ServiceCollector, make_registry
from imapsvc.oauth import OAuthFlow
from imapsvc.sealed_secrets import SecretBox, SecretStore, generate_key
from imapsvc.sink.memory import MemorySink
from imapsvc.store.memory import MemoryStore
from imapsvc.web import WebApp

T = "11111111-1111-1111-1111-111111111111"
P = "22222222-2222-2222-2222-222222222222"
TOKEN = "adm-7Qx2Lw9cVb4Nz8Rt1Yp6Ks3Hd5Fg0Jm"


class FakeAdmin:
    def __init__(self):
        self.calls = []

    def reconnect(self, tenant, provider_id):
        self.calls.append(("reconnect", tenant, provider_id))
        return defer.succeed({"success": True})

    def resync(self, tenant, provider_id, folder=None):
        self.calls.append(("resync", tenant, provider_id, folder))
        return defer.succeed({"success": True})

    def test_connection(self, tenant, provider_id):
        self.calls.append(("test", tenant, provider_id))
        return defer.fail(RuntimeError("boom with password=hunter2"))

    def status(self):
        return {
            "providers": [
                {
                    "tenant": T,
                    "providerId": P,
                    "folders": {"INBOX": {"state": "Idling", "syncs": 3, "handedOff": 7,
                                          "lag": 2, "reconnects": {"bye": 1}}},
                }
            ],
            "waiting": [],
        }


class WebTests(unittest.TestCase):
    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1_800_000_000)
        self.store = MemoryStore(self.clock)
        self.sink = MemorySink()
        self.admin = FakeAdmin()
        self.discovered = True
        box = SecretBox.from_setting(generate_key())
        self.store.add_provider(
            tenant=T, provider_id=P, host="imap.gmail.com", auth_type="oauth2",
            oauth_client_id="cid",
        )
        flow = OAuthFlow(
            self.store, SecretStore(self.store, box), box, None, self.clock,
            o.state_key("k"), "https://svc.example.com", ["https://app.example.com"],
        )
        self.web = WebApp(
            clock=self.clock,
            admin=self.admin,
            store=self.store,
            sink=self.sink,
            registry=make_registry(
                ServiceCollector(
                    self.admin.status,
                    lambda: {"backlog": 4, "deduplicated": 3},
                    lambda: {"published": 5, "skipped": 1, "duplicates": 2},
                    detailed=False,
                )
            ),
            detailed_registry=make_registry(
                ServiceCollector(
                    self.admin.status,
                    lambda: {"backlog": 4, "deduplicated": 3},
                    lambda: {"published": 5, "skipped": 1, "duplicates": 2},
                )
            ),
            oauth_flow=flow,
            admin_token=TOKEN,
            discovered=lambda: self.discovered,
        )
        self.http = StubTreq(self.web.resource())

    def request(self, method, path, body=None, token=TOKEN, headers=None, **kw):
        headers = dict(headers or {})
        if token:
            headers[b"authorization"] = [b"Bearer " + token.encode()]
        data = json.dumps(body).encode() if isinstance(body, dict) else body
        d = self.http.request(method, "http://svc" + path, data=data, headers=headers, **kw)
        self.http.flush()
        response = self.successResultOf(d)
        content = self.successResultOf(self.http.content(response))
        return response.code, content

    def test_health(self):
        for path in ("/healthz", "/health"):
            code, body = self.request("GET", path, token=None)
            self.assertEqual((code, json.loads(body)), (200, {"status": "ok"}))

    def test_ready_and_not_ready(self):
        self.assertEqual(self.request("GET", "/readyz", token=None)[0], 200)
        self.discovered = False
        self.sink.fail()
        code, body = self.request("GET", "/readyz", token=None)
        self.assertEqual(code, 503)
        reasons = json.loads(body)["reasons"]
        self.assertEqual(len(reasons), 2, reasons)

    def test_readiness_reasons_are_generic(self):
        def failing_ping():
            return defer.fail(RuntimeError(
                'could not connect to server: host "db.internal" user "app" password=hunter2'
            ))

        self.store.ping = failing_ping
        code, body = self.request("GET", "/readyz", token=None)
        self.assertEqual(code, 503)
        self.assertEqual(json.loads(body)["reasons"], ["database unreachable"])
        for leak in (b"db.internal", b"hunter2", b"app"):
            self.assertNotIn(leak, body)

    def test_ready_times_out_on_hanging_dependency(self):
        self.store.ping = lambda: defer.Deferred()
        d = self.http.get("http://svc/readyz")
        self.http.flush()
        self.assertNoResult(d)
        self.clock.advance(2.5)
        self.http.flush()
        self.assertEqual(self.successResultOf(d).code, 503)

    def test_metrics_without_token_has_no_tenant_labels(self):
        for token in (None, "wrong-" + TOKEN):
            code, body = self.request("GET", "/metrics", token=token)
            self.assertEqual(code, 200)
            text = body.decode()
            for leak in (T, P, "INBOX", "tenant=", "provider=", "folder="):
                self.assertNotIn(leak, text)
            self.assertIn("imapsvc_leases_held 1.0", text)
            self.assertIn("imapsvc_folder_syncs_total 3.0", text)
            self.assertIn('imapsvc_reconnects_total{reason="bye"} 1.0', text)
            self.assertIn('imapsvc_folder_state{state="Idling"} 1.0', text)

    def test_metrics(self):
        code, body = self.request("GET", "/metrics")
        self.assertEqual(code, 200)
        text = body.decode()
        self.assertIn(f'tenant="{T}"', text)
        self.assertIn("imapsvc_leases_held 1.0", text)
        self.assertIn("imapsvc_outbox_backlog 4.0", text)
        self.assertIn("imapsvc_events_deduplicated_total 3.0", text)
        self.assertIn('imapsvc_folder_cursor_lag{folder="INBOX"', text)
        self.assertIn('reason="bye"', text)
        self.assertIn('imapsvc_messages_total{outcome="duplicate"} 2.0', text)
        self.assertIn('imapsvc_messages_total{outcome="published"} 5.0', text)

    def test_admin_requires_token(self):
        body = {"tenant": T, "providerId": P}
        path = "/api/email/imap/reconnect"
        self.assertEqual(self.request("POST", path, body, token=None)[0], 401)
        self.assertEqual(self.request("POST", path, body, token="x")[0], 401)
        self.assertEqual(self.request("POST", path, body, token=TOKEN[:-1])[0], 401)
        self.assertEqual(self.request("GET", "/status", token="wrong")[0], 401)
        self.assertEqual(self.admin.calls, [])
        self.assertEqual(self.request("POST", "/api/email/imap/reconnect", body)[0], 200)
        self.assertEqual(self.admin.calls, [("reconnect", T, P)])

    def test_admin_disabled_without_token(self):
        self.web._token = b""
        code, _ = self.request("POST", "/api/email/imap/resync", {"tenant": T, "providerId": P})
        self.assertEqual(code, 403)
        self.assertEqual(self.admin.calls, [])

    def test_resync_with_folder(self):
        code, _ = self.request(
            "POST", "/api/email/imap/resync", {"tenant": T, "providerId": P, "folder": "INBOX"}
        )
        self.assertEqual(code, 200)
        self.assertEqual(self.admin.calls, [("resync", T, P, "INBOX")])

    def test_resync_since_stores_a_backfill_and_wakes(self):
        code, body = self.request(
            "POST", "/api/email/imap/resync",
            {"tenant": T, "providerId": P, "folder": "INBOX", "since": "1-Dec-2025"},
        )
        self.assertEqual(code, 200)
        doc = json.loads(body)
        self.assertEqual((doc["success"], doc["since"], doc["folders"], doc["running"]),
                         (True, "2025-12-01", ["INBOX"], True))
        # Not a cursor reset: a reconnect makes the folders read the request.
        self.assertEqual(self.admin.calls, [("reconnect", T, P)])
        state = self.successResultOf(self.store.read_backfill(T, P, ["INBOX"]))
        self.assertEqual(state.pending_since.isoformat(), "2025-12-01")

    def test_resync_since_refuses_bad_dates(self):
        for since in ("yesterday", 20251201, "2025-02-30"):
            code, _ = self.request("POST", "/api/email/imap/resync",
                                   {"tenant": T, "providerId": P, "since": since})
            self.assertEqual(code, 400)
        code, _ = self.request("POST", "/api/email/imap/reconnect",
                               {"tenant": T, "providerId": P, "since": "2025-12-01"})
        self.assertEqual(code, 400)
        self.assertEqual(self.admin.calls, [])
        code, _ = self.request("POST", "/api/email/imap/resync",
                               {"tenant": T, "providerId": T, "since": "2025-12-01"})
        self.assertEqual(code, 404)

    def test_bad_bodies(self):
        for body in [b"not json", b"[1]", {"tenant": T}, {"tenant": "../x", "providerId": P},
                     b"x" * 70000]:
            code, text = self.request("POST", "/api/email/imap/reconnect", body)
            self.assertEqual(code, 400, body)
            self.assertNotIn(b"Traceback", text)

    def test_internal_error_hides_details(self):
        code, body = self.request(
            "POST", "/api/email/imap/test-connection", {"tenant": T, "providerId": P}
        )
        self.assertEqual(code, 500)
        self.assertNotIn(b"hunter2", body)
        self.flushLoggedErrors()

    def test_status(self):
        code, body = self.request("GET", "/status")
        self.assertEqual(code, 200)
        self.assertEqual(json.loads(body)["providers"][0]["providerId"], P)

    def test_oauth_initiate_and_bad_callbacks(self):
        code, body = self.request(
            "POST", "/api/email/oauth/imap/initiate", {"tenant": T, "providerId": P}
        )
        self.assertEqual(code, 200, body)
        out = json.loads(body)
        self.assertTrue(out["authUrl"].startswith("https://svc.example.com/api/email/oauth/"))
        code, body = self.request(
            "GET", "/api/email/oauth/imap/callback?code=c&state=garbage", token=None
        )
        self.assertEqual(code, 400)
        self.assertEqual(json.loads(body)["code"], "invalid_state")
        code, _ = self.request(
            "POST", "/api/email/oauth/imap/initiate",
            {"tenant": T, "providerId": P, "redirectUri": "https://evil.net/"},
        )
        self.assertEqual(code, 400)

    def test_oauth_start_binds_the_browser(self):
        code, body = self.request(
            "POST", "/api/email/oauth/imap/initiate", {"tenant": T, "providerId": P}
        )
        auth_url = json.loads(body)["authUrl"]
        self.assertTrue(auth_url.startswith("https://svc.example.com/api/email/oauth/imap/start?"))
        path = auth_url[len("https://svc.example.com"):]
        d = self.http.get("http://svc" + path, allow_redirects=False)
        self.http.flush()
        response = self.successResultOf(d)
        self.assertEqual(response.code, 302, self.successResultOf(self.http.content(response)))
        location = response.headers.getRawHeaders(b"location")[0].decode()
        self.assertTrue(location.startswith("https://accounts.google.com/"), location)
        (cookie,) = response.headers.getRawHeaders(b"set-cookie")
        name, _, rest = cookie.partition(b"=")
        self.assertTrue(name.startswith(b"imapsvc_oauth_"))
        for attribute in (b"HttpOnly", b"Secure", b"SameSite=lax", b"Path=/api/email/oauth/imap/"):
            self.assertIn(attribute.lower(), rest.lower())
        # The provider sends the browser back; without the cookie: refused
        # with a page that says why (a browser asks for HTML).
        state = parse_qs(urlsplit(location).query)["state"][0]
        callback = "/api/email/oauth/imap/callback?" + urlencode({"code": "c", "state": state})
        code, page = self.request("GET", callback, token=None,
                                  headers={b"accept": [b"text/html"]})
        self.assertEqual(code, 400)
        self.assertIn(b"another browser", page)
        self.assertIn(b"<h1>", page)
        # The start route takes only an unbound, genuine state.
        for bad in (state, "garbage"):
            code, _ = self.request("GET", "/api/email/oauth/imap/start?state=" + bad, token=None)
            self.assertEqual(code, 400)

    def test_initiate_requires_token(self):
        code, _ = self.request(
            "POST", "/api/email/oauth/imap/initiate", {"tenant": T, "providerId": P}, token=None
        )
        self.assertEqual(code, 401)


class RoutedAdminTests(unittest.TestCase):
    """Admin actions as requests for the provider's owner: answered when
    applied, 202 with a pollable id when not applied in time."""

    def setUp(self):
        from imapsvc.admin_requests import AdminRequests
        from imapsvc.cluster_status import StatusReporter

        self.clock = Clock()
        self.clock.advance(1_800_000_000)
        self.store = MemoryStore(self.clock)
        self.store.add_provider(tenant=T, provider_id=P)
        self.owner_admin = FakeAdmin()
        self.owner_admin.providers = {(T, P): object()}
        self.here_admin = FakeAdmin()
        self.here_admin.providers = {}
        self.assertTrue(self.successResultOf(self.store.acquire_lease(T, P, "owner", 60000)))
        self.owner = AdminRequests(self.store, self.clock, "owner", self.owner_admin,
                                   wait_s=3)
        self.here = AdminRequests(self.store, self.clock, "here", self.here_admin, wait_s=3)
        reporter = StatusReporter(self.store, self.clock, "here", lease_ttl_s=60)
        self.web = WebApp(clock=self.clock, admin=self.here_admin, store=self.store,
                          sink=MemorySink(), registry=None, admin_token=TOKEN,
                          requests=self.here, deployment=reporter.deployment)
        self.http = StubTreq(self.web.resource())

    def start(self, method, path, body=None, token=TOKEN):
        headers = {b"authorization": [b"Bearer " + token.encode()]} if token else {}
        data = json.dumps(body).encode() if body is not None else None
        d = self.http.request(method, "http://svc" + path, data=data, headers=headers)
        self.http.flush()
        return d

    def finish(self, d):
        self.http.flush()
        response = self.successResultOf(d)
        return response.code, json.loads(self.successResultOf(self.http.content(response)))

    def test_reconnect_on_non_owner_is_applied_by_owner(self):
        d = self.start("POST", "/api/email/imap/reconnect", {"tenant": T, "providerId": P})
        self.assertNoResult(d)
        self.assertEqual(self.here_admin.calls, [])
        self.owner.wake()  # the owner's NOTIFY
        self.clock.advance(0.1)
        code, body = self.finish(d)
        self.assertEqual(code, 200)
        self.assertEqual(self.owner_admin.calls, [("reconnect", T, P)])
        self.assertEqual((body["success"], body["status"], body["appliedBy"],
                          body["requestedBy"]), (True, "applied", "owner", "here"))
        self.assertTrue(body["appliedAt"].endswith("Z"))

    def test_not_applied_in_time_is_202_then_pollable(self):
        d = self.start("POST", "/api/email/imap/resync",
                       {"tenant": T, "providerId": P, "folder": "INBOX"})
        for _ in range(31):
            self.clock.advance(0.1)
        code, body = self.finish(d)
        self.assertEqual((code, body["status"]), (202, "pending"))
        poll = body["poll"]
        self.assertEqual(poll, f"/api/email/imap/requests/{body['requestId']}?tenant={T}")
        self.assertEqual(self.finish(self.start("GET", poll, token="x"))[0], 401)
        self.assertEqual(self.finish(self.start("GET", poll))[0], 202)
        self.owner.wake()
        code, later = self.finish(self.start("GET", poll))
        self.assertEqual((code, later["status"], later["appliedBy"], later["folder"]),
                         (200, "applied", "owner", "INBOX"))
        self.assertEqual(self.owner_admin.calls, [("resync", T, P, "INBOX")])

    def test_resync_since_routed_to_the_owner(self):
        d = self.start("POST", "/api/email/imap/resync",
                       {"tenant": T, "providerId": P, "since": "2025-12-01"})
        self.owner.wake()
        self.clock.advance(0.1)
        code, body = self.finish(d)
        self.assertEqual((code, body["wake"], body["appliedBy"], body["running"]),
                         (200, "applied", "owner", True))
        self.assertEqual(body["folders"], ["INBOX"])
        self.assertEqual(self.owner_admin.calls, [("reconnect", T, P)])
        self.assertEqual(self.here_admin.calls, [])

    def test_unknown_provider_and_request(self):
        d = self.start("POST", "/api/email/imap/reconnect", {"tenant": T, "providerId": T})
        self.assertEqual(self.finish(d)[0], 404)
        d = self.start("GET", f"/api/email/imap/requests/{P}?tenant={T}")
        self.assertEqual(self.finish(d)[0], 404)
        d = self.start("GET", f"/api/email/imap/requests/{P}?tenant=../x")
        self.assertEqual(self.finish(d)[0], 400)

    def test_status_carries_the_deployment(self):
        code, body = self.finish(self.start("GET", "/status"))
        self.assertEqual(code, 200)
        (provider,) = body["deployment"]["providers"]
        self.assertEqual((provider["providerId"], provider["owner"]), (P, "owner"))
