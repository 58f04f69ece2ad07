"""What the folder engine's tests share (unit and integration): a credential
source, recording hooks, the real :class:`~imapsvc.pipeline.Pipeline` on a
leased :class:`~imapsvc.store.memory.MemoryStore` with a record of what it
committed, and :class:`FolderRig`: one :class:`~imapsvc.folder.FolderService`
on verified fakes only (:class:`~imapsvc.testing.FakeIMAPSession` over a
:class:`~imapsvc.testing.FakeMailbox`, the memory store, the real pipeline),
a fake clock, no sockets.

The tests drive the folder through its public API (``startService``,
``wake``, ``reconnect``, ``snapshot``, ``state``, its factory's connection
events) and look at the fakes' observable state, never at the folder's
private members.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import attr
from twisted.internet import defer
from twisted.internet.testing import MemoryReactorClock
from zope.interface import implementer

from imapsvc.deferreds import synchronous_runner
from imapsvc.folder import FolderOptions, FolderService
from imapsvc.interfaces import ICredentialSource, IFolderHooks
from imapsvc.model import Credentials, FetchedMessage, FolderCursor, Limits, ProviderConfig
from imapsvc.pipeline import Pipeline
from imapsvc.store.memory import MemoryStore
from imapsvc.testing import FakeIMAPSession, FakeMailbox

USER, PASSWORD = "support@example.com", "s3cret-pw"
OWNER = "worker-1"
TENANT, PROVIDER_ID = "t1", "p1"
#: A lease far longer than any test runs (the supervisor would renew it).
LEASE_MS = 365 * 24 * 3600 * 1000


def message(n: int, body: Optional[bytes] = None, subject: Optional[str] = None) -> bytes:
    """A plain-text message numbered ``n`` (its own Message-ID)."""
    text = body if body is not None else b"Printer %d is on fire.\r\n" % n
    title = (subject or f"case {n}").encode("utf-8")
    head = (
        f"From: Customer <c{n}@example.org>\r\nTo: support@example.com\r\n".encode()
        + b"Subject: " + title + b"\r\n"
        + f"Message-ID: <case-{n}@example.org>\r\n".encode()
        + b"Date: Sat, 10 Jan 2026 12:00:00 +0000\r\nMIME-Version: 1.0\r\n"
        + b"Content-Type: text/plain; charset=utf-8\r\n\r\n"
    )
    return head + text


@implementer(ICredentialSource)
class PasswordSource:
    """A password for every login; ``calls`` counts the look-ups."""

    def __init__(self, password: str = PASSWORD, username: Optional[str] = None) -> None:
        self.password = password
        self.username = username
        self.calls = 0

    def credentials(self, provider: Any, force_refresh: bool = False) -> defer.Deferred:
        self.calls += 1
        return defer.succeed(
            Credentials("password", self.username or provider.username, self.password)
        )


@implementer(IFolderHooks)
class RecordingHooks:
    """Every hook call, in order: ``("state", state)``, ``("auth_failed",
    code)``, ``("credentials_missing", text)``, ``("logged_in",)``,
    ``("synced",)``, ``("lease_lost",)``."""

    def __init__(self) -> None:
        self.events: list[tuple] = []

    def state_changed(self, state: str, reason: str = "", error: Optional[str] = None) -> None:
        self.events.append(("state", state))

    def auth_failed(self, code: str, text: str = "") -> None:
        self.events.append(("auth_failed", code))

    def credentials_missing(self, text: str = "") -> None:
        self.events.append(("credentials_missing", text))

    def logged_in(self) -> None:
        self.events.append(("logged_in",))

    def synced(self) -> None:
        self.events.append(("synced",))

    def lease_lost(self) -> None:
        self.events.append(("lease_lost",))


@attr.s(auto_attribs=True, frozen=True)
class Batch:
    """One batch the pipeline committed."""

    messages: list[FetchedMessage]
    cursor: Optional[FolderCursor]
    folder: str
    owner: str


class RecordingPipeline:
    """The real pipeline, and a record of the batches it committed (and the
    chunks it was asked to map ahead). Two test controls around it: while
    :attr:`hold` is set, batches wait for :meth:`release` before they reach
    the pipeline; :meth:`fail_next` fails the next batch before it does, as
    a store outage would (nothing of it recorded)."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline
        self.batches: list[Batch] = []
        self.prepared: list[tuple[str, list[int]]] = []
        self.hold = False
        self._held: list[defer.Deferred] = []
        self._failures: list[Exception] = []

    @property
    def uids(self) -> list[int]:
        """UIDs of every committed message, in order."""
        return [m.uid for b in self.batches for m in b.messages]

    @property
    def messages(self) -> list[FetchedMessage]:
        return [m for b in self.batches for m in b.messages]

    def fail_next(self, error: Exception) -> None:
        self._failures.append(error)

    def release(self) -> None:
        held, self._held = self._held, []
        for d in held:
            d.callback(None)

    def prepare(self, provider: ProviderConfig, folder: str, messages: Any) -> None:
        self.prepared.append((folder, [m.uid for m in messages]))
        self.pipeline.prepare(provider, folder, messages)

    def handle_batch(self, provider: ProviderConfig, folder: str, owner: str,
                     messages: Any, cursor: Optional[FolderCursor]) -> defer.Deferred:
        if self._failures:
            return defer.fail(self._failures.pop(0))
        messages = list(messages)
        gate: defer.Deferred = defer.Deferred()
        if self.hold:
            self._held.append(gate)
        else:
            gate.callback(None)

        def handle(_: Any) -> defer.Deferred:
            return self.pipeline.handle_batch(provider, folder, owner, messages, cursor)

        def committed(result: Any) -> Any:
            self.batches.append(Batch(messages, cursor, folder, owner))
            return result

        return gate.addCallback(handle).addCallback(committed)


