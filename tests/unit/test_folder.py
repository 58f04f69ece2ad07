"""Unit tests of :class:`imapsvc.folder.FolderService` on verified fakes only
(:mod:`tests.folder_helpers`): the fake IMAP session (checked against the real
client by ``tests/session_contract.py``), the memory store and the real
pipeline. Fake clock, no sockets."""

from __future__ import annotations

import errno

import attr
from twisted.internet import defer
from twisted.internet.error import ConnectBindError
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from imapsvc import folder_state as S
from imapsvc.folder import TOKEN_RETRY_S, FolderOptions
from imapsvc.model import Credentials, FolderCursor
from imapsvc.oauth import REFRESH_MARGIN_S
from imapsvc.testing import FakeMailbox, section_bytes, split_header
from tests.folder_helpers import OPTIONS, PASSWORD, USER, FolderRig, message

NO_IDLE = ("IMAP4rev1", "AUTH=PLAIN")


def mailbox(**kw):
    kw.setdefault("accounts", {USER: PASSWORD})
    kw.setdefault("uidvalidity", 7)
    return FakeMailbox(**kw)


def with_options(**changes):
    return attr.evolve(OPTIONS, **changes)


class RigTestCase(SynchronousTestCase):
    def rig(self, **kw):
        rig = FolderRig(**kw)
        self.addCleanup(self._stop, rig)
        return rig

    def _stop(self, rig):
        rig.stop()
        self.assertEqual(getattr(rig.svc, "invalid_transitions", 0), 0, rig.states())
        self.assertEqual(rig.reactor.getDelayedCalls(), [])

    def requests(self, rig, *kinds):
        """What every session searched and fetched (``kinds`` only)."""
        out = [r for s in rig.sessions for r in s.requests]
        return [r for r in out if not kinds or r[0] in kinds]


