"""FETCH results keyed by UID with exact bytes (Twisted keys by sequence
number and decodes bodies as text)."""

from __future__ import annotations

from tests.unit.test_imap_protocol import ClientTestCase, sent

HEADER = b"From: a@example.com\r\nSubject: =?utf-8?q?caf=C3=A9?=\r\n\r\n"
STRUCTURE = (
    b'(("text" "plain" ("charset" "utf-8") NIL NIL "quoted-printable" 12 1 NIL NIL NIL)'
    b'("application" "pdf" ("name" "r\xc3\xa9sum\xc3\xa9.pdf") NIL NIL "base64" 40 NIL '
    b'("attachment" ("filename" "cv.pdf")) NIL NIL) "mixed" ("boundary" "b1") NIL NIL)'
)


class FetchMetaTests(ClientTestCase):
    def test_keyed_by_uid_not_sequence(self):
        client, transport, clock = self.connect()
        d = client.fetch_meta([4242, 4250])
        self.assertEqual(
            sent(transport),
            b"0001 UID FETCH 4242,4250 (UID RFC822.SIZE INTERNALDATE BODYSTRUCTURE "
            b"BODY.PEEK[HEADER])\r\n",
        )
        client.dataReceived(
            b'* 1 FETCH (UID 4242 RFC822.SIZE 1234 INTERNALDATE "10-Jan-2026 12:00:00 +0000" '
            b"BODYSTRUCTURE " + STRUCTURE + b" BODY[HEADER] {%d}\r\n" % len(HEADER) + HEADER
            + b")\r\n"
            # an unsolicited flag update for another message, without UID
            + b"* 3 FETCH (FLAGS (\\Seen))\r\n"
            + b'* 2 FETCH (UID 4250 RFC822.SIZE 10 INTERNALDATE "10-Jan-2026 12:00:01 +0000" '
            b'BODYSTRUCTURE ("text" "plain" NIL NIL NIL "7bit" 2 1 NIL NIL NIL) '
            b'BODY[HEADER] "")\r\n'
            b"0001 OK Fetch completed.\r\n"
        )
        result = self.successResultOf(d)
        self.assertEqual(sorted(result), [4242, 4250])
        first = result[4242]
        self.assertEqual(first["size"], 1234)
        self.assertEqual(first["internaldate"], "10-Jan-2026 12:00:00 +0000")
        self.assertEqual(first["header"], HEADER)
        self.assertIsInstance(first["header"], bytes)
        structure = first["bodystructure"]
        self.assertEqual(structure[0][:3], ["text", "plain", ["charset", "utf-8"]])
        self.assertEqual(structure[1][2], ["name", "résumé.pdf"])
        self.assertEqual(structure[2], "mixed")
        self.assertEqual(result[4250]["header"], b"")
        self.assertEqual(result[4250]["bodystructure"][0], "text")


class FetchBodyTests(ClientTestCase):
    def test_full_body_exact_bytes(self):
        """Non-UTF-8 bytes, bare LF, CRLF and a trailing CRLF survive."""
        body = b"Subject: x\r\n\r\n\xe9t\xe9\n\r\n\x00\x80)\r\n"
        client, transport, clock = self.connect()
        d = client.fetch_full([9])
        self.assertEqual(sent(transport), b"0001 UID FETCH 9 (UID BODY.PEEK[])\r\n")
        client.dataReceived(
            b"* 5 FETCH (UID 9 BODY[] {%d}\r\n" % len(body) + body + b")\r\n0001 OK done\r\n"
        )
        self.assertEqual(self.successResultOf(d), {9: body})

    def test_missing_message_is_absent(self):
        client, transport, clock = self.connect()
        d = client.fetch_full([9, 10])
        client.dataReceived(b'* 5 FETCH (UID 10 BODY[] "hi")\r\n0001 OK done\r\n')
        self.assertEqual(self.successResultOf(d), {10: b"hi"})

    def test_sections_grouped_and_partial(self):
        client, transport, clock = self.connect()
        d = client.fetch_sections({11: [("1", None), ("2", 100)], 12: [("1", None), ("2", 100)],
                                   13: [("TEXT", None)]})
        self.assertEqual(
            sent(transport),
            b"0001 UID FETCH 11:12 (UID BODY.PEEK[1] BODY.PEEK[2]<0.100>)\r\n",
        )
        client.dataReceived(
            b"* 1 FETCH (UID 11 BODY[1] {4}\r\nab\r\n BODY[2]<0> {3}\r\n\xff\xfe\xfd)\r\n"
            b'* 2 FETCH (UID 12 BODY[1] "x" BODY[2]<0> "")\r\n'
            b"0001 OK done\r\n"
        )
        self.assertEqual(sent(transport), b"0002 UID FETCH 13 (UID BODY.PEEK[TEXT])\r\n")
        client.dataReceived(b"* 3 FETCH (UID 13 BODY[TEXT] {2}\r\n\r\n)\r\n0002 OK done\r\n")
        self.assertEqual(
            self.successResultOf(d),
            {11: {"1": b"ab\r\n", "2": b"\xff\xfe\xfd"}, 12: {"1": b"x", "2": b""},
             13: {"TEXT": b"\r\n"}},
        )
