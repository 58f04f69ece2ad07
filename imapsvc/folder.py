"""One watched folder of one provider: its lifecycle and its sync loop.

:class:`FolderService` is a thin Twisted shell around the pure core
(``core.cursor``, ``core.folders``, ``core.plan``, ``core.backoff``): a
:class:`~imapsvc.imap.factory.FolderClientFactory` (re)connects, and on each
connection the service logs in, finds the folder, and then loops

``EXAMINE -> read cursor -> UID SEARCH -> chunks of (fetch_meta -> plan ->
fetch_sections | fetch_full -> pipeline.handle_batch) -> IDLE or poll``

The cursor only advances when the pipeline's Deferred succeeds; any failure
drops the connection and the factory reconnects with back-off. Every state
change goes through :meth:`FolderService._set_state` (table in
:mod:`imapsvc.folder_state`), is logged, kept in ``history`` and reported to
the owner's hooks.
"""

from __future__ import annotations

import collections
import itertools
import random
from typing import Any, Callable, Optional

import attr
from twisted.application import service
from twisted.internet import defer
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.logger import Logger
from twisted.python.failure import Failure

from imapsvc import folder_state as S
from imapsvc.config import IDLE_RESTART_LIMIT_MS
from imapsvc.core import plan as P
from imapsvc.core import poison
from imapsvc.core import write_back as WB
from imapsvc.core.auth import MECH_AUTO, OAUTH_MECHANISMS
from imapsvc.core.backoff import Rand, timer_delay
from imapsvc.core.capacity import is_fd_exhaustion
from imapsvc.core.cursor import REASON_RESUME, advance, compute_start, since_days_ago
from imapsvc.core.folders import (
    WILDCARD,
    display_name,
    encode_mutf7,
    expand_wildcard,
    resolve_folder,
)
from imapsvc.folder_modseq import ModseqShortcut
from imapsvc.imap.extensions import client_id_fields
from imapsvc.imap.factory import FolderClientFactory, set_keepalive
from imapsvc.imap.responses import sorted_unique_from
from imapsvc.interfaces import LeaseLost
from imapsvc.logging import redact
from imapsvc.model import FolderCursor, Limits, ProviderConfig
from imapsvc.oauth import REFRESH_MARGIN_S
from imapsvc.secret_chain import CredentialsMissing

HISTORY_SIZE = 50
#: Why an IDLE ended when the keep-alive timer ended it (see ``_idle``).
IDLE_KEEPALIVE = "keep-alive"
#: Share of the inactivity watchdog the IDLE keep-alive may use at most, so
#: DONE's answer arrives before the watchdog fires.
KEEPALIVE_SHARE = 0.9
#: When an access token's lifetime is already inside the refresh margin at
#: login (a token endpoint handing out very short tokens), reconnect after
#: this long rather than at once: every login would refresh again.
TOKEN_RETRY_S = 60.0
#: Codes of credential-source errors that mean "there is nothing to refresh
#: the access token with": after the server refused the token, the refusal
#: then stands and counts.
NO_REFRESH_CODES = ("missing_credentials", "awaiting_consent")


class FolderNotFound(Exception):
    """No selectable folder on the server matches the configured filter."""


class _Stopping(Exception):
    """The service is stopping: end the session loop quietly."""


class _TokenRefreshDue(Exception):
    """The OAuth2 access token of this session expires soon: log out and
    log in again at once (the next login refreshes the token)."""


@attr.s(frozen=True, auto_attribs=True)
class FolderOptions:
    """The settings one folder needs (explicit values, no global settings).

    Durations in milliseconds, as configured (CONTRACT section 5).
    """

    max_emails_per_sync: int = 5
    poll_interval_ms: int = 30000
    idle_restart_ms: int = 1500000
    idle_keepalive_ms: int = 240000
    timer_jitter_pct: float = 0.1
    startup_stagger_ms: int = 2000
    reconnect_base_ms: int = 2000
    reconnect_max_ms: int = 60000
    reconnect_jitter_pct: float = 0.5
    connection_timeout_ms: int = 10000
    socket_keepalive: bool = True
    command_timeout_ms: int = 60000
    inactivity_timeout_ms: int = 300000
    shutdown_timeout_ms: int = 10000
    fetch_chunk: int = P.DEFAULT_FETCH_CHUNK
    fetch_bytes: int = P.DEFAULT_FETCH_BYTES
    limits: Limits = attr.Factory(Limits)
    broken_bodystructure_hosts: tuple[str, ...] = ()
    tls_ca_file: Optional[str] = None
    tls_insecure: bool = False
    oauth_auth_mechanism: str = MECH_AUTO
    #: ``IMAP_ENABLE_UTF8``: ``ENABLE UTF8=ACCEPT`` when offered (RFC 6855).
    enable_utf8: bool = False
    #: ``IMAP_MODSEQ``: CONDSTORE/QRESYNC use (``condstore``, ``qresync``, ``off``).
    modseq: str = "condstore"
    #: Per-connection byte caps (:class:`imapsvc.core.wire_caps.WireCaps`);
    #: ``None`` keeps the protocol's defaults.
    wire_caps: Any = None
    #: The process-wide :class:`imapsvc.imap.budget.ByteBudget` (or ``None``).
    budget: Any = attr.ib(default=None, eq=False)
    #: Failed fetches of one UID before it is skipped as poison.
    poison_after: int = 3
    #: Sessions in a row ended by a protocol-limit violation before the
    #: provider is quarantined, and for how long.
    quarantine_after: int = 3
    quarantine_ms: int = 6 * 3600 * 1000
    #: ``IMAP_FIRST_SYNC_SINCE_DAYS``: a first sync by date (0: the window).
    first_sync_since_days: int = 0
    #: ``IMAP_WRITE_BACK``: the mode of providers without their own option.
    write_back: str = "none"

    @classmethod
    def from_settings(cls, settings: Any) -> FolderOptions:
        """Build from an :class:`imapsvc.config.Settings`-like object."""
        from imapsvc.core.wire_caps import derive_caps

        skip = ("limits", "fetch_bytes", "wire_caps", "budget")
        names = [f.name for f in attr.fields(cls) if f.name not in skip]
        values = {n: getattr(settings, n) for n in names if hasattr(settings, n)}
        if hasattr(settings, "fetch_chunk"):
            values["fetch_chunk"] = settings.fetch_chunk
        if values.get("tls_ca_file") == "":
            values["tls_ca_file"] = None
        limits = settings.limits() if hasattr(settings, "limits") else Limits()
        if limits.attachment_mode != "metadata" and hasattr(settings, "attachment_fetch_chunk"):
            # Attachment bytes are held per chunk: fewer UIDs bound memory.
            values["fetch_chunk"] = min(values["fetch_chunk"], settings.attachment_fetch_chunk)
        caps = derive_caps(
            limits.max_raw_mime_bytes,
            limits.max_text_part_bytes,
            values.get("fetch_chunk", P.DEFAULT_FETCH_CHUNK),
            P.DEFAULT_FETCH_BYTES,
        )
        return cls(limits=limits, wire_caps=caps, **values)


