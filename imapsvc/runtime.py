"""The running service: builds every component from the settings and
starts/stops them in an order that loses nothing.

Start: the web service first (liveness answers at once, readiness says what
is missing); then the store (retried until the database answers), the sink,
the relay, the supervisor, the LISTEN hook and the ledger cleanup.
Stop (SIGTERM): the supervisor stops folders (leave IDLE, LOGOUT) and gives
leases back, the relay flushes what was committed, then sink and store
close, all within ``IMAP_SHUTDOWN_TIMEOUT_MS``.
"""

from __future__ import annotations

import json
from typing import Any, Optional

import attr
from twisted.application import service, strports
from twisted.internet import defer
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from imapsvc.deferreds import fire_and_forget, thread_runner

log = Logger(namespace="imapsvc.runtime")


def build_store(settings: Any, reactor: Any) -> Any:
    if settings.database_url:
        from imapsvc.store.postgres import PostgresStore

        # application_name tells workers apart in pg_stat_activity.
        return PostgresStore(
            settings.database_url, reactor, application_name=f"imapsvc-{settings.worker_id}"
        )
    from imapsvc.store.sqlite import SqliteStore

    return SqliteStore(settings.sqlite_path, reactor)


#: Where the container's memory limit is read (cgroup v2, then v1).
CGROUP_MEMORY_FILES = (
    "/sys/fs/cgroup/memory.max",
    "/sys/fs/cgroup/memory/memory.limit_in_bytes",
)


def read_memory_limit(paths: tuple[str, ...] = CGROUP_MEMORY_FILES) -> Optional[int]:
    """The cgroup memory limit in bytes, or ``None`` (none, or not readable)."""
    from imapsvc.core.wire_caps import parse_memory_limit

    for path in paths:
        try:
            with open(path, encoding="ascii") as f:
                text = f.read()
        except (OSError, UnicodeDecodeError):
            continue
        return parse_memory_limit(text)
    return None


def build_budget(settings: Any) -> Any:
    """The process-wide :class:`~imapsvc.imap.budget.ByteBudget`, sized from
    ``IMAP_INFLIGHT_BUDGET_BYTES`` or the memory limit (setting, else cgroup)."""
    from imapsvc.core.wire_caps import inflight_budget
    from imapsvc.imap.budget import ByteBudget

    limit = settings.memory_limit_bytes or read_memory_limit()
    capacity = inflight_budget(settings.inflight_budget_bytes, limit)
    log.info(
        "IMAP in-flight budget {budget} bytes (memory limit {limit})",
        budget=capacity,
        limit=limit or "none",
    )
    return ByteBudget(capacity)


def build_sink(settings: Any, reactor: Any) -> Any:
    if settings.redis_url:
        from imapsvc.sink.redis_stream import RedisStreamSink

        return RedisStreamSink(
            reactor,
            settings.redis_url,
            settings.event_stream,
            timeout_s=settings.redis_timeout_ms / 1000.0,
            maxlen=settings.event_stream_maxlen,
            dedupe_window_ms=settings.event_dedupe_window_ms,
        )
    from imapsvc.sink.jsonl import JsonLinesSink

    return JsonLinesSink(settings.events_file, stream=settings.event_stream, clock=reactor,
                         dedupe_window_ms=settings.event_dedupe_window_ms)


