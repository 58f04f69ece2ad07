"""IMAP extensions: ``ID`` (RFC 2971) and ``ENABLE UTF8=ACCEPT`` (RFC 6855),
byte level and in the folder engine."""

from __future__ import annotations

import attr
from twisted.trial.unittest import SynchronousTestCase

from imapsvc.imap import extensions as X
from imapsvc.imap.errors import CommandFailed
from imapsvc.testing import FakeMailbox
from tests.folder_helpers import OPTIONS, PASSWORD, USER, FolderRig
from tests.unit.test_imap_protocol import ClientTestCase, sent

ID_GREETING = b"* OK [CAPABILITY IMAP4rev1 SASL-IR ID ENABLE IDLE LITERAL+ AUTH=PLAIN] ready\r\n"
UTF8_GREETING = b"* OK [CAPABILITY IMAP4rev1 ENABLE UTF8=ACCEPT IDLE LITERAL+] ready\r\n"
FIELDS = (("name", "imapsvc"), ("version", "1.2.3"))


class IdCommandTests(SynchronousTestCase):
    def test_command_line(self) -> None:
        self.assertEqual(X.id_command(FIELDS), b'ID ("name" "imapsvc" "version" "1.2.3")')
        self.assertEqual(X.id_command([("a", 'q"b\\')]), b'ID ("a" "q\\"b\\\\")')
        self.assertEqual(X.id_command([]), b"ID NIL")

    def test_rfc_limits_and_8bit_left_out(self) -> None:
        fields = [("n" * 31, "x"), ("long", "v" * 1025), ("eight", "caf\u00e9"), ("ok", "1")]
        self.assertEqual(X.id_command(fields), b'ID ("ok" "1")')
        many = [(f"k{i}", "v") for i in range(40)]
        self.assertEqual(X.id_command(many).count(b'"v"'), X.MAX_ID_PAIRS)

    def test_client_fields(self) -> None:
        fields = dict(X.client_id_fields())
        self.assertEqual(set(fields), {"name", "version"})  # nothing about the host or user
        self.assertEqual(fields["name"], "imapsvc")
        self.assertTrue(fields["version"])

    def test_version_read_once(self) -> None:
        # importlib.metadata scans sys.path: once per process, not per login
        import importlib.metadata

        calls = []

        def version(name: str) -> str:
            calls.append(name)
            return "9.9"

        self.patch(importlib.metadata, "version", version)
        X.package_version.cache_clear()
        self.addCleanup(X.package_version.cache_clear)
        self.assertEqual([X.client_id_fields()[1][1] for _ in range(3)], ["9.9"] * 3)
        self.assertEqual(calls, ["imapsvc"])

    def test_parse(self) -> None:
        self.assertEqual(X.parse_id([["name", "Dovecot", "x", None]]), {"name": "Dovecot", "x": ""})
        self.assertIsNone(X.parse_id([None]))
        self.assertIsNone(X.parse_id([]))
        self.assertEqual(X.parse_id([["odd"]]), {})
        self.assertEqual(X.parse_id([[b"n", b"v", ["nested"], "x"]]), {"n": "v"})


