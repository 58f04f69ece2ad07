"""``python -m bench.backlog``: drain one IMAP folder through the real service.

The service's figure for ``shared/bench/suite.py --cmd "imapsvc=python -m
bench.backlog"``. It reads the connection from the environment suite.py sets
(``IMAP_HOST``, ``IMAP_PORT``, ``IMAP_SECURITY``, ``IMAP_USER``,
``IMAP_PASSWORD``, ``IMAP_FOLDER``, ``IMAP_CAFILE``, ``IMAP_INSECURE``,
``REDIS_URL``, ``BENCH_STREAM``) plus ``DATABASE_URL``.

Set-up, not timed: a fresh database state (by default the scratch database
``imapsvc_bench`` on 127.0.0.1:5432 is dropped, recreated and migrated; with
``DATABASE_URL`` set, the bench tenant's rows are deleted instead), one
provider whose password is sealed in the secret store, and its cursor set to
``last_uid = '0'`` so the whole folder drains.

Timed: the production wiring (:class:`imapsvc.runtime.Runtime`: Postgres
store, pipeline with its parse thread pool, relay, Redis stream sink,
supervisor with its lease, one :class:`~imapsvc.folder.FolderService`) from
just before the first IMAP connect until the first sync of the folder has
ended (every batch committed: ledger, outbox, cursor) and the relay has had
the last event acknowledged by Redis and marked published.

The last line of stdout is the kit's JSON::

    {"messages": N, "seconds": S, "msgs_per_s": R, "bytes": B, "peak_rss_mb": M}

``bytes`` is the sum of RFC822.SIZE of the messages handled; ``peak_rss_mb``
is ``ru_maxrss`` of this process (threads included) plus the summed peak
RSS of its helper processes (parse-pool workers, fork server). Everything else goes to
stderr (warnings and errors of the service; ``BENCH_LOG_LEVEL=info`` for more).
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from typing import Any, Optional
from urllib.parse import urlsplit, urlunsplit

#: The reference pipeline's default tenant (``reference/drain.js``), so both
#: put the same tenant into their events.
BENCH_TENANT = os.environ.get("BENCH_TENANT", "00000000-0000-4000-8000-000000000001")
BENCH_PROVIDER_ID = "00000000-0000-4000-8000-00000000b001"
SCRATCH_DB = "imapsvc_bench"
ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"

#: Tables that carry the bench tenant's state (children before parents).
_TENANT_TABLES = (
    "imap_event_outbox",
    "imap_message_ledger",
    "imap_secrets",
    "imap_oauth_states",
    "imap_email_provider_config",
    "email_providers",
)


def _err(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


#: Peak RSS (KiB) of the helper processes (parse-pool workers, fork server,
#: resource tracker), summed; filled by :func:`note_children_peak` while they
#: still run.
_CHILDREN_PEAK_KIB = [0]


def _descendants(pid: int) -> list[int]:
    out: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/children") as f:
                kids = [int(k) for k in f.read().split()]
        except OSError:
            continue
        for kid in kids:
            out.append(kid)
            out.extend(_descendants(kid))
    return out


def note_children_peak() -> None:
    """Sum the peak RSS (``VmHWM``) of every descendant process. A sum of
    peaks overstates the simultaneous peak (and counts shared pages twice):
    a conservative figure."""
    total = 0
    for pid in _descendants(os.getpid()):
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        total += int(line.split()[1])
        except OSError:
            continue
    _CHILDREN_PEAK_KIB[0] = max(_CHILDREN_PEAK_KIB[0], total)


def peak_rss_mb() -> float:
    """Peak RSS of this process (all threads) plus its helper processes'
    peaks (see :func:`note_children_peak`), MiB; Linux reports KiB."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round((own + _CHILDREN_PEAK_KIB[0]) / 1024.0, 1)


def result_line(messages: int, seconds: float, nbytes: int) -> str:
    """The kit's one-line JSON result (same keys, same order as benchlib)."""
    return json.dumps(
        {
            "messages": int(messages),
            "seconds": round(seconds, 3),
            "msgs_per_s": round(messages / seconds, 1) if seconds > 0 else None,
            "bytes": int(nbytes),
            "peak_rss_mb": peak_rss_mb(),
        }
    )


# -- set-up (synchronous, not timed) ------------------------------------------


def scratch_database(name: str = SCRATCH_DB) -> str:
    """Drop and recreate the scratch database ``name``; return its DSN."""
    import psycopg2

    admin = psycopg2.connect(ADMIN_DSN)
    admin.autocommit = True
    try:
        with admin.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
            cur.execute(f"CREATE DATABASE {name}")
    finally:
        admin.close()
    parts = urlsplit(ADMIN_DSN)
    return urlunsplit(parts._replace(path="/" + name))


