"""The whole service as an operator runs it: ``twistd -n imapsvc`` processes
against the real Postgres, Redis and Dovecot of the rig."""

from __future__ import annotations

import json
import signal
import uuid

from twisted.internet import defer
from twisted.trial import unittest

from tests.contract_validator import validate_stream_entry
from tests.rig import mail
from tests.rig import postgres as pg
from tests.rig.dovecot import DEFAULT_PASSWORD, unique_user
from tests.rig.service import (
    ServiceProcess,
    ServiceRigMixin,
    add_provider,
    http_get,
    wait_for,
)


class ServiceTests(ServiceRigMixin, unittest.TestCase):
    timeout = 120

    def setUp(self):
        self.set_up_service_rig("e2e")
        self.processes = []

    def service(self, worker="w1", tenant=None, **env):
        settings = self.service_env(IMAP_PROVIDER_REFRESH_MS="1000", IMAP_LEASE_TTL_MS="6000")
        if tenant:
            # The run's database is shared: serve only this test's tenant.
            settings["IMAPSVC_TENANTS"] = tenant
        settings.update(env)
        proc = ServiceProcess(settings, worker)
        self.processes.append(proc)
        self.addCleanup(proc.cleanup)
        proc.start()
        return proc

    def user(self):
        return self.dovecot.add_user(unique_user("e2e"))

    def ready(self, proc):
        return wait_for(lambda: http_get(proc.url("/readyz"))[0] == 200, 30, "readiness")

    @defer.inlineCallbacks
    def test_appended_message_becomes_one_event(self):
        password = "Pw-" + uuid.uuid4().hex
        user = self.dovecot.add_user(unique_user("e2e"), password)
        tenant, pid = add_provider(self.dsn, user, password, self.dovecot.ports.imaps)
        proc = self.service(tenant=tenant)
        yield self.ready(proc)
        yield wait_for(
            lambda: pg.execute(
                self.dsn, "SELECT status FROM email_providers WHERE id = %s", (pid,)
            )[0][0] == "connected",
            20,
            "provider connected",
        )
        raw = mail.make_message(subject="Printer on fire", message_id="<fire-1@example.org>")
        uid = mail.append(user, password, "INBOX", raw)
        yield wait_for(lambda: len(self.entries()) == 1, 15, "the event in the stream")
        _id, fields = self.entries()[0]
        self.assertEqual(validate_stream_entry(fields), [])
        self.assertEqual(fields["event_type"], "INBOUND_EMAIL_RECEIVED")
        self.assertEqual(fields["tenant"], tenant)
        payload = json.loads(fields["payload_json"])
        data = payload["emailData"]
        self.assertEqual(data["subject"], "Printer on fire")
        self.assertEqual(data["id"], "<fire-1@example.org>")
        self.assertEqual(data["providerId"], pid)
        self.assertEqual(data["imap"]["uid"], uid)
        self.assertNotIn("\\Seen", mail.flags(user, password, "INBOX", uid))
        cursor = pg.execute(
            self.dsn,
            "SELECT folder_state FROM imap_email_provider_config WHERE email_provider_id = %s",
            (pid,),
        )[0][0]
        self.assertEqual(cursor["INBOX"]["last_uid"], str(uid))
        # SIGTERM: clean exit, lease released, no secret in the log.
        code = proc.terminate()
        self.assertEqual(code, 0, f"exit {code}: " + proc.log_text()[-1500:])
        owner = pg.execute(
            self.dsn,
            "SELECT lease_owner FROM imap_email_provider_config WHERE email_provider_id = %s",
            (pid,),
        )[0][0]
        self.assertIsNone(owner)
        self.assertNotIn(password, proc.log_text())

    @defer.inlineCallbacks
    def test_kill_between_commit_and_publish_keeps_event_ids(self):
        """A second process re-publishes what the first committed with the
        same event_id; nothing is lost and no new id appears."""
        user = self.user()
        tenant, pid = add_provider(self.dsn, user, DEFAULT_PASSWORD, self.dovecot.ports.imaps)
        # Redis unreachable for the first process: it records but cannot publish.
        first = self.service(tenant=tenant, REDIS_URL="redis://127.0.0.1:1/0")
        for i in range(3):
            mail.append(user, DEFAULT_PASSWORD, "INBOX", mail.make_message(subject=f"m{i}"))
        yield wait_for(
            lambda: pg.execute(
                self.dsn, "SELECT count(*) FROM imap_event_outbox WHERE provider_id = %s", (pid,)
            )[0][0] >= 3,
            30,
            "three outbox rows",
        )
        first.kill()
        pg.execute(
            self.dsn,
            "UPDATE imap_email_provider_config SET lease_expires_at = now() - interval '1 second'"
            " WHERE email_provider_id = %s",
            (pid,),
        )
        second = self.service(worker="w2", tenant=tenant)
        yield wait_for(lambda: len(self.entries()) >= 3, 30, "three events")
        ids = [f["event_id"] for _, f in self.entries()]
        self.assertEqual(len(ids), len(set(ids)))
        expected = {
            r[0]
            for r in pg.execute(
                self.dsn, "SELECT event_id FROM imap_event_outbox WHERE provider_id = %s", (pid,)
            )
        }
        self.assertEqual(set(ids), expected)
        second.signal(signal.SIGTERM)

    @defer.inlineCallbacks
    def test_same_message_in_two_folders_is_one_event(self):
        user = self.user()
        mail.create_folder(user, DEFAULT_PASSWORD, "Support")
        tenant, pid = add_provider(
            self.dsn, user, DEFAULT_PASSWORD, self.dovecot.ports.imaps,
            folders=("INBOX", "Support"),
        )
        proc = self.service(tenant=tenant)
        yield self.ready(proc)
        yield wait_for(
            lambda: pg.execute(
                self.dsn, "SELECT status FROM email_providers WHERE id = %s", (pid,)
            )[0][0] == "connected",
            20,
            "both folders selected",
        )
        raw = mail.make_message(subject="Copied", message_id="<copy-1@example.org>")
        mail.append(user, DEFAULT_PASSWORD, "INBOX", raw)
        mail.append(user, DEFAULT_PASSWORD, "Support", raw)

        def cursors():
            state = pg.execute(
                self.dsn,
                "SELECT folder_state FROM imap_email_provider_config"
                " WHERE email_provider_id = %s",
                (pid,),
            )[0][0]
            return {f: c.get("last_uid") for f, c in state.items()}

        # Both folders' cursors move past their copy: the copy seen second
        # is a duplicate by Message-ID (it gets no ledger row of its own).
        yield wait_for(
            lambda: cursors() == {"INBOX": "1", "Support": "1"}, 15, "both cursors advanced"
        )
        yield wait_for(lambda: len(self.entries()) >= 1, 10, "the event")
        ids = [json.loads(f["payload_json"])["emailData"]["id"] for _, f in self.entries()]
        self.assertEqual(ids, ["<copy-1@example.org>"])
        outbox = pg.execute(
            self.dsn, "SELECT count(*) FROM imap_event_outbox WHERE provider_id = %s", (pid,)
        )[0][0]
        self.assertEqual(outbox, 1)
