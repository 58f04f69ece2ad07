"""Providers, leases and replicas at cluster level: real ``twistd imapsvc``
processes against the rig's Postgres, Redis and Dovecot.

Every service here is started with ``IMAPSVC_TENANTS`` set to the test's own
tenant: the run's database is shared by all integration tests, and without
the filter a replica would also lease the providers other tests left behind.
"""

from __future__ import annotations

import json
import uuid

from twisted.internet import defer, reactor
from twisted.trial import unittest

from tests.contract_validator import validate_stream_entry
from tests.rig import mail
from tests.rig import postgres as pg
from tests.rig.dovecot import DEFAULT_PASSWORD, unique_user
from tests.rig.service import (
    ServiceProcess,
    ServiceRigMixin,
    add_provider,
    admin_status,
    http_get,
    http_post,
    lease_owners,
    status_provider,
    wait_for,
)

REFRESH_MS = 1000
# Config rule: IMAP_LEASE_TTL_MS > IMAP_PROVIDER_REFRESH_MS * (1 + jitter)
# (1100 ms here). 4 s keeps fail-over quick and still survives a missed renewal
# (leases are renewed every TTL/3).
LEASE_TTL_MS = 4000

AUTO_PAUSED = "INBOUND_EMAIL_PROVIDER_AUTO_PAUSED"
RECEIVED = "INBOUND_EMAIL_RECEIVED"