def reset_tenant(dsn: str) -> None:
    """Delete the bench tenant's rows from a database we do not own."""
    import psycopg2

    conn = psycopg2.connect(dsn)
    try:
        with conn, conn.cursor() as cur:
            for table in _TENANT_TABLES:
                cur.execute(f"DELETE FROM {table} WHERE tenant = %s", (BENCH_TENANT,))
    finally:
        conn.close()


def add_provider(dsn: str, box: Any, env: dict[str, Any], cursor: Optional[dict] = None) -> Any:
    """Insert the bench provider, its sealed password and its cursor
    (default ``last_uid = '0'``: the whole folder)."""
    import psycopg2
    from psycopg2.extras import Json

    from imapsvc.model import ProviderConfig
    from imapsvc.sealed_secrets import password_name
    from imapsvc.store.admin_postgres import PostgresAdmin

    security = env["security"]
    config = ProviderConfig(
        tenant=BENCH_TENANT,
        provider_id=BENCH_PROVIDER_ID,
        provider_name="bench",
        mailbox=env["user"],
        host=env["host"],
        port=env["port"],
        secure=security == "tls",
        allow_starttls=security == "starttls",
        auth_type="password",
        username=env["user"],
        folder_filters=(env["folder"],),
    )
    admin = PostgresAdmin(dsn)
    try:
        admin.add_provider(config)
        name = password_name(BENCH_PROVIDER_ID)
        admin.put_secret(BENCH_TENANT, name, box.seal(BENCH_TENANT, name, env["password"].encode()))
    finally:
        admin.close()
    # '0' rescans the folder from UID 1 whatever UIDVALIDITY says (CONTRACT 1).
    conn = psycopg2.connect(dsn)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(
                "UPDATE imap_email_provider_config SET folder_state = %s"
                " WHERE tenant = %s AND email_provider_id = %s",
                (Json({env["folder"]: cursor or {"last_uid": "0"}}), BENCH_TENANT,
                 BENCH_PROVIDER_ID),
            )
    finally:
        conn.close()
    return config


def read_env() -> dict[str, Any]:
    e = os.environ.get
    security = e("IMAP_SECURITY", "plain") or "plain"
    if security not in ("tls", "starttls", "plain"):
        raise SystemExit(f"IMAP_SECURITY must be tls, starttls or plain, not {security!r}")
    port = int(e("IMAP_PORT", "") or (993 if security == "tls" else 143))
    user, password = e("IMAP_USER", ""), e("IMAP_PASSWORD")
    if not user or password is None:
        raise SystemExit("IMAP_USER and IMAP_PASSWORD are required")
    return {
        "host": e("IMAP_HOST", "127.0.0.1") or "127.0.0.1",
        "port": port,
        "security": security,
        "user": user,
        "password": password,
        "folder": e("IMAP_FOLDER", "INBOX") or "INBOX",
        "cafile": e("IMAP_CAFILE", "") or "",
        "insecure": (e("IMAP_INSECURE", "0") or "0") in ("1", "true", "yes"),
        "redis": e("REDIS_URL", "redis://127.0.0.1:6379") or "redis://127.0.0.1:6379",
        "stream": e("BENCH_STREAM", "bench:events") or "bench:events",
        "timeout_s": float(e("BENCH_TIMEOUT_S", "1800") or 1800),
    }


# -- the timed part -----------------------------------------------------------