def build_secret_chain(settings: Any, reactor: Any, http: Any, own: Any) -> Any:
    """The credential lookup: the service's own store ``own`` (or ``None``),
    then the app's providers of ``SECRET_READ_CHAIN``; rotated refresh
    tokens go to ``SECRET_WRITE_PROVIDER`` when set."""
    import os

    from imapsvc.secret_chain import VAULT, SecretChain, VaultSecrets, build_providers

    s = settings
    vault = None
    if VAULT in s.secret_read_chain or s.secret_write_provider == VAULT:
        vault = VaultSecrets(
            http, reactor, s.vault_addr, s.vault_token,
            tenant_template=s.vault_tenant_secret_path_template,
            app_path=s.vault_app_secret_path,
            timeout_s=s.vault_timeout_ms / 1000.0,
        )  # fmt: skip
    common = {"environ": os.environ, "fs_base_path": s.secret_fs_base_path,
              "env_prefix": s.secret_env_prefix, "vault": vault}  # fmt: skip
    providers = build_providers(s.secret_read_chain, **common)
    writer = None
    if s.secret_write_provider:
        writer = build_providers([s.secret_write_provider], **common)[0]
    log.info(
        "credential lookup: {own}{chain}, then the provider row; rotated refresh tokens "
        "written to {writer}",
        own="imapsvc sealed store" if own is not None else "(no IMAPSVC_SECRET_KEY)",
        chain="".join(", " + p.name for p in providers),
        writer=s.secret_write_provider or "the imapsvc sealed store",
    )
    return SecretChain(own, providers, reactor, s.secret_cache_ms / 1000.0, writer)