class ReplicaTests(ServiceRigMixin, unittest.TestCase):
    timeout = 90

    def setUp(self):
        self.set_up_service_rig("replicas")
        self.tenant = str(uuid.uuid4())

    # -- helpers --------------------------------------------------------------

    def service(self, worker, **env):
        settings = self.service_env(
            IMAP_PROVIDER_REFRESH_MS=str(REFRESH_MS),
            IMAP_LEASE_TTL_MS=str(LEASE_TTL_MS),
            IMAPSVC_TENANTS=self.tenant,
        )
        settings.update(env)
        proc = ServiceProcess(settings, worker)
        self.addCleanup(proc.cleanup)
        proc.start()
        return proc

    def provider(self, password=DEFAULT_PASSWORD, **kw):
        user = self.dovecot.add_user(unique_user("rep"))
        _tenant, pid = add_provider(
            self.dsn, user, password, self.dovecot.ports.imaps, tenant=self.tenant, **kw
        )
        return user, pid

    def entries(self, event_type=None):
        found = [f for _, f in self.redis.xrange(self.stream)]
        if event_type is not None:
            found = [f for f in found if f["event_type"] == event_type]
        return found

    def provider_row(self, pid, *columns):
        return pg.execute(
            self.dsn,
            "SELECT {} FROM email_providers WHERE id = %s".format(", ".join(columns)),
            (pid,),
        )[0]

    def cursor(self, pid):
        state = pg.execute(
            self.dsn,
            "SELECT folder_state FROM imap_email_provider_config WHERE email_provider_id = %s",
            (pid,),
        )[0][0]
        return (state or {}).get("INBOX")

    def outbox_count(self, pid, event_type=RECEIVED):
        return pg.execute(
            self.dsn,
            # Rows since schema 0006 carry the fields in ``entry`` (text).
            "SELECT count(*) FROM imap_event_outbox WHERE provider_id = %s"
            " AND COALESCE(fields, entry::jsonb) ->> 'event_type' = %s",
            (pid, event_type),
        )[0][0]

    def published(self, pid):
        return pg.execute(
            self.dsn,
            "SELECT count(*) FROM imap_event_outbox WHERE provider_id = %s"
            " AND published_at IS NOT NULL",
            (pid,),
        )[0][0]

    def connected(self, proc, pids):
        """Every provider runs on ``proc`` and all its folders are logged in."""

        def check():
            for pid in pids:
                entry = status_provider(proc, pid)
                if entry is None or entry["status"] != "connected":
                    return False
            return True

        return check

    def ready(self, proc):
        return wait_for(lambda: http_get(proc.url("/readyz"))[0] == 200, 30, "readiness")

    # -- 1. two replicas ------------------------------------------------------

    @defer.inlineCallbacks
    def test_two_replicas_split_and_fail_over(self):
        """Six providers split between two replicas without overlap; when one
        is SIGKILLed the other takes its providers within lease TTL + one
        refresh, and every message (before and after the kill) arrives once.

        The split is forced by capacity: replica ``a`` may hold 3 connections
        for the tenant, so it leases 3 providers and leaves 3 waiting; ``b``
        (started once ``a`` holds its 3, limit 6) leases the other 3. ``a`` is
        the one killed, because ``b`` has room for all six.
        """
        providers = [self.provider() for _ in range(6)]
        pids = [pid for _, pid in providers]
        a = self.service("a", IMAP_MAX_CONNECTIONS_PER_TENANT="3")
        yield wait_for(
            lambda: list(lease_owners(self.dsn, pids).values()).count("a") == 3,
            30,
            "replica a leasing 3 providers",
        )
        b = self.service("b", IMAP_MAX_CONNECTIONS_PER_TENANT="6")
        yield wait_for(
            lambda: None not in lease_owners(self.dsn, pids).values(), 30, "every provider leased"
        )
        owners = lease_owners(self.dsn, pids)
        self.assertEqual(sorted(owners.values()), ["a"] * 3 + ["b"] * 3)
        mine = {w: {p for p in pids if owners[p] == w} for w in "ab"}
        yield wait_for(self.connected(a, mine["a"]), 20, "a's providers connected")
        yield wait_for(self.connected(b, mine["b"]), 20, "b's providers connected")
        # No overlap in what the processes actually run, not just in the column.
        running = {
            w: {e["providerId"] for e in admin_status(p)["providers"]}
            for w, p in (("a", a), ("b", b))
        }
        self.assertEqual(running, mine)
        # The tenant cap is counted across replicas: what a may list as
        # waiting for the cap is only what b now runs (refreshed every pass).
        self.assertLessEqual(
            {e["providerId"] for e in admin_status(a)["waiting"]}, mine["b"]
        )

        expected = set()
        for i, (user, _pid) in enumerate(providers):
            msgid = f"<before-{i}-{uuid.uuid4().hex[:8]}@example.org>"
            expected.add(msgid)
            mail.append(user, DEFAULT_PASSWORD, "INBOX", mail.make_message(message_id=msgid))
        yield wait_for(lambda: len(self.entries()) >= 6, 20, "six events before the kill")

        a.kill()
        killed_at = reactor.seconds()
        # Appended while a's mailboxes are watched by nobody.
        for i, (user, _pid) in enumerate(providers):
            msgid = f"<after-{i}-{uuid.uuid4().hex[:8]}@example.org>"
            expected.add(msgid)
            mail.append(user, DEFAULT_PASSWORD, "INBOX", mail.make_message(message_id=msgid))
        bound = (LEASE_TTL_MS + REFRESH_MS) / 1000.0 + 2.0
        yield wait_for(
            lambda: set(lease_owners(self.dsn, pids).values()) == {"b"},
            bound,
            "b taking over a's providers",
        )
        took = reactor.seconds() - killed_at
        self.assertLess(took, bound)
        yield wait_for(self.connected(b, pids), 20, "all six running on b")
        yield wait_for(lambda: len(self.entries()) >= 12, 20, "twelve events")

        yield wait_for(
            lambda: all(self.published(pid) == 2 for pid in pids), 10, "the outbox drained"
        )
        fields = self.entries()
        for f in fields:
            self.assertEqual(validate_stream_entry(f), [])
        # One event (one event_id) per message, all of them from the outbox:
        # the take-over neither lost a message nor recorded one twice.
        by_id = {}
        for f in fields:
            by_id.setdefault(f["event_id"], []).append(f)
        got = sorted(json.loads(v[0]["payload_json"])["emailData"]["id"] for v in by_id.values())
        self.assertEqual(got, sorted(expected))
        for pid in pids:
            self.assertEqual(self.outbox_count(pid), 2)
        outbox_ids = {
            r[0]
            for r in pg.execute(
                self.dsn,
                "SELECT event_id FROM imap_event_outbox WHERE provider_id::text = ANY(%s)",
                (pids,),
            )
        }
        self.assertEqual(set(by_id), outbox_ids)
        # Each relay publishes only rows of providers it leases (or that
        # nobody leases), and a row that a XADDed but did not mark before the kill
        # (published again by b) is taken once by the stream's dedupe
        # window: no event_id reaches the stream twice.
        self.assertEqual(len(fields), 12, [f["event_id"] for f in fields])

    # -- 2. deactivate / reactivate ------------------------------------------

    @defer.inlineCallbacks
    def test_deactivation_stops_connections_and_reactivation_restarts(self):
        """``is_active=false`` stops the provider within 2 s (NOTIFY, not the
        refresh timer: the refresh is raised to 60 s here); ``true`` again
        starts it and it catches up."""
        user, pid = self.provider()
        proc = self.service("solo", IMAP_PROVIDER_REFRESH_MS="60000", IMAP_LEASE_TTL_MS="120000")
        yield self.ready(proc)
        yield wait_for(self.connected(proc, [pid]), 20, "provider connected")
        self.assertEqual(lease_owners(self.dsn, [pid]), {pid: "solo"})
        yield wait_for(lambda: self.who(user) > 0, 5, "Dovecot listing the connection")

        pg.execute(self.dsn, "UPDATE email_providers SET is_active = false WHERE id = %s", (pid,))
        yield wait_for(
            lambda: status_provider(proc, pid) is None
            and lease_owners(self.dsn, [pid]) == {pid: None}
            and self.who(user) == 0,
            2,
            "provider stopped, lease released, IMAP connection closed",
        )
        raw = mail.make_message(message_id="<while-inactive@example.org>")
        mail.append(user, DEFAULT_PASSWORD, "INBOX", raw)

        pg.execute(self.dsn, "UPDATE email_providers SET is_active = true WHERE id = %s", (pid,))
        yield wait_for(self.connected(proc, [pid]), 5, "provider running again")
        raw = mail.make_message(message_id="<after-reactivation@example.org>")
        mail.append(user, DEFAULT_PASSWORD, "INBOX", raw)
        yield wait_for(lambda: len(self.entries()) >= 2, 10, "both messages")
        ids = sorted(json.loads(f["payload_json"])["emailData"]["id"] for f in self.entries())
        self.assertEqual(ids, ["<after-reactivation@example.org>", "<while-inactive@example.org>"])

    def who(self, user):
        """How many IMAP connections Dovecot's anvil counts for ``user``."""
        result = self.dovecot.doveadm("who", "-1", user)
        if result.returncode != 0:
            return 0
        return sum(
            1 for line in result.stdout.decode().splitlines()[1:] if line.split()[:1] == [user]
        )

    # -- 3. resync ------------------------------------------------------------

    @defer.inlineCallbacks
    def test_resync_restarts_from_recent_window_without_duplicates(self):
        """Resync drops the cursor and restarts at the recent window
        (``UIDNEXT - IMAP_MAX_EMAILS_PER_SYNC``): UIDs 4 and 5 are fetched
        again. The ledger already holds them, so they are recorded as
        duplicates: no new outbox row and no stream entry (CONTRACT 1: "last_uid
        advances past skipped and duplicate messages"; a re-publish would be a
        duplicate ticket for any consumer that does not dedupe). The cursor
        ends at UID 5 again, and a new message after the resync still arrives.
        """
        # last_uid '0' (scan from UID 1): with no cursor at all, an empty
        # folder's first sync stores nothing and the burst below would be cut
        # to the window (see test_burst_into_new_empty_mailbox_is_not_lost).
        user, pid = self.provider(cursor={"INBOX": {"last_uid": "0"}})
        proc = self.service("solo", IMAP_MAX_EMAILS_PER_SYNC="2")

        def entries():
            # This provider's only: the relay also re-publishes rows another
            # test's killed service left unmarked (at-least-once) to this stream.
            return [f for f in self.entries() if pid in f.get("payload_json", "")]

        yield wait_for(self.connected(proc, [pid]), 20, "provider connected")
        for i in range(5):
            mail.append(user, DEFAULT_PASSWORD, "INBOX", mail.make_message(subject=f"m{i}"))
        yield wait_for(lambda: len(entries()) == 5, 15, "five events")
        yield wait_for(
            lambda: (self.cursor(pid) or {}).get("last_uid") == "5", 5, "cursor at UID 5"
        )
        before = [f["event_id"] for f in entries()]
        folder = status_provider(proc, pid)["folders"]["INBOX"]
        self.assertEqual(folder["handedOff"], 5)

        code, body = http_post(
            proc.url("/api/email/imap/resync"), {"tenant": self.tenant, "providerId": pid}
        )
        answer = json.loads(body)
        self.assertEqual((code, answer["success"], answer["running"], answer["status"]),
                         (200, True, True, "applied"))

        def refetched():
            entry = status_provider(proc, pid)
            if entry is None:
                return False
            f = entry["folders"]["INBOX"]
            return (
                f.get("handedOff") == 2
                and (f.get("cursor") or {}).get("last_uid") == "5"
                and entry["status"] == "connected"
            )

        # A fresh folder that handed off exactly 2 messages: it started at UID
        # 4, not at its old cursor (that would hand off 0) nor at UID 1.
        yield wait_for(refetched, 10, "UIDs 4-5 fetched again and the cursor back at 5")
        self.assertEqual(self.cursor(pid)["last_uid"], "5")
        self.assertEqual(self.outbox_count(pid), 5)
        self.assertEqual([f["event_id"] for f in entries()], before)

        mail.append(user, DEFAULT_PASSWORD, "INBOX", mail.make_message(subject="m5"))
        yield wait_for(lambda: len(entries()) == 6, 10, "the sixth event")
        self.assertEqual(len({f["event_id"] for f in entries()}), 6)
        self.assertEqual(self.cursor(pid)["last_uid"], "6")

    # -- 4. auth failures -----------------------------------------------------

    @defer.inlineCallbacks
    def test_three_bad_logins_pause_the_provider_once(self):
        """One login per discovery pass; the third failure in a row pauses the
        provider and publishes exactly one AUTO_PAUSED event."""
        _user, pid = self.provider(password="not-the-password")
        proc = self.service("solo")
        yield wait_for(
            lambda: self.provider_row(pid, "inbound_paused_at")[0] is not None,
            30,
            "the provider paused",
        )
        count, reason, code = self.provider_row(
            pid, "inbound_auth_failure_count", "inbound_pause_reason", "inbound_auth_failure_code"
        )
        self.assertEqual((count, reason), (3, "auth_failure"))
        self.assertTrue(code)
        yield wait_for(lambda: self.entries(AUTO_PAUSED), 10, "the AUTO_PAUSED event")
        yield wait_for(
            lambda: status_provider(proc, pid) is None
            and lease_owners(self.dsn, [pid]) == {pid: None},
            5,
            "the paused provider stopped and its lease released",
        )

        # A later discovery pass (NOTIFY for a new provider) must neither retry
        # the paused one nor pause it again; the new provider's event is
        # published after anything recorded before it (the relay keeps order).
        user2, pid2 = self.provider()
        yield wait_for(self.connected(proc, [pid2]), 10, "a new provider started")
        mail.append(user2, DEFAULT_PASSWORD, "INBOX", mail.make_message(subject="later"))
        yield wait_for(lambda: self.entries(RECEIVED), 10, "the new provider's event")

        paused = self.entries(AUTO_PAUSED)
        self.assertEqual(len(paused), 1)
        self.assertEqual(self.outbox_count(pid, AUTO_PAUSED), 1)
        self.assertEqual(validate_stream_entry(paused[0]), [])
        payload = json.loads(paused[0]["payload_json"])
        self.assertEqual(payload["tenantId"], self.tenant)
        self.assertEqual(payload["providerId"], pid)
        self.assertEqual(payload["reason"], "auth_failure")
        self.assertEqual(payload["failureCount"], 3)
        self.assertEqual(self.provider_row(pid, "inbound_auth_failure_count")[0], 3)
        code, metrics = http_get(proc.url("/metrics"))
        self.assertEqual(code, 200)
        self.assertIn(b"\nimapsvc_auth_failures_total 3.0\n", metrics)
        self.assertNotIn("not-the-password", proc.log_text())

    # -- 5. test-connection ---------------------------------------------------

    @defer.inlineCallbacks
    def test_test_connection_reports_success_and_clear_failure(self):
        _user, good = self.provider()
        # Inactive: not watched (so never paused), but still testable.
        _user2, bad = self.provider(password="wrong-secret-123", active=False)
        proc = self.service("solo")
        yield self.ready(proc)
        url = proc.url("/api/email/imap/test-connection")

        code, body = http_post(url, {"tenant": self.tenant, "providerId": good})
        self.assertEqual((code, json.loads(body)["success"]), (200, True))

        code, body = http_post(url, {"tenant": self.tenant, "providerId": bad})
        self.assertEqual(code, 200)
        result = json.loads(body)
        self.assertIs(result["success"], False)
        error = result["error"]
        self.assertRegex(error.lower(), r"auth|login|credential")
        self.assertNotIn("wrong-secret-123", body.decode())
        self.assertNotIn("wrong-secret-123", proc.log_text())

        code, body = http_post(url, {"tenant": self.tenant, "providerId": str(uuid.uuid4())})
        self.assertEqual((code, json.loads(body)["success"]), (404, False))

        code, _ = http_post(url, {"tenant": self.tenant, "providerId": good}, token="nope")
        self.assertEqual(code, 401)

    # -- known bug: the first cursor of an empty folder -----------------------

    @defer.inlineCallbacks
    def test_burst_into_new_empty_mailbox_is_not_lost(self):
        """A new provider (no cursor) on an empty INBOX: its first sync finds
        nothing and must still store where it looked (``last_uid`` '0' with
        the UIDVALIDITY). Otherwise the next sync is again "no cursor" and
        starts at ``UIDNEXT - IMAP_MAX_EMAILS_PER_SYNC``: a burst of 5 while
        the window is 2 loses UIDs 1-3."""
        user, pid = self.provider()
        proc = self.service("solo", IMAP_MAX_EMAILS_PER_SYNC="2")
        yield wait_for(self.connected(proc, [pid]), 20, "provider connected")
        for i in range(5):
            mail.append(user, DEFAULT_PASSWORD, "INBOX", mail.make_message(subject=f"b{i}"))
        yield wait_for(
            lambda: (self.cursor(pid) or {}).get("last_uid") == "5", 10, "cursor at UID 5"
        )
        yield wait_for(lambda: self.published(pid) == self.outbox_count(pid), 10, "relay done")
        uids = sorted(json.loads(f["payload_json"])["emailData"]["imap"]["uid"]
                      for f in self.entries())
        self.assertEqual(uids, [1, 2, 3, 4, 5])
