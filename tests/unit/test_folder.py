"""Unit tests of :class:`imapsvc.folder.FolderService` with a scripted fake
a protocol object with the ``FolderIMAPClient`` API, a store, a pipeline and
a credential source. No sockets."""

from __future__ import annotations

from twisted.internet import defer
from twisted.internet.error import ConnectionDone
from twisted.python.failure import Failure

from imapsvc.imap.errors import AuthenticationFailed, ConnectionGone
from imapsvc.model import BatchResult, BodyPart, Credentials

IDLE_CAPS = {b"IMAP4rev1": None, b"IDLE": None, b"AUTH": [b"PLAIN"]}
NO_IDLE_CAPS = {b"IMAP4rev1": None}


def simple_parser(struct):
    """Test BODYSTRUCTURE parser: ``("text", n)`` -> one text part of n
    bytes plus an attachment; anything else is unusable."""
    if isinstance(struct, tuple) and struct[0] == "text":
        return [
            BodyPart("1", "text/plain", {}, "7bit", struct[1], struct[1], is_body_text=True),
            BodyPart("2", "application/pdf", {}, "base64", 5000, 3700, disposition="attachment"),
        ]
    return None


class FakeServer:
    def __init__(self, uidvalidity=7, caps=IDLE_CAPS, folders=("INBOX",)):
        self.uidvalidity = uidvalidity
        self.caps = caps
        self.folders = list(folders)
        self.messages: dict[int, dict] = {}
        self.uidnext = 1
        self.auth_error = None
        #: Errors for the next logins, one each, before ``auth_error``.
        self.auth_errors: list = []
        #: ``(credentials, keyword arguments)`` of every login.
        self.logins: list = []
        self.search_extra_highest = True
        self.commands: list[tuple] = []
        self.protos: list[FakeProto] = []

    def add(self, count=1, struct=("text", 10), size=100, notify=True):
        for _ in range(count):
            uid = self.uidnext
            self.uidnext += 1
            self.messages[uid] = {
                "size": size,
                "internaldate": "01-Jan-2026 10:00:00 +0000",
                "bodystructure": struct,
                "header": b"Subject: m%d\r\n\r\n" % uid,
                "body": b"body of %d" % uid,
            }
        for p in self.protos if notify else ():
            if not p.transport.closed:
                p.last_exists = len(self.messages)
            if p.idling and p.on_exists is not None:
                p.on_exists(len(self.messages))

    def recreate(self):
        """Delete and recreate the folder: new UIDVALIDITY, UIDs from 1."""
        self.uidvalidity += 1
        self.messages.clear()
        self.uidnext = 1


class FakeTransport:
    def __init__(self, proto):
        self.proto = proto
        self.closed = False
        self.keepalive = None

    def setTcpKeepAlive(self, on):
        self.keepalive = on

    def loseConnection(self):
        if not self.closed:
            self.closed = True
            self.proto.connection_lost()

    abortConnection = loseConnection


class FakeProto:
    def __init__(self, server: FakeServer, connector=None):
        self.server = server
        self.greeted = defer.Deferred()
        self.idling = False
        self.on_exists = None
        self.on_bye = None
        self.transport = FakeTransport(self)
        self.pending: list[defer.Deferred] = []
        self.done_calls = 0
        self.logged_out = False
        self.factory = None
        self.connector = connector
        self.hold = set()  # command names whose Deferreds the test fires
        self.hold_done = False  # DONE's answer waits for finish_idle()
        self.last_exists = None  # as FolderIMAPClient: last EXISTS, any command

    def _reply(self, name, value, *args):
        self.server.commands.append((name,) + args)
        if self.transport.closed:
            return defer.fail(ConnectionGone("closed"))
        d = defer.Deferred()
        self.pending.append(d)
        if name not in self.hold:
            self.pending.remove(d)
            if isinstance(value, Exception):
                d.errback(value)
            else:
                d.callback(value)
        else:
            d.value_to_send = value
        return d

    def release(self):
        for d in list(self.pending):
            self.pending.remove(d)
            d.callback(d.value_to_send)

    def connection_lost(self):
        self.idling = False
        for d in list(self.pending):
            self.pending.remove(d)
            d.errback(ConnectionGone("connection lost"))
        if self.factory is not None:
            self.factory.clientConnectionLost(self.connector, Failure(ConnectionDone()))

    # -- the FolderIMAPClient API --
    def start_tls(self, ctx):
        return self._reply("STARTTLS", None)

    def authenticate_with(self, creds, **kwargs):
        self.server.logins.append((creds, kwargs))
        error = self.server.auth_errors.pop(0) if self.server.auth_errors else None
        error = error or self.server.auth_error
        if error is not None:
            return self._reply("LOGIN", error, creds.username)
        return self._reply("LOGIN", dict(self.server.caps), creds.username)

    def list_folders(self):
        return self._reply("LIST", [((), "/", f) for f in self.server.folders])

    def examine_folder(self, name):
        s = self.server
        return self._reply(
            "EXAMINE",
            {"uidvalidity": s.uidvalidity, "uidnext": s.uidnext, "exists": len(s.messages)},
            name,
        )

    def uid_search_from(self, first):
        uids = sorted(u for u in self.server.messages if u >= first)
        if not uids and self.server.search_extra_highest and self.server.messages:
            uids = [max(self.server.messages)]  # "n:*" matches the highest UID
        return self._reply("SEARCH", uids, first)

    def fetch_meta(self, uids):
        m = self.server.messages
        out = {
            u: {k: m[u][k] for k in ("size", "internaldate", "bodystructure", "header")}
            for u in uids
            if u in m
        }
        return self._reply("FETCH_META", out, tuple(uids))

    def fetch_sections(self, requests):
        out = {}
        for uid, secs in requests.items():
            body = self.server.messages[uid]["body"]
            out[uid] = {s: body if n is None else body[:n] for s, n in secs}
        return self._reply("FETCH_SECTIONS", out, {u: tuple(s) for u, s in requests.items()})

    def fetch_full(self, uids):
        m = self.server.messages
        out = {u: m[u]["header"] + m[u]["body"] for u in uids if u in m}
        return self._reply("FETCH_FULL", out, tuple(uids))

    def idle(self, on_exists):
        self.server.commands.append(("IDLE",))
        self.idling = True
        self.on_exists = on_exists
        self._idle_d = defer.Deferred()
        self.pending.append(self._idle_d)
        return self._idle_d

    @property
    def idle_ending(self):
        """DONE is out and its answer not in (IIMAPSession.idle_ending)."""
        return not self.idling and getattr(self, "_idle_d", None) in self.pending

    def done(self):
        self.done_calls += 1
        assert self.idling, "DONE outside IDLE"
        self.idling = False
        if not self.hold_done:
            self.finish_idle()

    def finish_idle(self):
        """The server's tagged OK to DONE."""
        self.pending.remove(self._idle_d)
        self._idle_d.callback(None)

    def logout(self):
        self.logged_out = True
        return self._reply("LOGOUT", None)


