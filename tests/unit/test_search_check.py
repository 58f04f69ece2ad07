"""A SEARCH answer longer than any answer the folder could give is refused."""

from twisted.internet import task
from twisted.internet.testing import StringTransport
from twisted.trial import unittest

from imapsvc.core.search_check import (
    SEARCH_SLACK,
    SUFFIX_BYTES,
    UID_BYTES,
    search_text_too_long,
)
from imapsvc.imap.errors import ProtocolViolation
from imapsvc.imap.protocol import FolderIMAPClient


class SearchTextTooLongTests(unittest.TestCase):
    def test_a_flood_in_a_small_folder_is_refused(self):
        reason = search_text_too_long(4 * 1024 * 1024, 3)
        self.assertIsNotNone(reason)
        self.assertIn("3 messages", reason)

    def test_the_longest_true_answer_passes(self):
        longest = (3 + SEARCH_SLACK) * UID_BYTES + SUFFIX_BYTES
        self.assertIsNone(search_text_too_long(longest, 3))
        self.assertIsNotNone(search_text_too_long(longest + 1, 3))

    def test_a_large_folder_may_answer_at_length(self):
        self.assertIsNone(search_text_too_long(600_000 * UID_BYTES, 600_000))

    def test_unknown_exists_is_not_judged(self):
        self.assertIsNone(search_text_too_long(10**8, None))


class ClientTests(unittest.TestCase):
    """The client refuses the flood before converting it, at byte level."""

    def client(self):
        proto = FolderIMAPClient(clock=task.Clock(), command_timeout=60)
        transport = StringTransport()
        proto.makeConnection(transport)
        proto.dataReceived(b"* OK [CAPABILITY IMAP4rev1 IDLE] ready\r\n")
        return proto, transport

    def search(self, proto, transport, exists, count):
        d = proto.uid_search_from(1)
        tag = transport.value().split(b" ")[0]
        results = []
        d.addBoth(results.append)
        proto.dataReceived(b"* %d EXISTS\r\n" % exists)
        numbers = b" ".join(b"%d" % n for n in range(1, count + 1))
        proto.dataReceived(b"* SEARCH " + numbers + b"\r\n" + tag + b" OK done\r\n")
        return results[0]

    def test_a_true_answer_is_read(self):
        proto, transport = self.client()
        found = self.search(proto, transport, 5, 5)
        self.assertEqual(list(found), [1, 2, 3, 4, 5])
        self.assertFalse(transport.disconnecting)

    def test_a_flood_drops_the_session_as_a_violation(self):
        proto, transport = self.client()
        result = self.search(proto, transport, 3, 200_000)
        self.assertIsInstance(result.value, ProtocolViolation)
        self.assertIn("3 messages", str(result.value))
        self.assertTrue(transport.disconnecting)
