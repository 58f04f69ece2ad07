"""One watched folder of one provider: its lifecycle.

:class:`FolderService` is the Twisted shell around the pure machine
(:mod:`imapsvc.core.folder_machine`): a
:class:`~imapsvc.imap.factory.FolderClientFactory` (re)connects and reports
each connection event through :class:`~imapsvc.interfaces.IConnectionEvents`
(the ``factory_*`` methods below); on each connection the service
logs in, finds the folder and then loops

``sync pass (imapsvc.folder.sync) -> IDLE or poll (imapsvc.folder.idle)``

The cursor only advances when the pipeline's Deferred succeeds; any failure
drops the connection (:mod:`imapsvc.folder.recovery` decides how) and the
factory reconnects with back-off. Every state change goes through the
machine, is logged, kept in ``history`` and reported to the owner's hooks.
"""

from __future__ import annotations

import collections
import random
from typing import Any, Callable, Optional

from twisted.internet import defer
from twisted.python.failure import Failure
from zope.interface import implementer

from imapsvc.core import folder_machine as M
from imapsvc.core import plan as P
from imapsvc.core.backoff import Rand
from imapsvc.core.capacity import is_fd_exhaustion
from imapsvc.core.folders import (
    WILDCARD,
    display_name,
    expand_wildcard,
    resolve_folder,
)
from imapsvc.core.session_attempt import SessionAttempt
from imapsvc.folder.base import Stopping
from imapsvc.folder.idle import IdleWaits
from imapsvc.folder.options import (
    FolderNotFound,
    FolderOptions,
    caps_names,
    default_protocol_factory,
    default_tls,
    describe,
)
from imapsvc.folder.recovery import SessionRecovery
from imapsvc.folder.status import FolderStatusView
from imapsvc.folder.sync import SyncPass
from imapsvc.imap.extensions import client_id_fields
from imapsvc.imap.factory import FolderClientFactory, set_keepalive
from imapsvc.interfaces import IConnectionEvents, IMessagePipeline, IStore
from imapsvc.model import ProviderConfig

HISTORY_SIZE = 50


