"""The fallback fetch path end to end against the real Dovecot rig.

A host in the broken-BODYSTRUCTURE list gets whole messages (``raw``) with
exactly the bytes that were appended; a message above the raw-MIME cap is
not downloaded at all beyond its header: it is handed off header-only with
``truncated=("TEXT",)``. The bytes the client read and the ``BODY.PEEK``
sections it asked for prove what crossed the connection.
"""

from __future__ import annotations

from twisted.internet import defer, reactor
from twisted.trial.unittest import TestCase

from imapsvc import folder_state as S
from imapsvc.core.plan import TEXT_NOT_DOWNLOADED
from imapsvc.folder import FolderOptions
from imapsvc.model import FolderCursor, Limits
from tests.folder_helpers import memory_backend, read_cursor, write_cursor
from tests.integration.test_folder_backlog import (
    make_generated,
    start_folder_service,
    wait_for,
)
from tests.rig import mail
from tests.rig.counting import ByteCounter, sections_by_uid
from tests.rig.dovecot import DEFAULT_PASSWORD, get_dovecot, unique_user

RAW_CAP = 200_000

#: 8-bit bytes in a header and a body: exactness must not depend on ASCII.
LATIN1 = (
    b"From: J\xf6rg <joerg@example.org>\r\n"
    b"To: support@example.com\r\n"
    b"Subject: Stra\xdfe\r\n"
    b"Date: Sat, 10 Jan 2026 12:00:00 +0000\r\n"
    b"Message-ID: <latin1@example.org>\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=iso-8859-1\r\n"
    b"Content-Transfer-Encoding: 8bit\r\n"
    b"\r\n"
    b"Gr\xfc\xdfe aus M\xfcnchen.\r\n"
    b"\r\n"
    b"Zeile mit  zwei Leerzeichen  \r\n"
)


class FallbackPathTests(TestCase):
    timeout = 60

    def setUp(self) -> None:
        self.user = get_dovecot().add_user(unique_user("fallback"))
        self.store, self.provider, self.pipeline = memory_backend(reactor)
        self.counter = ByteCounter()
        write_cursor(self.store, self.provider, FolderCursor(None, "0", None))

    @defer.inlineCallbacks
    def test_whole_messages_exact_and_big_one_header_only(self):
        tag = self.user.split("@")[0]
        big = make_generated(9001, tag, attachment_size=300_000)
        self.assertGreater(len(big.raw), RAW_CAP)
        small = [
            mail.make_message("plain one", message_id="<p1@example.org>"),
            make_generated(9002, tag, kind="alternative").raw,
            make_generated(9003, tag, attachment_size=60_000).raw,
            LATIN1,
        ]
        after = mail.make_message("after the big one", message_id="<p2@example.org>")
        raws = small + [big.raw, after]
        uids = mail.bulk_append(self.user, DEFAULT_PASSWORD, "INBOX", raws)
        big_uid = uids[len(small)]
        validity = mail.status(self.user, DEFAULT_PASSWORD, "INBOX")["UIDVALIDITY"]

        options = FolderOptions(
            startup_stagger_ms=0,
            reconnect_base_ms=200,
            reconnect_max_ms=1000,
            limits=Limits(max_raw_mime_bytes=RAW_CAP),
            # Matching is case-insensitive and ignores a trailing dot.
            broken_bodystructure_hosts=("imap.broken.example", "LocalHost."),
        )
        svc = start_folder_service(
            self, self.user, self.store, self.pipeline, options=options, counter=self.counter
        )
        self.assertFalse(svc.trust_structure)
        yield wait_for(
            lambda: len(self.pipeline.uids) >= len(uids) and svc.state == S.IDLING,
            what="all messages handed off",
        )
        self.assertEqual(self.pipeline.uids, uids)
        self.assertEqual(read_cursor(self.store, self.provider).last_uid, str(uids[-1]))

        handed = {m.uid: m for m in self.pipeline.messages}
        for uid, raw in zip(uids, raws):
            msg = handed[uid]
            self.assertEqual(msg.size, len(raw))
            self.assertEqual(msg.uid_validity, str(validity))
            self.assertIsNotNone(msg.internal_date)
            self.assertEqual(tuple(msg.parts), ())
            self.assertEqual(dict(msg.texts), {})
            header = raw[: raw.index(b"\r\n\r\n") + 4]
            self.assertEqual(msg.header, header)
            if uid == big_uid:
                self.assertIsNone(msg.raw)
                self.assertEqual(tuple(msg.truncated), (TEXT_NOT_DOWNLOADED,))
            else:
                self.assertEqual(msg.raw, raw, f"UID {uid}")
                self.assertEqual(tuple(msg.truncated), ())

        # Asked: header for all; the whole message for all but the big one.
        asked = sections_by_uid(self.counter)
        self.assertEqual(asked[big_uid], {b"HEADER"})
        for uid in uids:
            if uid != big_uid:
                self.assertEqual(asked[uid], {b"HEADER", b""}, f"UID {uid}")

        # Read: the small messages, every header (meta FETCH), framing; the
        # big message's body (300 KB of base64) is not among them.
        headers = sum(raw.index(b"\r\n\r\n") + 4 for raw in raws)
        bound = sum(map(len, small)) + len(after) + headers + 16 * 1024
        self.assertLess(self.counter.read, bound)
        self.assertLess(bound, len(big.raw))
        self.assertGreaterEqual(self.counter.read, sum(map(len, small)) + len(after))
