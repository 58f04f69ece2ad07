"""Supervisor: discovery, leases across two replicas, auth-failure pause, admin actions.

Folders are fakes that record their lifecycle; time is a Clock shared with
the memory store, so lease expiry is driven, not waited for.
"""

import random

from twisted.application import service
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.logger import LogLevel, globalLogPublisher
from twisted.trial import unittest

from imapsvc.model import FolderCursor
from imapsvc.provider_service import STATUS_WRITE_INTERVAL_S
from imapsvc.store.memory import MemoryStore
from imapsvc.supervisor import Supervisor

T1 = "11111111-1111-1111-1111-111111111111"
T2 = "22222222-2222-2222-2222-222222222222"


class FakeFolder(service.Service):
    def __init__(self, log, provider, folder, hooks):
        self.log, self.provider, self.folder, self.hooks = log, provider, folder, hooks
        self.reconnects = 0

    def startService(self):
        super().startService()
        self.log.append(("start", self.provider.provider_id, self.folder))

    def stopService(self):
        super().stopService()
        self.log.append(("stop", self.provider.provider_id, self.folder))

    def reconnect(self):
        self.reconnects += 1

    def update_provider(self, provider):
        self.provider = provider


class SupervisorTests(unittest.TestCase):
    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1_000_000)
        self.store = MemoryStore(self.clock)
        self.events = []
        self.folders = {}
        self.paused = []

    def make_supervisor(self, owner="w1", fail_for=(), **kw):
        def make_folder(provider, folder, hooks):
            if provider.provider_id in fail_for:
                raise RuntimeError(f"cannot build folder {folder}")
            if provider.secure:
                # As the runtime's folders do: TLS options are built at once.
                from imapsvc.imap.tls import client_tls_options

                client_tls_options(provider.host)
            f = FakeFolder(self.events, provider, folder, hooks)
            self.folders[(owner, provider.provider_id, folder)] = f
            return f

        def on_auto_paused(provider, count, code):
            self.paused.append((provider.provider_id, count, code))
            return defer.succeed(None)

        kw.setdefault("refresh_s", 60)
        kw.setdefault("lease_ttl_s", 120)
        sup = Supervisor(
            self.store, self.clock, owner, make_folder, rng=random.Random(1),
            on_auto_paused=on_auto_paused, **kw,
        )
        sup.startService()
        self.addCleanup(lambda: sup.running and sup.stopService())
        return sup

    def add(self, pid, tenant=T1, **kw):
        return self.store.add_provider(tenant=tenant, provider_id=pid, **kw)

    def test_first_discovery_starts_active_providers(self):
        self.add("p1", folder_filters=("INBOX", "Support"))
        self.add("p2", is_active=False)
        sup = self.make_supervisor()
        self.assertFalse(sup.discovered_once)
        self.clock.advance(0)
        self.assertTrue(sup.discovered_once)
        self.assertEqual(sorted(k[1] for k in sup.providers), ["p1"])
        self.assertIn(("start", "p1", "Support"), self.events)
        self.assertEqual(self.store.provider_row(T1, "p1")["lease_owner"], "w1")

    def test_two_replicas_split_without_overlap_and_take_over_after_expiry(self):
        for i in range(6):
            self.add(f"p{i}")
        a = self.make_supervisor("a", max_connections_per_tenant=3)
        b = self.make_supervisor("b", max_connections_per_tenant=10)
        self.clock.advance(0)
        self.assertEqual(len(a.providers), 3)
        self.assertEqual(len(b.providers), 3)
        self.assertFalse(set(a.providers) & set(b.providers))
        # Replica a dies without releasing anything (SIGKILL).
        a_keys = set(a.providers)
        a._discovery_call.cancel()
        a._renew_call.cancel()
        a.running = False
        # Within TTL + one refresh, b owns everything; b renews meanwhile.
        for _ in range(10):
            self.clock.advance(20)
        self.assertEqual(set(b.providers), a_keys | set(b.providers))
        self.assertEqual(len(b.providers), 6)

    def test_deactivated_provider_stopped_on_notify_and_lease_released(self):
        self.add("p1")
        sup = self.make_supervisor()
        self.clock.advance(0)
        self.store.set_active(T1, "p1", False)
        sup.request_discovery()
        self.assertEqual(sup.providers, {})
        self.assertIn(("stop", "p1", "INBOX"), self.events)
        self.assertIsNone(self.store.provider_row(T1, "p1")["lease_owner"])
        self.store.set_active(T1, "p1", True)
        sup.request_discovery()
        self.assertEqual(list(sup.providers), [(T1, "p1")])

    def test_paused_and_deleted_stopped(self):
        self.add("p1")
        self.add("p2")
        sup = self.make_supervisor()
        self.clock.advance(0)
        self.store.set_paused(T1, "p1", "manual")
        self.store.remove_provider(T1, "p2")
        sup.request_discovery()
        self.assertEqual(sup.providers, {})

    def test_signature_change_restarts_credentials_do_not(self):
        self.add("p1")
        sup = self.make_supervisor()
        self.clock.advance(0)
        self.store.update_provider(T1, "p1", access_token="fresh")
        sup.request_discovery()
        self.assertEqual(self.events.count(("start", "p1", "INBOX")), 1)
        self.store.update_provider(T1, "p1", host="imap2.example.com")
        sup.request_discovery()
        self.assertEqual(self.events.count(("start", "p1", "INBOX")), 2)
        self.assertEqual(self.store.provider_row(T1, "p1")["lease_owner"], "w1")

    def test_lost_lease_stops_provider(self):
        self.add("p1")
        sup = self.make_supervisor()
        self.clock.advance(0)
        self.store.expire_lease(T1, "p1")
        self.successResultOf(self.store.acquire_lease(T1, "p1", "thief", 120000))
        self.successResultOf(sup.renew_leases())
        self.assertEqual(sup.providers, {})
        self.assertEqual(self.store.provider_row(T1, "p1")["lease_owner"], "thief")

    def test_unreachable_store_stops_before_ttl(self):
        self.add("p1")
        sup = self.make_supervisor()
        self.clock.advance(0)

        def broken(*a, **k):
            return defer.fail(ConnectionError("db away"))

        self.store.renew_lease = broken
        self.clock.advance(60)
        self.assertEqual(len(sup.providers), 1)  # still inside the safe margin
        self.clock.advance(40)
        self.assertEqual(sup.providers, {})

    def test_three_auth_failures_pause_once(self):
        self.add("p1", folder_filters=("INBOX", "Other"))
        sup = self.make_supervisor()
        self.clock.advance(0)
        for attempt in range(3):
            svc = sup.providers[(T1, "p1")]
            for folder in ("INBOX", "Other"):  # both folders fail: one failure
                svc.folder_state_changed(folder, "NeedsReauth", "AUTHENTICATIONFAILED")
                svc.auth_failed(folder, "AUTHENTICATIONFAILED")
            if attempt < 2:
                self.assertEqual(self.paused, [])
                self.clock.advance(66)  # next pass (60 s +/- 10 %) retries the login
        self.assertEqual(self.paused, [("p1", 3, "AUTHENTICATIONFAILED")])
        # Counted once per failed attempt (not per folder), for /metrics.
        self.assertEqual(sup.status()["authFailures"], 3)
        row = self.store.provider_row(T1, "p1")
        self.assertEqual(row["inbound_pause_reason"], "auth_failure")
        self.assertEqual(sup.providers, {})
        self.clock.advance(60)
        self.assertEqual(len(self.paused), 1)

    def test_pause_says_so_in_status_and_last_error(self):
        self.add("p1")
        sup = self.make_supervisor(auth_pause_after=1)
        self.clock.advance(0)
        svc = sup.providers[(T1, "p1")]
        svc.folder_state_changed("INBOX", "NeedsReauth", "AuthenticationFailed: refused")
        svc.auth_failed("INBOX", "AUTHENTICATIONFAILED")
        row = self.store.provider_row(T1, "p1")
        self.assertEqual(row["status"], "error")
        self.assertIn("paused after 1 consecutive authentication failures", row["error_message"])
        self.assertIn("AUTHENTICATIONFAILED", row["error_message"])
        self.assertEqual(row["last_error"], row["error_message"])

    def test_last_error_follows_folder_errors_and_clears_when_connected(self):
        self.add("p1", folder_filters=("INBOX", "B"))
        sup = self.make_supervisor()
        self.clock.advance(0)
        svc = sup.providers[(T1, "p1")]
        row = lambda: self.store.provider_row(T1, "p1")  # noqa: E731
        self.assertIsNone(row()["last_error"])
        svc.folder_state_changed("B", "Backoff", "FolderNotFound: no folder 'B'")
        self.clock.advance(0)  # written once per reactor turn
        self.assertEqual(row()["last_error"], "B: FolderNotFound: no folder 'B'")
        self.assertEqual((row()["status"], row()["error_message"]),
                         ("error", "B: FolderNotFound: no folder 'B'"))
        # Reconnecting: the last cause stays visible.
        svc.folder_state_changed("B", "Connecting", None)
        self.clock.advance(STATUS_WRITE_INTERVAL_S)  # writes are throttled
        self.assertEqual(row()["status"], "disconnected")
        self.assertEqual(row()["last_error"], "B: FolderNotFound: no folder 'B'")
        # Every folder connected: cleared.
        svc.folder_state_changed("INBOX", "Idling", None)
        svc.folder_state_changed("B", "Idling", None)
        self.clock.advance(STATUS_WRITE_INTERVAL_S)
        self.assertEqual((row()["status"], row()["error_message"], row()["last_error"]),
                         ("connected", None, None))

    def test_awaiting_consent_is_not_counted(self):
        self.add("p1", auth_type="oauth2")
        sup = self.make_supervisor()
        self.clock.advance(0)
        for _ in range(4):
            svc = sup.providers[(T1, "p1")]
            svc.folder_state_changed("INBOX", "NeedsReauth", "waiting for consent")
            svc.auth_failed("INBOX", "awaiting_consent")
            self.clock.advance(60)
        self.assertEqual(self.paused, [])
        row = self.store.provider_row(T1, "p1")
        self.assertEqual(row["inbound_auth_failure_count"], 0)
        self.assertIsNone(row["inbound_paused_at"])

    def test_login_resets_failure_count(self):
        self.add("p1")
        sup = self.make_supervisor()
        self.clock.advance(0)
        sup.providers[(T1, "p1")].auth_failed("INBOX", "AUTHENTICATIONFAILED")
        self.assertEqual(self.store.provider_row(T1, "p1")["inbound_auth_failure_count"], 1)
        self.store.update_provider(T1, "p1", host="h2")  # restart with the new row
        sup.request_discovery()
        sup.providers[(T1, "p1")].logged_in("INBOX")
        self.assertEqual(self.store.provider_row(T1, "p1")["inbound_auth_failure_count"], 0)

    def test_status_written_only_on_change(self):
        self.add("p1", folder_filters=("INBOX", "B"))
        sup = self.make_supervisor()
        self.clock.advance(0)
        writes = []
        real = self.store.set_provider_status

        def spy(*a, **k):
            writes.append(a[2:])
            return real(*a, **k)

        self.store.set_provider_status = spy
        svc = sup.providers[(T1, "p1")]
        svc.folder_state_changed("INBOX", "Idling", None)
        self.clock.advance(0)  # the first change: in the next reactor turn
        self.assertEqual(writes, [("disconnected", None)])
        svc.folder_state_changed("B", "Syncing", None)
        self.clock.advance(1)
        self.assertEqual(len(writes), 1)  # at most one write per interval
        svc.folder_state_changed("B", "Idling", None)
        svc.folder_state_changed("INBOX", "Syncing", None)
        self.clock.advance(STATUS_WRITE_INTERVAL_S - 1)
        self.assertEqual(writes, [("disconnected", None), ("connected", None)])
        self.assertEqual(self.store.provider_row(T1, "p1")["status"], "connected")
        # A server restart ends every session, the folders come back one by
        # one: aggregated and written with what holds when the write is due.
        self.clock.advance(60)
        svc.folder_state_changed("INBOX", "Backoff", "ConnectionDone: bye")
        svc.folder_state_changed("B", "Backoff", "ConnectionDone: bye")
        svc.folder_state_changed("INBOX", "Connecting", None)
        self.assertEqual(len(writes), 2)
        self.clock.advance(0)
        self.assertEqual(writes[2:], [("error", "B: ConnectionDone: bye")])
        svc.folder_state_changed("INBOX", "Idling", None)
        svc.folder_state_changed("B", "Connecting", None)
        svc.folder_state_changed("B", "Idling", None)
        self.clock.advance(60)
        self.assertEqual(writes[3:], [("connected", None)])

    def test_pending_status_is_written_when_the_provider_stops(self):
        # A provider restarted before its throttled write is due (credentials
        # missing: every discovery pass restarts it) must still show why.
        self.add("p1")
        sup = self.make_supervisor()
        self.clock.advance(0)
        svc = sup.providers[(T1, "p1")]
        svc.folder_state_changed("INBOX", "Idling", None)
        self.clock.advance(0)
        svc.folder_state_changed("INBOX", "NeedsReauth", "credentials missing: password")
        self.assertEqual(self.store.provider_row(T1, "p1")["status"], "connected")
        svc.stopService()
        row = self.store.provider_row(T1, "p1")
        self.assertEqual(row["status"], "error")
        self.assertIn("credentials missing", row["error_message"])

    def test_status_errors_are_redacted(self):
        self.add("p1")
        sup = self.make_supervisor()
        self.clock.advance(0)
        svc = sup.providers[(T1, "p1")]
        leak = "server said: Authorization: Bearer ya29.SECRET"
        svc.folder_state_changed("INBOX", "Backoff", leak)
        text = repr(sup.status())
        self.assertNotIn("ya29.SECRET", text)
        self.assertIn("INBOX", text)

    def test_tenant_limit_gives_first_folders_and_names_the_cap(self):
        self.add("a", folder_filters=("1", "2", "3"))
        self.add("b", folder_filters=("1", "INBOX", "3"))
        self.add("c", tenant=T2)
        sup = self.make_supervisor(max_connections_per_tenant=5)
        self.clock.advance(0)
        self.assertEqual(len(sup.providers), 3)
        b = sup.providers[(T1, "b")]
        # INBOX first, then the configured order; the rest waits, loudly.
        self.assertEqual(sorted(b.folders), ["1", "INBOX"])
        self.assertEqual(list(b.waiting), ["3"])
        row = self.store.provider_row(T1, "b")
        self.assertEqual(row["status"], "error")
        self.assertIn("IMAP_MAX_CONNECTIONS_PER_TENANT=5", row["error_message"])
        # The folders that run do not overwrite the cap error with "connected".
        for folder in ("1", "INBOX"):
            b.folder_state_changed(folder, "Idling", None)
        row = self.store.provider_row(T1, "b")
        self.assertEqual(row["status"], "error")
        self.assertIn("IMAP_MAX_CONNECTIONS_PER_TENANT=5", row["error_message"])
        snap = [p for p in sup.status()["providers"] if p["providerId"] == "b"][0]
        self.assertEqual(snap["folders"]["3"]["state"], "Waiting")

    def test_tenant_limit_holds_across_replicas(self):
        """Two supervisors on one store: the cap counts both (the store
        counts it), and the provider left out says so instead of waiting
        silently."""
        self.add("a", folder_filters=("INBOX", "X"))
        self.add("b", folder_filters=("INBOX", "Y"))
        s1 = self.make_supervisor("w1", max_connections_per_tenant=2)
        self.clock.advance(0)
        s2 = self.make_supervisor("w2", max_connections_per_tenant=2)
        self.clock.advance(0)
        running = {k[1]: len(s.folders) for sup in (s1, s2) for k, s in sup.providers.items()}
        self.assertEqual(sum(running.values()), 2)
        self.assertEqual(len(running), 1)
        (left_out,) = {"a", "b"} - set(running)
        row = self.store.provider_row(T1, left_out)
        self.assertEqual(row["status"], "error")
        self.assertIn("IMAP_MAX_CONNECTIONS_PER_TENANT=2", row["error_message"])
        self.assertIsNone(row["lease_owner"])
        # When the runner goes away, the other gets the connections.
        (owner,) = [sup for sup in (s1, s2) if sup.providers]
        self.successResultOf(owner.stopService())
        other = s2 if owner is s1 else s1
        other.request_discovery()
        self.clock.advance(0)
        self.assertEqual([len(s.folders) for s in other.providers.values()], [2])

    def test_pause_stops_and_resume_restarts(self):
        self.add("p1")
        sup = self.make_supervisor()
        self.clock.advance(0)
        result = self.successResultOf(sup.pause(T1, "p1"))
        self.assertEqual(result, {"success": True, "paused": True, "stopped": True})
        self.assertNotIn((T1, "p1"), sup.providers)
        self.assertEqual(self.store.provider_row(T1, "p1")["inbound_pause_reason"], "manual")
        self.clock.advance(61)  # a discovery pass leaves it paused
        self.assertNotIn((T1, "p1"), sup.providers)
        self.assertTrue(self.successResultOf(sup.resume(T1, "p1"))["success"])
        self.clock.advance(0)
        self.assertIn((T1, "p1"), sup.providers)
        self.assertFalse(self.successResultOf(sup.pause(T1, "nope"))["success"])

    def test_resync_resets_cursor_and_restarts(self):
        self.add("p1", folder_state={"INBOX": FolderCursor("7", "4242", None)})
        sup = self.make_supervisor()
        self.clock.advance(0)
        result = self.successResultOf(sup.resync(T1, "p1"))
        self.assertTrue(result["success"])
        self.assertIsNone(self.successResultOf(self.store.read_cursor(T1, "p1", "INBOX")))
        self.assertEqual(self.events.count(("start", "p1", "INBOX")), 2)
        self.assertEqual(self.events.count(("stop", "p1", "INBOX")), 1)

    def test_reconnect_and_unknown(self):
        self.add("p1")
        sup = self.make_supervisor()
        self.clock.advance(0)
        self.assertTrue(self.successResultOf(sup.reconnect(T1, "p1"))["success"])
        self.assertEqual(self.folders[("w1", "p1", "INBOX")].reconnects, 1)
        self.assertFalse(self.successResultOf(sup.reconnect(T1, "nope"))["success"])

    def test_shutdown_releases_leases(self):
        self.add("p1")
        self.add("p2")
        sup = self.make_supervisor()
        self.clock.advance(0)
        self.successResultOf(defer.maybeDeferred(sup.stopService))
        for pid in ("p1", "p2"):
            self.assertIsNone(self.store.provider_row(T1, pid)["lease_owner"])
        self.assertEqual(sum(1 for e in self.events if e[0] == "stop"), 2)

    def test_discovery_failure_is_retried(self):
        self.add("p1")
        real = self.store.list_active_providers
        self.store.list_active_providers = lambda *a: defer.fail(ConnectionError("db down"))
        sup = self.make_supervisor()
        self.clock.advance(0)
        self.assertEqual(sup.last_discovery_error, "db down")
        self.assertFalse(sup.discovered_once)
        self.store.list_active_providers = real
        self.clock.advance(66)  # 60 s +/- 10 %
        self.assertTrue(sup.discovered_once)
        self.assertEqual(len(sup.providers), 1)