class IdProtocolTests(ClientTestCase):
    def test_sent_when_offered_and_answer_parsed(self) -> None:
        client, transport, _ = self.connect(greeting=ID_GREETING)
        sent(transport)
        d = client.send_id(FIELDS)
        self.assertEqual(sent(transport), b'0001 ID ("name" "imapsvc" "version" "1.2.3")\r\n')
        client.dataReceived(b'* ID ("name" "Dovecot" "vendor" NIL)\r\n0001 OK ID completed.\r\n')
        self.assertEqual(self.successResultOf(d), {"name": "Dovecot", "vendor": ""})

    def test_nil_answer(self) -> None:
        client, transport, _ = self.connect(greeting=ID_GREETING)
        d = client.send_id(FIELDS)
        client.dataReceived(b"* ID NIL\r\n0001 OK done\r\n")
        self.assertIsNone(self.successResultOf(d))

    def test_not_offered_sends_nothing(self) -> None:
        client, transport, _ = self.connect()
        sent(transport)
        d = client.send_id(FIELDS)
        self.assertEqual(sent(transport), b"")
        self.assertIsNone(self.successResultOf(d))

    def test_refused_keeps_the_connection_and_the_queue(self) -> None:
        for answer in (b"0001 NO not now\r\n", b"0001 BAD unknown command\r\n"):
            client, transport, _ = self.connect(greeting=ID_GREETING)
            d = client.send_id(FIELDS)
            follow = client.noop()
            sent(transport)
            client.dataReceived(answer)
            self.assertIsNone(self.successResultOf(d))
            self.assertFalse(transport.disconnecting)
            self.assertEqual(sent(transport), b"0002 NOOP\r\n")
            client.dataReceived(b"0002 OK\r\n")
            self.successResultOf(follow)

    def test_other_commands_still_drop_on_no(self) -> None:
        client, transport, _ = self.connect(greeting=ID_GREETING)
        d = client.noop()
        client.dataReceived(b"0001 NO broken\r\n")
        self.failureResultOf(d, CommandFailed)
        self.assertTrue(transport.disconnecting)


class Utf8ProtocolTests(ClientTestCase):
    def test_enabled_when_offered(self) -> None:
        client, transport, _ = self.connect(greeting=UTF8_GREETING)
        sent(transport)
        d = client.enable_utf8()
        self.assertEqual(sent(transport), b"0001 ENABLE UTF8=ACCEPT\r\n")
        client.dataReceived(b"* ENABLED UTF8=ACCEPT\r\n0001 OK Enabled.\r\n")
        self.assertTrue(self.successResultOf(d))
        self.assertTrue(client.utf8_accept)

    def test_utf8_only_counts_as_offered(self) -> None:
        greeting = b"* OK [CAPABILITY IMAP4rev1 ENABLE UTF8=ONLY] ready\r\n"
        client, transport, _ = self.connect(greeting=greeting)
        sent(transport)
        d = client.enable_utf8()
        self.assertEqual(sent(transport), b"0001 ENABLE UTF8=ACCEPT\r\n")
        client.dataReceived(b"* ENABLED UTF8=ACCEPT\r\n0001 OK\r\n")
        self.assertTrue(self.successResultOf(d))

    def test_not_offered_sends_nothing(self) -> None:
        for greeting in (
            ID_GREETING,  # ENABLE without UTF8=ACCEPT
            b"* OK [CAPABILITY IMAP4rev1 UTF8=ACCEPT] ready\r\n",  # no ENABLE
        ):
            client, transport, _ = self.connect(greeting=greeting)
            sent(transport)
            self.assertFalse(self.successResultOf(client.enable_utf8()))
            self.assertEqual(sent(transport), b"")
            self.assertFalse(client.utf8_accept)

    def test_ok_without_enabled_or_refused_is_not_enabled(self) -> None:
        for answer in (b"0001 OK nothing enabled\r\n", b"0001 NO no\r\n", b"0001 BAD what\r\n"):
            client, transport, _ = self.connect(greeting=UTF8_GREETING)
            d = client.enable_utf8()
            client.dataReceived(answer)
            self.assertFalse(self.successResultOf(d))
            self.assertFalse(client.utf8_accept)
            self.assertFalse(transport.disconnecting)

    def test_names_stay_modified_utf7_and_go_out_in_utf8(self) -> None:
        client, transport, _ = self.connect(greeting=UTF8_GREETING)
        client.enable_utf8()
        client.dataReceived(b"* ENABLED UTF8=ACCEPT\r\n0001 OK\r\n")
        sent(transport)
        d = client.list_folders()
        client.dataReceived(
            '* LIST () "/" "Entwürfe"\r\n* LIST () "/" "R&D"\r\n* LIST () "/" INBOX\r\n'
            "0002 OK\r\n".encode()
        )
        names = [name for _f, _d, name in self.successResultOf(d)]
        self.assertEqual(names, ["Entw&APw-rfe", "R&-D", "INBOX"])
        sent(transport)
        client.examine_folder("Entw&APw-rfe")
        self.assertEqual(sent(transport), "0003 EXAMINE {9+}\r\nEntwürfe\r\n".encode())
        client.dataReceived(b"* OK [UIDVALIDITY 5] x\r\n0003 OK [READ-ONLY] done\r\n")
        d = client.examine_folder("R&-D")
        self.assertEqual(sent(transport), b'0004 EXAMINE "R&D"\r\n')
        client.dataReceived(b"* OK [UIDVALIDITY 6] x\r\n0004 OK [READ-ONLY] done\r\n")
        self.assertEqual(self.successResultOf(d)["uidvalidity"], 6)

    def test_without_utf8_names_are_sent_as_they_are(self) -> None:
        client, transport, _ = self.connect(greeting=UTF8_GREETING)
        sent(transport)
        d = client.examine_folder("Entw&APw-rfe")
        self.assertEqual(sent(transport), b'0001 EXAMINE "Entw&APw-rfe"\r\n')
        client.dataReceived(b"* OK [UIDVALIDITY 5] x\r\n0001 OK [READ-ONLY] done\r\n")
        self.successResultOf(d)