class FakeStore:
    def __init__(self):
        self.cursors = {}
        self.capabilities = []

    def read_cursor(self, tenant, provider_id, folder):
        return defer.succeed(self.cursors.get(folder))

    def save_capabilities(self, tenant, provider_id, caps, owner=None):
        self.capabilities.append(list(caps))
        return defer.succeed(None)

    def write_cursor(self, tenant, provider_id, folder, cursor, owner):
        self.cursors[folder] = cursor
        return defer.succeed(None)


class FakePipeline:
    """Records batches; writes the cursor into the store like the real one.
    ``fail_with`` makes the next batch fail; ``hold`` keeps batches pending."""

    def __init__(self, store: FakeStore):
        self.store = store
        self.batches = []
        self.fail_with = None
        self.hold = False
        self.pending = []

    @property
    def uids(self):
        return [m.uid for b in self.batches for m in b[0]]

    def handle_batch(self, provider, folder, owner, messages, cursor):
        if self.fail_with is not None:
            err, self.fail_with = self.fail_with, None
            return defer.fail(err)
        d = defer.Deferred()

        def commit(_):
            self.batches.append((list(messages), cursor, folder, owner))
            self.store.cursors[folder] = cursor
            return BatchResult(tuple("published" for _ in messages))

        d.addCallback(commit)
        if self.hold:
            self.pending.append(d)
        else:
            d.callback(None)
        return d

    def release(self):
        pending, self.pending = self.pending, []
        for d in pending:
            d.callback(None)


class FakeCredentials:
    def __init__(self):
        self.calls = 0

    def credentials(self, provider):
        self.calls += 1
        return defer.succeed(Credentials("password", provider.username, "s3cret-pw"))


class RecordingHooks:
    def __init__(self):
        self.events = []

    def state_changed(self, state, reason="", error=None):
        self.events.append(("state", state))

    def auth_failed(self, code, text=""):
        self.events.append(("auth_failed", code))

    def logged_in(self):
        self.events.append(("logged_in",))

    def synced(self):
        self.events.append(("synced",))

    def lease_lost(self):
        self.events.append(("lease_lost",))


def auth_error():
    return AuthenticationFailed("AUTHENTICATIONFAILED", "Authentication failed.")


# ---------------------------------------------------------------------------
# tests

from twisted.internet.testing import MemoryReactorClock  # noqa: E402
from twisted.trial.unittest import SynchronousTestCase  # noqa: E402

from imapsvc import folder_state as S  # noqa: E402
from imapsvc.folder import FolderOptions, FolderService  # noqa: E402
from imapsvc.imap.errors import Throttled  # noqa: E402
from imapsvc.interfaces import LeaseLost  # noqa: E402
from imapsvc.model import FolderCursor, Limits, ProviderConfig  # noqa: E402

PROVIDER = ProviderConfig(
    tenant="t1",
    provider_id="p1",
    provider_name="Support",
    mailbox="support@example.com",
    host="imap.example.com",
    port=993,
    username="support@example.com",
)