class _Watch:
    """Observes the running service: when the first connect starts, what the
    pipeline recorded, when the first sync ended."""

    def __init__(self, clock: Any) -> None:
        self.clock = clock
        self.t0: Optional[float] = None
        #: process CPU seconds (all threads) at t0: the CPU figure is far less
        #: noisy than wall time on a shared machine
        self.cpu0 = 0.0
        self.rss_at_start_mb: Optional[float] = None
        self.messages = 0
        self.bytes = 0
        self.last_commit: Optional[float] = None
        self.synced: Optional[Any] = None  # a Deferred, set by run()
        self.folders: list[Any] = []
        #: called with each folder state name (``"Idling"``, ...)
        self.on_state: Optional[Any] = None

    def wrap_make_folder(self, make_folder: Any) -> Any:
        watch = self

        def make(provider: Any, folder: str, hooks: Any) -> Any:
            svc = make_folder(provider, folder, _Hooks(hooks, watch))
            watch.folders.append(svc)
            start = svc.startService

            def start_and_stamp() -> None:
                # The folder connects from here (no start-up stagger).
                if watch.t0 is None:
                    watch.t0 = watch.clock.seconds()
                    watch.cpu0 = time.process_time()
                    # What start-up alone costs (imports, pools, connections).
                    start_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                    LAST_RUN["start_kib"] = start_kib
                    watch.rss_at_start_mb = round(start_kib / 1024.0, 1)
                start()

            svc.startService = start_and_stamp
            return svc

        return make

    def wrap_pipeline(self, pipeline: Any) -> None:
        handle = pipeline.handle_batch
        watch = self

        def handle_batch(provider, folder, owner, messages, cursor):  # type: ignore[no-untyped-def]
            messages = list(messages)
            d = handle(provider, folder, owner, messages, cursor)

            def recorded(result: Any) -> Any:
                watch.messages += len(messages)
                watch.bytes += sum(int(m.size or 0) for m in messages)
                watch.last_commit = watch.clock.seconds()
                return result

            return d.addCallback(recorded)

        pipeline.handle_batch = handle_batch


class _Hooks:
    """Passes every folder hook on to the supervisor's, and notes the end of
    the first sync."""

    def __init__(self, inner: Any, watch: _Watch) -> None:
        self._inner = inner
        self._watch = watch

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def state_changed(self, state: str, reason: str = "", error: Optional[str] = None) -> None:
        self._inner.state_changed(state, reason, error)
        if self._watch.on_state is not None:
            self._watch.on_state(state)

    def synced(self) -> None:
        self._inner.synced()
        d = self._watch.synced
        if d is not None and not d.called:
            d.callback(None)


def start_logging() -> None:
    """Service log events of ``BENCH_LOG_LEVEL`` (default warn) and up to stderr."""
    from twisted.logger import (
        FilteringLogObserver,
        LogLevel,
        LogLevelFilterPredicate,
        globalLogBeginner,
        textFileLogObserver,
    )

    level = LogLevel.levelWithName(os.environ.get("BENCH_LOG_LEVEL", "warn"))
    globalLogBeginner.beginLoggingTo(
        [
            FilteringLogObserver(
                textFileLogObserver(sys.stderr),
                [LogLevelFilterPredicate(defaultLogLevel=level)],
            )
        ],
        redirectStandardIO=False,
    )


def prepare(env: dict[str, Any], cursor: Optional[dict] = None) -> Any:
    """Fresh database state, the bench provider, and the service settings."""
    from imapsvc.config import load_settings
    from imapsvc.sealed_secrets import SecretBox, generate_key
    from imapsvc.store.migrate import apply_migrations

    dsn = os.environ.get("DATABASE_URL", "")
    if dsn:
        apply_migrations(dsn, out=sys.stderr)
        reset_tenant(dsn)
    else:
        dsn = scratch_database()
        apply_migrations(dsn, out=sys.stderr)
    forget_published(env["redis"], env["stream"])
    key = generate_key()
    box = SecretBox.from_setting(key)
    add_provider(dsn, box, env, cursor)
    overrides = {
        "DATABASE_URL": dsn,
        "REDIS_URL": env["redis"],
        "IMAP_EVENT_STREAM": env["stream"],
        "IMAPSVC_SECRET_KEY": key,
        "IMAP_TLS_CA_FILE": env["cafile"] or None,
        "IMAP_TLS_INSECURE": "true" if env["insecure"] else None,
        "IMAP_STARTUP_STAGGER_MS": "0",
        "IMAPSVC_WORKER_ID": f"bench-{os.getpid()}",
        "IMAPSVC_TENANTS": BENCH_TENANT,
        # The bench's Dovecot is usually on loopback, which tenant-chosen IMAP
        # hosts may not use without the allowlist.
        "IMAPSVC_PRIVATE_NETWORK_ALLOWLIST": os.environ.get("IMAPSVC_PRIVATE_NETWORK_ALLOWLIST")
        or f"127.0.0.0/8,::1/128,{env['host']}",
    }
    # The service's own tuning variables (IMAP_FETCH_CHUNK, ...) still come
    # from the environment; the connection-level ones are set here.
    return load_settings(os.environ, overrides)