class TimerJitterTests(unittest.TestCase):
    """IMAP_TIMER_JITTER_PCT spreads refresh and heartbeat both ways."""

    def delays(self, jitter_pct, n=400):
        clock = Clock()
        sup = Supervisor(MemoryStore(clock), clock, "w1", lambda *a: None, refresh_s=60,
                         lease_ttl_s=120, jitter_pct=jitter_pct, rng=random.Random(7))
        sup.running = True
        refresh, heartbeat = [], []
        for _ in range(n):
            sup._discovery_done(None)
            refresh.append(sup._discovery_call.getTime() - clock.seconds())
            sup._discovery_call.cancel()
            sup._schedule_renew()
            heartbeat.append(sup._renew_call.getTime() - clock.seconds())
            sup._renew_call.cancel()
        return refresh, heartbeat

    def test_refresh_both_ways_within_bounds(self):
        refresh, _ = self.delays(0.1)
        self.assertTrue(all(54.0 <= d <= 66.0 for d in refresh))
        self.assertGreater(sum(1 for d in refresh if d < 60), 150)
        self.assertGreater(sum(1 for d in refresh if d > 60), 150)

    def test_heartbeat_both_ways_never_beyond_a_third_of_the_ttl(self):
        for pct in (0.1, 0.5, 1.0):
            _, heartbeat = self.delays(pct)
            nominal = 40.0 / (1 + pct)
            self.assertTrue(all(d <= 40.0 + 1e-9 for d in heartbeat), pct)
            self.assertTrue(all(d >= nominal * (1 - pct) - 1e-9 for d in heartbeat), pct)
            self.assertGreater(sum(1 for d in heartbeat if d < nominal), 100)
            self.assertGreater(sum(1 for d in heartbeat if d > nominal), 100)

    def test_no_jitter_is_exact(self):
        refresh, heartbeat = self.delays(0.0, n=5)
        self.assertEqual(set(refresh), {60.0})
        self.assertEqual(set(heartbeat), {40.0})


