"""A folder deleted and recreated (new UIDVALIDITY) on the real Dovecot rig:
the next sync starts at the recent window (``IMAP_MAX_EMAILS_PER_SYNC``),
not at the old ``last_uid``, and the stored cursor carries the new
UIDVALIDITY.

The real :class:`~imapsvc.pipeline.Pipeline` records into the
:class:`~imapsvc.store.memory.MemoryStore` (ledger, outbox and cursor in one
fenced batch), so the cursor checked here is the one the store persisted.
"""

from __future__ import annotations

from typing import Any

import attr
from twisted.internet import defer, reactor
from twisted.trial.unittest import TestCase

from imapsvc import folder_state as S
from imapsvc.deferreds import synchronous_runner
from imapsvc.folder import FolderOptions
from imapsvc.model import MIB, FolderCursor, Limits, ProviderConfig
from imapsvc.pipeline import Pipeline
from imapsvc.store.memory import MemoryStore
from tests.integration.test_folder_backlog import start_folder_service, wait_for
from tests.rig import mail
from tests.rig.dovecot import DEFAULT_PASSWORD, get_dovecot, unique_user

TENANT = "8a0c7c1e-1111-4d5e-9f00-000000000001"
PROVIDER = "8a0c7c1e-2222-4d5e-9f00-000000000002"
OWNER = "worker-uv"
FOLDER = "Support"
WINDOW = 3


class RecordingPipeline:
    """The real pipeline, plus the UIDs of every batch it recorded."""

    def __init__(self, inner: Pipeline) -> None:
        self.inner = inner
        self.handed: list[tuple[str, int]] = []  # (uid_validity, uid)
        self.subjects: dict[tuple[str, int], bytes] = {}

    def handle_batch(self, provider, folder, owner, messages, cursor):  # type: ignore[no-untyped-def]
        d = self.inner.handle_batch(provider, folder, owner, messages, cursor)

        def recorded(result: Any) -> Any:
            for msg in messages:
                key = (msg.uid_validity, msg.uid)
                self.handed.append(key)
                for line in msg.header.split(b"\r\n"):
                    if line.startswith(b"Subject: "):
                        self.subjects[key] = line[9:]
            return result

        return d.addCallback(recorded)


def messages(prefix: str, count: int) -> list[bytes]:
    return [
        mail.make_message(f"{prefix} {i}", message_id=f"<{prefix}-{i}@example.org>")
        for i in range(1, count + 1)
    ]


