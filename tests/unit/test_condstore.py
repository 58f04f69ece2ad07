"""CONDSTORE/QRESYNC (RFC 7162): byte-level client tests for ENABLE, EXAMINE
with mod-sequence parameters and every new response form, and the pure
shortcut rule."""

from __future__ import annotations

from types import SimpleNamespace

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from imapsvc.core.cursor import REASON_RESUME
from imapsvc.folder.modseq import ModseqShortcut
from imapsvc.imap import condstore as C
from imapsvc.imap.errors import ProtocolViolation
from imapsvc.store.memory import MemoryStore
from tests.unit.test_imap_protocol import ClientTestCase, sent

QRESYNC_GREETING = (b"* OK [CAPABILITY IMAP4rev1 ENABLE CONDSTORE QRESYNC IDLE] ready\r\n")
CONDSTORE_GREETING = b"* OK [CAPABILITY IMAP4rev1 CONDSTORE IDLE] ready\r\n"
EXAMINE_BODY = (
    b"* FLAGS (\\Answered \\Seen)\r\n"
    b"* 12 EXISTS\r\n"
    b"* OK [UIDVALIDITY 1735234567] UIDs valid\r\n"
    b"* OK [UIDNEXT 4243] Predicted next UID\r\n"
)


class EnableTests(ClientTestCase):
    def test_enable_qresync(self):
        client, transport, _clock = self.connect(greeting=QRESYNC_GREETING)
        d = client.enable_condstore()
        self.assertEqual(sent(transport), b"0001 ENABLE QRESYNC\r\n")
        client.dataReceived(b"* ENABLED QRESYNC\r\n0001 OK Enabled\r\n")
        self.assertEqual(self.successResultOf(d), "QRESYNC")
        self.assertEqual(client.modseq_mode, "QRESYNC")

    def test_enable_qresync_not_confirmed_falls_back_to_condstore(self):
        client, transport, _clock = self.connect(greeting=QRESYNC_GREETING)
        d = client.enable_condstore()
        sent(transport)
        client.dataReceived(b"* ENABLED CONDSTORE\r\n0001 OK Enabled\r\n")
        self.assertEqual(self.successResultOf(d), "CONDSTORE")

    def test_enable_refused_keeps_the_session(self):
        client, transport, _clock = self.connect(greeting=QRESYNC_GREETING)
        d = client.enable_condstore()
        sent(transport)
        client.dataReceived(b"0001 NO not today\r\n")
        self.assertIsNone(self.successResultOf(d))
        self.assertIsNone(client.modseq_mode)
        self.assertFalse(transport.disconnecting)

    def test_qresync_offered_but_not_asked_for_is_condstore_without_a_command(self):
        client, transport, _clock = self.connect(greeting=QRESYNC_GREETING)
        self.assertEqual(self.successResultOf(client.enable_condstore(qresync=False)),
                         "CONDSTORE")
        self.assertEqual(transport.value(), b"")
        client.examine_modseq("INBOX", C.KnownState("1735234567", 5)).addErrback(lambda f: None)
        self.assertEqual(sent(transport), b'0001 EXAMINE "INBOX" (CONDSTORE)\r\n')
        client.dataReceived(EXAMINE_BODY + b"0001 OK done\r\n")

    def test_condstore_without_enable_needs_no_command(self):
        client, transport, _clock = self.connect(greeting=CONDSTORE_GREETING)
        self.assertEqual(self.successResultOf(client.enable_condstore()), "CONDSTORE")
        self.assertEqual(transport.value(), b"")

    def test_nothing_offered_sends_nothing(self):
        client, transport, _clock = self.connect(
            greeting=b"* OK [CAPABILITY IMAP4rev1 ENABLE IDLE] ready\r\n")
        self.assertIsNone(self.successResultOf(client.enable_condstore()))
        self.assertEqual(transport.value(), b"")
        # Without a mode, EXAMINE carries no parameters.
        d = client.examine_modseq("INBOX", C.KnownState("1735234567", 5))
        self.assertEqual(sent(transport), b'0001 EXAMINE "INBOX"\r\n')
        client.dataReceived(EXAMINE_BODY + b"0001 OK done\r\n")
        self.assertNotIn("modseq", self.successResultOf(d))