class BadRowTests(unittest.TestCase):
    """One provider row that cannot run never stops discovery of the others."""

    make_supervisor = SupervisorTests.make_supervisor
    add = SupervisorTests.add

    def setUp(self):
        SupervisorTests.setUp(self)
        self.warnings = []

        def observe(event):
            if event.get("log_level") == LogLevel.warn:
                self.warnings.append(event)

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        self.status_writes = []
        real = self.store.set_provider_status

        def spy(tenant, pid, status, error=None, **fence):
            self.status_writes.append((pid, status, error))
            return real(tenant, pid, status, error, **fence)

        self.store.set_provider_status = spy

    def not_started_warnings(self, pid):
        return [e for e in self.warnings
                if e.get("provider") == pid and "not started" in e["log_format"]]

    def test_bad_rows_in_the_middle(self):
        self.add("p1")
        self.add("p2", folder_filters=("INBOX", "inbox", "Support", "SUPPORT", " INBOX"))
        self.add("p3", host="a" * 64 + ".example.com")
        self.add("p4")
        sup = self.make_supervisor()
        self.clock.advance(0)
        self.assertTrue(sup.discovered_once)
        self.assertEqual(sorted(k[1] for k in sup.providers), ["p1", "p2", "p4"])
        # Repeated filters: one connection per folder, the first spelling.
        self.assertEqual(
            sorted(e[2] for e in self.events if e[:2] == ("start", "p2")), ["INBOX", "Support"]
        )
        row = self.store.provider_row(T1, "p3")
        self.assertEqual(row["status"], "error")
        self.assertIn("not a valid host name for TLS", row["error_message"])
        self.assertIn("Label too long", row["error_message"])
        self.assertIsNone(row["lease_owner"])
        [invalid] = sup.status()["invalid"]
        self.assertEqual(invalid["providerId"], "p3")
        self.assertIn("Label too long", invalid["reason"])
        # Pass after pass: written and logged once, not every time.
        for _ in range(5):
            self.clock.advance(70)
        self.assertEqual([w for w in self.status_writes if w[0] == "p3"],
                         [("p3", "error", row["error_message"])])
        self.assertEqual(len(self.not_started_warnings("p3")), 1)

        # Fixed by the app: started at the next pass, the reason forgotten.
        self.store.update_provider(T1, "p3", host="imap.example.com")
        sup.request_discovery()
        self.assertIn((T1, "p3"), sup.providers)
        self.assertEqual(sup.status()["invalid"], [])
        sup.providers[(T1, "p3")].folder_state_changed("INBOX", "Connecting", None)
        self.clock.advance(0)  # written once per reactor turn
        self.assertEqual(self.store.provider_row(T1, "p3")["error_message"], None)
        # Broken again: reported again.
        self.store.update_provider(T1, "p3", port=0)
        sup.request_discovery()
        self.assertNotIn((T1, "p3"), sup.providers)
        self.assertIn(("stop", "p3", "INBOX"), self.events)
        self.assertEqual(self.store.provider_row(T1, "p3")["status"], "error")
        self.assertIn("port 0", self.store.provider_row(T1, "p3")["error_message"])
        self.assertEqual(len(self.not_started_warnings("p3")), 2)

    def test_unreadable_row_is_an_error_not_a_stop(self):
        self.add("p1")
        self.add("p2")
        self.add("p3")
        # What jsonb allows and the app might write: a string, not an array.
        self.store.update_provider(T1, "p2", folder_filters="INBOX")
        sup = self.make_supervisor()
        self.clock.advance(0)
        self.assertTrue(sup.discovered_once)
        self.assertEqual(sorted(k[1] for k in sup.providers), ["p1", "p3"])
        self.assertIn("folder_filters must be a JSON array",
                      self.store.provider_row(T1, "p2")["error_message"])

    def test_provider_that_fails_to_start_is_isolated(self):
        self.add("p1")
        self.add("p2")
        self.add("p3")
        sup = self.make_supervisor(fail_for={"p2"})
        self.clock.advance(0)
        self.assertTrue(sup.discovered_once)
        self.assertEqual(sorted(k[1] for k in sup.providers), ["p1", "p3"])
        row = self.store.provider_row(T1, "p2")
        self.assertEqual(row["status"], "error")
        self.assertEqual(row["error_message"], "cannot start: cannot build folder INBOX")
        self.assertIsNone(row["lease_owner"])
        for _ in range(3):
            self.clock.advance(70)
        self.assertEqual(len([w for w in self.status_writes if w[0] == "p2"]), 1)
        self.assertEqual(len(self.not_started_warnings("p2")), 1)

    def test_an_unexpected_error_in_a_pass_is_logged(self):
        self.add("p1")
        self.store.list_active_providers = lambda *a: defer.succeed([None])
        sup = self.make_supervisor()
        self.clock.advance(0)
        self.assertFalse(sup.discovered_once)
        self.assertIsNotNone(sup.last_discovery_error)
        self.assertEqual(len(self.flushLoggedErrors(AttributeError)), 1)
        # And the timer keeps going.
        self.assertTrue(sup._discovery_call.active())