IDLE_CAPS = ("IMAP4rev1", "IDLE", "AUTH=PLAIN")


class IdFolderTests(SynchronousTestCase):
    def id_rig(self, caps, options=OPTIONS):
        rig = FolderRig(mailbox=FakeMailbox(capabilities=caps, accounts={USER: PASSWORD}),
                        options=options)
        self.addCleanup(rig.stop)
        return rig

    def test_id_after_login_before_the_mailbox(self) -> None:
        r = self.id_rig(IDLE_CAPS + ("ID",))
        session = r.start()
        self.assertEqual(session.commands[:3], ["LOGIN", "ID", "LIST"])
        self.assertEqual(r.mailbox.client_ids, [dict(X.client_id_fields())])

    def test_no_id_when_not_offered(self) -> None:
        r = self.id_rig(IDLE_CAPS)
        session = r.start()
        self.assertNotIn("ID", session.commands)
        self.assertEqual(session.commands[:2], ["LOGIN", "LIST"])
        self.assertEqual(r.mailbox.client_ids, [])

    def test_enable_utf8_only_when_configured(self) -> None:
        caps = IDLE_CAPS + ("ID", "ENABLE", "UTF8=ACCEPT")
        r = self.id_rig(caps, options=attr.evolve(OPTIONS, enable_utf8=True))
        session = r.start()
        self.assertEqual(session.commands[:4], ["LOGIN", "ID", "ENABLE", "LIST"])
        self.assertTrue(session.utf8_accept)
        r = self.id_rig(caps)
        session = r.start()
        self.assertNotIn("ENABLE", session.commands)
        self.assertFalse(session.utf8_accept)

    def test_compress_after_login_as_configured(self) -> None:
        # The fake's peer is a private address: auto leaves the session
        # plain there, always compresses before anything else is sent.
        caps = IDLE_CAPS + ("ID", "COMPRESS=DEFLATE")
        r = self.id_rig(caps, options=attr.evolve(OPTIONS, compress="always"))
        session = r.start()
        self.assertEqual(session.commands[:4], ["LOGIN", "COMPRESS", "ID", "LIST"])
        self.assertTrue(session.compressing)
        self.assertEqual(r.mailbox.compressions, 1)
        for mode in ("auto", "off"):
            r = self.id_rig(caps, options=attr.evolve(OPTIONS, compress=mode))
            session = r.start()
            self.assertNotIn("COMPRESS", session.commands)
            self.assertFalse(session.compressing)

    def test_setting_reaches_the_folder_options(self) -> None:
        from imapsvc.config import load_settings
        from imapsvc.folder import FolderOptions

        self.assertFalse(FolderOptions.from_settings(load_settings({})).enable_utf8)
        on = load_settings({"IMAP_ENABLE_UTF8": "true"})
        self.assertTrue(FolderOptions.from_settings(on).enable_utf8)