OPTIONS = FolderOptions(
    max_emails_per_sync=5,
    poll_interval_ms=30000,
    idle_restart_ms=600000,
    idle_keepalive_ms=240000,
    timer_jitter_pct=0.1,
    startup_stagger_ms=2000,
    reconnect_base_ms=2000,
    reconnect_max_ms=60000,
    reconnect_jitter_pct=0.5,
    fetch_chunk=200,
    limits=Limits(max_raw_mime_bytes=10000, max_text_part_bytes=100),
)


class Rig:
    """One FolderService wired to the fakes."""

    def __init__(self, server=None, options=OPTIONS, provider=PROVIDER, folder="INBOX"):
        self.server = server or FakeServer()
        self.reactor = MemoryReactorClock()
        self.store = FakeStore()
        self.pipeline = FakePipeline(self.store)
        self.creds = FakeCredentials()
        self.hooks = RecordingHooks()
        self.svc = FolderService(
            provider,
            folder,
            self.reactor,
            self.store,
            self.pipeline,
            self.creds,
            "worker-1",
            options,
            hooks=self.hooks,
            protocol_factory=self._proto,
            tls_factory=lambda host: None,
            parser=simple_parser,
            rand=lambda: 0.5,
        )
        self.factory = self.svc.factory

    def _proto(self):
        p = FakeProto(self.server, self.reactor.connectors[-1])
        self.server.protos.append(p)
        return p

    @property
    def proto(self):
        return self.server.protos[-1]

    def start(self):
        self.svc.startService()
        self.reactor.advance(1.0)  # stagger: 2000 ms * 0.5
        return self.accept()

    def accept(self):
        """The pending connection attempt succeeds and the server greets."""
        proto = self.factory.buildProtocol(None)
        proto.greeted.callback(dict(self.server.caps))
        return proto

    def reconnect_after(self, delay):
        before = self.factory.connect_calls
        self.reactor.advance(delay)
        assert self.factory.connect_calls == before + 1, "no reconnect attempt"
        self.factory.startedConnecting(self.reactor.connectors[-1])
        return self.accept()

    def states(self):
        return [t.new for t in self.svc.history]