class FolderCapacityTests(unittest.TestCase):
    """The replica's descriptor budget (core.capacity), apart from the
    per-tenant cap: providers beyond it are refused with the limit named."""

    setUp = SupervisorTests.setUp
    make_supervisor = SupervisorTests.make_supervisor
    add = SupervisorTests.add

    def test_providers_beyond_capacity_get_an_error_naming_the_limit(self):
        self.add("p1", folder_filters=("A", "B", "C"))
        self.add("p2", tenant=T2, folder_filters=("A", "B", "C"))
        self.add("p3", folder_filters=("A",))
        sup = self.make_supervisor(
            max_connections_per_tenant=100, folder_capacity=4, open_files_limit=156
        )
        self.clock.advance(0)
        self.assertEqual(sorted(k[1] for k in sup.providers), ["p1", "p3"])
        row = self.store.provider_row(T2, "p2")
        self.assertEqual(row["status"], "error")
        self.assertIn("folder capacity", row["error_message"])
        self.assertIn("open-file limit 156", row["error_message"])
        self.assertIsNone(row["lease_owner"])
        status = sup.status()
        self.assertEqual(
            status["capacity"],
            {"openFilesLimit": 156, "folderCapacity": 4, "foldersOpen": 4},
        )
        self.assertEqual([i["providerId"] for i in status["invalid"]], ["p2"])
        # Room again (p1 paused): p2 starts on the next pass, its error goes.
        self.store.update_provider(T1, "p1", is_active=False)
        sup.request_discovery()
        self.clock.advance(0)
        self.assertEqual(sorted(k[1] for k in sup.providers), ["p2", "p3"])
        self.assertEqual(sup.status()["invalid"], [])

    def test_unlimited_by_default(self):
        for i in range(3):
            self.add(f"p{i}", folder_filters=("A", "B"))
        sup = self.make_supervisor(max_connections_per_tenant=100)
        self.clock.advance(0)
        self.assertEqual(len(sup.providers), 3)

    def test_provider_running_on_another_replica_is_no_error(self):
        self.add("p1", folder_filters=("A", "B"))
        self.add("p2", folder_filters=("A", "B"))
        other = self.make_supervisor("other", max_connections_per_tenant=100, folder_capacity=2)
        self.clock.advance(0)
        self.assertEqual([k[1] for k in other.providers], ["p1"])
        # p2 got an error from "other" (nobody held it); "mine" starts it
        mine = self.make_supervisor("mine", max_connections_per_tenant=100, folder_capacity=2)
        self.clock.advance(0)
        self.assertEqual([k[1] for k in mine.providers], ["p2"])
        other.request_discovery()
        mine.request_discovery()
        self.clock.advance(0)
        # both full, but each other's providers are held: no errors
        self.assertEqual(other.status()["invalid"], [])
        self.assertEqual(mine.status()["invalid"], [])

    def test_lease_lost_to_another_replica_frees_the_room_in_the_same_pass(self):
        import attr

        self.add("p0", folder_filters=("A",))
        self.add("p1", folder_filters=("A",))
        # Another replica won p0 after this replica's listing was read.
        self.store.acquire_lease(T1, "p0", "other", 60_000)
        listing = self.store.list_active_providers

        def stale(*a, **kw):
            d = defer.maybeDeferred(listing, *a, **kw)
            return d.addCallback(lambda rows: [
                attr.evolve(p, lease_owner=None, lease_expires_at=None) for p in rows])

        self.store.list_active_providers = stale
        sup = self.make_supervisor(max_connections_per_tenant=100, folder_capacity=1)
        self.clock.advance(0)
        self.assertEqual([k[1] for k in sup.providers], ["p1"])
        self.assertEqual(sup.status()["invalid"], [])
