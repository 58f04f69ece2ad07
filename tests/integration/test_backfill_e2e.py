"""Backfill end to end (issue 13 item 6): ``twistd -n imapsvc`` against the
rig's Dovecot, Postgres and Redis. A folder holds old and new mail
(INTERNALDATE set by APPEND's date argument); the first sync with
``IMAP_FIRST_SYNC_SINCE_DAYS`` publishes the recent ones only, and
``python -m imapsvc resync --since`` publishes the older ones it names,
nothing already published a second time."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta

from twisted.internet import defer
from twisted.trial import unittest

from tests.rig import mail
from tests.rig import postgres as pg
from tests.rig.dovecot import DEFAULT_PASSWORD, unique_user
from tests.rig.service import ServiceProcess, ServiceRigMixin, add_provider, http_get, wait_for


class BackfillE2ETests(ServiceRigMixin, unittest.TestCase):
    timeout = 120

    def setUp(self):
        self.set_up_service_rig("backfill")

    def subjects(self):
        out = []
        for _id, fields in self.entries():
            out.append(json.loads(fields["payload_json"])["emailData"]["subject"])
        return out

    @defer.inlineCallbacks
    def test_first_sync_by_date_then_resync_since(self):
        user = self.dovecot.add_user(unique_user("bf"))
        now = datetime.now(UTC)
        dated = [
            ("old-oct-01", datetime(2025, 10, 1, 9, 0, tzinfo=UTC)),
            ("old-nov-01", datetime(2025, 11, 1, 9, 0, tzinfo=UTC)),
            ("new-2-days", now - timedelta(days=2)),
            ("new-1-day", now - timedelta(days=1)),
            # Moved in last: a high UID with an old date.
            ("old-oct-15", datetime(2025, 10, 15, 9, 0, tzinfo=UTC)),
        ]
        for subject, when in dated:
            raw = mail.make_message(subject=subject, message_id=f"<{subject}-{user}@example.org>")
            mail.append(user, DEFAULT_PASSWORD, "INBOX", raw, internaldate=when)
        tenant, pid = add_provider(self.dsn, user, DEFAULT_PASSWORD, self.dovecot.ports.imaps)
        env = self.service_env(
            IMAP_PROVIDER_REFRESH_MS="1000", IMAP_LEASE_TTL_MS="6000",
            IMAPSVC_TENANTS=tenant, IMAP_FIRST_SYNC_SINCE_DAYS="7",
            # The recent window alone would take all five.
            IMAP_MAX_EMAILS_PER_SYNC="5",
        )
        proc = ServiceProcess(env, "bf1")
        self.addCleanup(proc.cleanup)
        proc.start()
        yield wait_for(lambda: http_get(proc.url("/readyz"))[0] == 200, 30, "readiness")

        def cursor():
            state = pg.execute(
                self.dsn,
                "SELECT folder_state FROM imap_email_provider_config"
                " WHERE email_provider_id = %s", (pid,))[0][0]
            return (state.get("INBOX") or {}).get("last_uid")

        yield wait_for(lambda: cursor() == "5", 30, "first sync done")
        yield wait_for(lambda: len(self.entries()) >= 2, 15, "two events")
        self.assertEqual(sorted(self.subjects()), ["new-1-day", "new-2-days"])

        # The operator reads back to 10 October: 1 November and 15 October
        # come in, 1 October stays out, the two new ones are not repeated.
        shown = subprocess.run(
            [sys.executable, "-m", "imapsvc", "resync", "--tenant", tenant, "--provider", pid,
             "--since", "2025-10-10", "--url", proc.url("")],
            env=proc.env, cwd=proc.dir, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        self.assertEqual(shown.returncode, 0, shown.stdout + shown.stderr)
        answer = json.loads(shown.stdout)
        self.assertEqual((answer["since"], answer["folders"]), ("2025-10-10", ["INBOX"]))

        def pending():
            return pg.execute(
                self.dsn, "SELECT count(*) FROM imap_folder_backfill WHERE provider_id = %s",
                (pid,))[0][0]

        yield wait_for(lambda: len(self.entries()) >= 4 and pending() == 0, 30,
                       "the backfill published and completed")
        subjects = self.subjects()
        self.assertEqual(sorted(subjects),
                         ["new-1-day", "new-2-days", "old-nov-01", "old-oct-15"])
        ids = [f["event_id"] for _, f in self.entries()]
        self.assertEqual(len(ids), len(set(ids)))
        outbox = pg.execute(
            self.dsn, "SELECT count(*) FROM imap_event_outbox WHERE provider_id = %s", (pid,)
        )[0][0]
        self.assertEqual(outbox, 4)
        self.assertEqual(cursor(), "5")
        code = proc.terminate()
        self.assertEqual(code, 0, f"exit {code}: " + proc.log_text()[-1500:])