class FolderServiceTests(SynchronousTestCase):
    def rig(self, **kw):
        rig = Rig(**kw)
        self.addCleanup(self._stop, rig)
        return rig

    def _stop(self, rig):
        if rig.svc.running:
            rig.svc.stopService()
        self.assertEqual(rig.svc.invalid_transitions, 0, rig.states())
        self.assertEqual(rig.reactor.getDelayedCalls(), [])

    # -- where a sync starts --------------------------------------------------

    def test_no_cursor_takes_recent_window(self):
        r = self.rig()
        r.server.add(10)
        r.start()
        self.assertEqual(r.pipeline.uids, [6, 7, 8, 9, 10])
        self.assertEqual(r.store.cursors["INBOX"].last_uid, "10")
        self.assertEqual(r.store.cursors["INBOX"].uid_validity, "7")
        self.assertEqual(r.svc.state, S.IDLING)

    def test_empty_first_sync_stores_cursor_so_a_burst_is_not_skipped(self):
        # Window 5, an empty folder: the cursor must be stored now, or the
        # next sync would take the window again and skip the burst's head.
        r = self.rig()
        r.start()
        self.assertEqual(r.store.cursors["INBOX"].last_uid, "0")
        self.assertEqual(r.store.cursors["INBOX"].uid_validity, "7")
        r.server.add(8)
        self.assertEqual(r.pipeline.uids, list(range(1, 9)))

    def test_uidvalidity_reset_on_empty_folder_is_stored(self):
        r = self.rig()
        r.store.cursors["INBOX"] = FolderCursor("6", "4242", None)
        r.server.add(3)
        r.server.messages.clear()
        r.start()
        self.assertEqual(r.store.cursors["INBOX"].uid_validity, "7")
        self.assertEqual(r.store.cursors["INBOX"].last_uid, "0")

    def test_resume_at_n_plus_one(self):
        r = self.rig()
        r.server.add(10)
        r.store.cursors["INBOX"] = FolderCursor("7", "3", None)
        r.start()
        self.assertIn(("SEARCH", 4), r.server.commands)
        self.assertEqual(r.pipeline.uids, [4, 5, 6, 7, 8, 9, 10])

    def test_zero_rescans_everything(self):
        r = self.rig()
        r.server.add(8)
        r.store.cursors["INBOX"] = FolderCursor("7", "0", None)
        r.start()
        self.assertEqual(r.pipeline.uids, list(range(1, 9)))

    def test_uidvalidity_change_resets_to_window(self):
        r = self.rig()
        r.server.add(10)
        r.store.cursors["INBOX"] = FolderCursor("6", "4242", None)
        r.start()
        self.assertEqual(r.pipeline.uids, [6, 7, 8, 9, 10])
        self.assertEqual(r.store.cursors["INBOX"].uid_validity, "7")

    def test_highest_uid_below_start_is_dropped(self):
        r = self.rig()
        r.server.add(5)
        r.store.cursors["INBOX"] = FolderCursor("7", "5", None)
        r.start()
        self.assertIn(("SEARCH", 6), r.server.commands)
        self.assertEqual(r.pipeline.uids, [])

    def test_cursor_read_at_every_sync(self):
        r = self.rig()
        r.server.add(3)
        r.store.cursors["INBOX"] = FolderCursor("7", "3", None)
        r.start()
        self.assertEqual(r.pipeline.uids, [])
        # An operator's "rescan" lands in the store while we idle.
        r.store.cursors["INBOX"] = FolderCursor("7", "0", None)
        r.svc.wake()
        self.assertEqual(r.pipeline.uids, [1, 2, 3])

    # -- batches ----------------------------------------------------------------

    def test_backlog_drains_in_chunks(self):
        r = self.rig(options=FolderOptions(**{**_opts(), "fetch_chunk": 200}))
        r.server.add(450)
        r.store.cursors["INBOX"] = FolderCursor("7", "0", None)
        r.start()
        self.assertEqual(r.pipeline.uids, list(range(1, 451)))
        self.assertEqual([b[1].last_uid for b in r.pipeline.batches], ["200", "400", "450"])
        self.assertEqual([len(b[0]) for b in r.pipeline.batches], [200, 200, 50])
        self.assertTrue(all(b[3] == "worker-1" for b in r.pipeline.batches))

    def test_next_chunk_fetched_while_the_previous_is_committed(self):
        r = self.rig(options=FolderOptions(**{**_opts(), "fetch_chunk": 200}))
        r.server.add(450)
        r.store.cursors["INBOX"] = FolderCursor("7", "0", None)
        r.pipeline.hold = True
        r.start()
        metas = [c for c in r.server.commands if c[0] == "FETCH_META"]
        # Chunk 1 is with the pipeline, chunk 2 is already read; not chunk 3.
        self.assertEqual([m[1][0] for m in metas], [1, 201])
        self.assertEqual(r.pipeline.batches, [])
        r.pipeline.hold = False
        r.pipeline.release()
        self.assertEqual(r.pipeline.uids, list(range(1, 451)))
        self.assertEqual([b[1].last_uid for b in r.pipeline.batches], ["200", "400", "450"])

    def test_read_ahead_chunk_is_prepared_while_the_previous_commits(self):
        r = self.rig(options=FolderOptions(**{**_opts(), "fetch_chunk": 200}))
        r.server.add(450)
        r.store.cursors["INBOX"] = FolderCursor("7", "0", None)
        prepared = []
        r.pipeline.prepare = lambda provider, folder, messages: prepared.append(
            (folder, [m.uid for m in messages]))
        r.pipeline.hold = True
        r.start()
        # Chunk 1 is with the pipeline; chunk 2, read ahead, is being mapped.
        self.assertEqual([(f, u[0], len(u)) for f, u in prepared], [("INBOX", 201, 200)])
        r.pipeline.hold = False
        r.pipeline.release()
        self.assertEqual([(f, u[0], len(u)) for f, u in prepared],
                         [("INBOX", 201, 200), ("INBOX", 401, 50)])
        self.assertEqual(r.pipeline.uids, list(range(1, 451)))

    def test_failed_batch_with_a_chunk_read_ahead_keeps_the_cursor(self):
        r = self.rig(options=FolderOptions(**{**_opts(), "fetch_chunk": 200}))
        r.server.add(450)
        r.store.cursors["INBOX"] = FolderCursor("7", "0", None)
        r.pipeline.fail_with = RuntimeError("db down")
        r.start()
        self.assertEqual(r.store.cursors["INBOX"].last_uid, "0")
        self.assertEqual(r.pipeline.batches, [])
        self.flushLoggedErrors(RuntimeError)

    def test_structure_path_fetches_text_only(self):
        r = self.rig()
        r.server.add(1, struct=("text", 10))
        r.server.add(1, struct=("text", 500))  # above the 100-byte text cap
        r.store.cursors["INBOX"] = FolderCursor("7", "0", None)
        r.start()
        fetches = [c for c in r.server.commands if c[0].startswith("FETCH_")]
        self.assertEqual(
            fetches,
            [("FETCH_META", (1, 2)), ("FETCH_SECTIONS", {1: (("1", None),), 2: (("1", 100),)})],
        )
        m1, m2 = r.pipeline.batches[0][0]
        self.assertEqual(dict(m1.texts), {"1": b"body of 1"})
        self.assertEqual(tuple(m2.truncated), ("1",))
        self.assertEqual(m1.internal_date, "2026-01-01T10:00:00.000Z")
        self.assertEqual(m1.header, b"Subject: m1\r\n\r\n")
        self.assertEqual((m1.mailbox, m1.uid_validity), ("INBOX", "7"))
        self.assertIsNone(m1.raw)

    def test_fallback_fetches_whole_message_within_cap(self):
        r = self.rig()
        r.server.add(1, struct=None, size=100)
        r.server.add(1, struct="garbage", size=20000)  # above the 10000-byte raw cap
        r.store.cursors["INBOX"] = FolderCursor("7", "0", None)
        r.start()
        fetches = [c for c in r.server.commands if c[0].startswith("FETCH_")]
        self.assertEqual(fetches, [("FETCH_META", (1, 2)), ("FETCH_FULL", (1,))])
        m1, m2 = r.pipeline.batches[0][0]
        self.assertEqual(m1.raw, b"Subject: m1\r\n\r\nbody of 1")
        self.assertIsNone(m2.raw)
        self.assertEqual(tuple(m2.truncated), ("TEXT",))
        self.assertEqual(r.store.cursors["INBOX"].last_uid, "2")

    def test_broken_bodystructure_host_uses_fallback(self):
        r = self.rig(
            options=FolderOptions(**{**_opts(), "broken_bodystructure_hosts": ("example.com",)})
        )
        r.server.add(1)
        r.store.cursors["INBOX"] = FolderCursor("7", "0", None)
        r.start()
        self.assertIn(("FETCH_FULL", (1,)), r.server.commands)
        self.assertFalse([c for c in r.server.commands if c[0] == "FETCH_SECTIONS"])

    # -- failures ---------------------------------------------------------------

    def test_pipeline_failure_keeps_cursor_and_reconnects(self):
        r = self.rig()
        r.server.add(3)
        r.store.cursors["INBOX"] = FolderCursor("7", "0", None)
        r.pipeline.fail_with = RuntimeError("database down")
        r.start()
        self.assertEqual(r.store.cursors["INBOX"], FolderCursor("7", "0", None))
        self.assertEqual(r.svc.state, S.BACKOFF)
        self.assertIn("database down", r.svc.last_error)
        self.assertTrue(r.proto.transport.closed)
        # base 2 s, jitter 0.5, rand 0.5 -> 1.5 s, plus the lost session's
        # spread: stagger 2 s * 0.5
        r.reconnect_after(2.5)
        self.assertEqual(r.pipeline.uids, [1, 2, 3])
        self.assertEqual(r.store.cursors["INBOX"].last_uid, "3")

    def test_lease_lost_stops(self):
        r = self.rig()
        r.server.add(3)
        r.pipeline.fail_with = LeaseLost()
        r.start()
        self.assertEqual(r.svc.state, S.STOPPED)
        self.assertIn(("lease_lost",), r.hooks.events)
        calls = r.factory.connect_calls
        r.reactor.advance(3600)
        self.assertEqual(r.factory.connect_calls, calls)
        self.assertEqual(r.store.cursors, {})

    def test_auth_failure_needs_reauth_without_retry(self):
        server = FakeServer()
        server.auth_error = auth_error()
        r = self.rig(server=server)
        r.start()
        self.assertEqual(r.svc.state, S.NEEDS_REAUTH)
        self.assertEqual(r.hooks.events.count(("auth_failed", "AUTHENTICATIONFAILED")), 1)
        self.assertEqual(r.factory.connect_calls, 1)
        r.reactor.advance(24 * 3600)
        self.assertEqual(r.factory.connect_calls, 1)
        self.assertEqual(r.creds.calls, 1)
        # The supervisor asks for a new attempt (credentials fixed).
        server.auth_error = None
        r.svc.reconnect()
        r.reactor.advance(0)
        r.factory.startedConnecting(r.reactor.connectors[-1])
        r.accept()
        self.assertEqual(r.svc.state, S.IDLING)

    def test_secret_not_in_logs_or_errors(self):
        from twisted.logger import globalLogPublisher

        seen = []
        globalLogPublisher.addObserver(seen.append)
        self.addCleanup(globalLogPublisher.removeObserver, seen.append)
        server = FakeServer()
        server.auth_error = auth_error()
        r = self.rig(server=server)
        r.start()
        from twisted.logger import formatEvent

        text = " ".join(formatEvent(e) + repr(e) for e in seen) + repr(r.svc.snapshot())
        self.assertNotIn("s3cret-pw", text)

    def test_backoff_grows_with_jitter_and_resets_after_sync(self):
        r = self.rig()
        r.start()
        delays = []
        r.proto.transport.loseConnection()
        delays.append(r.factory.delay)
        r.reactor.advance(r.factory.delay)
        # the next attempt is refused
        r.factory.clientConnectionFailed(r.reactor.connectors[-1], Failure(RuntimeError("x")))
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
        r.proto.transport.loseConnection()
        seen = [r.factory.delay]
        for _ in range(8):
            r.reactor.advance(r.factory.delay)
            r.factory.clientConnectionFailed(r.reactor.connectors[-1], Failure(RuntimeError("x")))
            seen.append(r.factory.delay)
        self.assertEqual(seen, [2.5, 3.0, 6.0, 12.0, 24.0, 45.0, 45.0, 45.0, 45.0])
        self.assertEqual(r.svc.state, S.BACKOFF)

    def test_out_of_descriptors_backs_off_and_warns_once(self):
        import errno

        from twisted.internet.error import ConnectBindError
        from twisted.logger import LogLevel, globalLogPublisher

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
            r.factory.clientConnectionFailed(r.reactor.connectors[-1], emfile())
            delays.append(r.factory.delay)
            r.reactor.advance(r.factory.delay)
        # exponential back-off, not a tight loop (2, 4, 8, 16, 32 s * 0.75)
        self.assertEqual(delays, [1.5, 3.0, 6.0, 12.0, 24.0])
        self.assertEqual(len(warnings()), 1)
        self.assertEqual(r.svc.reconnects["fd_exhausted"], 5)
        self.assertEqual(r.svc.state, S.BACKOFF)
        self.assertIn("Too many open files", r.svc.last_error)
        # a working connect re-arms the warning for the next exhaustion
        r.factory.startedConnecting(r.reactor.connectors[-1])
        r.accept()
        self.assertEqual(r.svc.state, S.IDLING)
        r.proto.transport.loseConnection()
        r.reactor.advance(r.factory.delay)
        r.factory.clientConnectionFailed(r.reactor.connectors[-1], emfile())
        r.reactor.advance(r.factory.delay)
        r.factory.clientConnectionFailed(r.reactor.connectors[-1], emfile())
        self.assertEqual(len(warnings()), 2)

    def test_throttled_delay_honoured(self):
        server = FakeServer()
        r = self.rig(server=server)
        r.start()
        r.proto.hold.add("EXAMINE")
        r.svc.wake()
        d = r.proto.pending[-1]
        r.proto.pending.remove(d)
        d.errback(Throttled(12.345, "Request is throttled."))
        self.assertEqual(r.factory.delay, 12.345)
        self.assertEqual(r.svc.state, S.BACKOFF)
        r.reconnect_after(12.345)

    def test_bye_is_a_normal_reconnect(self):
        from twisted.logger import LogLevel, globalLogPublisher

        seen = []
        globalLogPublisher.addObserver(seen.append)
        self.addCleanup(globalLogPublisher.removeObserver, seen.append)
        r = self.rig()
        r.start()
        r.proto.on_bye("Server shutting down")
        r.proto.transport.loseConnection()
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
        server = FakeServer(folders=("INBOX", "Entw&APw-rfe"))
        r = self.rig(server=server, folder="ENTWÜRFE")
        server.add(1)
        r.start()
        self.assertEqual(r.svc.server_name, "Entw&APw-rfe")
        self.assertEqual(r.pipeline.batches[0][2], "Entw&APw-rfe")
        self.assertIn(("EXAMINE", "Entw&APw-rfe"), server.commands)

    # -- waking up ---------------------------------------------------------------

    def test_exists_while_idling_syncs_at_once(self):
        r = self.rig()
        r.start()
        self.assertTrue(r.proto.idling)
        r.server.add(1)
        self.assertEqual(r.proto.done_calls, 1)
        self.assertEqual(r.pipeline.uids, [1])
        self.assertTrue(r.proto.idling)
        self.assertEqual(r.svc.state, S.IDLING)

    def test_wake_during_sync_runs_one_more(self):
        r = self.rig()
        r.server.add(1)
        r.pipeline.hold = True
        r.store.cursors["INBOX"] = FolderCursor("7", "0", None)
        r.start()
        self.assertEqual(r.svc.state, S.SYNCING)
        r.server.add(1)  # no IDLE running: no EXISTS callback
        r.svc.wake()
        r.svc.wake()
        self.assertEqual(len([c for c in r.server.commands if c[0] == "SEARCH"]), 1)
        r.pipeline.hold = False
        r.pipeline.release()
        self.assertEqual(r.pipeline.uids, [1, 2])
        self.assertEqual(len([c for c in r.server.commands if c[0] == "SEARCH"]), 2)
        self.assertEqual(r.svc.state, S.IDLING)

    def test_exists_during_sync_syncs_again_before_idle(self):
        # The server announced new mail in an untagged EXISTS during a FETCH;
        # IDLE will not repeat it, so the folder must not go idle yet.
        r = self.rig()
        r.server.add(1)
        r.pipeline.hold = True
        r.store.cursors["INBOX"] = FolderCursor("7", "0", None)
        r.start()
        r.server.add(1)
        r.pipeline.hold = False
        r.pipeline.release()
        self.assertEqual(r.pipeline.uids, [1, 2])
        self.assertEqual(r.svc.state, S.IDLING)

    def test_credential_source_auth_failure_needs_reauth(self):
        class NoPassword(Exception):
            auth_failure = True
            code = "missing_credentials"

        r = self.rig()
        r.creds.credentials = lambda provider: defer.fail(NoPassword("no password stored"))
        r.start()
        self.assertEqual(r.svc.state, S.NEEDS_REAUTH)
        self.assertEqual(r.hooks.events.count(("auth_failed", "missing_credentials")), 1)
        r.reactor.advance(3600)
        self.assertEqual(r.factory.connect_calls, 1)

    def test_idle_restart_timer(self):
        r = self.rig()
        r.start()
        idles = lambda: len([c for c in r.server.commands if c[0] == "IDLE"])  # noqa: E731
        examines = lambda: len([c for c in r.server.commands if c[0] == "EXAMINE"])  # noqa: E731
        self.assertEqual((idles(), examines()), (1, 1))
        # Keep-alive: 240 s (+/- 10 %, rand 0.5 -> 240 s): DONE and IDLE again, no sync.
        r.reactor.advance(239.9)
        self.assertEqual(r.proto.done_calls, 0)
        r.reactor.advance(0.1)
        self.assertEqual(r.proto.done_calls, 1)
        self.assertEqual((idles(), examines()), (2, 1))
        self.assertEqual(r.svc.idle_keepalives, 1)
        self.assertTrue(r.proto.idling)
        r.reactor.advance(240)
        self.assertEqual((r.proto.done_calls, idles(), examines()), (2, 3, 1))
        # The restart (600 s) counts from the first IDLE, across keep-alives,
        # and syncs before idling again.
        r.reactor.advance(119.9)
        self.assertEqual(r.proto.done_calls, 2)
        r.reactor.advance(0.1)
        self.assertEqual((r.proto.done_calls, idles(), examines()), (3, 4, 2))
        self.assertTrue(r.proto.idling)
        self.assertEqual(r.svc.snapshot()["idleKeepalives"], 2)

    def test_wake_during_keepalive_done_syncs(self):
        r = self.rig()
        r.start()
        r.proto.hold_done = True
        r.reactor.advance(240)
        self.assertEqual(r.proto.done_calls, 1)
        # An admin resync arrives before the server answered the keep-alive's DONE.
        r.server.add(1, notify=False)
        r.svc.wake()
        r.proto.finish_idle()
        self.assertEqual(r.pipeline.uids, [1])
        self.assertEqual(r.svc.state, S.IDLING)

    def test_poll_without_idle(self):
        r = self.rig(server=FakeServer(caps=NO_IDLE_CAPS))
        r.start()
        self.assertEqual(r.svc.state, S.SELECTED)
        self.assertFalse([c for c in r.server.commands if c[0] == "IDLE"])
        r.server.add(2)
        # 30 s, jitter +/- 0.1, rand 0.5 -> 30 s
        r.reactor.advance(29.9)
        self.assertEqual(r.pipeline.uids, [])
        r.reactor.advance(0.1)
        self.assertEqual(r.pipeline.uids, [1, 2])
        r.server.add(1)
        r.svc.wake()
        self.assertEqual(r.pipeline.uids, [1, 2, 3])

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
        r = self.rig()
        r.start()
        self.assertEqual(r.store.capabilities, [["AUTH=PLAIN", "IDLE", "IMAP4REV1"]])
        r.server.add(1)
        self.assertEqual(len(r.store.capabilities), 1)

    def test_keepalive_set(self):
        r = self.rig()
        proto = r.start()
        self.assertEqual(proto.transport.keepalive, 1)

    def test_stop_leaves_idle_and_logs_out(self):
        r = self.rig()
        proto = r.start()
        d = r.svc.stopService()
        self.assertEqual(proto.done_calls, 1)
        self.assertTrue(proto.logged_out)
        self.assertTrue(proto.transport.closed)
        self.successResultOf(d)
        self.assertEqual(r.svc.state, S.STOPPED)
        r.reactor.advance(3600)
        self.assertEqual(r.factory.connect_calls, 1)

    def test_stop_is_bounded(self):
        r = self.rig()
        proto = r.start()
        proto.hold.add("LOGOUT")
        proto.transport.loseConnection = lambda: None  # a peer that never closes
        aborted = []
        proto.transport.abortConnection = lambda: (aborted.append(1), proto.connection_lost())
        d = r.svc.stopService()
        self.assertNoResult(d)
        r.reactor.advance(10)
        self.assertEqual(aborted, [1])
        self.successResultOf(d)
        self.assertEqual(r.svc.state, S.STOPPED)

    def test_snapshot(self):
        r = self.rig()
        r.server.add(6)
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
        r.server.add(6)
        r.start()
        snap = r.svc.snapshot()
        # Window of 5 from UIDNEXT 7: header + text bytes of UIDs 2..6 only.
        fetched = sum(
            len(r.server.messages[u]["header"]) + len(r.server.messages[u]["body"])
            for u in range(2, 7)
        )
        self.assertEqual(snap["bytesFetched"], fetched)
        self.assertEqual((snap["uidNext"], snap["lag"]), (7, 0))
        r.server.add(2)  # EXISTS while idling
        snap = r.svc.snapshot()
        self.assertEqual(snap["idleWakeups"], 1)
        self.assertEqual(snap["lag"], 0)
        r.proto.on_bye("Server shutting down")
        r.proto.transport.loseConnection()
        self.assertEqual(r.svc.snapshot()["reconnects"], {"bye": 1})
        r.reconnect_after(2.5)
        r.proto.transport.loseConnection()
        self.assertEqual(r.svc.snapshot()["reconnects"], {"bye": 1, "connection_lost": 1})