def forget_published(url: str, stream: str) -> None:
    """Delete the stream's dedupe keys (``<stream>:published:<event_id>``,
    ``IMAP_EVENT_DEDUPE_WINDOW_MS``). suite.py deletes the stream before each
    run but not these, and the bench provider's messages get the same event
    ids run after run: every entry would be "already published".

    In a child process: importing redis-py here would add about 6 MB to the
    peak RSS the benchmark reports, none of it the service's."""
    import subprocess

    subprocess.run([sys.executable, "-c", _FORGET, url, f"{stream}:published:*"], check=True)


_FORGET = """
import sys, redis
client = redis.Redis.from_url(sys.argv[1])
keys = list(client.scan_iter(match=sys.argv[2], count=1000))
for start in range(0, len(keys), 1000):
    client.delete(*keys[start:start + 1000])
"""


class _NoParsePool:
    """Stands in for the parse pool when ``IMAP_PARSE_PROCESSES=0``: never
    running, so the pipeline maps large batches in its thread."""

    running = False
    workers = 0

    def start(self) -> Any:
        from twisted.internet import defer

        return defer.succeed(None)

    def stop(self) -> Any:
        return self.start()


def apply_parse_processes(runtime: Any, settings: Any) -> None:
    """Make ``IMAP_PARSE_PROCESSES=0`` mean what ``config.py`` documents (map
    in a thread, no worker process). ``Runtime`` passes the 0 on to
    ``ParsePool``, which reads 0 as "default" (2 workers), so without this
    the bench would measure two worker processes under the name "default"."""
    if int(getattr(settings, "parse_processes", 0) or 0) > 0:
        return
    runtime.parse_pool = _NoParsePool()
    runtime.pipeline._pool = None


#: Figures of the last :func:`run` (``start_kib``: own peak RSS before the
#: first connect, KiB), for :mod:`bench.big_message`.
LAST_RUN: dict[str, Any] = {}


def run(env: dict[str, Any], settings: Any) -> tuple[int, float, int]:
    from twisted.internet import defer, reactor

    from imapsvc.runtime import Runtime

    start_logging()
    runtime = Runtime(settings, reactor)
    apply_parse_processes(runtime, settings)
    watch = _Watch(reactor)
    synced: defer.Deferred[None] = defer.Deferred()
    watch.synced = synced
    runtime.supervisor._make_folder = watch.wrap_make_folder(runtime.supervisor._make_folder)
    watch.wrap_pipeline(runtime.pipeline)
    outcome: dict[str, Any] = {}

    @defer.inlineCallbacks
    def drive() -> Any:
        runtime.startService()
        yield synced.addTimeout(env["timeout_s"], reactor)
        # Everything is committed; publish what is left and note when the
        # last XADD was acknowledged (and its rows marked published).
        flushed = yield runtime.relay.flush(timeout_s=120.0)
        if not flushed:
            raise RuntimeError("the relay could not publish everything")
        last_pub = runtime.relay.stats["last_published_at"] or 0.0
        end = max(last_pub, watch.last_commit or 0.0)
        outcome["cpu_s"] = time.process_time() - watch.cpu0
        outcome["result"] = (watch.messages, end - (watch.t0 or end), watch.bytes)
        outcome["published"] = runtime.relay.stats["published"]
        outcome["pipeline"] = dict(runtime.pipeline.stats)
        note_children_peak()  # before the pool stops
        outcome["children_mb"] = round(_CHILDREN_PEAK_KIB[0] / 1024.0, 1)
        outcome["start_mb"] = watch.rss_at_start_mb

    def finished(result: Any) -> Any:
        if isinstance(result, Exception) or hasattr(result, "getTraceback"):
            outcome["error"] = result.getTraceback()
        d = defer.maybeDeferred(runtime.stopService)
        d.addBoth(lambda _: reactor.stop())
        return None

    reactor.callWhenRunning(lambda: drive().addBoth(finished))
    reactor.run()
    if "error" in outcome:
        _err(outcome["error"])
        raise SystemExit(1)
    _err(f"pipeline {outcome['pipeline']}; relay published {outcome['published']}; "
         f"helper processes' peak RSS {outcome['children_mb']} MiB (included); "
         f"own peak RSS before the first connect {outcome['start_mb']} MiB")
    cpu = outcome["cpu_s"]
    per = 1000.0 * cpu / max(1, outcome["result"][0])
    _err(f"cpu {cpu:.2f}s in the timed window, {per:.3f} ms a message (all threads)")
    return outcome["result"]


def main() -> int:
    env = read_env()
    settings = prepare(env)
    start = time.perf_counter()
    messages, seconds, nbytes = run(env, settings)
    _err(f"wall {time.perf_counter() - start:.2f}s including start-up and shutdown")
    print(result_line(messages, seconds, nbytes), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
