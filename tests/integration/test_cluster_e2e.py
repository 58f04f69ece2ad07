"""One service across replicas (issue 10, item 4): two real ``twistd imapsvc``
processes on the rig's Postgres, Redis and Dovecot.

- A ``reconnect`` sent to the replica that does NOT own the provider is
  carried out by the owner (a new IMAP session: its reconnect counter moves).
- ``/status`` on either replica lists every folder of both.
- ``IMAP_MAX_CONNECTIONS_PER_TENANT`` holds across both replicas, and the
  provider left out says so in its ``error_message``.

Which replica owns what is forced with the (global) tenant cap: a replica
with cap 1 that already holds one connection refuses a second provider, so
the other replica (cap 2) takes it. Every service runs with
``IMAPSVC_TENANTS`` set to the test's tenant (the database is shared).
"""

from __future__ import annotations

import json
import uuid

from twisted.internet import defer
from twisted.trial import unittest

from tests.rig import mail
from tests.rig import postgres as pg
from tests.rig.dovecot import DEFAULT_PASSWORD, unique_user
from tests.rig.service import (
    ADMIN_TOKEN,
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
LEASE_TTL_MS = 4000
CAP = "IMAP_MAX_CONNECTIONS_PER_TENANT"


class ClusterTests(ServiceRigMixin, unittest.TestCase):
    timeout = 90

    def setUp(self):
        self.set_up_service_rig("cluster")
        self.tenant = str(uuid.uuid4())

    def service(self, worker, **env):
        settings = self.service_env(
            IMAP_PROVIDER_REFRESH_MS=str(REFRESH_MS),
            IMAP_LEASE_TTL_MS=str(LEASE_TTL_MS),
            IMAP_STATUS_WRITE_MS="300",
            IMAP_ADMIN_POLL_MS="1000",
            IMAPSVC_TENANTS=self.tenant,
        )
        settings.update(env)
        proc = ServiceProcess(settings, worker)
        self.addCleanup(proc.cleanup)
        proc.start()
        return proc

    def provider(self, folders=()):
        user = self.dovecot.add_user(unique_user("clu"))
        for folder in folders:
            if folder != "INBOX":
                mail.create_folder(user, DEFAULT_PASSWORD, folder)
        _tenant, pid = add_provider(self.dsn, user, DEFAULT_PASSWORD, self.dovecot.ports.imaps,
                                    tenant=self.tenant, folders=tuple(folders))
        return pid

    def ready(self, proc):
        return wait_for(lambda: http_get(proc.url("/readyz"))[0] == 200, 30, "readiness")

    def connected_on(self, proc, pid):
        entry = status_provider(proc, pid)
        return entry is not None and entry["status"] == "connected"

    def deployment(self, proc):
        return (admin_status(proc) or {}).get("deployment") or {}

    def folders_seen(self, proc):
        """``{(provider, folder): (owner, state)}`` from ``proc``'s deployment view."""
        out = {}
        for p in self.deployment(proc).get("providers", []):
            for name, f in p["folders"].items():
                out[(p["providerId"], name)] = (f["owner"], f["state"])
        return out

    def reconnects(self, proc, pid):
        entry = status_provider(proc, pid) or {}
        folder = (entry.get("folders") or {}).get("INBOX") or {}
        return sum((folder.get("reconnects") or {}).values())

    @defer.inlineCallbacks
    def test_reconnect_routed_to_owner_and_status_everywhere(self):
        p_b = self.provider()
        b = self.service("b", **{CAP: "1"})
        yield wait_for(lambda: self.connected_on(b, p_b), 30, "b running its provider")
        # b holds the tenant's only connection it may have: a takes the next one.
        p_a = self.provider()
        a = self.service("a", **{CAP: "2"})
        yield self.ready(a)
        yield wait_for(lambda: self.connected_on(a, p_a), 30, "a running the new provider")
        self.assertEqual(lease_owners(self.dsn, [p_a, p_b]), {p_a: "a", p_b: "b"})

        # /status on either replica lists every folder of both, with owners.
        want = {(p_a, "INBOX"): ("a", "Idling"), (p_b, "INBOX"): ("b", "Idling")}
        for proc in (a, b):
            yield wait_for(lambda proc=proc: self.folders_seen(proc) == want, 20,
                           f"{proc.worker}'s /status listing both replicas' folders")
            replicas = {r["worker"]: r["state"] for r in self.deployment(proc)["replicas"]}
            self.assertEqual((replicas.get("a"), replicas.get("b")), ("alive", "alive"))

        # reconnect sent to b, which does not own p_a: a carries it out.
        before = self.reconnects(a, p_a)
        code, body = http_post(b.url("/api/email/imap/reconnect"),
                               {"tenant": self.tenant, "providerId": p_a})
        answer = json.loads(body)
        self.assertEqual(code, 200, answer)
        self.assertEqual((answer["success"], answer["appliedBy"], answer["requestedBy"]),
                         (True, "a", "b"))
        self.assertTrue(answer["appliedAt"])
        yield wait_for(lambda: self.reconnects(a, p_a) > before, 20,
                       "a new IMAP session on the owner")
        yield wait_for(lambda: self.connected_on(a, p_a), 20, "p_a back after reconnect")
        self.assertEqual(self.reconnects(b, p_b), 0)  # b's own provider untouched
        # The answer can be read back by id from either replica.
        code, body = http_get(a.url(f"/api/email/imap/requests/{answer['requestId']}"
                                    f"?tenant={self.tenant}"), token=ADMIN_TOKEN)
        self.assertEqual((code, json.loads(body)["appliedBy"]), (200, "a"))

        # pause sent to a, for b's provider: b stops it before the answer.
        code, body = http_post(a.url("/api/email/imap/pause"),
                               {"tenant": self.tenant, "providerId": p_b})
        answer = json.loads(body)
        self.assertEqual((code, answer["appliedBy"], answer["stopped"]), (200, "b", True))
        self.assertIsNone(status_provider(b, p_b))
        code, body = http_post(a.url("/api/email/imap/resume"),
                               {"tenant": self.tenant, "providerId": p_b})
        self.assertEqual((code, json.loads(body)["success"]), (200, True))
        yield wait_for(lambda: self.connected_on(a, p_b) or self.connected_on(b, p_b), 20,
                       "p_b running again after resume")

    @defer.inlineCallbacks
    def test_tenant_cap_holds_across_replicas(self):
        first = self.provider(folders=("INBOX", "Extra"))
        a = self.service("a", **{CAP: "2"})
        yield wait_for(lambda: self.connected_on(a, first), 30, "a running both folders")
        second = self.provider(folders=("INBOX", "Extra"))
        b = self.service("b", **{CAP: "2"})
        yield self.ready(b)

        def refused():
            status, error = pg.execute(
                self.dsn, "SELECT status, error_message FROM email_providers WHERE id = %s",
                (second,))[0]
            return status == "error" and f"{CAP}=2" in (error or "")

        yield wait_for(refused, 20, "the second provider's error naming the cap")
        # Let both replicas run a few discovery passes: still 2 connections.
        yield wait_for(lambda: self.folders_seen(b).get((second, "INBOX"), (0, 0))[1]
                       == "Waiting", 20, "the waiting folders listed")
        for _ in range(3):
            yield b_discovery_pass(b)
        self.assertEqual(lease_owners(self.dsn, [first, second]), {first: "a", second: None})
        self.assertIsNone(status_provider(b, second))
        self.assertIsNone(status_provider(a, second))
        connections = [
            f for p in self.deployment(b)["providers"] for f in p["folders"].values()
            if f["connection"]
        ]
        self.assertEqual(len(connections), 2)
        waiting = self.folders_seen(a)
        self.assertEqual((waiting[(second, "INBOX")][1], waiting[(second, "Extra")][1]),
                         ("Waiting", "Waiting"))

    @defer.inlineCallbacks
    def test_embedded_sqlite_process_is_the_owner(self):
        """One ``twistd imapsvc`` on SQLite (no DATABASE_URL, no Redis): the
        routed admin API still works, the process itself being the owner."""
        import os
        import time

        from imapsvc.model import ProviderConfig
        from imapsvc.sealed_secrets import SecretBox, password_name
        from imapsvc.store.sqlite import SqliteOps
        from imapsvc.store.sqlite_schema import connect, ensure_schema
        from tests.rig.service import SECRET_KEY

        user = self.dovecot.add_user(unique_user("emb"))
        path = os.path.join(os.path.abspath(self.mktemp()), "imapsvc.sqlite3")
        os.makedirs(os.path.dirname(path))
        pid = str(uuid.uuid4())
        conn = connect(path)
        try:
            ensure_schema(conn)
            ops = SqliteOps(conn, time.time)
            ops.insert_provider(ProviderConfig(
                tenant=self.tenant, provider_id=pid, provider_name="Support",
                mailbox=f"{user}@x", host="localhost", port=self.dovecot.ports.imaps,
                username=user))
            ops.put_secret(self.tenant, password_name(pid), SecretBox.from_setting(
                SECRET_KEY).seal(self.tenant, password_name(pid), DEFAULT_PASSWORD.encode()))
        finally:
            conn.close()
        solo = self.service("solo", DATABASE_URL="", REDIS_URL="", IMAPSVC_SQLITE_PATH=path,
                            IMAPSVC_EVENTS_FILE=os.path.join(os.path.dirname(path), "ev.jsonl"))
        yield wait_for(lambda: self.connected_on(solo, pid), 30, "the provider running")
        before = self.reconnects(solo, pid)
        code, body = http_post(solo.url("/api/email/imap/reconnect"),
                               {"tenant": self.tenant, "providerId": pid})
        answer = json.loads(body)
        self.assertEqual((code, answer["success"], answer["appliedBy"]), (200, True, "solo"))
        yield wait_for(lambda: self.reconnects(solo, pid) > before, 20, "a new IMAP session")
        yield wait_for(lambda: self.folders_seen(solo).get((pid, "INBOX"), (0, 0))[1]
                       == "Idling", 20, "the deployment view from SQLite")


def b_discovery_pass(proc: ServiceProcess):
    """Wait about one discovery interval (the service refreshes every second)."""
    from twisted.internet import reactor, task

    return task.deferLater(reactor, REFRESH_MS / 1000.0 * 1.2, lambda: None)
