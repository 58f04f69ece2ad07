"""Write-back after the durable commit (issue 13 item 3), end to end:
``twistd -n imapsvc`` against the rig's Dovecot, Postgres and Redis.

- ``move:Processed``: processed mail ends in ``Processed``, INBOX is left
  empty, and a restart publishes nothing twice;
- ``seen`` (from ``IMAP_WRITE_BACK``): processed mail is ``\\Seen``;
- ``none`` (the default) leaves mail unread: ``test_service_e2e``.
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
    ServiceProcess,
    ServiceRigMixin,
    add_provider,
    http_get,
    status_provider,
    wait_for,
)


class WriteBackServiceTests(ServiceRigMixin, unittest.TestCase):
    timeout = 120

    def setUp(self):
        self.set_up_service_rig("writeback")

    def service(self, tenant, worker="w1", **env):
        settings = self.service_env(
            IMAP_PROVIDER_REFRESH_MS="1000", IMAP_LEASE_TTL_MS="6000", IMAPSVC_TENANTS=tenant
        )
        settings.update(env)
        proc = ServiceProcess(settings, worker)
        self.addCleanup(proc.cleanup)
        proc.start()
        return proc

    def connected(self, proc, pid):
        def check():
            return (
                http_get(proc.url("/readyz"))[0] == 200
                and pg.execute(self.dsn, "SELECT status FROM email_providers WHERE id = %s",
                               (pid,))[0][0] == "connected"
            )

        return wait_for(check, 30, "provider connected")

    def count(self, user, folder):
        return mail.status(user, DEFAULT_PASSWORD, folder)["MESSAGES"]

    def event_ids(self):
        return [fields["event_id"] for _id, fields in self.entries()]

    def write_back_status(self, proc, pid):
        entry = status_provider(proc, pid) or {}
        folder = (entry.get("folders") or {}).get("INBOX") or {}
        return folder.get("writeBack") or {}

    @defer.inlineCallbacks
    def test_move_processed_and_a_restart_publishes_nothing_twice(self):
        user = self.dovecot.add_user(unique_user("wbmove"))
        mail.create_folder(user, DEFAULT_PASSWORD, "Processed")
        tenant, pid = add_provider(self.dsn, user, DEFAULT_PASSWORD, self.dovecot.ports.imaps)
        pg.execute(
            self.dsn,
            "INSERT INTO imap_provider_options (tenant, provider_id, write_back)"
            " VALUES (%s, %s, 'move:Processed')",
            (tenant, pid),
        )
        first = self.service(tenant)
        yield self.connected(first, pid)
        subjects = [f"move-{i}-{uuid.uuid4().hex[:6]}" for i in range(3)]
        for subject in subjects:
            mail.append(user, DEFAULT_PASSWORD, "INBOX", mail.make_message(subject=subject))
        yield wait_for(lambda: len(self.entries()) >= 3, 30, "three events")
        yield wait_for(
            lambda: self.count(user, "Processed") == 3 and self.count(user, "INBOX") == 0,
            30,
            "processed mail moved",
        )
        yield wait_for(
            lambda: self.write_back_status(first, pid).get("applied") == 3, 15, "status"
        )
        wb = self.write_back_status(first, pid)
        self.assertEqual((wb["mode"], wb["failed"], wb["lastError"]), ("move:Processed", 0, None))
        code, body = http_get(first.url("/metrics"))
        self.assertEqual(code, 200)
        self.assertIn(b"imapsvc_write_backs_applied_total 3.0", body)
        self.assertEqual(first.terminate(), 0, first.log_text()[-1500:])

        # While no worker runs, one more mail; then a new worker.
        mail.append(user, DEFAULT_PASSWORD, "INBOX", mail.make_message(subject="after restart"))
        second = self.service(tenant, worker="w2")
        yield self.connected(second, pid)
        yield wait_for(
            lambda: self.count(user, "Processed") == 4 and self.count(user, "INBOX") == 0,
            30,
            "the new mail moved too",
        )
        # The move happens after the commit, so every event is in the stream
        # or the outbox by now; the relay publishes the last one.
        yield wait_for(lambda: len(self.entries()) >= 4, 15, "four events")
        ids = self.event_ids()
        self.assertEqual(len(ids), 4, ids)
        self.assertEqual(len(set(ids)), 4)
        got = sorted(json.loads(f["payload_json"])["emailData"]["subject"]
                     for _id, f in self.entries())
        self.assertEqual(got, sorted(subjects + ["after restart"]))
        [(state,)] = pg.execute(
            self.dsn,
            "SELECT folder_state FROM imap_email_provider_config WHERE email_provider_id = %s",
            (pid,),
        )
        self.assertEqual(state["INBOX"]["last_uid"], "4")  # UIDs only grow
        self.assertEqual(
            pg.execute(self.dsn, "SELECT count(*) FROM imap_message_ledger"
                       " WHERE provider_id = %s", (pid,)),
            [(4,)],
        )
        self.assertEqual(second.terminate(), 0, second.log_text()[-1500:])

    @defer.inlineCallbacks
    def test_seen_from_the_environment(self):
        user = self.dovecot.add_user(unique_user("wbseen"))
        tenant, pid = add_provider(self.dsn, user, DEFAULT_PASSWORD, self.dovecot.ports.imaps)
        proc = self.service(tenant, IMAP_WRITE_BACK="seen")
        yield self.connected(proc, pid)
        uid = mail.append(user, DEFAULT_PASSWORD, "INBOX", mail.make_message(subject="seen me"))
        yield wait_for(lambda: len(self.entries()) == 1, 30, "the event")
        yield wait_for(
            lambda: "\\Seen" in mail.flags(user, DEFAULT_PASSWORD, "INBOX", uid),
            15,
            "the message flagged \\Seen",
        )
        self.assertEqual(self.count(user, "INBOX"), 1)
        self.assertEqual(proc.terminate(), 0, proc.log_text()[-1500:])

    @defer.inlineCallbacks
    def test_restart_sweep_moves_recorded_mail_left_in_the_folder(self):
        """Mail recorded while write-back was off (as after a crash between
        commit and MOVE) is moved by the next start; older mail the service
        never recorded stays, and no event is published again."""
        user = self.dovecot.add_user(unique_user("wbsweep"))
        mail.create_folder(user, DEFAULT_PASSWORD, "Processed")
        old = mail.append(user, DEFAULT_PASSWORD, "INBOX", mail.make_message(subject="history"))
        # A cursor past the old message: the service starts after it.
        tenant, pid = add_provider(self.dsn, user, DEFAULT_PASSWORD, self.dovecot.ports.imaps)
        validity = mail.status(user, DEFAULT_PASSWORD, "INBOX")["UIDVALIDITY"]
        pg.execute(
            self.dsn,
            "UPDATE imap_email_provider_config SET folder_state = %s"
            " WHERE email_provider_id = %s",
            (json.dumps({"INBOX": {"uid_validity": str(validity), "last_uid": str(old),
                                   "last_seen_at": "2026-01-10T12:00:00.000Z"}}), pid),
        )
        first = self.service(tenant)
        yield self.connected(first, pid)
        for i in range(2):
            mail.append(user, DEFAULT_PASSWORD, "INBOX", mail.make_message(subject=f"s{i}"))
        yield wait_for(lambda: len(self.entries()) == 2, 30, "two events")
        self.assertEqual(first.terminate(), 0, first.log_text()[-1500:])
        self.assertEqual(self.count(user, "INBOX"), 3)

        pg.execute(
            self.dsn,
            "INSERT INTO imap_provider_options (tenant, provider_id, write_back)"
            " VALUES (%s, %s, 'move:Processed')",
            (tenant, pid),
        )
        second = self.service(tenant, worker="w2")
        yield self.connected(second, pid)
        yield wait_for(lambda: self.count(user, "Processed") == 2, 30, "the sweep")
        self.assertEqual(self.count(user, "INBOX"), 1)  # the history mail stays
        yield wait_for(
            lambda: self.write_back_status(second, pid).get("applied") == 2, 15, "status"
        )
        self.assertEqual(len(self.entries()), 2)
        self.assertEqual(second.terminate(), 0, second.log_text()[-1500:])
