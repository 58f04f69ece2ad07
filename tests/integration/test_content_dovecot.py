"""Content features through the structure path of a real Dovecot 2.3:
``emailData.automated`` from ``BODY[HEADER]`` + BODYSTRUCTURE (nothing else
is fetched), the same verdict as the whole-message path; with
``IMAP_EXPAND_TNEF`` the winmail.dat part is fetched by section and its
files listed."""

from __future__ import annotations

from datetime import UTC, datetime

from twisted.internet import defer, reactor
from twisted.trial.unittest import TestCase

from imapsvc.core.email_data import map_message
from imapsvc.folder import FolderOptions, FolderService
from imapsvc.imap.tls import client_tls_options
from imapsvc.model import FolderCursor, Limits, ProviderConfig
from tests.folder_helpers import PasswordSource, write_cursor
from tests.integration import test_folder_dovecot as base
from tests.rig import mail
from tests.rig.dovecot import DEFAULT_PASSWORD
from tests.unit.test_corpus import AUTOMATED, load, raw_message

NOW = datetime(2026, 2, 1, tzinfo=UTC)


def crlf(raw: bytes) -> bytes:
    return raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


class ContentDovecotTests(TestCase):
    timeout = 120
    # The same Dovecot user, memory store and recording pipeline as the folder tests.
    setUp = base.FolderDovecotTests.setUp

    def service(self, limits=None):
        provider = ProviderConfig(
            tenant="t1",
            provider_id="p1",
            provider_name="test",
            mailbox=self.user,
            host="localhost",
            port=self.dovecot.ports.imaps,
            username=self.user,
        )
        creds = PasswordSource(DEFAULT_PASSWORD, self.user)
        svc = FolderService(
            provider,
            "INBOX",
            reactor,
            self.store,
            self.pipeline,
            creds,
            "worker-1",
            FolderOptions(startup_stagger_ms=0, limits=limits or Limits()),
            tls_factory=lambda host: client_tls_options(host, ca_file=self.dovecot.ca_file),
        )
        svc.startService()
        self.addCleanup(svc.stopService)
        return svc

    @defer.inlineCallbacks
    def fetched(self, names, limits=None):
        """APPEND the corpus fixtures, sync them through the folder engine
        and return their :class:`FetchedMessage` by name."""
        uids = {}
        for name in names:
            uids[name] = mail.append(self.user, DEFAULT_PASSWORD, "INBOX", crlf(load(name)))
        write_cursor(self.store, self.provider, FolderCursor(None, "0", None))
        self.service(limits)
        yield base.wait_for(lambda: set(uids.values()) <= set(self.pipeline.uids))
        by_uid = {m.uid: m for m in self.pipeline.messages}
        return {name: by_uid[uid] for name, uid in uids.items()}

    @defer.inlineCallbacks
    def test_automated_on_the_structure_path(self):
        names = ["autoreply", "bounce", "list_mail", "plain"]
        fetched = yield self.fetched(names)
        for name in names:
            msg = fetched[name]
            self.assertIsNone(msg.raw, name)  # the structure path, not the fallback
            got = map_message(msg, "t", "p", NOW, Limits()).email_data["automated"]
            auto, bounce, bulk, signals = AUTOMATED.get(name, (False, False, False, []))
            want = {"autoReply": auto, "bounce": bounce, "bulk": bulk, "signals": signals}
            self.assertEqual(got, want, name)
            whole = map_message(raw_message(crlf(load(name))), "t", "p", NOW, Limits())
            self.assertEqual(whole.email_data["automated"], got, name)
        # The bounce's parts: only the text was downloaded, the report came
        # from BODYSTRUCTURE.
        bounce = fetched["bounce"]
        self.assertEqual(sorted(bounce.texts), ["1"])
        self.assertIn("message/delivery-status", [p.content_type for p in bounce.parts])

    @defer.inlineCallbacks
    def test_tnef_part_fetched_by_section_and_expanded(self):
        on = Limits(expand_tnef=True)
        fetched = yield self.fetched(["tnef_files"], limits=on)
        msg = fetched["tnef_files"]
        self.assertIsNone(msg.raw)
        self.assertEqual(sorted(msg.texts), ["1", "2"])  # the text and winmail.dat
        data = map_message(msg, "t", "p", NOW, on).email_data
        self.assertEqual(
            [(a["id"], a["name"]) for a in data["attachments"]],
            [
                ("2/tnef/1", "Quarterly report 2025.pdf"),
                ("2/tnef/2", "notes.txt"),
                ("2/tnef/3", "image001.png"),
            ],
        )
        whole = map_message(raw_message(crlf(load("tnef_files"))), "t", "p", NOW, on)
        self.assertEqual(whole.email_data["attachments"], data["attachments"])

    @defer.inlineCallbacks
    def test_tnef_part_not_fetched_by_default(self):
        fetched = yield self.fetched(["tnef_files"])
        msg = fetched["tnef_files"]
        self.assertEqual(sorted(msg.texts), ["1"])
        data = map_message(msg, "t", "p", NOW, Limits()).email_data
        self.assertEqual([a["name"] for a in data["attachments"]], ["winmail.dat"])