class ExamineTests(ClientTestCase):
    def enabled(self, mode="QRESYNC"):
        client, transport, clock = self.connect(greeting=QRESYNC_GREETING)
        client.modseq_mode = mode
        return client, transport

    def test_qresync_parameters_and_vanished_earlier(self):
        client, transport = self.enabled()
        d = client.examine_modseq("INBOX", C.KnownState("1735234567", 90060115194045000))
        self.assertEqual(sent(transport),
                         b'0001 EXAMINE "INBOX" (QRESYNC (1735234567 90060115194045000))\r\n')
        client.dataReceived(
            EXAMINE_BODY
            + b"* OK [HIGHESTMODSEQ 90060115205545359] Highest\r\n"
            + b"* VANISHED (EARLIER) 41,43:116,118,120:211,214:540\r\n"
            + b"* 49 FETCH (UID 117 FLAGS (\\Seen \\Answered) MODSEQ (90060115194045001))\r\n"
            + b"0001 OK [READ-ONLY] Examine completed\r\n")
        info = self.successResultOf(d)
        self.assertEqual((info["uidvalidity"], info["uidnext"], info["exists"]),
                         (1735234567, 4243, 12))
        state = info["modseq"]
        self.assertEqual(state.highest_modseq, 90060115205545359)
        self.assertFalse(state.nomodseq)
        self.assertEqual(state.vanished, 1 + 74 + 1 + 92 + 327)
        self.assertFalse(transport.disconnecting)

    def test_condstore_parameter_and_highestmodseq(self):
        client, transport = self.enabled("CONDSTORE")
        d = client.examine_modseq("INBOX", C.KnownState("1735234567", 7))
        self.assertEqual(sent(transport), b'0001 EXAMINE "INBOX" (CONDSTORE)\r\n')
        client.dataReceived(EXAMINE_BODY + b"* OK [HIGHESTMODSEQ 715194045007] Ok\r\n"
                            b"0001 OK [READ-ONLY] done\r\n")
        self.assertEqual(self.successResultOf(d)["modseq"].highest_modseq, 715194045007)

    def test_qresync_without_known_state_uses_condstore(self):
        client, transport = self.enabled()
        client.examine_modseq("INBOX", None)
        self.assertEqual(sent(transport), b'0001 EXAMINE "INBOX" (CONDSTORE)\r\n')
        d = client.examine_modseq("INBOX", C.KnownState("1", None))
        client.dataReceived(EXAMINE_BODY + b"0001 OK done\r\n")
        self.assertEqual(sent(transport), b'0002 EXAMINE "INBOX" (CONDSTORE)\r\n')
        client.dataReceived(EXAMINE_BODY + b"* OK [HIGHESTMODSEQ 3] x\r\n0002 OK done\r\n")
        self.assertEqual(self.successResultOf(d)["modseq"].highest_modseq, 3)

    def test_select_with_a_literal_name_keeps_parameters_at_the_end(self):
        client, transport = self.enabled()
        d = client.examine_modseq("Caf\u00e9\r", C.KnownState("9", 3), select=True)
        wire = sent(transport)
        self.assertTrue(wire.startswith(b"0001 SELECT {"), wire)
        client.dataReceived(b"+ go\r\n")
        self.assertTrue(sent(transport).endswith(b" (QRESYNC (9 3))\r\n"))
        client.dataReceived(EXAMINE_BODY + b"0001 OK [READ-WRITE] done\r\n")
        self.assertFalse(self.successResultOf(d)["read_only"])

    def test_nomodseq(self):
        client, transport = self.enabled()
        d = client.examine_modseq("INBOX", C.KnownState("1735234567", 5))
        client.dataReceived(EXAMINE_BODY + b"* OK [NOMODSEQ] Sorry, this mailbox format"
                            b" doesn't support modsequences\r\n0001 OK [READ-ONLY] done\r\n")
        state = self.successResultOf(d)["modseq"]
        self.assertTrue(state.nomodseq)
        self.assertIsNone(state.highest_modseq)

    def test_hostile_overflowing_modseq_is_not_trusted(self):
        for value in (b"18446744073709551616", b"9223372036854775808", b"0",
                      b"99999999999999999999", b"-5", b"12x"):
            client, transport = self.enabled()
            d = client.examine_modseq("INBOX", C.KnownState("1735234567", 5))
            client.dataReceived(EXAMINE_BODY + b"* OK [HIGHESTMODSEQ " + value + b"] x\r\n"
                                b"0001 OK [READ-ONLY] done\r\n")
            state = self.successResultOf(d)["modseq"]
            self.assertIsNone(state.highest_modseq, value)
            self.assertIsNotNone(state.invalid, value)
            self.assertFalse(transport.disconnecting, value)
        # The largest valid one (2^63 - 1) is kept exactly.
        client, transport = self.enabled()
        d = client.examine_modseq("INBOX", None)
        client.dataReceived(EXAMINE_BODY + b"* OK [HIGHESTMODSEQ 9223372036854775807] x\r\n"
                            b"0001 OK done\r\n")
        self.assertEqual(self.successResultOf(d)["modseq"].highest_modseq, 2**63 - 1)

    def test_bad_vanished_drops_the_session(self):
        for line in (b"* VANISHED (EARLIER) 1:x\r\n", b"* VANISHED (LATER) 5\r\n",
                     b"* VANISHED 0:3\r\n", b"* VANISHED 5:4294967296\r\n",
                     b"* VANISHED\r\n"):
            client, transport = self.enabled()
            d = client.examine_modseq("INBOX", None)
            client.dataReceived(line)
            self.failureResultOf(d, ProtocolViolation)
            self.assertDropped(transport)

    def test_vanished_without_earlier_is_not_counted(self):
        # A VANISHED during the command but not (EARLIER) reports expunges
        # happening now (RFC 7162 3.2.10): not part of the resync answer.
        client, transport = self.enabled()
        d = client.examine_modseq("INBOX", None)
        client.dataReceived(EXAMINE_BODY + b"* VANISHED 405,407\r\n0001 OK done\r\n")
        self.assertEqual(self.successResultOf(d)["modseq"].vanished, 0)

    def test_plain_examine_has_no_modseq_key(self):
        client, transport = self.enabled()
        d = client.examine_folder("INBOX")
        self.assertEqual(sent(transport), b'0001 EXAMINE "INBOX"\r\n')
        client.dataReceived(EXAMINE_BODY + b"0001 OK done\r\n")
        self.assertNotIn("modseq", self.successResultOf(d))

    def test_fetch_with_modseq_item_still_parses(self):
        # Once CONDSTORE is on, every FETCH answer may carry MODSEQ.
        client, transport = self.enabled()
        d = client.fetch_meta([7])
        sent(transport)
        client.dataReceived(
            b'* 3 FETCH (UID 7 MODSEQ (12121231000) RFC822.SIZE 120 FLAGS (\\Seen) '
            b'INTERNALDATE "10-Jan-2026 12:00:00 +0000" BODYSTRUCTURE ("text" "plain" '
            b'("charset" "us-ascii") NIL NIL "7bit" 20 1 NIL NIL NIL NIL))\r\n'
            b"0001 OK done\r\n")
        result = self.successResultOf(d)
        self.assertEqual(len(result), 1)
        self.assertFalse(transport.disconnecting)