class Runtime(service.MultiService):
    """Everything but the web service, started once the store answers."""

    def __init__(self, settings: Any, reactor: Any, http: Any = None):
        super().__init__()
        self.setName("runtime")
        self.settings = settings
        self.reactor = reactor
        self.store = build_store(settings, reactor)
        self.sink = build_sink(settings, reactor)
        from imapsvc.core.capacity import fd_reserve, folder_capacity
        from imapsvc.reactor_lag import ReactorLagMeter

        # Many folders need many descriptors: take the hard limit, keep a
        # reserve for the web surface and the pools, hold no more folders
        # than the rest (core.capacity; docs/performance.md).
        self.open_files_limit = raise_open_files_limit()
        self.fd_reserve = fd_reserve()
        self.folder_capacity = folder_capacity(
            self.open_files_limit, self.fd_reserve, settings.max_folders
        )
        self.lag_meter = ReactorLagMeter(reactor)
        from imapsvc.gc_policy import CollectorPolicy

        self.gc_policy: Optional[CollectorPolicy] = None
        if settings.gc_full_pass_ms:
            self.gc_policy = CollectorPolicy(reactor, settings.gc_full_pass_ms / 1000.0)
        self._build(http)
        self._boot: Optional[defer.Deferred] = None
        self._turns_bounded = False
        self._listener: Any = None
        self._admin_listener: Any = None
        self._store_started = False
        self._sink_started = False
        self.store_error: Optional[str] = None

    def _build(self, http: Any) -> None:
        from imapsvc.core.event import build_auto_paused_entry
        from imapsvc.core.oauth_state import state_key
        from imapsvc.folder import FolderOptions, FolderService
        from imapsvc.imap.probe import test_login
        from imapsvc.imap.tls import SharedClientTLS
        from imapsvc.oauth import CredentialSource, OAuthFlow
        from imapsvc.pipeline import Pipeline
        from imapsvc.sealed_secrets import SecretBox, SecretStore
        from imapsvc.shared_poll import SharedPollService
        from imapsvc.sink.relay import Relay
        from imapsvc.supervisor import Supervisor

        s, reactor = self.settings, self.reactor
        from imapsvc.core.netguard import parse_allowlist
        from imapsvc.egress import checked_address, guarded_http_client

        # Tenant-chosen endpoints (IMAP hosts, OAuth token URLs) reach only
        # checked addresses: private/loopback/link-local need the allowlist.
        allow = parse_allowlist(s.private_network_allowlist)
        self.allow = allow
        # Only for tenant-chosen endpoints: operator-configured ones (Vault,
        # ...) may well be private and use plain treq.
        tenant_http = http if http is not None else guarded_http_client(reactor, allow)

        def resolve(host: str, port: int) -> Any:
            return checked_address(reactor, host, port, allow)
        secret_setting = ",".join(s.secret_key)
        self.box = SecretBox.from_setting(secret_setting) if secret_setting else None
        own = SecretStore(self.store, self.box, s.secrets_dir or None) if self.box else None
        # Vault is the operator's endpoint, not a tenant's: plain treq.
        if http is None:
            import treq as operator_http
        else:
            operator_http = http
        self.secrets = build_secret_chain(s, reactor, operator_http, own)
        if self.box is None:
            log.error(
                "IMAPSVC_SECRET_KEY is not set: the service's own sealed secrets cannot be "
                "read and its OAuth flow is disabled; credentials come from "
                "SECRET_READ_CHAIN ({chain}) and the providers' rows only",
                chain=",".join(s.secret_read_chain) or "empty",
            )
        self.credentials = CredentialSource(
            self.store, self.secrets, self.box, tenant_http, reactor,
            allow_http_loopback=s.oauth_allow_http_loopback, owner=s.worker_id,
        )
        self.relay = Relay(self.store, self.sink, reactor, owner=s.worker_id,
                           tenants=s.tenants)
        self.pool = ThreadPool(minthreads=0, maxthreads=2, name="imapsvc-parse")
        # -- parse process pool (IMAP_PARSE_PROCESSES; docs/performance.md) --
        from imapsvc.malloc_arenas import limit_arenas
        from imapsvc.parse_pool import ParsePool

        # Before any worker thread allocates: see imapsvc/malloc_arenas.py.
        limit_arenas()

        # IMAP_PARSE_PROCESSES=0 (the default) means a thread and no pool:
        # ParsePool itself reads 0 as "one worker per core".
        self.parse_pool = ParsePool(reactor, s.parse_processes) if s.parse_processes else None
        # -- attachment content (IMAP_ATTACHMENT_MODE=store; CONTRACT 2) --
        self.object_uploader = None
        if s.attachment_mode == "store":
            from imapsvc.config import ConfigError
            from imapsvc.objectstore import ObjectStoreError
            from imapsvc.objectstore import from_settings as object_store
            from imapsvc.objectstore.upload import ObjectUploader

            try:
                objects = object_store(s, reactor)
            except ObjectStoreError as e:
                raise ConfigError(str(e)) from None
            self.object_uploader = ObjectUploader(objects, s.limits(), s.object_store_prefix)
            log.info("Attachments are stored in {where}", where=objects.describe())
        # -- end attachment content --
        self.pipeline = Pipeline(
            self.store,
            self.relay.wake,
            reactor,
            s.limits(),
            s.parse_thread_threshold_bytes,
            thread_runner(reactor, self.pool),
            parse_pool=self.parse_pool,
            relay_offer=self.relay.offer,
            object_uploader=self.object_uploader,
        )
        # -- end parse process pool --
        options = FolderOptions.from_settings(s)
        # One budget for every IMAP connection of this process (issue 11).
        self.imap_budget = build_budget(s)
        # One gate too: at most IMAP_CONNECT_CONCURRENCY sessions being set up
        # at once (a server restart reconnects every folder together).
        from imapsvc.imap.connect_gate import ConnectGate

        self.connect_gate = ConnectGate(s.connect_concurrency, self.reactor)
        options = attr.evolve(options, budget=self.imap_budget, connect_gate=self.connect_gate)

        # One OpenSSL context per host, not per folder (RSS per folder).
        tls = SharedClientTLS(options.tls_ca_file, options.tls_insecure)

        def make_folder(provider, folder, hooks):
            return FolderService(
                provider, folder, reactor, self.store, self.pipeline, self.credentials,
                s.worker_id, options, hooks=hooks, tls_factory=tls, resolve=resolve,
            )

        def make_shared_poller(provider, folders, hooks):
            # Gmail folders past IMAP_GMAIL_CONNECTION_BUDGET: one connection.
            return SharedPollService(
                provider, folders, reactor, self.store, self.pipeline, self.credentials,
                s.worker_id, options, hooks=hooks, tls_factory=tls, resolve=resolve,
            )

        def on_auto_paused(provider, count, code):
            now = _utcnow(reactor)
            event_id, fields = build_auto_paused_entry(
                provider.tenant, provider.provider_id, "auth_failure", count, code, now,
                provider_name=provider.provider_name, mailbox=provider.mailbox,
            )
            d = defer.maybeDeferred(
                self.store.add_outbox, provider.tenant, provider.provider_id, event_id, fields
            )
            d.addCallback(lambda _: self.relay.wake())
            return d

        from imapsvc.admin_requests import AdminRequests
        from imapsvc.cluster_status import StatusReporter

        lease_ttl_s = s.lease_ttl_ms / 1000.0
        # Folder states and a heartbeat in the store: /status on any replica
        # shows the whole deployment.
        self.reporter = StatusReporter(
            self.store, reactor, s.worker_id, interval_s=s.status_write_ms / 1000.0,
            heartbeat_s=lease_ttl_s / 3.0, lease_ttl_s=lease_ttl_s,
            tenants=frozenset(s.tenants),
        )
        self.supervisor = Supervisor(
            self.store,
            reactor,
            s.worker_id,
            make_folder,
            refresh_s=s.provider_refresh_ms / 1000.0,
            lease_ttl_s=s.lease_ttl_ms / 1000.0,
            jitter_pct=s.timer_jitter_pct,
            max_connections_per_tenant=s.max_connections_per_tenant,
            tenants=frozenset(s.tenants),
            folder_capacity=self.folder_capacity,
            open_files_limit=self.open_files_limit,
            auth_pause_after=s.auth_failure_pause_after,
            on_auto_paused=on_auto_paused,
            test_connection=lambda p: test_login(
                reactor, p, self.credentials, tls, s.connection_timeout_ms / 1000.0, allow,
                oauth_mechanism=s.oauth_auth_mechanism,
            ),
            reporter=self.reporter,
            gmail_connection_budget=s.gmail_connection_budget or None,
            make_shared_poller=make_shared_poller,
        )
        # Admin actions go to the replica that owns the provider.
        self.admin_requests = AdminRequests(
            self.store, reactor, s.worker_id, self.supervisor,
            poll_s=s.admin_poll_ms / 1000.0, wait_s=s.admin_wait_ms / 1000.0,
            stale_s=max(60.0, lease_ttl_s),
        )
        self.supervisor.imap_budget = self.imap_budget
        self.supervisor.connect_gate = self.connect_gate
        self.oauth = None
        if self.box is not None and s.public_base_url:
            self.oauth = OAuthFlow(
                self.store,
                self.secrets,
                self.box,
                tenant_http,
                reactor,
                state_key(secret_setting),
                s.public_base_url,
                s.redirect_allowlist,
                on_connected=lambda t, p: self.supervisor.request_discovery(),
                allow_http_loopback=s.oauth_allow_http_loopback,
            )
        self.cleanup = LoopingCall(self._purge)
        self.cleanup.clock = reactor

    # -- lifecycle ------------------------------------------------------------

    def startService(self) -> None:
        # Children are started by _start_rest once the store answers.
        service.Service.startService(self)
        self.lag_meter.startService()
        if self.gc_policy is not None:
            self.gc_policy.startService()
        from imapsvc.reactor_turns import bound_events_per_turn

        self._turns_bounded = bound_events_per_turn(
            self.reactor, self.settings.reactor_events_per_turn)
        if self.folder_capacity is not None:
            log.info(
                "open-file limit {limit}: {reserve} reserved, room for {capacity} folders",
                limit=self.open_files_limit, reserve=self.fd_reserve,
                capacity=self.folder_capacity,
            )
        self._boot = self._start()
        fire_and_forget(self._boot, log, "start-up")

    @defer.inlineCallbacks
    def _start(self):
        delay = 1.0
        while self.running:
            try:
                yield self.store.start()
                break
            except Exception as e:
                self.store_error = str(e)
                log.warn("store unavailable ({err}); retrying in {delay:.0f}s", err=e, delay=delay)
                yield _sleep(self.reactor, delay)
                delay = min(delay * 2, 30.0)
        if not self.running:
            return
        self._store_started = True
        self.store_error = None
        yield defer.maybeDeferred(getattr(self.sink, "start", lambda: None))
        self._sink_started = True
        self.pool.start()
        if self.parse_pool is not None:
            yield self.parse_pool.start()  # never fails; falls back to threads
        self.relay.setServiceParent(self)
        self.supervisor.setServiceParent(self)
        listen = getattr(self.store, "listen", None)
        if listen is not None:
            try:
                self._listener = yield listen(
                    "imapsvc_providers",
                    lambda payload: self.supervisor.request_discovery(),
                    on_reconnect=self.supervisor.request_discovery,
                )
            except Exception as e:
                log.warn("LISTEN for provider changes failed: {err}", err=e)
        self.admin_requests.start()
        if listen is not None:
            from imapsvc.store.postgres import ADMIN_CHANNEL

            try:
                self._admin_listener = yield listen(
                    ADMIN_CHANNEL,
                    lambda payload: self.admin_requests.wake(),
                    on_reconnect=self.admin_requests.wake,
                )
            except Exception as e:
                log.warn("LISTEN for admin requests failed: {err}", err=e)
        self.cleanup.start(3600, now=True).addErrback(
            lambda f: log.failure("ledger cleanup loop failed", f)
        )

    def _purge(self):
        d = defer.maybeDeferred(self.store.purge_ledger, self.settings.ledger_retention_days)
        d.addCallback(lambda n: n and log.info("ledger cleanup removed {n} rows", n=n))
        return fire_and_forget(d, log, "ledger cleanup")

    @defer.inlineCallbacks
    def stopService(self):
        service.Service.stopService(self)
        if self.lag_meter.running:
            self.lag_meter.stopService()
        if self.gc_policy is not None and self.gc_policy.running:
            self.gc_policy.stopService()
        if self._turns_bounded:
            from imapsvc.reactor_turns import unbound

            unbound(self.reactor)
            self._turns_bounded = False
        bound = self.settings.shutdown_timeout_ms / 1000.0
        if self.cleanup.running:
            self.cleanup.stop()
        if self._listener is not None:
            yield defer.maybeDeferred(self._listener.stop).addErrback(lambda f: None)
        if self._admin_listener is not None:
            yield defer.maybeDeferred(self._admin_listener.stop).addErrback(lambda f: None)
        yield self.admin_requests.stop()
        if self.supervisor.running:
            yield _bounded(self.supervisor.stopService(), bound * 0.6, self.reactor, "folders")
        if self.relay.running:
            yield _bounded(self.relay.flush(bound * 0.3), bound * 0.3, self.reactor, "relay")
            yield self.relay.stopService()
        if self.pool.started:
            self.pool.stop()
        if self.parse_pool is not None:
            yield self.parse_pool.stop()
        if self._sink_started:
            yield defer.maybeDeferred(self.sink.stop).addErrback(lambda f: None)
        if self._store_started:
            yield defer.maybeDeferred(self.store.stop).addErrback(lambda f: None)

    # -- readiness ------------------------------------------------------------

    def discovered(self) -> bool:
        return self.supervisor.discovered_once