class FolderServiceTests(RigTestCase):
    # -- where a sync starts --------------------------------------------------

    def test_no_cursor_takes_recent_window(self):
        r = self.rig()
        r.add(10)
        r.start()
        self.assertEqual(r.uids, [6, 7, 8, 9, 10])
        self.assertEqual(r.cursor().last_uid, "10")
        self.assertEqual(r.cursor().uid_validity, "7")
        self.assertEqual(r.svc.state, S.IDLING)

    def test_empty_first_sync_stores_cursor_so_a_burst_is_not_skipped(self):
        # Window 5, an empty folder: the cursor must be stored now, or the
        # next sync would take the window again and skip the burst's head.
        r = self.rig()
        r.start()
        self.assertEqual(r.cursor().last_uid, "0")
        self.assertEqual(r.cursor().uid_validity, "7")
        r.add(8)
        self.assertEqual(r.uids, list(range(1, 9)))

    def test_uidvalidity_reset_on_empty_folder_is_stored(self):
        r = self.rig()
        r.set_cursor(FolderCursor("6", "4242", None))
        r.add(3)
        r.mailbox.expunge("INBOX", [1, 2, 3], only_deleted=False)
        r.start()
        self.assertEqual(r.cursor().uid_validity, "7")
        self.assertEqual(r.cursor().last_uid, "0")

    def test_resume_at_n_plus_one(self):
        r = self.rig()
        r.add(10)
        r.set_cursor(FolderCursor("7", "3", None))
        r.start()
        self.assertIn(("search", 4), self.requests(r, "search"))
        self.assertEqual(r.uids, [4, 5, 6, 7, 8, 9, 10])

    def test_zero_rescans_everything(self):
        r = self.rig()
        r.add(8)
        r.set_cursor(FolderCursor("7", "0", None))
        r.start()
        self.assertEqual(r.uids, list(range(1, 9)))

    def test_uidvalidity_change_resets_to_window(self):
        r = self.rig()
        r.add(10)
        r.set_cursor(FolderCursor("6", "4242", None))
        r.start()
        self.assertEqual(r.uids, [6, 7, 8, 9, 10])
        self.assertEqual(r.cursor().uid_validity, "7")

    def test_recreated_folder_starts_again_from_its_window(self):
        r = self.rig()
        r.add(3)
        r.start()
        self.assertEqual(r.uids, [1, 2, 3])
        r.mailbox.recreate()
        r.add(2)
        r.drop()
        r.reconnect_after(r.factory.delay)
        self.assertEqual(r.cursor().uid_validity, str(r.mailbox.folders["INBOX"].uidvalidity))
        self.assertEqual([(m.uid_validity, m.uid) for m in r.pipeline.messages][3:],
                         [("8", 1), ("8", 2)])

    def test_nothing_at_or_above_the_start_fetches_nothing(self):
        r = self.rig()
        r.add(5)
        r.set_cursor(FolderCursor("7", "5", None))
        r.start()
        self.assertIn(("search", 6), self.requests(r, "search"))
        self.assertEqual(self.requests(r, "meta", "sections", "full"), [])
        self.assertEqual(r.uids, [])

    def test_cursor_read_at_every_sync(self):
        r = self.rig()
        r.add(3)
        r.set_cursor(FolderCursor("7", "3", None))
        r.start()
        self.assertEqual(r.uids, [])
        # An operator's "rescan" lands in the store while we idle.
        r.set_cursor(FolderCursor("7", "0", None))
        r.svc.wake()
        self.assertEqual(r.uids, [1, 2, 3])

    # -- batches ----------------------------------------------------------------

    def test_backlog_drains_in_chunks(self):
        r = self.rig()
        r.add(450)
        r.set_cursor(FolderCursor("7", "0", None))
        r.start()
        self.assertEqual(r.uids, list(range(1, 451)))
        batches = r.pipeline.batches
        self.assertEqual([b.cursor.last_uid for b in batches], ["200", "400", "450"])
        self.assertEqual([len(b.messages) for b in batches], [200, 200, 50])
        self.assertTrue(all(b.owner == "worker-1" for b in batches))
        self.assertEqual(len(r.store.ledger_rows(*r.provider.key)), 450)

    def test_next_chunk_fetched_while_the_previous_is_committed(self):
        r = self.rig()
        r.add(450)
        r.set_cursor(FolderCursor("7", "0", None))
        r.pipeline.hold = True
        r.start()
        metas = self.requests(r, "meta")
        # Chunk 1 is with the pipeline, chunk 2 is already read; not chunk 3.
        self.assertEqual([m[1][0] for m in metas], [1, 201])
        self.assertEqual(r.pipeline.batches, [])
        r.pipeline.hold = False
        r.pipeline.release()
        self.assertEqual(r.uids, list(range(1, 451)))
        self.assertEqual([b.cursor.last_uid for b in r.pipeline.batches], ["200", "400", "450"])

    def test_read_ahead_chunk_is_prepared_while_the_previous_commits(self):
        r = self.rig()
        r.add(450)
        r.set_cursor(FolderCursor("7", "0", None))
        r.pipeline.hold = True
        r.start()
        # Chunk 1 is with the pipeline; chunk 2, read ahead, is being mapped.
        prepared = r.pipeline.prepared
        self.assertEqual([(f, u[0], len(u)) for f, u in prepared], [("INBOX", 201, 200)])
        r.pipeline.hold = False
        r.pipeline.release()
        self.assertEqual([(f, u[0], len(u)) for f, u in prepared],
                         [("INBOX", 201, 200), ("INBOX", 401, 50)])
        self.assertEqual(r.uids, list(range(1, 451)))

    def test_failed_batch_with_a_chunk_read_ahead_keeps_the_cursor(self):
        r = self.rig()
        r.add(450)
        r.set_cursor(FolderCursor("7", "0", None))
        r.pipeline.fail_next(RuntimeError("db down"))
        r.start()
        self.assertEqual(r.cursor().last_uid, "0")
        self.assertEqual(r.pipeline.batches, [])
        self.assertEqual(r.store.ledger_rows(*r.provider.key), [])
        self.flushLoggedErrors(RuntimeError)

    def test_structure_path_fetches_text_only(self):
        r = self.rig()
        small = message(1, b"short text")
        big = message(2, b"y" * 500)  # above the 100-byte text cap
        r.mailbox.append(small)
        r.mailbox.append(big)
        r.set_cursor(FolderCursor("7", "0", None))
        r.start()
        self.assertEqual(
            self.requests(r, "meta", "sections", "full"),
            [("meta", (1, 2)), ("sections", {1: (("1", None),)}),
             ("sections", {2: (("1", 100),)})],
        )
        m1, m2 = r.pipeline.batches[0].messages
        self.assertEqual(dict(m1.texts), {"1": b"short text"})
        self.assertEqual(dict(m2.texts), {"1": b"y" * 100})
        self.assertEqual(tuple(m2.truncated), ("1",))
        self.assertEqual(m1.internal_date, "2026-01-10T12:00:00.000Z")
        self.assertEqual(m1.header, split_header(small)[0])
        self.assertEqual((m1.mailbox, m1.uid_validity), ("INBOX", "7"))
        self.assertIsNone(m1.raw)
        self.assertEqual(r.mailbox.fetched.count(("full", "INBOX", 1)), 0)

    def test_fallback_fetches_whole_message_within_cap(self):
        r = self.rig()
        small = message(1)
        r.mailbox.append(small, bodystructure="garbage")
        r.mailbox.append(message(2, b"z" * 20000), bodystructure="garbage")  # above the cap
        r.set_cursor(FolderCursor("7", "0", None))
        r.start()
        self.assertEqual(self.requests(r, "meta", "sections", "full"),
                         [("meta", (1, 2)), ("full", (1,))])
        m1, m2 = r.pipeline.batches[0].messages
        self.assertEqual(m1.raw, small)
        self.assertIsNone(m2.raw)
        self.assertEqual(tuple(m2.truncated), ("TEXT",))
        self.assertEqual(r.cursor().last_uid, "2")

    def test_broken_bodystructure_host_uses_fallback(self):
        r = self.rig(options=with_options(broken_bodystructure_hosts=("example.com",)))
        r.add(1)
        r.set_cursor(FolderCursor("7", "0", None))
        r.start()
        self.assertEqual(self.requests(r, "meta", "sections", "full"),
                         [("meta", (1,)), ("full", (1,))])
        self.assertEqual(r.pipeline.messages[0].raw, r.mailbox.folders["INBOX"].messages[1].raw)

    # -- failures ---------------------------------------------------------------

    def test_pipeline_failure_keeps_cursor_and_reconnects(self):
        r = self.rig()
        r.add(3)
        r.set_cursor(FolderCursor("7", "0", None))
        r.pipeline.fail_next(RuntimeError("database down"))
        first = r.start()
        self.assertEqual(r.cursor(), FolderCursor("7", "0", None))
        self.assertEqual(r.svc.state, S.BACKOFF)
        self.assertIn("database down", r.svc.last_error)
        self.assertTrue(first.transport.closed)
        # base 2 s, jitter 0.5, rand 0.5 -> 1.5 s, plus the lost session's
        # spread: stagger 2 s * 0.5
        r.reconnect_after(2.5)
        self.assertEqual(r.uids, [1, 2, 3])
        self.assertEqual(r.cursor().last_uid, "3")

    def test_lease_lost_stops(self):
        r = self.rig()
        r.start()
        self.assertEqual(r.cursor().last_uid, "0")
        r.store.expire_lease(*r.provider.key)
        r.add(3)  # EXISTS while idling: the batch is refused by the store's fence
        self.assertEqual(r.svc.state, S.STOPPED)
        self.assertIn(("lease_lost",), r.hooks.events)
        calls = r.factory.connect_calls
        r.reactor.advance(3600)
        self.assertEqual(r.factory.connect_calls, calls)
        self.assertEqual(r.cursor().last_uid, "0")
        self.assertEqual(r.store.ledger_rows(*r.provider.key), [])

    def test_auth_failure_needs_reauth_without_retry(self):
        r = self.rig()
        r.mailbox.refuse_logins(times=None)
        r.start()
        self.assertEqual(r.svc.state, S.NEEDS_REAUTH)
        self.assertEqual(r.hooks.events.count(("auth_failed", "AUTHENTICATIONFAILED")), 1)
        self.assertEqual(r.factory.connect_calls, 1)
        r.reactor.advance(24 * 3600)
        self.assertEqual(r.factory.connect_calls, 1)
        self.assertEqual(r.creds.calls, 1)
        self.assertEqual(len(r.mailbox.logins), 1)
        # The supervisor asks for a new attempt (credentials fixed).
        r.mailbox.accept_logins()
        r.svc.reconnect()
        r.reactor.advance(0)
        r.accept()
        self.assertEqual(r.svc.state, S.IDLING)

    def test_secret_not_in_logs_or_errors(self):
        seen = []
        globalLogPublisher.addObserver(seen.append)
        self.addCleanup(globalLogPublisher.removeObserver, seen.append)
        r = self.rig()
        r.mailbox.refuse_logins(times=None)
        r.start()
        text = " ".join(formatEvent(e) + repr(e) for e in seen) + repr(r.svc.snapshot())
        self.assertIn("AUTHENTICATIONFAILED", text)
        self.assertNotIn(PASSWORD, text)

    def test_backoff_grows_with_jitter_and_resets_after_sync(self):
        r = self.rig()
        r.start()
        delays = []
        r.drop()
        delays.append(r.factory.delay)
        r.reactor.advance(r.factory.delay)
        r.refuse(Failure(RuntimeError("x")))  # the next attempt is refused
        delays.append(r.factory.delay)
        r.reconnect_after(r.factory.delay)
        # rand=0.5, jitter 0.5: d*(0.75) for d = 2, 4 -> 1.5, 3.0 (the first,
        # after a lost session, spread by stagger 2 s * 0.5 = 2.5); then the
        # successful sync resets the delay.
        self.assertEqual(delays, [2.5, 3.0])
        self.assertEqual(r.factory.retries, 0)
        self.assertEqual(r.svc.state, S.IDLING)

    def test_backoff_caps_at_max(self):
        r = self.rig()
        r.start()
        r.drop()
        seen = [r.factory.delay]
        for _ in range(8):
            r.reactor.advance(r.factory.delay)
            r.refuse(Failure(RuntimeError("x")))
            seen.append(r.factory.delay)
        self.assertEqual(seen, [2.5, 3.0, 6.0, 12.0, 24.0, 45.0, 45.0, 45.0, 45.0])
        self.assertEqual(r.svc.state, S.BACKOFF)

    def test_out_of_descriptors_backs_off_and_warns_once(self):
        seen = []
        globalLogPublisher.addObserver(seen.append)
        self.addCleanup(globalLogPublisher.removeObserver, seen.append)

        def warnings():
            return [e for e in seen if e.get("log_level") >= LogLevel.warn
                    and "descriptors" in e.get("log_format", "")]

        def emfile():
            # what twisted.internet.tcp.Client reports when socket() fails
            return Failure(ConnectBindError(errno.EMFILE, "Too many open files"))

        r = self.rig()
        r.svc.startService()
        r.reactor.advance(1.0)
        delays = []
        for _ in range(5):
            r.refuse(emfile())
            delays.append(r.factory.delay)
            r.reactor.advance(r.factory.delay)
        # exponential back-off, not a tight loop (2, 4, 8, 16, 32 s * 0.75)
        self.assertEqual(delays, [1.5, 3.0, 6.0, 12.0, 24.0])
        self.assertEqual(len(warnings()), 1)
        self.assertEqual(r.svc.reconnects["fd_exhausted"], 5)
        self.assertEqual(r.svc.state, S.BACKOFF)
        self.assertIn("Too many open files", r.svc.last_error)
        # a working connect re-arms the warning for the next exhaustion
        r.accept()
        self.assertEqual(r.svc.state, S.IDLING)
        r.drop()
        r.reactor.advance(r.factory.delay)
        r.refuse(emfile())
        r.reactor.advance(r.factory.delay)
        r.refuse(emfile())
        self.assertEqual(len(warnings()), 2)

    def test_throttled_delay_honoured(self):
        # The close takes a reactor turn, as on a socket: the folder reads
        # the server's hint before the connection's end schedules the retry.
        r = self.rig(lazy_close=True)
        r.start()
        r.mailbox.fail_command(
            "EXAMINE", None, "Request is throttled. Suggested Backoff Time: 12345 milliseconds")
        r.svc.wake()
        r.reactor.advance(0)
        self.assertEqual(r.factory.delay, 12.345)
        self.assertEqual(r.svc.state, S.BACKOFF)
        r.reconnect_after(12.345)
        self.assertEqual(r.svc.state, S.IDLING)

    def test_bye_is_a_normal_reconnect(self):
        seen = []
        globalLogPublisher.addObserver(seen.append)
        self.addCleanup(globalLogPublisher.removeObserver, seen.append)
        r = self.rig()
        r.start()
        r.drop(bye="Server shutting down")
        self.assertEqual(r.svc.state, S.BACKOFF)
        # an announced close is expected: nothing at warning or above
        self.assertEqual([e for e in seen if e["log_level"] >= LogLevel.warn], [])
        r.reconnect_after(2.5)  # 1.5 back-off + stagger spread 1.0
        self.assertEqual(r.svc.state, S.IDLING)

    def test_missing_folder_backs_off_long(self):
        r = self.rig(folder="Tickets")
        r.start()
        self.assertEqual(r.svc.state, S.BACKOFF)
        self.assertIn("Tickets", r.svc.last_error)
        self.assertEqual(r.factory.delay, 60.0)

    def test_folder_resolved_case_insensitively(self):
        r = self.rig(mailbox=mailbox(folders=("INBOX", "Entw&APw-rfe")), folder="ENTWÜRFE")
        r.add(1, folder="Entw&APw-rfe")
        session = r.start()
        self.assertEqual(r.svc.server_name, "Entw&APw-rfe")
        self.assertEqual(r.pipeline.batches[0].folder, "Entw&APw-rfe")
        self.assertEqual(session.selected, "Entw&APw-rfe")
        self.assertEqual(r.mailbox.fetched[0][1], "Entw&APw-rfe")

    # -- waking up ---------------------------------------------------------------

    def test_exists_while_idling_syncs_at_once(self):
        r = self.rig()
        session = r.start()
        self.assertTrue(session.idling)
        r.add(1)
        self.assertEqual(session.commands.count("DONE"), 1)
        self.assertEqual(r.uids, [1])
        self.assertTrue(session.idling)
        self.assertEqual(r.svc.state, S.IDLING)

    def test_wake_during_sync_runs_one_more(self):
        r = self.rig()
        r.add(1)
        r.pipeline.hold = True
        r.set_cursor(FolderCursor("7", "0", None))
        r.start()
        self.assertEqual(r.svc.state, S.SYNCING)
        r.add(1)  # no IDLE running: no EXISTS callback
        r.svc.wake()
        r.svc.wake()
        self.assertEqual(len(self.requests(r, "search")), 1)
        r.pipeline.hold = False
        r.pipeline.release()
        self.assertEqual(r.uids, [1, 2])
        self.assertEqual(len(self.requests(r, "search")), 2)
        self.assertEqual(r.svc.state, S.IDLING)

    def test_exists_during_sync_syncs_again_before_idle(self):
        # The server announced new mail in an untagged EXISTS during a FETCH;
        # IDLE will not repeat it, so the folder must not go idle yet.
        r = self.rig()
        r.add(1)
        r.pipeline.hold = True
        r.set_cursor(FolderCursor("7", "0", None))
        r.start()
        r.add(1)
        r.pipeline.hold = False
        r.pipeline.release()
        self.assertEqual(r.uids, [1, 2])
        self.assertEqual(r.svc.state, S.IDLING)

    def test_credential_source_auth_failure_needs_reauth(self):
        class NoPassword(Exception):
            auth_failure = True
            code = "missing_credentials"

        class NoSource:
            calls = 0

            def credentials(self, provider, force_refresh=False):
                self.calls += 1
                return defer.fail(NoPassword("no password stored"))

        r = self.rig(credentials=NoSource())
        r.svc.startService()
        r.reactor.advance(1.0)
        r.accept()
        self.assertEqual(r.svc.state, S.NEEDS_REAUTH)
        self.assertEqual(r.hooks.events.count(("auth_failed", "missing_credentials")), 1)
        self.assertEqual(r.mailbox.logins, [])
        r.reactor.advance(3600)
        self.assertEqual(r.factory.connect_calls, 1)

    def test_idle_restart_timer(self):
        r = self.rig()
        session = r.start()

        def counts():
            return tuple(session.commands.count(c) for c in ("DONE", "IDLE", "EXAMINE"))

        self.assertEqual(counts(), (0, 1, 1))
        # Keep-alive: 240 s (+/- 10 %, rand 0.5 -> 240 s): DONE and IDLE again, no sync.
        r.reactor.advance(239.9)
        self.assertEqual(counts(), (0, 1, 1))
        r.reactor.advance(0.1)
        self.assertEqual(counts(), (1, 2, 1))
        self.assertEqual(r.svc.idle_keepalives, 1)
        self.assertTrue(session.idling)
        r.reactor.advance(240)
        self.assertEqual(counts(), (2, 3, 1))
        # The restart (600 s) counts from the first IDLE, across keep-alives,
        # and syncs before idling again.
        r.reactor.advance(119.9)
        self.assertEqual(counts(), (2, 3, 1))
        r.reactor.advance(0.1)
        self.assertEqual(counts(), (3, 4, 2))
        self.assertTrue(session.idling)
        self.assertEqual(r.svc.snapshot()["idleKeepalives"], 2)

    def test_wake_during_keepalive_done_syncs(self):
        r = self.rig(at_once=False)
        session = r.start()
        session.flush()
        syncs = r.svc.sync_count
        r.reactor.advance(240)
        self.assertEqual(session.commands[-1], "DONE")
        # An admin resync arrives before the server answered the keep-alive's DONE.
        r.svc.wake()
        session.flush()
        self.assertEqual(r.svc.sync_count, syncs + 1)
        self.assertEqual(session.commands.count("EXAMINE"), 2)
        self.assertEqual(r.svc.state, S.IDLING)

    def test_poll_without_idle(self):
        r = self.rig(mailbox=mailbox(capabilities=NO_IDLE))
        session = r.start()
        self.assertEqual(r.svc.state, S.SELECTED)
        self.assertNotIn("IDLE", session.commands)
        r.add(2)
        # 30 s, jitter +/- 0.1, rand 0.5 -> 30 s
        r.reactor.advance(29.9)
        self.assertEqual(r.uids, [])
        r.reactor.advance(0.1)
        self.assertEqual(r.uids, [1, 2])
        r.add(1)
        r.svc.wake()
        self.assertEqual(r.uids, [1, 2, 3])

    # -- lifecycle ------------------------------------------------------------

    def test_startup_stagger(self):
        r = self.rig()
        r.svc.startService()
        r.reactor.advance(0.99)
        self.assertEqual(r.reactor.tcpClients, [])
        r.reactor.advance(0.01)
        host, port, factory, timeout, _ = r.reactor.tcpClients[0]
        self.assertEqual((host, port, timeout), ("imap.example.com", 993, 10.0))
        r.accept()

    def test_capabilities_saved_sorted_once_per_login(self):
        r = self.rig(mailbox=mailbox(capabilities=("IMAP4rev1", "IDLE", "AUTH=PLAIN")))

        def saved():
            return r.store.provider_row(*r.provider.key)["server_capabilities"]

        r.start()
        self.assertEqual(saved(), ("AUTH=PLAIN", "IDLE", "IMAP4REV1"))
        # Only a login saves them: a sync on the same session does not.
        r.mailbox.capability_words.append("MOVE")
        r.add(1)
        self.assertEqual(saved(), ("AUTH=PLAIN", "IDLE", "IMAP4REV1"))
        r.drop()
        r.reconnect_after(r.factory.delay)
        self.assertEqual(saved(), ("AUTH=PLAIN", "IDLE", "IMAP4REV1", "MOVE"))

    def test_keepalive_set(self):
        r = self.rig()
        session = r.start()
        self.assertIs(session.transport.keepalive, True)

    def test_stop_leaves_idle_and_logs_out(self):
        r = self.rig(at_once=False)
        session = r.start()
        session.flush()
        d = r.svc.stopService()
        self.assertNoResult(d)
        session.flush()
        self.assertEqual(session.commands[-2:], ["DONE", "LOGOUT"])
        self.assertTrue(session.transport.closed)
        self.successResultOf(d)
        self.assertEqual(r.svc.state, S.STOPPED)
        r.reactor.advance(3600)
        self.assertEqual(r.factory.connect_calls, 1)

    def test_stop_is_bounded(self):
        r = self.rig(at_once=False)
        session = r.start()
        session.flush()
        transport = session.transport
        close = type(transport).loseConnection
        transport.loseConnection = lambda: None  # a peer that never closes
        aborted = []
        transport.abortConnection = lambda: (aborted.append(1), close(transport))
        d = r.svc.stopService()  # the server answers nothing any more
        self.assertNoResult(d)
        bound = r.svc.options.shutdown_timeout_ms / 1000.0
        r.reactor.advance(bound - 0.1)
        self.assertNoResult(d)
        r.reactor.advance(0.1)
        self.assertEqual(aborted, [1])
        self.successResultOf(d)
        self.assertEqual(r.svc.state, S.STOPPED)

    def test_snapshot(self):
        r = self.rig()
        r.add(6)
        r.start()
        snap = r.svc.snapshot()
        self.assertEqual(snap["state"], S.IDLING)
        self.assertEqual(snap["cursor"]["last_uid"], "6")
        self.assertEqual(
            [h["to"] for h in snap["history"]],
            [S.CONNECTING, S.AUTHENTICATING, S.SELECTED, S.SYNCING, S.IDLING],
        )

    def test_snapshot_counters_for_metrics(self):
        r = self.rig()
        r.add(6)
        r.start()
        snap = r.svc.snapshot()
        # Window of 5 from UIDNEXT 7: header + text bytes of UIDs 2..6 only.
        messages = r.mailbox.folders["INBOX"].messages
        fetched = sum(
            len(messages[u].header) + len(section_bytes(messages[u].raw, "1"))
            for u in range(2, 7)
        )
        self.assertEqual(snap["bytesFetched"], fetched)
        self.assertEqual((snap["uidNext"], snap["lag"]), (7, 0))
        r.add(2)  # one EXISTS while idling
        snap = r.svc.snapshot()
        self.assertEqual(snap["idleWakeups"], 1)
        self.assertEqual(snap["lag"], 0)
        r.drop(bye="Server shutting down")
        self.assertEqual(r.svc.snapshot()["reconnects"], {"bye": 1})
        r.reconnect_after(2.5)
        r.drop()
        self.assertEqual(r.svc.snapshot()["reconnects"], {"bye": 1, "connection_lost": 1})


