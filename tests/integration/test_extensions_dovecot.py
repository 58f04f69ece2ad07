"""IMAP extensions against a real Dovecot 2.3: ``ID`` (RFC 2971), ``ENABLE
UTF8=ACCEPT`` (RFC 6855: not offered by 2.3, so only "not sent")."""

from __future__ import annotations

from twisted.internet import defer, reactor, task
from twisted.trial.unittest import TestCase

from imapsvc.imap.extensions import client_id_fields
from tests.integration import test_protocol_dovecot as base
from tests.rig.dovecot import get_dovecot, unique_user


@defer.inlineCallbacks
def wait_for(predicate, timeout=10.0, step=0.05):
    waited = 0.0
    while not predicate():
        if waited >= timeout:
            raise AssertionError(f"condition not met within {timeout}s")
        yield task.deferLater(reactor, step, lambda: None)
        waited += step


class DovecotIdTests(TestCase):
    timeout = 60
    open = base.DovecotProtocolTests.open
    login = base.DovecotProtocolTests.login
    _close = base.DovecotProtocolTests._close

    def setUp(self):
        self.dovecot = get_dovecot()
        self.user = self.dovecot.add_user(unique_user("id"))

    def log_lines(self):
        with open(self.dovecot.log_path, encoding="utf-8", errors="replace") as f:
            return [line for line in f if self.user in line and "ID sent" in line]

    @defer.inlineCallbacks
    def test_id_after_login(self):
        client, before, after = yield self.login()
        self.assertIn(b"ID", after)
        server = yield client.send_id(client_id_fields())
        self.assertEqual(server.get("name"), "Dovecot")
        # Dovecot logs what we said (imap_id_log = * in the rig).
        yield wait_for(lambda: self.log_lines())
        version = dict(client_id_fields())["version"]
        self.assertIn(f"name=imapsvc, version={version}", self.log_lines()[-1])
        # The session goes on normally.
        info = yield client.examine_folder("INBOX")
        self.assertTrue(info["read_only"])
        yield client.logout()
        yield client.lost

    @defer.inlineCallbacks
    def test_utf8_accept_only_when_offered(self):
        # Dovecot 2.3 offers ENABLE but not UTF8=ACCEPT (2.4 does): nothing is
        # sent and the session goes on; the byte-level tests cover the rest.
        client, _before, after = yield self.login()
        self.assertIn(b"ENABLE", after)
        offered = b"ACCEPT" in (after.get(b"UTF8") or [])
        enabled = yield client.enable_utf8()
        self.assertEqual(enabled, offered)
        self.assertEqual(client.utf8_accept, offered)
        info = yield client.examine_folder("INBOX")
        self.assertGreater(info["uidvalidity"], 0)
        yield client.logout()
        yield client.lost