def leased_store(clock: Any, owner: str = OWNER, **provider: Any) -> tuple[MemoryStore,
                                                                           ProviderConfig]:
    """A memory store holding one provider (``provider``: its fields), its
    lease held by ``owner``."""
    store = MemoryStore(clock)
    provider.setdefault("tenant", TENANT)
    provider.setdefault("provider_id", PROVIDER_ID)
    config = store.add_provider(**provider)
    store.acquire_lease(config.tenant, config.provider_id, owner, LEASE_MS)
    return store, config


def recording_pipeline(store: MemoryStore, clock: Any, limits: Limits) -> RecordingPipeline:
    """The real pipeline on ``store`` (mapping on the calling thread)."""
    return RecordingPipeline(
        Pipeline(store, relay_wake=lambda: None, clock=clock, limits=limits,
                 thread_threshold_bytes=1 << 30, threadpool_runner=synchronous_runner)
    )


def read_cursor(store: MemoryStore, provider: ProviderConfig,
                folder: str = "INBOX") -> Optional[FolderCursor]:
    """The memory store's cursor of ``folder`` (its Deferreds fire at once)."""
    out: list[Optional[FolderCursor]] = []
    store.read_cursor(provider.tenant, provider.provider_id, folder).addCallback(out.append)
    return out[0]


def write_cursor(store: MemoryStore, provider: ProviderConfig, cursor: FolderCursor,
                 folder: str = "INBOX", owner: str = OWNER) -> None:
    store.write_cursor(provider.tenant, provider.provider_id, folder, cursor, owner)


#: Timings the unit tests count on (the folder's random source is 0.5).
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