class UidValidityTests(TestCase):
    timeout = 60

    def setUp(self) -> None:
        self.dovecot = get_dovecot()
        self.user = self.dovecot.add_user(unique_user("uidval"))
        mail.create_folder(self.user, DEFAULT_PASSWORD, FOLDER)
        self.store = MemoryStore(reactor)
        self.store.add_provider(
            ProviderConfig(
                tenant=TENANT,
                provider_id=PROVIDER,
                provider_name="Support",
                mailbox=self.user,
                host="localhost",
                port=self.dovecot.ports.imaps,
                username=self.user,
            )
        )
        self.assertTrue(
            self.successResultOf(self.store.acquire_lease(TENANT, PROVIDER, OWNER, 600_000))
        )
        limits = Limits(max_raw_mime_bytes=25 * MIB)
        self.pipeline = RecordingPipeline(
            Pipeline(self.store, lambda: None, reactor, limits, 10 * MIB, synchronous_runner)
        )
        self.options = FolderOptions(
            max_emails_per_sync=WINDOW,
            startup_stagger_ms=0,
            reconnect_base_ms=200,
            reconnect_max_ms=1000,
            limits=limits,
        )

    def cursor(self):  # type: ignore[no-untyped-def]
        return self.successResultOf(self.store.read_cursor(TENANT, PROVIDER, FOLDER))

    def start(self):  # type: ignore[no-untyped-def]
        return start_folder_service(
            self,
            self.user,
            self.store,
            self.pipeline,
            folder=FOLDER,
            options=self.options,
            provider_id=PROVIDER,
            tenant=TENANT,
            owner=OWNER,
        )

    def recreate(self, count: int) -> tuple[int, list[int]]:
        """Delete and recreate the folder with ``count`` new messages.

        :return: the new UIDVALIDITY and the new UIDs.
        """
        mail.delete_folder(self.user, DEFAULT_PASSWORD, FOLDER)
        mail.create_folder(self.user, DEFAULT_PASSWORD, FOLDER)
        uids = mail.bulk_append(self.user, DEFAULT_PASSWORD, FOLDER, messages("new", count))
        validity = mail.status(self.user, DEFAULT_PASSWORD, FOLDER)["UIDVALIDITY"]
        return validity, uids

    @defer.inlineCallbacks
    def _first_sync(self):  # type: ignore[no-untyped-def]
        """8 old messages, cursor '0' (rescan): all 8 recorded, cursor at 8."""
        old_uids = mail.bulk_append(self.user, DEFAULT_PASSWORD, FOLDER, messages("old", 8))
        old_validity = mail.status(self.user, DEFAULT_PASSWORD, FOLDER)["UIDVALIDITY"]
        self.store.update_provider(
            TENANT, PROVIDER, folder_state={FOLDER: FolderCursor(None, "0", None)}
        )
        svc = self.start()
        yield wait_for(
            lambda: len(self.pipeline.handed) == 8 and svc.state == S.IDLING,
            what="first sync",
        )
        self.assertEqual(self.pipeline.handed, [(str(old_validity), u) for u in old_uids])
        self.assertEqual(self.cursor().uid_validity, str(old_validity))
        self.assertEqual(self.cursor().last_uid, str(old_uids[-1]))
        return svc, old_validity, old_uids

    @defer.inlineCallbacks
    def test_recreated_folder_restarts_at_recent_window(self):
        svc, old_validity, old_uids = yield self._first_sync()
        yield svc.stopService()
        # Fewer new messages than the old last_uid: resuming at the old
        # cursor (UID 9) would find nothing and lose all of them.
        new_validity, new_uids = self.recreate(5)
        self.assertNotEqual(new_validity, old_validity)
        self.assertEqual(new_uids, [1, 2, 3, 4, 5])

        svc2 = self.start()
        yield wait_for(
            lambda: len(self.pipeline.handed) == 8 + WINDOW and svc2.state == S.IDLING,
            what="sync after recreation",
        )
        new = self.pipeline.handed[8:]
        self.assertEqual(new, [(str(new_validity), u) for u in new_uids[-WINDOW:]])
        self.assertEqual([self.pipeline.subjects[k] for k in new], [b"new 3", b"new 4", b"new 5"])
        cursor = self.cursor()
        self.assertEqual(cursor.uid_validity, str(new_validity))
        self.assertEqual(cursor.last_uid, "5")
        # The ledger keys carry the UIDVALIDITY: old UID 1 and new UID 3 are
        # different messages; none of the new ones was taken for a duplicate.
        rows = self.store.ledger_rows(TENANT, PROVIDER)
        self.assertEqual([r["outcome"] for r in rows], ["published"] * (8 + WINDOW))
        self.assertEqual([r["uid_validity"] for r in rows[8:]], [str(new_validity)] * WINDOW)

        # And it resumes from the new cursor afterwards.
        uid = mail.append(self.user, DEFAULT_PASSWORD, FOLDER, mail.make_message("after"))
        yield wait_for(lambda: len(self.pipeline.handed) == 8 + WINDOW + 1, what="next message")
        self.assertEqual(self.pipeline.handed[-1], (str(new_validity), uid))
        self.assertEqual(self.cursor().last_uid, str(uid))

    @defer.inlineCallbacks
    def _recreate_under_idle(self, timeout):  # type: ignore[no-untyped-def]
        svc, old_validity, old_uids = yield self._first_sync()
        new_validity, new_uids = self.recreate(5)
        self.assertNotEqual(new_validity, old_validity)
        yield wait_for(
            lambda: len(self.pipeline.handed) == 8 + WINDOW and svc.state == S.IDLING,
            timeout=timeout,
            what="sync after recreation",
        )
        self.assertEqual(
            self.pipeline.handed[8:], [(str(new_validity), u) for u in new_uids[-WINDOW:]]
        )
        self.assertEqual(self.cursor().uid_validity, str(new_validity))
        self.assertEqual(self.cursor().last_uid, "5")

    def test_recreated_while_idling_caught_at_idle_restart(self):
        """The folder deleted and recreated under an idling session: Dovecot
        2.3 only says ``* NO Internal error occurred`` in the IDLE, so the
        engine notices at the next IDLE restart (2 s here), re-EXAMINEs and
        applies the window on the same connection."""
        self.options = attr.evolve(self.options, idle_restart_ms=2000)
        return self._recreate_under_idle(timeout=10)

    def test_recreated_while_idling_noticed_at_once(self):
        """What it should do: treat the untagged NO during IDLE as a reason
        to leave IDLE and sync again, within a second or two."""
        return self._recreate_under_idle(timeout=4)