@implementer(IConnectionEvents)
class FolderService(FolderStatusView, IdleWaits, SessionRecovery):
    """Watches one folder of one provider.

    :param provider: the provider's :class:`ProviderConfig`.
    :param folder_filter: the configured folder path (``"INBOX"``, ...).
    :param reactor: ``connectTCP`` + ``callLater``/``seconds`` (a
        ``MemoryReactorClock`` in tests).
    :param store: ``read_cursor``, ``save_capabilities`` of
        :class:`~imapsvc.interfaces.IStore`.
    :param pipeline: an :class:`~imapsvc.interfaces.IMessagePipeline`.
    :param credentials: an :class:`~imapsvc.interfaces.ICredentialSource`.
    :param owner: this worker's id (lease owner), passed to the pipeline.
    :param options: :class:`FolderOptions`.
    :param hooks: optional object with ``state_changed(state, reason,
        error)``, ``auth_failed(code, text)``, ``credentials_missing(text)``,
        ``logged_in()``, ``synced()``, ``lease_lost()`` (each optional).
    :param protocol_factory: ``() -> protocol``; default builds
        :class:`~imapsvc.imap.protocol.FolderIMAPClient`.
    :param tls_factory: ``hostname -> IOpenSSLClientConnectionCreator``.
    :param parser: BODYSTRUCTURE parser; default is the
        ``core.bodystructure`` one if present.
    :param rand: random source for jitter.
    """

    def __init__(
        self,
        provider: ProviderConfig,
        folder_filter: str,
        reactor: Any,
        store: IStore,
        pipeline: IMessagePipeline,
        credentials: Any,
        owner: str,
        options: Optional[FolderOptions] = None,
        hooks: Any = None,
        protocol_factory: Optional[Callable[[], Any]] = None,
        tls_factory: Optional[Callable[[str], Any]] = None,
        parser: Any = "default",
        rand: Optional[Rand] = None,
        resolve: Optional[Callable[[str, int], Any]] = None,
    ) -> None:
        self.provider = provider
        self.folder_filter = folder_filter
        self.reactor = reactor
        self.credentials = credentials
        self.owner = owner
        self.hooks = hooks
        self.rand: Rand = rand or random.random
        self.machine = M.Machine()
        #: The message path (cursor, suspects, write-back and their counters);
        #: ``store``, ``pipeline`` and ``options`` are kept there.
        self.sync = SyncPass(
            provider, folder_filter, reactor, store, pipeline, owner, options or FolderOptions(),
            P.default_parser() if parser == "default" else parser, self.label,
        )
        self._tls_factory = tls_factory or default_tls(self.options)
        self.last_error: Optional[str] = None
        #: Recovery's bookkeeping across sessions (token retry, this
        #: session's error, why its connection ends, the fd warning).
        self.attempt = SessionAttempt()
        self.history: collections.deque[M.Transition] = collections.deque(maxlen=HISTORY_SIZE)
        #: Transitions the machine refused (each raised IllegalTransition).
        self.invalid_transitions = 0
        self.server_name: Optional[str] = None
        self.capabilities: list[str] = []
        #: What the store holds as this provider's capabilities, as far as
        #: this folder knows (saved by it): not written again when equal.
        self._capabilities_saved: Optional[list[str]] = None
        #: An operator's reconnect is under way: the next session reads the
        #: cursor from the store (``SyncPass.reload``).
        self._reload_pending = False
        # Counters for /metrics (scraped through snapshot()).
        self.idle_wakeups = 0
        self.reconnects: collections.Counter[str] = collections.Counter()
        #: Sessions in a row (no successful sync between) ended by a
        #: protocol-limit violation not caused by one message, plus messages
        #: skipped as poison for one; at ``quarantine_after`` the provider is
        #: left alone for ``quarantine_ms``.
        self.violations = 0
        self.quarantined_until: Optional[float] = None
        self.quarantines = 0
        self._proto: Any = None
        self._idle_timer: Any = None
        self._keepalive_timer: Any = None
        #: IDLEs ended and re-issued by the keep-alive (no sync in between).
        self.idle_keepalives = 0
        self._poll_timer: Any = None
        self._poll_wait: Optional[defer.Deferred] = None
        self._token_timer: Any = None
        self._closed_waiters: list[defer.Deferred] = []
        tls_creator = self._tls_factory(provider.host) if provider.secure else None
        timeout_ms = provider.connection_timeout_ms or self.options.connection_timeout_ms
        self.factory = FolderClientFactory(
            self,
            reactor,
            provider.host,
            provider.port,
            protocol_factory or default_protocol_factory(reactor, self.options),
            tls_creator=tls_creator,
            connect_timeout=timeout_ms / 1000.0,
            reconnect_base_ms=self.options.reconnect_base_ms,
            reconnect_max_ms=self.options.reconnect_max_ms,
            reconnect_jitter_pct=self.options.reconnect_jitter_pct,
            startup_stagger_ms=self.options.startup_stagger_ms,
            rand=self.rand,
            label=self.label,
            resolve=resolve,  # tenant hosts: checked addresses only (imapsvc.egress)
            gate=self.options.connect_gate,
        )

    # -- identity and status ---------------------------------------------------

    @property
    def keepalive(self) -> bool:
        if self.provider.socket_keepalive is not None:
            return bool(self.provider.socket_keepalive)
        return self.options.socket_keepalive

    def update_provider(self, provider: ProviderConfig) -> None:
        """Settings that need no reconnect changed (credentials are read at
        every login)."""
        self.provider = provider
        self.sync.provider = provider

    # -- Service -------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self._fire(M.START)
        self.factory.start(stagger=True)

    def stopService(self) -> defer.Deferred:
        """Leave IDLE, LOGOUT, stop reconnecting; fires once the connection
        is closed (or after ``shutdown_timeout_ms``, aborting it)."""
        super().stopService()
        self._fire(M.STOP)  # first: what follows may end the connection
        self.factory.stopTrying()
        self._cancel_timers()
        self._release_poll()
        proto = self._proto
        if proto is None:
            self._fire(M.STOPPED_EVENT, "service stopped")
            return defer.succeed(None)
        closed: defer.Deferred = defer.Deferred()
        self._closed_waiters.append(closed)
        self._end_idle("stopping")
        try:
            d = proto.logout()
        except Exception:
            d = defer.fail()
        d.addErrback(lambda f: None)  # logout failing is fine: we close anyway
        d.addBoth(lambda _: self._lose(proto))
        timeout = self.options.shutdown_timeout_ms / 1000.0

        def on_timeout(result: Any, _t: float) -> None:
            self.log.warn("{label}: connection did not close in time; aborting", label=self.label)
            transport = proto.transport
            if transport is not None and hasattr(transport, "abortConnection"):
                transport.abortConnection()

        closed.addTimeout(timeout, self.reactor, onTimeoutCancel=on_timeout)
        closed.addBoth(lambda _: self._fire(M.STOPPED_EVENT, "service stopped"))
        return closed

    def reconnect(self) -> None:
        """Operator action (or a new login attempt after NeedsReauth): drop
        the connection if any and connect again at once."""
        if self.machine.stopping:
            return
        self.sync.reload()
        if self._proto is not None:
            self._reload_pending = True
            self.factory.set_next_delay(0)
            self._lose(self._proto)
        elif self.state in (M.NEEDS_REAUTH, M.STOPPED, M.DISCONNECTED):
            self.factory.start(stagger=False)
        else:
            self.factory.reconnect_now()

    def wake(self) -> None:
        """Sync as soon as possible (an EXISTS, an admin resync). At most one
        sync runs at a time: a wake-up during a sync runs one more after it."""
        self._fire(M.WAKE, why="wake-up")

    # -- IConnectionEvents (from the factory) ----------------------------------

    def factory_connecting(self) -> None:
        self._fire(M.CONNECT, f"connecting to {self.provider.host}:{self.provider.port}")

    def factory_protocol(self, proto: Any) -> None:
        self._proto = proto
        self.attempt.connected()
        self.sync.new_session()
        self._fire(M.SESSION)
        proto.on_bye = self._on_bye
        d = self._session(proto)
        d.addErrback(self._session_failed, proto)
        d.addErrback(self._bug)

    def factory_connection_ended(self, reason: Failure, connected: bool) -> None:
        if self._proto is not None:
            self._proto = None
        self._cancel_timers()
        if self._poll_wait is not None and not self._poll_wait.called:
            self._poll_wait.errback(Failure(Stopping("connection lost")))
        waiters, self._closed_waiters = self._closed_waiters, []
        for w in waiters:
            if not w.called:
                w.callback(None)
        planned = self.machine.planned_reconnect
        if self._reload_pending:
            self._reload_pending = False
        else:
            self.sync.session_lost()
        self._fire(M.CONNECTION_ENDED)
        if self.machine.stopping or self.state in (M.NEEDS_REAUTH, M.STOPPED):
            return
        # This connection's own error: what its session failed with, else
        # why it ended (a refused connect). Not an older session's error,
        # which would otherwise stick in last_error through an outage.
        cause, error = self.attempt.connection_ended()
        if planned is not None:
            self.reconnects[planned] += 1
            self._fire(M.BACKED_OFF, _PLANNED[planned])
            return
        what = "connection lost" if connected else "connection failed"
        if not connected and is_fd_exhaustion(reason.value):
            # EMFILE/ENFILE: backs off like any failed connect; one warning
            # until a connect works again, not one per attempt.
            cause = cause or "fd_exhausted"
            if self.attempt.warn_fd_exhaustion():
                self.log.warn(
                    "{label}: out of file descriptors ({error}); backing off. Raise the"
                    " open-file limit or run fewer folders per replica",
                    label=self.label, error=describe(reason.value),
                )
        self.reconnects[cause or what.replace(" ", "_")] += 1
        self._fire(M.BACKED_OFF, what, error=error or describe(reason.value))

    def factory_retry_scheduled(self, delay: float) -> None:
        self.log.info("{label}: reconnecting in {delay:.1f}s", label=self.label, delay=delay)

    # -- the session -----------------------------------------------------------

    def _bug(self, failure: Failure) -> None:
        self.log.failure("{label}: folder engine bug", failure, label=self.label)

    def _on_bye(self, text: Any) -> None:
        self.attempt.said_bye()
        # Named in the "session ended" line: one line per lost session, not
        # three (a server restart ends every session at once).
        self.log.debug("{label}: server said BYE ({text})", label=self.label, text=text)

    @defer.inlineCallbacks
    def _session(self, proto: Any):  # type: ignore[no-untyped-def]
        timeout = (self.provider.connection_timeout_ms or self.options.connection_timeout_ms) / 1e3
        greeted = proto.greeted
        greeted.addTimeout(timeout, self.reactor)
        yield greeted
        self._check()
        if self.keepalive:
            set_keepalive(proto.transport, self.log)
        if not self.provider.secure and self.provider.allow_starttls:
            yield proto.start_tls(self._tls_factory(self.provider.host))
            self._check()
        self._fire(M.GREETED, "greeted")
        creds = yield self._login_credentials()
        self._check()
        self.attempt.logging_in(getattr(creds, "mechanism", None))
        caps = yield proto.authenticate_with(
            creds,
            oauth_mechanism=self.options.oauth_auth_mechanism,
            host=self.provider.host,
            port=self.provider.port,
        )
        self._check()
        self.attempt.logged_in()
        self._schedule_token_refresh(creds)
        self._hook("logged_in")
        self.capabilities = caps_names(caps)
        # This generator lives as long as the session: what it no longer
        # needs must not stay referenced (thousands of idling folders).
        del caps
        self._save_capabilities()
        yield proto.maybe_compress(self.options.compress)
        yield self._send_id(proto)
        if self.options.enable_utf8:
            enabled = yield proto.enable_utf8()
            self._check()
            if enabled:
                self.log.info("{label}: UTF8=ACCEPT enabled", label=self.label)
        yield self.sync.modseq.enable(proto, self.options.modseq)
        self._check()
        watch_many = self._watch_many()
        if watch_many is not None:
            listing = yield proto.list_folders()
            self._check()
            yield watch_many(proto, listing)
            return
        name = yield self._find_folder(proto)
        if name is None:
            raise FolderNotFound(f"no selectable folder matches {self.folder_filter!r}")
        self.server_name = name
        self._fire(M.FOLDER_FOUND, f"folder {display_name(name)!r} found")
        has_idle = "IDLE" in self.capabilities
        while True:
            self._check()
            if self.machine.token_refresh_due:
                yield self._end_for_token_refresh(proto)
            yield self._sync(proto, name)
            self.violations = 0
            self.quarantined_until = None
            self.factory.resetDelay()
            self._hook("synced")
            if self.machine.wake_pending or self.machine.token_refresh_due:
                continue
            if proto.last_exists != self.sync.exists_at_start:
                # New mail was announced while we were fetching; IDLE would
                # not report it again, so it would wait for the IDLE restart.
                continue
            if has_idle:
                yield self._idle(proto)
            else:
                yield self._poll()

    def _watch_many(self) -> Optional[Callable[[Any, Any], defer.Deferred]]:
        """The loop of a connection that watches several folders (polled),
        or ``None`` for one folder that idles. Overridden by the shared
        polling connection (``imapsvc.shared_poll``)."""
        return self._watch_every_folder if self.folder_filter.strip() == WILDCARD else None

    @defer.inlineCallbacks
    def _find_folder(self, proto: Any):  # type: ignore[no-untyped-def]
        """The server's name of the configured folder, or ``None``. A
        reconnect lists the name found before (one LIST line instead of the
        account's every folder, hundreds in a shared mailbox, per folder in
        a reconnect storm); the whole list when that is gone."""
        if self.server_name is not None:
            listing = yield proto.list_folders(self.server_name)
            self._check()
            name = resolve_folder(self.folder_filter, listing)
            if name is not None:
                return name
        # Not kept: the whole LIST would stay referenced per idling folder
        # (O(folders^2) per account).
        listing = yield proto.list_folders()
        self._check()
        return resolve_folder(self.folder_filter, listing)

    @defer.inlineCallbacks
    def _watch_every_folder(self, proto: Any, listing: Any):  # type: ignore[no-untyped-def]
        """The ``*`` filter (opt-in): every selectable folder but the
        SPECIAL-USE ones (``core.folders.expand_wildcard``) on this one
        connection, synced in turn and polled (IDLE watches one folder
        only). Folders configured by name have their own connection and are
        left to it; the list is read again at every connection."""
        others = [f for f in self.provider.folders if f.strip() != WILDCARD]
        own = {resolve_folder(f, listing) for f in others}
        names = [n for n in expand_wildcard([WILDCARD], listing) if n not in own]
        self.server_name = ", ".join(display_name(n) for n in names)[:500]
        self._fire(M.FOLDER_FOUND, f"{len(names)} folder(s) by wildcard")
        self.log.info(
            "{label}: watching {count} folder(s) by wildcard: {names}",
            label=self.label, count=len(names), names=self.server_name,
        )
        while True:
            for name in names:
                self._check()
                if self.machine.token_refresh_due:
                    yield self._end_for_token_refresh(proto)
                yield self._sync(proto, name)
            self.factory.resetDelay()
            self._hook("synced")
            if not self.machine.wake_pending and not self.machine.token_refresh_due:
                yield self._poll()

    def _save_capabilities(self) -> None:
        """Write the capabilities when they differ from what this folder
        saved last (a reconnect to the same server: nothing to write)."""
        caps = self.capabilities
        if caps == self._capabilities_saved:
            return
        d = defer.maybeDeferred(
            self.store.save_capabilities,
            self.provider.tenant,
            self.provider.provider_id,
            caps,
            owner=self.owner,  # fenced by the lease, like cursor writes
        )

        def saved(_: Any) -> None:
            self._capabilities_saved = caps

        d.addCallbacks(saved, lambda f: self.log.warn(
            "{label}: saving capabilities failed: {err}", label=self.label, err=f.value
        ))

    @defer.inlineCallbacks
    def _send_id(self, proto: Any):  # type: ignore[no-untyped-def]
        """RFC 2971 ``ID`` after login, when offered (imapsvc.imap.extensions)."""
        if "ID" not in self.capabilities:
            return
        server_id = yield proto.send_id(client_id_fields())
        self._check()
        if server_id:
            self.log.info(
                "{label}: server ID {server}",
                label=self.label,
                server=", ".join(f"{k}={v}" for k, v in sorted(server_id.items()))[:500],
            )


    @defer.inlineCallbacks
    def _sync(self, proto: Any, name: str):  # type: ignore[no-untyped-def]
        # Logged in and the folder found: the costly part of setting a
        # session up is done, its connect-gate slot goes to the next folder
        # (not held through a backlog; once per session is enough).
        self.factory.session_ready()
        self._fire(M.SYNC, "sync")
        result = yield self.sync.run(proto, name, self.capabilities)
        if result.look_again:
            self._fire(M.WAKE, why="messages expunged")


#: Planned reconnects (the machine's ``planned_reconnect``) and their reasons.
_PLANNED = {
    M.TOKEN_REFUSED: "access token refused: refreshing it once and retrying",
    M.TOKEN_REFRESH: "reconnecting with a refreshed access token",
}