def raise_open_files_limit(resource_module: Any = None) -> Optional[int]:
    """Raise the soft ``RLIMIT_NOFILE`` to the hard limit; return the soft
    limit now in force (``None`` when unlimited or not available)."""
    from imapsvc.core.capacity import raised_soft_limit

    if resource_module is None:
        try:
            import resource as resource_module
        except ImportError:  # pragma: no cover - not on POSIX
            return None
    rm = resource_module
    soft, hard = rm.getrlimit(rm.RLIMIT_NOFILE)
    want = raised_soft_limit(soft, hard, rm.RLIM_INFINITY)
    if want != soft:
        try:
            rm.setrlimit(rm.RLIMIT_NOFILE, (want, hard))
            soft = want
        except (ValueError, OSError) as e:
            log.warn("cannot raise the open-file limit from {soft} to {want}: {err}",
                     soft=soft, want=want, err=e)
    return None if soft == rm.RLIM_INFINITY else int(soft)


def _utcnow(reactor: Any):
    from datetime import UTC, datetime

    return datetime.fromtimestamp(reactor.seconds(), tz=UTC)


def _sleep(reactor: Any, seconds: float) -> defer.Deferred:
    d: defer.Deferred = defer.Deferred()
    reactor.callLater(seconds, d.callback, None)
    return d