class PureTests(ClientTestCase):
    def test_parse_vanished(self):
        v = C.parse_vanished(b"(EARLIER) 300:310,405,411")
        self.assertEqual((v.earlier, v.ranges, v.count), (True, ((300, 310), (405, 405),
                                                                   (411, 411)), 13))
        v = C.parse_vanished(b"1:4294967295")
        self.assertEqual((v.earlier, v.count), (False, 4294967295))
        self.assertEqual(C.parse_vanished(b"9:3").ranges, ((3, 9),))
        many = b",".join(b"%d" % i for i in range(1, C.MAX_VANISHED_RANGES + 50))
        v = C.parse_vanished(many)
        self.assertTrue(v.truncated)
        self.assertEqual(v.count, C.MAX_VANISHED_RANGES)

    def test_offered_mode(self):
        self.assertEqual(C.offered_mode({b"ENABLE": None, b"QRESYNC": None}), "QRESYNC")
        self.assertEqual(C.offered_mode({b"QRESYNC": None, b"CONDSTORE": None}), "CONDSTORE")
        self.assertEqual(C.offered_mode(["condstore"]), "CONDSTORE")
        self.assertEqual(C.offered_mode([b"ENABLE", b"QRESYNC", b"CONDSTORE"], qresync=False),
                         "CONDSTORE")
        self.assertIsNone(C.offered_mode({b"IDLE": None}))
        self.assertIsNone(C.offered_mode(None))

    def test_nothing_new(self):
        known = C.KnownState("100", 500)
        same = C.OpenState(highest_modseq=500)
        self.assertTrue(C.nothing_new(known, same, 100, 43, 42))
        self.assertTrue(C.nothing_new(known, same, "100", 40, 42))
        # New UIDs, a changed UIDVALIDITY, no UIDNEXT, a moved modseq: search.
        self.assertFalse(C.nothing_new(known, same, 100, 44, 42))
        self.assertFalse(C.nothing_new(known, same, 101, 43, 42))
        self.assertFalse(C.nothing_new(known, same, 100, None, 42))
        self.assertFalse(C.nothing_new(known, C.OpenState(highest_modseq=501), 100, 43, 42))
        # NOMODSEQ, an invalid value, nothing stored: search.
        self.assertFalse(C.nothing_new(known, C.OpenState(nomodseq=True), 100, 43, 42))
        self.assertFalse(C.nothing_new(known, C.OpenState(500, invalid="x"), 100, 43, 42))
        self.assertFalse(C.nothing_new(None, same, 100, 43, 42))
        self.assertFalse(C.nothing_new(C.KnownState("100", None), same, 100, 43, 42))

    def test_open_parameters(self):
        known = C.KnownState("100", 500)
        self.assertEqual(C.open_parameters(None, known), b"")
        self.assertEqual(C.open_parameters("QRESYNC", known), b" (QRESYNC (100 500))")
        self.assertEqual(C.open_parameters("CONDSTORE", known), b" (CONDSTORE)")
        # A stored UIDVALIDITY that is not a 32-bit number never reaches the wire.
        for bad in ("0", "x1", "4294967296", ""):
            self.assertEqual(C.open_parameters("QRESYNC", C.KnownState(bad, 5)),
                             b" (CONDSTORE)", bad)
        self.assertEqual(C.open_parameters("QRESYNC", known, uid_validity="101"),
                         b" (CONDSTORE)")


