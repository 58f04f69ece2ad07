"""One bad provider row among good ones, on a real ``twistd imapsvc`` with the
rig's Postgres, Redis and Dovecot: discovery still completes (``/readyz``
200), the good providers publish, the bad rows say why in ``error_message``.

The bad rows get the smallest provider ids of the tenant, so discovery (in
id order) meets them before every good one: before the fix, the first of them
stopped the pass and nothing after it ever started.
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
    set_password,
    status_provider,
    wait_for,
)

BAD_HOST = "a" * 64 + ".example.com"  # a label over 63 characters: IDNA refuses it


def insert_raw(dsn: str, tenant: str, pid: str, host: str, port: int, filters_json: str) -> None:
    """A provider row as the app could write it, ``folder_filters`` verbatim."""
    pg.execute(
        dsn,
        "INSERT INTO email_providers (id, tenant, provider_type, provider_name, mailbox,"
        " is_active) VALUES (%s, %s, 'imap', 'Bad', %s, true)",
        (pid, tenant, f"bad-{pid[-4:]}@example.com"),
    )
    pg.execute(
        dsn,
        "INSERT INTO imap_email_provider_config (email_provider_id, tenant, host, port, secure,"
        " auth_type, username, folder_filters) VALUES"
        " (%s, %s, %s, %s, true, 'password', 'nobody', %s::jsonb)",
        (pid, tenant, host, port, filters_json),
    )


class BadRowsTests(ServiceRigMixin, unittest.TestCase):
    timeout = 120

    def setUp(self):
        self.set_up_service_rig("badrows")

    def provider_row(self, pid: str) -> tuple:
        return pg.execute(
            self.dsn, "SELECT status, error_message FROM email_providers WHERE id = %s", (pid,)
        )[0]

    @defer.inlineCallbacks
    def test_bad_rows_do_not_stop_the_good_ones(self):
        tenant = str(uuid.uuid4())
        port = self.dovecot.ports.imaps
        bad_host = "00000000-0000-4000-8000-000000000001"
        bad_filters = "00000000-0000-4000-8000-000000000002"
        insert_raw(self.dsn, tenant, bad_host, BAD_HOST, port, '["INBOX"]')
        insert_raw(self.dsn, tenant, bad_filters, "localhost", port, '"INBOX"')
        set_password(self.dsn, tenant, bad_host, DEFAULT_PASSWORD)
        user = self.dovecot.add_user(unique_user("badrows"))
        # Repeated filters (they also stopped discovery): one connection.
        _t, good = add_provider(
            self.dsn, user, DEFAULT_PASSWORD, port, tenant=tenant, folders=("INBOX", "inbox")
        )
        self.assertGreater(good, bad_filters)

        proc = ServiceProcess(
            self.service_env(IMAP_PROVIDER_REFRESH_MS="1000", IMAP_LEASE_TTL_MS="6000",
                             IMAPSVC_TENANTS=tenant),
            "badrows-w1",
        )
        self.addCleanup(proc.cleanup)
        proc.start()
        yield wait_for(lambda: http_get(proc.url("/readyz"))[0] == 200, 30, "readiness")
        yield wait_for(lambda: self.provider_row(good)[0] == "connected", 20, "good connected")

        status, message = self.provider_row(bad_host)
        self.assertEqual(status, "error")
        self.assertIn("not a valid host name for TLS", message)
        self.assertIn("Label too long", message)
        status, message = self.provider_row(bad_filters)
        self.assertEqual(status, "error")
        self.assertIn("folder_filters must be a JSON array", message)
        entry = status_provider(proc, good)
        self.assertEqual(list(entry["folders"]), ["INBOX"], entry)

        raw = mail.make_message(subject="Still flowing", message_id="<badrows-1@example.org>")
        mail.append(user, DEFAULT_PASSWORD, "INBOX", raw)
        yield wait_for(lambda: len(self.entries()) == 1, 15, "the good provider's event")
        _id, fields = self.entries()[0]
        payload = json.loads(fields["payload_json"])
        self.assertEqual(payload["providerId"], good)
        self.assertEqual(payload["emailData"]["subject"], "Still flowing")

        # Several passes later (1 s each): each reason logged once, not per pass.
        yield _sleep(3.5)
        for pid in (bad_host, bad_filters):
            lines = [line for line in proc.log_text().splitlines()
                     if "not started" in line and pid in line]
            self.assertEqual(len(lines), 1, lines)
        leases = pg.execute(
            self.dsn,
            "SELECT email_provider_id::text FROM imap_email_provider_config"
            " WHERE tenant = %s AND lease_owner IS NOT NULL",
            (tenant,),
        )
        self.assertEqual([r[0] for r in leases], [good])
        self.assertEqual(proc.terminate(), 0, proc.log_text()[-1500:])


def _sleep(seconds: float) -> defer.Deferred:
    from twisted.internet import reactor, task

    return task.deferLater(reactor, seconds, lambda: None)