def _bounded(d: Any, seconds: float, reactor: Any, what: str) -> defer.Deferred:
    d = defer.maybeDeferred(lambda: d)
    d.addTimeout(seconds, reactor)

    def late(f):
        log.warn("shutdown of {what} did not finish in {s:.1f}s: {err}", what=what, s=seconds,
                 err=f.getErrorMessage())

    return d.addErrback(late)


def build_web(settings: Any, reactor: Any, runtime: Runtime) -> Any:
    from imapsvc.metrics import ServiceCollector, make_registry
    from imapsvc.web import WebApp
    from imapsvc.web_site import GuardedSite

    def registry(detailed: bool) -> Any:
        return make_registry(
            ServiceCollector(
                runtime.supervisor.status,
                lambda: dict(runtime.relay.stats,
                             deduplicated=getattr(runtime.sink, "skipped", 0)),
                lambda: runtime.pipeline.stats,
                detailed=detailed,
                lag_stats=runtime.lag_meter.stats,
                gc_policy=runtime.gc_policy,
            )
        )

    detailed = registry(True)
    app = WebApp(
        clock=reactor,
        admin=runtime.supervisor,
        store=runtime.store,
        sink=runtime.sink,
        registry=registry(False),
        detailed_registry=detailed,
        oauth_flow=runtime.oauth,
        admin_token=settings.admin_token,
        discovered=runtime.discovered,
        requests=runtime.admin_requests,
        deployment=runtime.reporter.deployment,
    )
    # HSTS when browsers reach the service over https (a TLS-terminating
    # proxy in front of it: the public base URL says so).
    hsts = settings.public_base_url.lower().startswith("https://")
    site = GuardedSite(app.resource(), max_body=settings.max_request_bytes, hsts=hsts)
    web = strports.service(f"tcp:{settings.port}", site, reactor=reactor)
    if not settings.metrics_port:
        return web
    from prometheus_client.twisted import MetricsResource
    from twisted.web.resource import Resource

    root = Resource()
    root.putChild(b"metrics", MetricsResource(detailed))
    both = service.MultiService()
    web.setServiceParent(both)
    metrics_site = GuardedSite(root, max_body=1024, hsts=False)
    metrics = strports.service(f"tcp:{settings.metrics_port}", metrics_site, reactor=reactor)
    metrics.setServiceParent(both)
    return both


def build_tree(settings: Any, reactor: Any) -> service.MultiService:
    top = service.MultiService()
    top.setName("imapsvc")
    runtime = Runtime(settings, reactor)
    web = build_web(settings, reactor, runtime)
    web.setName("web")
    # Web first: /healthz must answer while the store is still coming up;
    # twistd stops children in reverse order, so the runtime drains first.
    web.setServiceParent(top)
    runtime.setServiceParent(top)
    log.info(
        "imapsvc worker {worker} starting: store {store}, sink {sink}",
        worker=settings.worker_id,
        store="postgres" if settings.database_url else "sqlite",
        sink=json.dumps(settings.event_stream) if settings.redis_url else settings.events_file,
    )
    # Which variables won (secret-free by construction: names and places only).
    log.info(
        "DATABASE_URL: {db}; REDIS_URL: {redis}",
        db=getattr(settings, "database_url_source", "") or "?",
        redis=getattr(settings, "redis_url_source", "") or "?",
    )
    return top