class FakeProto:
    """The session surface ModseqShortcut uses."""

    def __init__(self, mode, answer):
        self.mode, self.answer = mode, answer
        self.modseq_mode = None
        self.calls = []

    def enable_condstore(self, qresync=True):
        self.calls.append(("enable", qresync))
        self.modseq_mode = self.mode
        return defer.succeed(self.mode)

    def examine_modseq(self, name, known, select=False):
        self.calls.append(("examine_modseq", name, known, select))
        return defer.succeed(dict(self.answer))

    def examine_folder(self, name):
        self.calls.append(("examine", name))
        return defer.succeed(dict(self.answer))

    def select_folder(self, name):
        self.calls.append(("select", name))
        return defer.succeed(dict(self.answer))


class ShortcutTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.store = MemoryStore(self.clock)
        p = self.store.add_provider(tenant="t", provider_id="p", host="h")
        self.successResultOf(self.store.acquire_lease(p.tenant, p.provider_id, "w", 60000))
        self.shortcut = ModseqShortcut(self.store, "t", "p", "w", "label")

    def answer(self, modseq=500, uidnext=43, nomodseq=False):
        return {"uidvalidity": 100, "uidnext": uidnext, "exists": 3, "read_only": True,
                "modseq": C.OpenState(None if nomodseq else modseq, nomodseq)}

    def start(self, last_uid=42, reason=REASON_RESUME, since=None):
        return SimpleNamespace(reason=reason, since=since, search_range=True,
                               last_uid=last_uid)

    def pass_(self, proto, start=None):
        info = self.successResultOf(self.shortcut.open(proto, "INBOX", select=False))
        skip = self.shortcut.skip_search(info, start or self.start())
        self.successResultOf(self.shortcut.committed("INBOX", info))
        return skip

    def test_condstore_pass_then_skip(self):
        proto = FakeProto("CONDSTORE", self.answer())
        self.assertEqual(self.successResultOf(self.shortcut.enable(proto, "condstore")),
                         "CONDSTORE")
        self.assertEqual(proto.calls, [("enable", False)])
        self.assertFalse(self.pass_(proto))  # nothing stored yet
        self.assertEqual(self.successResultOf(self.store.read_modseq("t", "p", "INBOX")),
                         ("100", 500))
        self.assertTrue(self.pass_(proto))
        self.assertEqual(proto.calls[-1], ("examine_modseq", "INBOX",
                                           C.KnownState("100", 500), False))
        self.assertEqual(self.shortcut.skipped, 1)
        # A reset cursor or a backfill always searches.
        self.assertFalse(self.pass_(proto, self.start(reason="uidvalidity_changed")))
        self.assertFalse(self.pass_(proto, self.start(since="1-Jan-2026")))
        # NOMODSEQ forgets the stored value.
        proto.answer = self.answer(nomodseq=True)
        self.assertFalse(self.pass_(proto))
        self.assertIsNone(self.successResultOf(self.store.read_modseq("t", "p", "INBOX")))

    def test_off(self):
        proto = FakeProto("QRESYNC", self.answer())
        self.assertIsNone(self.successResultOf(self.shortcut.enable(proto, "off")))
        self.assertEqual(proto.calls, [])
        self.assertFalse(self.pass_(proto))
        self.assertEqual(proto.calls, [("examine", "INBOX")])

    def test_qresync_setting_asks_for_it(self):
        proto = FakeProto("QRESYNC", self.answer())
        self.assertEqual(self.successResultOf(self.shortcut.enable(proto, "qresync")),
                         "QRESYNC")
        self.assertEqual(proto.calls, [("enable", True)])
        info = self.successResultOf(self.shortcut.open(proto, "INBOX", select=True))
        self.assertEqual(proto.calls[-1], ("examine_modseq", "INBOX", None, True))
        self.assertIn("modseq", info)