# -- OAuth2 refresh-ahead -------------------------------------------------------


class OAuthSource:
    """XOAUTH2 tokens: each login gets a new token valid ``lifetime``
    seconds (as a refresh would)."""

    def __init__(self, clock, lifetime):
        self.clock = clock
        self.lifetime = lifetime
        self.calls = 0
        self.expiry = None

    def credentials(self, provider, force_refresh=False):
        self.calls += 1
        self.expiry = self.clock.seconds() + self.lifetime
        return defer.succeed(Credentials("xoauth2", provider.username, f"token-{self.calls}"))

    def token_expiry(self, provider):
        return self.expiry


class RefreshAheadTests(RigTestCase):
    LIFETIME = REFRESH_MARGIN_S + 100

    def oauth_rig(self, lifetime=LIFETIME, **kw):
        kw.setdefault("mailbox", mailbox(accounts=None))
        rig = FolderRig(**kw)
        rig.creds.clock = rig.reactor
        rig.creds.lifetime = lifetime
        self.addCleanup(self._stop, rig)
        return rig

    def rig(self, lifetime=LIFETIME, **kw):
        return self.oauth_rig(lifetime, credentials=OAuthSource(None, lifetime), **kw)

    def reconnected(self, rig, attempts=2):
        """The reconnect was scheduled with no delay (the clock already ran
        it, or runs it now): let it succeed."""
        rig.reactor.advance(0)
        self.assertEqual(rig.factory.connect_calls, attempts)
        return rig.accept()

    def logouts(self, rig):
        return len(rig.commands("LOGOUT"))

    def test_idle_ends_and_reconnects_at_expiry_minus_margin(self):
        r = self.rig()
        first = r.start()
        self.assertEqual(r.svc.state, S.IDLING)
        self.assertEqual(r.creds.calls, 1)
        self.assertEqual(r.mailbox.logins[0][0], "xoauth2")
        r.reactor.advance(99.9)
        self.assertNotIn("DONE", first.commands)
        self.assertFalse(first.transport.closed)
        r.reactor.advance(0.1)
        # IDLE ended with DONE, LOGOUT, connection closed, no new sync on it.
        self.assertEqual(first.commands[-2:], ["DONE", "LOGOUT"])
        self.assertTrue(first.transport.closed)
        self.assertEqual(r.svc.state, S.BACKOFF)
        self.assertEqual(r.svc.history[-1].reason, "reconnecting with a refreshed access token")
        self.assertIsNone(r.svc.history[-1].error)
        # Mail arriving between the sessions is picked up by the next one.
        r.add(2)
        second = self.reconnected(r)
        self.assertIsNot(second, first)
        self.assertEqual(r.creds.calls, 2)
        self.assertEqual(r.svc.state, S.IDLING)
        self.assertEqual(r.uids, [1, 2])
        # The new token gets its own timer, at its own due time.
        r.reactor.advance(99.9)
        self.assertEqual(self.logouts(r), 1)
        r.reactor.advance(0.1)
        self.assertEqual(self.logouts(r), 2)
        self.reconnected(r, attempts=3)

    def test_due_during_sync_finishes_the_sync_then_reconnects(self):
        r = self.rig()
        first = r.start()
        r.pipeline.hold = True
        r.add(3)  # EXISTS while idling: a sync starts and holds
        self.assertEqual(r.svc.state, S.SYNCING)
        r.reactor.advance(100)
        self.assertEqual(self.logouts(r), 0, "the sync in progress is not cut off")
        r.pipeline.hold = False
        r.pipeline.release()
        self.assertEqual(r.uids, [1, 2, 3])
        self.assertEqual(r.cursor().last_uid, "3")
        self.assertEqual(self.logouts(r), 1)
        # No IDLE after that sync: straight to LOGOUT.
        self.assertEqual(first.commands.count("IDLE"), 1)
        self.assertEqual(first.commands[-1], "LOGOUT")
        self.reconnected(r)
        self.assertEqual(r.creds.calls, 2)
        self.assertEqual(r.uids, [1, 2, 3])

    def test_poll_wait_ends_early(self):
        r = self.rig(lifetime=REFRESH_MARGIN_S + 10,
                     mailbox=mailbox(accounts=None, capabilities=("IMAP4rev1", "AUTH=XOAUTH2")))
        r.start()
        self.assertEqual(r.svc.state, S.SELECTED)
        r.reactor.advance(10)
        self.assertEqual(self.logouts(r), 1)
        self.reconnected(r)
        self.assertEqual(r.creds.calls, 2)

    def test_password_login_schedules_nothing(self):
        r = FolderRig()
        self.addCleanup(self._stop, r)
        r.creds.token_expiry = lambda provider: r.reactor.seconds() + 400
        r.start()
        # Only the IDLE restart and keep-alive timers.
        self.assertEqual(len(r.reactor.getDelayedCalls()), 2)
        r.reactor.advance(400)
        self.assertEqual(self.logouts(r), 0)

    def test_no_expiry_known_schedules_nothing(self):
        r = self.rig()
        r.creds.token_expiry = lambda provider: None
        r.start()
        self.assertEqual(len(r.reactor.getDelayedCalls()), 2)

    def test_token_already_inside_margin_waits_before_reconnecting(self):
        r = self.rig(lifetime=REFRESH_MARGIN_S - 60)
        r.start()
        r.reactor.advance(TOKEN_RETRY_S - 0.1)
        self.assertEqual(self.logouts(r), 0)
        r.reactor.advance(0.1)
        self.assertEqual(self.logouts(r), 1)
        self.reconnected(r)

    def test_timer_cancelled_on_disconnect(self):
        r = self.rig()
        r.start()
        r.reactor.advance(50)
        r.drop()  # the server dropped us
        self.assertEqual(r.svc.state, S.BACKOFF)
        # back-off 2 s, jitter 0.5, rand 0.5 -> 1.5 s; + stagger spread 1.0
        r.reconnect_after(2.5)
        self.assertEqual(r.creds.calls, 2)
        new_due = r.reactor.seconds() + 100
        # The old session's due time passes without a reconnect...
        r.reactor.advance(50)
        self.assertEqual(self.logouts(r), 0)
        # ...the new session's comes at its own.
        r.reactor.advance(new_due - r.reactor.seconds() - 0.1)
        self.assertEqual(self.logouts(r), 0)
        r.reactor.advance(0.1)
        self.assertEqual(self.logouts(r), 1)
        self.reconnected(r, attempts=3)

    def test_timer_cancelled_on_stop(self):
        r = self.rig()
        r.start()
        d = r.svc.stopService()
        self.successResultOf(d)
        self.assertEqual(r.reactor.getDelayedCalls(), [])
        self.assertEqual(r.creds.calls, 1)


class OptionsTests(SynchronousTestCase):
    def test_options_evolve(self):
        self.assertEqual(with_options(fetch_chunk=7).fetch_chunk, 7)
        self.assertEqual(FolderOptions().oauth_auth_mechanism, "auto")