class FolderRig:
    """One :class:`FolderService` watching ``folder`` of a :class:`FakeMailbox`
    through :class:`FakeIMAPSession` sessions, with the memory store and the
    real pipeline, on a fake clock. Connection attempts succeed when the test
    says so (:meth:`accept`)."""

    def __init__(
        self,
        mailbox: Optional[FakeMailbox] = None,
        options: FolderOptions = OPTIONS,
        folder: str = "INBOX",
        credentials: Any = None,
        hooks: Any = None,
        at_once: bool = True,
        tls: bool = True,
        lazy_close: bool = False,
        session_factory: Optional[Callable[[FakeMailbox], FakeIMAPSession]] = None,
        **provider: Any,
    ) -> None:
        self.mailbox = mailbox or FakeMailbox(accounts={USER: PASSWORD}, uidvalidity=7)
        self.reactor = MemoryReactorClock()
        for key, value in (("host", "imap.example.com"), ("port", 993), ("username", USER),
                           ("mailbox", USER)):
            provider.setdefault(key, value)
        self.store, self.provider = leased_store(self.reactor, **provider)
        self.pipeline = recording_pipeline(self.store, self.reactor, options.limits)
        self.creds = credentials if credentials is not None else PasswordSource()
        self.hooks = hooks if hooks is not None else RecordingHooks()
        self.at_once = at_once
        self.tls = tls
        #: Closes reach the session on the clock's next turn, as a socket's.
        self.lazy_close = lazy_close
        self.session_factory = session_factory
        self.sessions: list[FakeIMAPSession] = []
        self.svc = FolderService(
            self.provider,
            folder,
            self.reactor,
            self.store,
            self.pipeline,
            self.creds,
            OWNER,
            options,
            hooks=self.hooks,
            protocol_factory=self._new_session,
            tls_factory=lambda host: None,
            rand=lambda: 0.5,
        )
        self.factory = self.svc.factory
        self._attempts = 0

    def _new_session(self) -> FakeIMAPSession:
        if self.session_factory is not None:
            session = self.session_factory(self.mailbox)
        else:
            session = FakeIMAPSession(self.mailbox, tls=self.tls, at_once=self.at_once)
        self.sessions.append(session)
        return session

    @property
    def session(self) -> FakeIMAPSession:
        """The latest session."""
        return self.sessions[-1]

    # -- connecting ----------------------------------------------------------------

    def start(self) -> FakeIMAPSession:
        """Start the folder; after the startup stagger (1 s) it connects."""
        self.svc.startService()
        self.reactor.advance(self.svc.options.startup_stagger_ms * 0.5 / 1000.0)
        return self.accept()

    def accept(self) -> FakeIMAPSession:
        """The pending connection attempt succeeds; the server greets."""
        factory = self.factory
        assert factory.connect_calls == self._attempts + 1, "no connection attempt"
        self._attempts = factory.connect_calls
        connector = self.reactor.connectors[-1]
        factory.startedConnecting(connector)
        session = factory.buildProtocol(None)
        session.connect(lambda reason: factory.clientConnectionLost(connector, reason),
                        clock=self.reactor if self.lazy_close else None)
        return session

    @property
    def attempt_pending(self) -> bool:
        """Whether the folder started a connection attempt not yet answered."""
        return self.factory.connect_calls > self._attempts

    def refuse(self, reason: Any) -> None:
        """The pending connection attempt fails with ``reason`` (a Failure)."""
        self._attempts = self.factory.connect_calls
        self.factory.clientConnectionFailed(self.reactor.connectors[-1], reason)

    def reconnect_after(self, delay: float) -> FakeIMAPSession:
        """After ``delay`` seconds the folder tries again, and gets in."""
        self.reactor.advance(delay)
        return self.accept()  # exactly one attempt since the last one

    def drop(self, bye: Optional[str] = None) -> None:
        """The server closes the connection (``* BYE bye`` first if given)."""
        self.mailbox.drop_connections(bye=bye)

    # -- what happened -------------------------------------------------------------------

    def add(self, count: int = 1, folder: str = "INBOX", size: Optional[int] = None,
            **kw: Any) -> list[int]:
        """Deliver ``count`` messages at once (one EXISTS for them all);
        ``size``: with a body of about that many bytes. :return: their UIDs."""
        uids = []
        for _ in range(count):
            n = self.mailbox.folders[folder].uidnext
            body = None if size is None else (b"x" * 70 + b"\r\n") * max(1, size // 72)
            uids.append(self.mailbox.append(message(n, body), folder, announce=False, **kw))
        self.mailbox.announce(folder)
        return uids

    @property
    def uids(self) -> list[int]:
        """UIDs the pipeline committed, in order."""
        return self.pipeline.uids

    def cursor(self, folder: str = "INBOX") -> Optional[FolderCursor]:
        return read_cursor(self.store, self.provider, folder)

    def set_cursor(self, cursor: FolderCursor, folder: str = "INBOX") -> None:
        write_cursor(self.store, self.provider, cursor, folder)

    def commands(self, name: Optional[str] = None) -> list[str]:
        """Commands sent over every session, in order (only ``name``)."""
        out = [c for s in self.sessions for c in s.commands]
        return out if name is None else [c for c in out if c == name]

    def states(self) -> list[str]:
        return [t.new for t in self.svc.history]

    def stop(self) -> None:
        """Stop the folder if it runs and let it finish."""
        if self.svc.running:
            d = self.svc.stopService()
            for session in self.sessions:
                session.flush()
            self.reactor.advance(0)
            assert d.called, "stopService did not finish"


def memory_backend(clock: Any, limits: Optional[Limits] = None,
                   **provider: Any) -> tuple[MemoryStore, ProviderConfig, RecordingPipeline]:
    """A leased memory store and the real pipeline on it, recording: what
    the integration tests hand a folder service on the real reactor."""
    store, config = leased_store(clock, **provider)
    return store, config, recording_pipeline(store, clock, limits or Limits())