def _caps_names(caps: Any) -> list[str]:
    """Capability names (``str``, upper case) from a caps dict/list whose
    keys may be bytes (Twisted) or str."""
    out = set()
    for key in caps or ():
        name = key.decode("ascii", "replace") if isinstance(key, bytes) else str(key)
        values = caps[key] if isinstance(caps, dict) else None
        if values:
            for v in values:
                v = v.decode("ascii", "replace") if isinstance(v, bytes) else str(v)
                out.add(f"{name}={v}".upper())
        else:
            out.add(name.upper())
    return sorted(out)


def _default_protocol_factory(clock: Any, options: FolderOptions) -> Callable[[], Any]:
    def build() -> Any:
        from imapsvc.imap.protocol import FolderIMAPClient

        return FolderIMAPClient(
            clock,
            options.command_timeout_ms / 1000.0,
            inactivity_timeout=options.inactivity_timeout_ms / 1000.0,
            caps=options.wire_caps,
            budget=options.budget,
        )

    return build


def _default_tls(options: FolderOptions) -> Callable[[str], Any]:
    def make(host: str) -> Any:
        from imapsvc.imap.tls import client_tls_options

        return client_tls_options(host, ca_file=options.tls_ca_file, insecure=options.tls_insecure)

    return make


class FolderService(service.Service):
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

    log = Logger()

    def __init__(
        self,
        provider: ProviderConfig,
        folder_filter: str,
        reactor: Any,
        store: Any,
        pipeline: Any,
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
        self.store = store
        self.pipeline = pipeline
        self.credentials = credentials
        self.owner = owner
        self.options = options or FolderOptions()
        self.hooks = hooks
        self.rand: Rand = rand or random.random
        self.parser = P.default_parser() if parser == "default" else parser
        self.trust_structure = not P.host_has_broken_bodystructure(
            provider.host, self.options.broken_bodystructure_hosts
        )
        self._tls_factory = tls_factory or _default_tls(self.options)
        self.state = S.DISCONNECTED
        self.last_error: Optional[str] = None
        self._session_error: Optional[str] = None
        self.history: collections.deque[S.Transition] = collections.deque(maxlen=HISTORY_SIZE)
        self.invalid_transitions = 0
        self.server_name: Optional[str] = None
        self.cursor: Optional[FolderCursor] = None
        self.capabilities: list[str] = []
        self.sync_count = 0
        self.handed_off = 0
        # Write-back (issue 13 item 3): counters for /status and /metrics,
        # UIDs whose write-back failed (by UIDVALIDITY; retried at the next
        # sync while this process runs), and the once-per-start sweep.
        self.write_backs_applied = 0
        self.write_backs_failed = 0
        self.write_back_error: Optional[str] = None
        self._write_back_pending: dict[str, set[int]] = {}
        self._write_back_swept = False
        # Counters for /metrics (scraped through snapshot()).
        self.bytes_fetched = 0
        self.idle_wakeups = 0
        self.reconnects: collections.Counter[str] = collections.Counter()
        self._reconnect_reason: Optional[str] = None
        self.uid_next: Optional[int] = None
        #: UIDs (per UIDVALIDITY) of chunks whose FETCH failed: fetched one by
        #: one until they succeed or are skipped as poison. Kept across
        #: reconnects; the failure counts themselves are in the store.
        self._suspects: dict[str, set[int]] = {}
        self.poison_skipped = 0
        #: Sessions in a row (no successful sync between) ended by a
        #: protocol-limit violation not caused by one message, plus messages
        #: skipped as poison for one; at ``quarantine_after`` the provider is
        #: left alone for ``quarantine_ms``.
        self.violations = 0
        self.quarantined_until: Optional[float] = None
        self.quarantines = 0
        self._fetched_ok = False
        self._nothing_to_probe = False
        self._proto: Any = None
        self._stopping = False
        self._wake_pending = False
        self._exists_at_sync: Optional[int] = None
        self._idle_done_sent = False
        self._idle_submitted = False
        self._idle_ended_for: Optional[str] = None
        self._idle_timer: Any = None
        self._keepalive_timer: Any = None
        #: IDLEs ended and re-issued by the keep-alive (no sync in between).
        self.idle_keepalives = 0
        self._poll_timer: Any = None
        self._poll_wait: Optional[defer.Deferred] = None
        self._token_timer: Any = None
        self._token_refresh_due = False
        self._refresh_reconnect = False
        # OAuth2: a refused access token gets one forced refresh and one
        # retry before the refusal counts (see _session_failed).
        self._login_mechanism: Optional[str] = None
        self._token_retry_used = False
        self._force_token_refresh = False
        self._refusal: Optional[Exception] = None
        self._refusal_retry = False
        self._closed_waiters: list[defer.Deferred] = []
        #: Out of descriptors was logged (once until the next connect).
        self._fd_warned = False
        #: CONDSTORE/QRESYNC (RFC 7162): skips a pass's UID SEARCH when nothing changed.
        self.modseq = ModseqShortcut(store, provider.tenant, provider.provider_id, owner,
                                     self.label)
        tls_creator = self._tls_factory(provider.host) if provider.secure else None
        timeout_ms = provider.connection_timeout_ms or self.options.connection_timeout_ms
        self.factory = FolderClientFactory(
            self,
            reactor,
            provider.host,
            provider.port,
            protocol_factory or _default_protocol_factory(reactor, self.options),
            tls_creator=tls_creator,
            connect_timeout=timeout_ms / 1000.0,
            reconnect_base_ms=self.options.reconnect_base_ms,
            reconnect_max_ms=self.options.reconnect_max_ms,
            reconnect_jitter_pct=self.options.reconnect_jitter_pct,
            startup_stagger_ms=self.options.startup_stagger_ms,
            rand=self.rand,
            label=self.label,
            resolve=resolve,  # tenant hosts: checked addresses only (imapsvc.egress)
        )

    # -- identity and status ---------------------------------------------------

    @property
    def label(self) -> str:
        return f"imap:{self.provider.tenant}/{self.provider.provider_id}/{self.folder_filter}"

    @property
    def keepalive(self) -> bool:
        if self.provider.socket_keepalive is not None:
            return bool(self.provider.socket_keepalive)
        return self.options.socket_keepalive

    def snapshot(self) -> dict:
        """This folder for ``/status`` (no secrets)."""
        return {
            "folder": self.folder_filter,
            "serverName": self.server_name,
            "state": self.state,
            "last_error": self.last_error,
            "cursor": self.cursor.to_json() if self.cursor else None,
            "syncs": self.sync_count,
            "handedOff": self.handed_off,
            "bytesFetched": self.bytes_fetched,
            "idleWakeups": self.idle_wakeups,
            "idleKeepalives": self.idle_keepalives,
            "reconnects": dict(self.reconnects),
            "writeBack": self._write_back_status(),
            "uidNext": self.uid_next,
            "poisonSkipped": self.poison_skipped,
            "modseq": {"mode": self.modseq.mode, "searchesSkipped": self.modseq.skipped},
            "quarantinedUntil": self.quarantined_until if self.quarantined() else None,
            "quarantines": self.quarantines,
            "lag": self.lag(),
            "history": [t.to_json() for t in self.history],
        }

    def lag(self) -> Optional[int]:
        """Messages the server has beyond the cursor: UIDNEXT - 1 - last_uid."""
        if self.uid_next is None or self.cursor is None or self.cursor.last_uid is None:
            return None
        try:
            return max(0, self.uid_next - 1 - int(self.cursor.last_uid))
        except ValueError:
            return None

    def update_provider(self, provider: ProviderConfig) -> None:
        """Settings that need no reconnect changed (credentials are read at
        every login)."""
        self.provider = provider

    def _set_state(self, new: str, reason: str, error: Optional[str] = None) -> None:
        old = self.state
        if error is not None:
            self.last_error = error
        if old == new:
            return
        if not S.allowed(old, new):
            # Never crash the folder over bookkeeping; make it loud instead.
            self.invalid_transitions += 1
            self.log.error(
                "{label}: unexpected transition {old} -> {new} ({reason})",
                label=self.label,
                old=old,
                new=new,
                reason=reason,
            )
        self.state = new
        self.history.append(S.Transition(self.reactor.seconds(), old, new, reason, error))
        self.log.info(
            "{label}: {old} -> {new} ({reason})",
            label=self.label,
            tenant=self.provider.tenant,
            provider=self.provider.provider_id,
            folder=self.folder_filter,
            old=old,
            new=new,
            reason=reason,
            error=error,
        )
        self._hook("state_changed", new, reason, error)

    def _hook(self, name: str, *args: Any) -> None:
        fn = getattr(self.hooks, name, None) if self.hooks is not None else None
        if fn is None:
            return
        try:
            fn(*args)
        except Exception:
            self.log.failure("{label}: hook {hook} failed", label=self.label, hook=name)

    # -- Service -------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self._stopping = False
        self.factory.start(stagger=True)

    def stopService(self) -> defer.Deferred:
        """Leave IDLE, LOGOUT, stop reconnecting; fires once the connection
        is closed (or after ``shutdown_timeout_ms``, aborting it)."""
        super().stopService()
        self._stopping = True
        self.factory.stopTrying()
        self._cancel_timers()
        if self._poll_wait is not None and not self._poll_wait.called:
            self._poll_wait.callback(None)
        proto = self._proto
        if proto is None:
            self._set_state(S.STOPPED, "service stopped")
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
            transport = getattr(proto, "transport", None)
            if transport is not None and hasattr(transport, "abortConnection"):
                transport.abortConnection()

        closed.addTimeout(timeout, self.reactor, onTimeoutCancel=on_timeout)
        closed.addBoth(lambda _: self._set_state(S.STOPPED, "service stopped"))
        return closed

    def reconnect(self) -> None:
        """Operator action (or a new login attempt after NeedsReauth): drop
        the connection if any and connect again at once."""
        if self._stopping:
            return
        if self._proto is not None:
            self.factory.set_next_delay(0)
            self._lose(self._proto)
        elif self.state in (S.NEEDS_REAUTH, S.STOPPED, S.DISCONNECTED):
            self.factory.start(stagger=False)
        else:
            self.factory.reconnect_now()

    def wake(self) -> None:
        """Sync as soon as possible (an EXISTS, an admin resync). At most one
        sync runs at a time: a wake-up during a sync runs one more after it."""
        if self.state == S.IDLING:
            self._end_idle("wake-up")
        elif self._poll_wait is not None and not self._poll_wait.called:
            if self._poll_timer is not None and self._poll_timer.active():
                self._poll_timer.cancel()
            self._poll_wait.callback(None)
        else:
            self._wake_pending = True

    # -- factory owner -------------------------------------------------------

    def factory_connecting(self) -> None:
        self._set_state(S.CONNECTING, f"connecting to {self.provider.host}:{self.provider.port}")

    def factory_protocol(self, proto: Any) -> None:
        self._proto = proto
        self._fd_warned = False
        self._session_error = None
        # Whether a FETCH worked in this session (evidence for the poison
        # path that the server delivers messages), or nothing could be probed.
        self._fetched_ok = False
        self._nothing_to_probe = False
        self._idle_done_sent = False
        self._token_refresh_due = False
        self._refresh_reconnect = False
        self._refusal_retry = False
        proto.on_bye = self._on_bye
        d = self._session(proto)
        d.addErrback(self._session_failed, proto)
        d.addErrback(self._bug)

    def factory_connection_ended(self, reason: Failure, connected: bool) -> None:
        if self._proto is not None:
            self._proto = None
        self._cancel_timers()
        if self._poll_wait is not None and not self._poll_wait.called:
            self._poll_wait.errback(Failure(_Stopping("connection lost")))
        waiters, self._closed_waiters = self._closed_waiters, []
        for w in waiters:
            if not w.called:
                w.callback(None)
        if self._stopping or self.state in (S.NEEDS_REAUTH, S.STOPPED):
            return
        cause, self._reconnect_reason = self._reconnect_reason, None
        if self._refusal_retry:
            self._refusal_retry = False
            self._session_error = None
            self.reconnects["token_refused"] += 1
            self._set_state(S.BACKOFF, "access token refused: refreshing it once and retrying")
            return
        if self._refresh_reconnect:
            self._refresh_reconnect = False
            self._session_error = None
            self.reconnects["token_refresh"] += 1
            self._set_state(S.BACKOFF, "reconnecting with a refreshed access token")
            return
        what = "connection lost" if connected else "connection failed"
        if not connected and is_fd_exhaustion(reason.value):
            # EMFILE/ENFILE: backs off like any failed connect; one warning
            # until a connect works again, not one per attempt.
            cause = cause or "fd_exhausted"
            if not self._fd_warned:
                self._fd_warned = True
                self.log.warn(
                    "{label}: out of file descriptors ({error}); backing off. Raise the"
                    " open-file limit or run fewer folders per replica",
                    label=self.label, error=_describe(reason.value),
                )
        self.reconnects[cause or what.replace(" ", "_")] += 1
        # This connection's own error: what its session failed with, else
        # why it ended (a refused connect). Not an older session's error,
        # which would otherwise stick in last_error through an outage.
        error, self._session_error = self._session_error, None
        self._set_state(S.BACKOFF, what, error=error or _describe(reason.value))

    def factory_retry_scheduled(self, delay: float) -> None:
        self.log.info("{label}: reconnecting in {delay:.1f}s", label=self.label, delay=delay)

    # -- the session -----------------------------------------------------------

    def _bug(self, failure: Failure) -> None:
        self.log.failure("{label}: folder engine bug", failure, label=self.label)

    def _on_bye(self, text: Any) -> None:
        self._reconnect_reason = "bye"
        self.log.info("{label}: server said BYE ({text})", label=self.label, text=text)

    def _check(self) -> None:
        if self._stopping:
            raise _Stopping()

    @defer.inlineCallbacks
    def _session(self, proto: Any):  # type: ignore[no-untyped-def]
        timeout = (self.provider.connection_timeout_ms or self.options.connection_timeout_ms) / 1e3
        greeted = proto.greeted
        greeted.addTimeout(timeout, self.reactor)
        yield greeted
        self._check()
        if self.keepalive:
            set_keepalive(getattr(proto, "transport", None), self.log)
        if not self.provider.secure and self.provider.allow_starttls:
            yield proto.start_tls(self._tls_factory(self.provider.host))
            self._check()
        self._set_state(S.AUTHENTICATING, "greeted")
        creds = yield self._login_credentials()
        self._check()
        self._login_mechanism = getattr(creds, "mechanism", None)
        caps = yield proto.authenticate_with(
            creds,
            oauth_mechanism=self.options.oauth_auth_mechanism,
            host=self.provider.host,
            port=self.provider.port,
        )
        self._check()
        self._token_retry_used = False
        self._refusal = None
        self._schedule_token_refresh(creds)
        self._hook("logged_in")
        self.capabilities = _caps_names(caps)
        # This generator lives as long as the session: what it no longer
        # needs must not stay referenced (thousands of idling folders).
        del caps
        d = defer.maybeDeferred(
            self.store.save_capabilities,
            self.provider.tenant,
            self.provider.provider_id,
            self.capabilities,
            owner=self.owner,  # fenced by the lease, like cursor writes
        )
        d.addErrback(
            lambda f: self.log.warn(
                "{label}: saving capabilities failed: {err}", label=self.label, err=f.value
            )
        )
        yield self._send_id(proto)
        if self.options.enable_utf8 and getattr(proto, "enable_utf8", None) is not None:
            enabled = yield proto.enable_utf8()
            self._check()
            if enabled:
                self.log.info("{label}: UTF8=ACCEPT enabled", label=self.label)
        yield self.modseq.enable(proto, self.options.modseq)
        self._check()
        listing = yield proto.list_folders()
        self._check()
        if self.folder_filter.strip() == WILDCARD:
            yield self._watch_every_folder(proto, listing)
            return
        name = resolve_folder(self.folder_filter, listing)
        # The whole LIST (every folder of the account) would otherwise stay
        # in this frame per idling folder: O(folders^2) per account.
        del listing
        if name is None:
            raise FolderNotFound(f"no selectable folder matches {self.folder_filter!r}")
        self.server_name = name
        self._set_state(S.SELECTED, f"folder {display_name(name)!r} found")
        has_idle = "IDLE" in self.capabilities
        while True:
            self._check()
            if self._token_refresh_due:
                yield self._end_for_token_refresh(proto)
            yield self._sync(proto, name)
            self.violations = 0
            self.quarantined_until = None
            self.factory.resetDelay()
            self._hook("synced")
            if self._wake_pending or self._token_refresh_due:
                continue
            if getattr(proto, "last_exists", None) != self._exists_at_sync:
                # New mail was announced while we were fetching; IDLE would
                # not report it again, so it would wait for the IDLE restart.
                continue
            if has_idle:
                yield self._idle(proto)
            else:
                yield self._poll()

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
        self._set_state(S.SELECTED, f"{len(names)} folder(s) by wildcard")
        self.log.info(
            "{label}: watching {count} folder(s) by wildcard: {names}",
            label=self.label, count=len(names), names=self.server_name,
        )
        while True:
            for name in names:
                self._check()
                if self._token_refresh_due:
                    yield self._end_for_token_refresh(proto)
                yield self._sync(proto, name)
            self.factory.resetDelay()
            self._hook("synced")
            if not self._wake_pending and not self._token_refresh_due:
                yield self._poll()

    @defer.inlineCallbacks
    def _login_credentials(self):  # type: ignore[no-untyped-def]
        """This login's credentials; after the server refused an access
        token, a freshly refreshed one (once)."""
        if not self._force_token_refresh:
            creds = yield self.credentials.credentials(self.provider)
            return creds
        try:
            creds = yield self.credentials.credentials(self.provider, force_refresh=True)
        except Exception as e:
            if getattr(e, "code", None) in NO_REFRESH_CODES and self._refusal is not None:
                # No refresh token to get a new access token with: the
                # server's refusal of the one we have stands.
                self._force_token_refresh = False
                raise self._refusal from e
            raise  # e.g. token endpoint unreachable: retried, forced again
        self._force_token_refresh = False
        return creds

    @defer.inlineCallbacks
    def _send_id(self, proto: Any):  # type: ignore[no-untyped-def]
        """RFC 2971 ``ID`` after login, when offered (imapsvc.imap.extensions)."""
        send_id = getattr(proto, "send_id", None)
        if send_id is None or "ID" not in self.capabilities:
            return
        server_id = yield send_id(client_id_fields())
        self._check()
        if server_id:
            self.log.info(
                "{label}: server ID {server}",
                label=self.label,
                server=", ".join(f"{k}={v}" for k, v in sorted(server_id.items()))[:500],
            )

    @defer.inlineCallbacks
    def _sync(self, proto: Any, name: str):  # type: ignore[no-untyped-def]
        self._set_state(S.SYNCING, "sync")
        self._wake_pending = False
        self.sync_count += 1
        write_back = self._write_back_mode()
        # Write-back needs the folder read-write (SELECT); nothing else differs.
        info = yield self.modseq.open(proto, name, select=write_back.enabled)
        self._check()
        # EXISTS that arrives during this sync's commands is not an IDLE
        # event: remember where we started so the loop can sync again.
        self._exists_at_sync = getattr(proto, "last_exists", None)
        self.uid_next = info.get("uidnext")
        tenant, pid = self.provider.tenant, self.provider.provider_id
        # Read at every sync so an operator's resync is seen by this worker.
        stored = yield self.store.read_cursor(tenant, pid, name)
        self._check()
        backfill = yield self._read_backfill(name)
        start = compute_start(
            stored, info["uidvalidity"], info.get("uidnext"), self.options.max_emails_per_sync,
            first_sync_since=backfill[0], backfill_since=backfill[1],
        )
        if start.reason != REASON_RESUME:
            self.log.info(
                "{label}: starting at UID {first} ({reason}: {detail})",
                label=self.label,
                first=start.first_uid,
                reason=start.reason,
                detail=start.detail,
            )
        self.cursor = stored or start.cursor
        if write_back.enabled:
            # What an earlier sync failed to write back, and after a start
            # what a crash may have left: all at or below the cursor.
            yield self._write_back_retry(
                proto, name, write_back, start.cursor.uid_validity or "", start.cursor
            )
        uids: Any = []
        if start.search_range and not self.modseq.skip_search(info, start):
            uids = yield proto.uid_search_from(start.first_uid)
            self._check()
        # Sorted, unique, > last_uid; stays a compact UidArray (8 bytes a UID).
        uids = sorted_unique_from(uids, start.last_uid + 1)
        if start.keep_last is not None:
            uids = uids[-start.keep_last :]
        if start.since is not None:
            # By date (first sync or resync --since): below the cursor too;
            # the ledger drops what was recorded before.
            found = yield proto.uid_search_since(start.since)
            self._check()
            uids = sorted(set(uids).union(found))
        cursor = start.cursor
        validity = start.cursor.uid_validity or ""
        if not uids and start.reason != REASON_RESUME and stored != start.cursor:
            # A new (or reset) cursor with nothing to fetch yet must still be
            # stored: otherwise the next sync computes the recent window
            # again from a higher UIDNEXT and skips what arrived meanwhile.
            yield self.store.write_cursor(tenant, pid, name, start.cursor, self.owner)
            self._check()
        suspects = self._suspects.get(validity)
        if suspects:
            # A chunk failed before: its UIDs go one per command (poison path).
            chunks = poison.chunk_isolating(uids, self.options.fetch_chunk, suspects)
        else:
            chunks = list(P.chunk_by_count(uids, self.options.fetch_chunk))
        ahead: Optional[defer.Deferred] = None
        for i, chunk in enumerate(chunks):
            self._check()
            if ahead is None and suspects and chunk[0] in suspects and not self._fetched_ok:
                # Before a suspect's failure can count against it, show that
                # this server delivers other messages: a server failing every
                # FETCH (an outage) must not get messages skipped one by one.
                yield self._probe(proto, start.last_uid, uids, suspects)
            fetching = ahead if ahead is not None else self._fetch_chunk(
                proto, name, validity, chunk
            )
            ahead = None
            try:
                messages = yield fetching
            except Exception as exc:
                if not poison.counts_against_message(exc):
                    raise
                # Recorded (or the chunk split) before the session ends, so
                # the next connection goes past the message or isolates it.
                yield self._fetch_failed(name, validity, chunk, cursor, exc)
                raise
            self._fetched_ok = True
            self._check()
            if i + 1 < len(chunks):
                # Fetch the next chunk while this one is mapped and committed,
                # so IMAP round trips overlap the pipeline's work. One chunk
                # ahead at most; batches are still handed off in UID order.
                ahead = self._fetch_chunk(proto, name, validity, chunks[i + 1])
                ahead.addCallback(self._map_ahead, name)
            after = advance(cursor, chunk[-1], self.reactor.seconds())
            # hold_cursor: the cursor moves with the last chunk only.
            write: Optional[FolderCursor] = after
            if start.hold_cursor and i + 1 < len(chunks):
                write, after = None, cursor
            try:
                if messages:
                    yield self.pipeline.handle_batch(
                        self.provider, name, self.owner, messages, write
                    )
                    self.handed_off += len(messages)
                    if write_back.enabled:
                        # Only now: the batch (ledger, outbox, cursor) is committed.
                        yield self._write_back(
                            proto, name, write_back, validity, [m.uid for m in messages]
                        )
            except BaseException:
                if ahead is not None:
                    # The session is dropped for this failure; the chunk read
                    # ahead dies with the connection and is fetched again.
                    ahead.addErrback(lambda _f: None)
                raise
            cursor = after
            self.cursor = after
            if suspects and suspects.intersection(chunk):
                # Fetched after all: forget them and what they were counted.
                suspects.difference_update(chunk)
                yield self.store.clear_message_failures(
                    tenant, pid, name, validity, [int(u) for u in chunk]
                )

        if backfill[1] is not None:
            # Committed: the request is done (a crash before this line only
            # repeats the pass, which the ledger deduplicates).
            yield self.store.complete_backfill(
                tenant, pid, self._backfill_keys(name), backfill[1]
            )
            self.log.info(
                "{label}: backfill since {since} done ({count} messages read)",
                label=self.label, since=backfill[1].isoformat(), count=len(uids),
            )
        yield self.modseq.committed(name, info)

    def _backfill_keys(self, name: str) -> list[str]:
        # A request names the server's spelling or the configured filter
        # (not "*": each folder it finds goes by its own name).
        keys = [name] if self.folder_filter.strip() == WILDCARD else [name, self.folder_filter]
        return list(dict.fromkeys(keys))

    @defer.inlineCallbacks
    def _read_backfill(self, name: str):  # type: ignore[no-untyped-def]
        """``(first_sync_since, backfill_since)`` dates for compute_start."""
        days: Optional[int] = self.options.first_sync_since_days
        pending = None
        read = getattr(self.store, "read_backfill", None)
        if read is not None:  # stores of older tests lack it
            state = yield read(
                self.provider.tenant, self.provider.provider_id, self._backfill_keys(name)
            )
            self._check()
            if state.first_sync_since_days is not None:
                days = state.first_sync_since_days
            pending = state.pending_since
        return since_days_ago(self.reactor.seconds(), days), pending

    @defer.inlineCallbacks
    def _probe(self, proto: Any, last_uid: int, uids: Any, suspects: set[int]):  # type: ignore[no-untyped-def]
        """FETCH one message that is not a suspect (the last one recorded,
        else the first other new one; skipped ones stay suspects). Its
        answer, even empty, proves the server delivers messages; its failure
        ends the session without counting against anyone."""
        first = [last_uid] if last_uid > 0 else []
        probe = next((u for u in itertools.chain(first, uids) if u not in suspects), None)
        if probe is None:
            self._nothing_to_probe = True  # a failure counts as it is
            return
        yield proto.fetch_meta([int(probe)])
        self._fetched_ok = True

    @defer.inlineCallbacks
    def _fetch_failed(self, name: str, validity: str, chunk: Any, cursor: Any, exc: Exception):  # type: ignore[no-untyped-def]
        """A chunk's FETCH failed in a way a message can cause: split the
        chunk into suspects, or count a lone suspect's failure and skip it
        as poison at ``poison_after``. Marks ``exc`` as the message's doing,
        so it does not count towards the provider's quarantine."""
        exc.imapsvc_poison = True  # type: ignore[attr-defined]
        tenant, pid = self.provider.tenant, self.provider.provider_id
        suspects = self._suspects.setdefault(validity, set())
        if len(chunk) > 1 or int(chunk[0]) not in suspects:
            # A first failure only makes suspects: they are fetched alone,
            # after a probe (see _probe), before anything is counted.
            suspects.update(int(u) for u in chunk)
            self.log.warn(
                "{label}: FETCH of {n} message(s) failed ({error}); fetching them one by one",
                label=self.label, n=len(chunk), error=poison.describe(exc),
            )
            return
        uid = int(chunk[0])
        reason = poison.describe(exc)
        if not (self._fetched_ok or self._nothing_to_probe):
            # Not shown to be this message's fault: the server may be failing
            # every FETCH (an outage); never skip messages for that.
            self.log.warn("{label}: UID {uid} failed before any other FETCH worked: {error}",
                          label=self.label, uid=uid, error=reason)
            return
        count = yield self.store.note_message_failure(tenant, pid, name, validity, uid, reason)
        if count < self.options.poison_after:
            self.log.warn(
                "{label}: UID {uid} failed {count} of {limit} times: {error}",
                label=self.label, uid=uid, count=count, limit=self.options.poison_after,
                error=reason,
            )
            return
        from imapsvc.core.event import event_ids
        from imapsvc.core.ledger import dedupe_key
        from imapsvc.model import OUTCOME_SKIPPED, POISON_REASON_PREFIX, MessageRecord

        key = dedupe_key(name, validity, uid)
        record = MessageRecord(
            dedupe_key=key, folder=name, uid_validity=validity, uid=uid, message_id_key=None,
            outcome=OUTCOME_SKIPPED, event_id=event_ids(tenant, pid, key)[0],
            reason=POISON_REASON_PREFIX + reason,
        )
        after = advance(cursor, uid, self.reactor.seconds())
        yield self.store.record_batch(tenant, pid, name, self.owner, [record], after)
        yield self.store.mark_poison_skipped(tenant, pid, name, validity, uid)
        self.cursor = after
        # It stays in ``suspects`` (below the cursor now): never a probe.
        self.poison_skipped += 1
        # A server that breaks limits on message after message is the
        # server's problem: each message it made us skip counts once
        # towards the quarantine (a single bad message does not).
        exc.imapsvc_poison_skipped = True  # type: ignore[attr-defined]
        self.log.error(
            "{label}: UID {uid} skipped as poison after {count} failed fetches: {error}",
            label=self.label, uid=uid, count=count, error=reason,
        )

    # -- write-back (issue 13 item 3) -------------------------------------------

    def _write_back_mode(self) -> WB.WriteBack:
        """The provider's option, else IMAP_WRITE_BACK; an unusable value
        (written past the CLI) is reported and means ``none``."""
        try:
            return WB.resolve(self.provider.write_back, self.options.write_back)
        except ValueError as e:
            text = f"write-back option ignored: {e}"
            if self.write_back_error != text:
                self.log.warn("{label}: {error}", label=self.label, error=text)
            self.write_back_error = text
            return WB.WriteBack()

    def _write_back_status(self) -> dict:
        try:
            mode = str(WB.resolve(self.provider.write_back, self.options.write_back))
        except ValueError:
            mode = "invalid"
        return {
            "mode": mode,
            "applied": self.write_backs_applied,
            "failed": self.write_backs_failed,
            "pending": sum(len(u) for u in self._write_back_pending.values()),
            "lastError": redact(self.write_back_error) if self.write_back_error else None,
        }

    @defer.inlineCallbacks
    def _write_back(self, proto: Any, name: str, mode: WB.WriteBack, validity: str,
                    uids: list[int]):  # type: ignore[no-untyped-def]
        """Carry ``mode`` out on ``uids`` (recorded already). A refusal is
        counted and the UIDs kept for a retry; it never fails the sync (the
        events are safe in the ledger). A lost connection does fail it, as
        any command's would: the retry then comes from the pending set or
        the sweep."""
        uids = sorted(set(uids))
        if not uids:
            return
        try:
            steps = WB.plan_steps(mode, self.capabilities)
        except WB.WriteBackUnsupported as e:
            self._write_back_failed(validity, uids, str(e), retry=False)
            return
        target = None
        if mode.folder is not None:
            target = encode_mutf7(mode.folder)
            if WB.same_folder(target, name):
                self._write_back_failed(
                    validity, uids, "write-back move target is the watched folder itself",
                    retry=False,
                )
                return
        from imapsvc.imap.errors import CommandFailed

        try:
            for step in steps:
                self._check()
                if step == WB.STEP_SEEN:
                    yield proto.uid_store_flags(uids, ["\\Seen"])
                elif step == WB.STEP_MOVE:
                    yield proto.uid_move(uids, target)
                elif step == WB.STEP_COPY:
                    yield proto.uid_copy(uids, target)
                elif step == WB.STEP_DELETED:
                    yield proto.uid_store_flags(uids, ["\\Deleted"])
                elif step == WB.STEP_EXPUNGE:
                    yield proto.uid_expunge(uids)
        except (CommandFailed, ValueError) as e:
            self._write_back_failed(validity, uids, _describe(e), retry=True)
            return
        self.write_backs_applied += len(uids)
        pending = self._write_back_pending.get(validity)
        if pending:
            pending.difference_update(uids)
        if mode.expunges:
            # EXPUNGE shifts sequence numbers and EXISTS counts: a new
            # message announced meanwhile could look like no change, so
            # look once more (UIDs only grow; the cursor is unaffected).
            self._wake_pending = True

    def _write_back_failed(self, validity: str, uids: list[int], text: str,
                           retry: bool) -> None:
        self.write_backs_failed += len(uids)
        self.write_back_error = text
        self.log.warn(
            "{label}: write-back of {count} messages failed ({error}); {what}",
            label=self.label,
            count=len(uids),
            error=text,
            what="retried at the next sync" if retry else "not retried",
        )
        if not retry:
            return
        pending = self._write_back_pending.setdefault(validity, set())
        pending.update(uids)
        if len(pending) > WB.MAX_PENDING:
            for uid in sorted(pending)[: len(pending) - WB.MAX_PENDING]:
                pending.discard(uid)

    @defer.inlineCallbacks
    def _write_back_retry(self, proto: Any, name: str, mode: WB.WriteBack, validity: str,
                          cursor: Any):  # type: ignore[no-untyped-def]
        """Before fetching: retry failed write-backs at or below the cursor,
        and once per start (move, delete) sweep recorded messages still in
        the folder within :data:`~imapsvc.core.write_back.SWEEP_WINDOW` UIDs
        below the cursor: what a crash between commit and write-back left."""
        for other in [v for v in self._write_back_pending if v != validity]:
            del self._write_back_pending[other]  # UIDs of another UIDVALIDITY mean nothing
        try:
            last = int(getattr(cursor, "last_uid", None) or 0)
        except ValueError:
            last = 0
        uids = {u for u in self._write_back_pending.get(validity, ()) if u <= last}
        try:
            WB.plan_steps(mode, self.capabilities)
        except WB.WriteBackUnsupported:
            return  # reported with each batch; nothing to retry on this server
        if not self._write_back_swept and mode.expunges:
            self._write_back_swept = True
            span = WB.sweep_range(str(last))
            if span is not None:
                present = yield proto.uid_search_from(span[0])
                self._check()
                present = {u for u in present if span[0] <= u <= span[1]}
                if present:
                    tenant, pid = self.provider.tenant, self.provider.provider_id
                    recorded = yield self.store.recorded_uids(
                        tenant, pid, name, validity, span[0], span[1]
                    )
                    self._check()
                    uids |= present & set(recorded)
        if uids:
            yield self._write_back(proto, name, mode, validity, sorted(uids))

    def _map_ahead(self, messages: Any, name: str) -> Any:
        # The read-ahead chunk starts mapping now, while the batch before it
        # commits (the pipeline still records batches strictly in order).
        prepare = getattr(self.pipeline, "prepare", None)
        if prepare is not None and messages:
            prepare(self.provider, name, messages)
        return messages

    @defer.inlineCallbacks
    def _fetch_chunk(self, proto: Any, name: str, validity: str, chunk: list[int]):  # type: ignore[no-untyped-def]
        meta = yield proto.fetch_meta(chunk)
        plans = []
        for uid in chunk:
            if uid not in meta:
                self.log.info("{label}: UID {uid} vanished before FETCH", label=self.label, uid=uid)
                continue
            plans.append(
                P.plan_message(
                    uid, meta[uid], self.options.limits, self.trust_structure, self.parser
                )
            )
        sections: dict[int, dict[str, bytes]] = {}
        raws: dict[int, bytes] = {}
        by_uid = {p.uid: p for p in plans}
        wanted = [
            (p.uid, p.expected_bytes) for p in plans if p.kind == P.KIND_STRUCTURE and p.sections
        ]
        for group in P.chunk_by_bytes(wanted, self.options.fetch_chunk, self.options.fetch_bytes):
            self._check()
            got = yield proto.fetch_sections({u: list(by_uid[u].sections) for u in group})
            sections.update(got)
        full = [(p.uid, p.expected_bytes) for p in plans if p.kind == P.KIND_FULL]
        for group in P.chunk_by_bytes(full, self.options.fetch_chunk, self.options.fetch_bytes):
            self._check()
            got = yield proto.fetch_full(group)
            raws.update(got)
        messages = []
        for p in plans:
            if p.kind == P.KIND_FULL and p.uid not in raws:
                self.log.info(
                    "{label}: UID {uid} vanished before FETCH", label=self.label, uid=p.uid
                )
                continue
            if p.kind == P.KIND_HEADER_ONLY:
                self.log.info(
                    "{label}: UID {uid} ({size} bytes) not downloaded: {reason}",
                    label=self.label,
                    uid=p.uid,
                    size=p.size,
                    reason=p.reason,
                )
            messages.append(
                P.build_message(
                    p, meta[p.uid], name, validity, sections.get(p.uid), raws.get(p.uid)
                )
            )
        self.bytes_fetched += sum(
            len(m.header) + sum(len(t) for t in m.texts.values()) + len(m.raw or b"")
            for m in messages
        )
        return messages

    @defer.inlineCallbacks
    def _idle(self, proto: Any):  # type: ignore[no-untyped-def]
        """Idle until new mail, a wake-up or the IDLE restart (then the loop
        syncs). Meanwhile the keep-alive ends and re-issues IDLE, with no
        sync, well before the inactivity watchdog: servers that send
        nothing while idling (Exchange Online) are not dropped as dead, and
        a dead one still is (DONE unanswered within the command deadline,
        or the watchdog)."""
        self._idle_done_sent = False
        self._set_state(S.IDLING, "waiting for new mail (IDLE)")
        if self._wake_pending or self._stopping:
            # A hook reacting to Idling woke or stopped us: IDLE would only
            # have to be ended again.
            return
        jitter, rand = self.options.timer_jitter_pct, self.rand
        # Capped just below the 29 minutes whatever the jitter drew.
        delay = timer_delay(
            self.options.idle_restart_ms, jitter, rand, ceiling_s=IDLE_RESTART_LIMIT_MS / 1e3 - 1
        )
        self._idle_timer = self.reactor.callLater(delay, self._end_idle, "IDLE restart")
        try:
            while True:
                self._idle_done_sent = False
                self._idle_ended_for = None
                keepalive = self._keepalive_delay()
                if keepalive is not None:
                    self._keepalive_timer = self.reactor.callLater(
                        keepalive, self._end_idle, IDLE_KEEPALIVE
                    )
                self._idle_submitted = True
                try:
                    yield proto.idle(self._on_exists)
                finally:
                    self._idle_submitted = False
                    if self._keepalive_timer is not None and self._keepalive_timer.active():
                        self._keepalive_timer.cancel()
                    self._keepalive_timer = None
                if (
                    self._idle_ended_for != IDLE_KEEPALIVE
                    or self._wake_pending
                    or self._stopping
                    or self._token_refresh_due
                    or getattr(proto, "last_exists", None) != self._exists_at_sync
                ):
                    return
                # Nothing announced and nothing asked: idle on at once.
                self.idle_keepalives += 1
        finally:
            if self._idle_timer is not None and self._idle_timer.active():
                self._idle_timer.cancel()
            self._idle_timer = None

    def _keepalive_delay(self) -> Optional[float]:
        """Seconds until the next keep-alive, jittered, below the watchdog."""
        ceiling = None
        if self.options.inactivity_timeout_ms:
            ceiling = self.options.inactivity_timeout_ms / 1000.0 * KEEPALIVE_SHARE
        return timer_delay(
            self.options.idle_keepalive_ms, self.options.timer_jitter_pct, self.rand, ceiling
        )

    def _on_exists(self, count: int) -> None:
        self.idle_wakeups += 1
        self._end_idle(f"EXISTS {count}")

    def _end_idle(self, why: str) -> None:
        proto = self._proto
        if proto is None:
            return
        if self._idle_done_sent:
            # DONE is out (say, for the keep-alive) and its answer not yet
            # in: remember the stronger reason, or a wake-up in that window
            # would only re-issue IDLE.
            if why != IDLE_KEEPALIVE:
                self._idle_ended_for = why
            return
        if not self._idle_submitted:
            # IDLE not sent yet: remember the wake-up instead of losing it.
            if why != IDLE_KEEPALIVE:
                self._wake_pending = True
            return
        # Also before the server's "+" arrived (proto.idling still False):
        # the protocol then sends DONE right after the "+". Waiting for
        # ``idling`` here lost wake-ups and made stopService hang until its
        # timeout when they came in that window.
        self._idle_done_sent = True
        self._idle_ended_for = why
        self.log.debug("{label}: leaving IDLE ({why})", label=self.label, why=why)
        proto.done()

    @defer.inlineCallbacks
    def _poll(self):  # type: ignore[no-untyped-def]
        self._set_state(S.SELECTED, "waiting for the next poll")
        delay = timer_delay(self.options.poll_interval_ms, self.options.timer_jitter_pct, self.rand)
        self._poll_wait = defer.Deferred()
        self._poll_timer = self.reactor.callLater(delay, self._poll_wait.callback, None)
        try:
            yield self._poll_wait
        finally:
            self._poll_wait = None
            self._poll_timer = None

    def _cancel_timers(self) -> None:
        timers = (self._idle_timer, self._keepalive_timer, self._poll_timer, self._token_timer)
        for timer in timers:
            if timer is not None and timer.active():
                timer.cancel()
        self._idle_timer = self._keepalive_timer = self._poll_timer = self._token_timer = None

    # -- OAuth2 refresh-ahead ----------------------------------------------------

    def _schedule_token_refresh(self, creds: Any) -> None:
        """After an OAuth2 login, plan a reconnect at ``expiry -
        REFRESH_MARGIN_S``: an IDLE session must not outlive its token (some
        servers drop it then, others stop delivering), and the next login's
        ``credentials()`` refreshes a token that is inside the margin."""
        if getattr(creds, "mechanism", None) not in ("xoauth2", "oauthbearer"):
            return
        expiry_of = getattr(self.credentials, "token_expiry", None)
        if expiry_of is None:
            return
        try:
            expiry = expiry_of(self.provider)
        except Exception:
            self.log.failure("{label}: reading the token expiry failed", label=self.label)
            return
        if expiry is None:
            return
        delay = float(expiry) - REFRESH_MARGIN_S - self.reactor.seconds()
        if delay <= 0:
            delay = TOKEN_RETRY_S
        if self._token_timer is not None and self._token_timer.active():
            self._token_timer.cancel()
        self._token_timer = self.reactor.callLater(delay, self._token_expiring)
        self.log.debug(
            "{label}: reconnecting for a token refresh in {delay:.0f}s",
            label=self.label,
            delay=delay,
        )

    def _token_expiring(self) -> None:
        self._token_timer = None
        if self._proto is None or self._stopping:
            return
        self.log.info(
            "{label}: access token expires within {margin}s; reconnecting to refresh it",
            label=self.label,
            margin=REFRESH_MARGIN_S,
        )
        self._token_refresh_due = True
        # Leave IDLE / the poll wait; a sync in progress finishes first (the
        # loop checks the flag before the next one).
        if self.state == S.IDLING:
            self._end_idle("access token expiring")
        elif self._poll_wait is not None and not self._poll_wait.called:
            if self._poll_timer is not None and self._poll_timer.active():
                self._poll_timer.cancel()
            self._poll_wait.callback(None)

    @defer.inlineCallbacks
    def _end_for_token_refresh(self, proto: Any):  # type: ignore[no-untyped-def]
        self._refresh_reconnect = True
        # Reconnect at once, whichever way this connection ends.
        self.factory.set_next_delay(0)
        try:
            yield proto.logout()
        except Exception:
            pass  # closing anyway
        raise _TokenRefreshDue()

    def quarantined(self) -> bool:
        """Whether this folder's server is in quarantine now."""
        until = self.quarantined_until
        return until is not None and until > self.reactor.seconds()

    def _quarantine(self, why: str) -> str:
        """This server broke protocol limits ``quarantine_after`` sessions in
        a row: leave it alone for ``quarantine_ms`` (one hostile tenant must
        not cost the others CPU and memory on every reconnect)."""
        from datetime import UTC, datetime

        delay = self.options.quarantine_ms / 1000.0
        self.quarantined_until = self.reactor.seconds() + delay
        self.quarantines += 1
        self.factory.set_next_delay(delay, capped=False)
        self._reconnect_reason = "quarantine"
        until = datetime.fromtimestamp(self.quarantined_until, tz=UTC).strftime(
            "%Y-%m-%dT%H:%M:%SZ"
        )
        text = f"quarantined until {until} after {self.violations} protocol violations: {why}"
        self.last_error = text
        self.log.error("{label}: {text}", label=self.label, text=text)
        self._hook("quarantined", self.quarantined_until, text)
        return text

    def _lose(self, proto: Any) -> None:
        transport = getattr(proto, "transport", None)
        if transport is not None:
            transport.loseConnection()

    def _forget_credentials(self) -> None:
        forget = getattr(self.credentials, "invalidate", None) or _noop
        try:
            forget(self.provider.tenant, self.provider.provider_id)
        except Exception:
            self.log.failure("{label}: dropping cached credentials failed", label=self.label)

    def _session_failed(self, failure: Failure, proto: Any) -> None:
        from imapsvc.imap import errors

        current = proto is self._proto
        if failure.check(_Stopping) or self._stopping:
            if current:
                self._lose(proto)
            return
        if failure.check(_TokenRefreshDue):
            if current:
                self._lose(proto)
            return
        err = failure.value
        if not failure.check(errors.ConnectionGone, ConnectionDone, ConnectionLost):
            # Named by the error class (secret-free) for the reconnect metric;
            # a plain lost connection is counted as such when it ends.
            self._reconnect_reason = self._reconnect_reason or type(err).__name__
        text = _describe(err)
        self.last_error = text
        if current:
            self._session_error = text
        if failure.check(CredentialsMissing):
            # Found nowhere: a configuration problem, not a refusal. Wait for
            # the supervisor's next discovery pass (which retries the login)
            # and never count it towards the auto-pause. The whole message
            # (names and places, bounded by construction) is the operator's
            # answer to "why": not cut like other errors.
            text = _describe(err, limit=2000)
            self.last_error = text
            if current:
                self._session_error = text
            self._forget_credentials()
            self.factory.stopTrying()
            self._set_state(S.NEEDS_REAUTH, "credentials missing", error=text)
            self._hook("credentials_missing", text)
        elif (
            failure.check(errors.AuthenticationFailed)
            and self._login_mechanism in OAUTH_MECHANISMS
            and not self._token_retry_used
        ):
            # The token may have been revoked or rotated before its expiry:
            # one forced refresh and one retry before the refusal counts.
            self._token_retry_used = True
            self._forget_credentials()
            self._force_token_refresh = True
            self._refusal = err
            self._refusal_retry = True
            self.factory.set_next_delay(0)
            self.log.info(
                "{label}: access token refused ({error}); refreshing it and retrying once",
                label=self.label,
                error=text,
            )
        elif failure.check(errors.AuthenticationFailed) or getattr(err, "auth_failure", False):
            # Read the credentials again at the next login: the app may have
            # changed the password meanwhile.
            self._forget_credentials()
            # Retrying bad credentials only locks the account: wait for the
            # supervisor (a new login attempt) instead. Credential-source
            # refusals (invalid_grant) count the same way.
            self.factory.stopTrying()
            self._set_state(S.NEEDS_REAUTH, "authentication failed", error=text)
            code = getattr(err, "code", None) or "AUTHENTICATIONFAILED"
            self._hook("auth_failed", code, getattr(err, "text", "") or "")
        elif failure.check(LeaseLost):
            self.factory.stopTrying()
            self._set_state(S.STOPPED, "lease lost", error=text)
            self._hook("lease_lost")
        else:
            if failure.check(errors.ProtocolViolation) and (
                not getattr(err, "imapsvc_poison", False)
                or getattr(err, "imapsvc_poison_skipped", False)
            ):
                self.violations += 1
                if self.violations >= self.options.quarantine_after:
                    text = self._quarantine(text)
                    if current:
                        self._session_error = text
            if self.quarantined():
                pass  # the quarantine delay is already set
            elif failure.check(errors.Throttled) and err.retry_after is not None:
                self.factory.set_next_delay(err.retry_after)
            elif failure.check(
                errors.CleartextRefused,
                errors.TLSRequired,
                errors.MechanismUnsupported,
                FolderNotFound,
            ):
                # Configuration problems: do not hammer the server.
                self.factory.set_next_delay(self.options.reconnect_max_ms / 1000.0)
            if self._reconnect_reason == "bye" and failure.check(
                errors.ConnectionGone, ConnectionDone, ConnectionLost
            ):
                # The server said BYE and closed (a restart, a shutdown): an
                # expected reconnect, not a warning per folder in a storm.
                self.log.info("{label}: session ended: {error}", label=self.label, error=text)
            else:
                self.log.warn("{label}: session failed: {error}", label=self.label, error=text)
        if current:
            self._lose(proto)


def _noop(*_args: Any) -> None:
    return None


def _describe(err: Any, limit: int = 300) -> str:
    """A short, secret-free description of an error (exception class and
    message; our errors never carry secrets)."""
    message = str(err)
    if len(message) > limit:
        message = message[:limit] + "..."
    return f"{type(err).__name__}: {message}" if message else type(err).__name__