def _opts():
    import attr

    return attr.asdict(OPTIONS, recurse=False)


# -- OAuth2 refresh-ahead -------------------------------------------------------

from imapsvc.folder import TOKEN_RETRY_S  # noqa: E402
from imapsvc.oauth import REFRESH_MARGIN_S  # noqa: E402


class FakeOAuthCredentials:
    """A credential source handing out XOAUTH2 tokens: each login gets a new
    token valid ``lifetime`` seconds (as a refresh would)."""

    def __init__(self, clock, lifetime):
        self.clock = clock
        self.lifetime = lifetime
        self.calls = 0
        self.expiry = None

    def credentials(self, provider):
        self.calls += 1
        self.expiry = self.clock.seconds() + self.lifetime
        return defer.succeed(Credentials("xoauth2", provider.username, f"token-{self.calls}"))

    def token_expiry(self, provider):
        return self.expiry


class RefreshAheadTests(SynchronousTestCase):
    LIFETIME = REFRESH_MARGIN_S + 100

    def rig(self, lifetime=LIFETIME, **kw):
        rig = Rig(**kw)
        rig.creds = FakeOAuthCredentials(rig.reactor, lifetime)
        rig.svc.credentials = rig.creds
        self.addCleanup(FolderServiceTests._stop, self, rig)
        return rig

    def reconnected(self, rig, attempts=2):
        """The reconnect was scheduled with no delay (the clock already ran
        it, or runs it now): let it succeed."""
        rig.reactor.advance(0)
        self.assertEqual(rig.factory.connect_calls, attempts)
        rig.factory.startedConnecting(rig.reactor.connectors[-1])
        return rig.accept()

    def logouts(self, rig):
        return len([c for c in rig.server.commands if c[0] == "LOGOUT"])

    def test_idle_ends_and_reconnects_at_expiry_minus_margin(self):
        r = self.rig()
        first = r.start()
        self.assertEqual(r.svc.state, S.IDLING)
        self.assertEqual(r.creds.calls, 1)
        r.reactor.advance(99.9)
        self.assertEqual(first.done_calls, 0)
        self.assertFalse(first.transport.closed)
        r.reactor.advance(0.1)
        # IDLE ended with DONE, LOGOUT, connection closed, no new sync on it.
        self.assertEqual(first.done_calls, 1)
        self.assertEqual(self.logouts(r), 1)
        self.assertTrue(first.transport.closed)
        self.assertEqual(r.svc.state, S.BACKOFF)
        self.assertEqual(r.svc.history[-1].reason, "reconnecting with a refreshed access token")
        self.assertIsNone(r.svc.history[-1].error)
        # Mail arriving between the sessions is picked up by the next one.
        r.server.add(2)
        second = self.reconnected(r)
        self.assertIsNot(second, first)
        self.assertEqual(r.creds.calls, 2)
        self.assertEqual(r.svc.state, S.IDLING)
        self.assertEqual(r.pipeline.uids, [1, 2])
        # The new token gets its own timer, one only.
        due = r.reactor.seconds() + 100
        timers = [c for c in r.reactor.getDelayedCalls() if c.func == r.svc._token_expiring]
        self.assertEqual([c.getTime() for c in timers], [due])

    def test_due_during_sync_finishes_the_sync_then_reconnects(self):
        r = self.rig()
        r.start()
        r.pipeline.hold = True
        r.server.add(3)  # EXISTS while idling: a sync starts and holds
        self.assertEqual(r.svc.state, S.SYNCING)
        r.reactor.advance(100)
        self.assertEqual(self.logouts(r), 0, "the sync in progress is not cut off")
        r.pipeline.hold = False
        r.pipeline.release()
        self.assertEqual(r.pipeline.uids, [1, 2, 3])
        self.assertEqual(r.store.cursors["INBOX"].last_uid, "3")
        self.assertEqual(self.logouts(r), 1)
        self.assertFalse([c for c in r.server.commands[-3:] if c[0] == "IDLE"])
        self.reconnected(r)
        self.assertEqual(r.creds.calls, 2)
        self.assertEqual(r.pipeline.uids, [1, 2, 3])

    def test_poll_wait_ends_early(self):
        r = self.rig(server=FakeServer(caps=NO_IDLE_CAPS), lifetime=REFRESH_MARGIN_S + 10)
        r.start()
        self.assertEqual(r.svc.state, S.SELECTED)
        r.reactor.advance(10)
        self.assertEqual(self.logouts(r), 1)
        self.reconnected(r)
        self.assertEqual(r.creds.calls, 2)

    def test_password_login_schedules_nothing(self):
        r = Rig()
        self.addCleanup(FolderServiceTests._stop, self, r)
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
        first = r.start()
        r.reactor.advance(50)
        first.transport.loseConnection()  # the server dropped us
        self.assertEqual(r.svc.state, S.BACKOFF)
        timers = [c for c in r.reactor.getDelayedCalls() if c.func == r.svc._token_expiring]
        self.assertEqual(timers, [])
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
