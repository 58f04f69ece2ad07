"""Chaos with exact counts: mail flows in while everything around the service fails.

Two ``twistd imapsvc`` replicas ingest two providers (two folders each) on
private instances of Postgres, Redis (append-only file) and Dovecot, on ports
of their own. While messages are appended at a steady rate, replicas are
SIGKILLed and replaced, Dovecot's session processes are killed with SIGKILL
and its master restarted, Redis restarts, and Postgres restarts (the last time
with ``-m immediate``, a crash). Then the run waits until the outbox is drained
and counts, per Message-ID, what reached the stream:

- ``missing``: appended, never published (must be 0: a lost customer request);
- ``duplicates``: one message under two event_ids (must be 0: two tickets);
- ``republished``: the same event_id added twice (must be 0: a replica killed
  between XADD and marking the row makes the next owner publish it again, and
  the stream's dedupe window, ``IMAP_EVENT_DEDUPE_WINDOW_MS``, takes it once);
- ``seen``: messages the service marked ``\\Seen`` (must be 0: it only peeks).

Used by ``tests/integration/test_chaos.py`` (:data:`SHORT`, in CI) and by
``python -m bench.chaos`` (:data:`FULL`, one JSON line). Everything waits on the
reactor; blocking steps (``pg_ctl``, ``imaplib``) run in threads.
"""

from __future__ import annotations

import contextlib
import glob
import imaplib
import json
import os
import random
import shutil
import signal
import ssl
import subprocess
import tempfile
import threading
import time
import uuid
from typing import Any, Callable, Optional

import attr
from twisted.internet import defer, task, threads

from tests.rig import mail
from tests.rig import postgres as pg
from tests.rig.dovecot import DEFAULT_PASSWORD, Dovecot, unique_user
from tests.rig.redis import RespError, SyncRedis, free_port
from tests.rig.service import ServiceProcess, add_provider

RECEIVED = "INBOUND_EMAIL_RECEIVED"
STREAM = "chaos:events"


@attr.s(frozen=True, auto_attribs=True)
class ChaosPlan:
    """How much mail, over how long, and how much goes wrong meanwhile."""

    messages: int
    append_seconds: float
    replica_kills: int
    dovecot_cuts: int
    redis_restarts: int
    #: The last one is ``pg_ctl stop -m immediate`` (a crash); the others ``-m fast``.
    postgres_restarts: int
    lease_ttl_ms: int
    #: How long after the last append the run may take to publish everything.
    settle_seconds: float
    #: How long a killed replica stays away before its replacement starts.
    replica_down_seconds: float = 1.0


#: The repository's test (CI): about two minutes.
SHORT = ChaosPlan(messages=600, append_seconds=40, replica_kills=4, dovecot_cuts=1,
                  redis_restarts=1, postgres_restarts=2, lease_ttl_ms=6000,
                  settle_seconds=120)

#: The full run of issue 11 (``python -m bench.chaos``).
FULL = ChaosPlan(messages=5000, append_seconds=150, replica_kills=20, dovecot_cuts=3,
                 redis_restarts=3, postgres_restarts=2, lease_ttl_ms=15000,
                 settle_seconds=300)


class ChaosError(Exception):
    """The rig itself failed (a server did not start), not the service."""


def _wait_until(reactor: Any, check: Callable[[], bool], timeout: float, what: str,
                step: float = 0.1) -> defer.Deferred[None]:
    @defer.inlineCallbacks
    def loop() -> Any:
        deadline = reactor.seconds() + timeout
        while True:
            ok = yield threads.deferToThread(check)
            if ok:
                return
            if reactor.seconds() > deadline:
                raise ChaosError(f"timed out after {timeout:g}s waiting for {what}")
            yield task.deferLater(reactor, step, lambda: None)

    return loop()


# -- private servers -------------------------------------------------------------


class PrivatePostgres:
    """``initdb`` + ``pg_ctl`` of the newest installed PostgreSQL, as the
    ``postgres`` system user, in a temporary folder, on a free loopback port."""

    def __init__(self) -> None:
        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"),
                       key=lambda p: [int(x) for x in p.split("/")[4].split(".")])
        if not found:
            raise ChaosError("no PostgreSQL server binaries in /usr/lib/postgresql")
        self.bin = os.path.dirname(found[-1])
        self.root = tempfile.mkdtemp(prefix="imapsvc-chaos-pg-")
        self.data = os.path.join(self.root, "data")
        self.port = free_port()
        shutil.chown(self.root, "postgres", "postgres")
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str, timeout: float = 120) -> None:
        result = subprocess.run(["runuser", "-u", "postgres", "--", *args],
                                capture_output=True, timeout=timeout, check=False)
        if result.returncode != 0:
            raise ChaosError(f"{os.path.basename(args[0])} failed: "
                             f"{(result.stdout + result.stderr).decode(errors='replace')}")

    def init(self) -> None:
        self._run(os.path.join(self.bin, "initdb"), "-D", self.data, "-A", "trust",
                  "-U", "postgres", "-E", "UTF8", "--no-sync")
        self.start()

    def start(self) -> None:
        options = (f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1"
                   " -c fsync=off -c max_connections=200")
        self._run(os.path.join(self.bin, "pg_ctl"), "-D", self.data, "-l",
                  os.path.join(self.root, "postgres.log"), "-w", "-t", "60", "-o", options,
                  "start")

    def stop(self, mode: str = "fast") -> None:
        self._run(os.path.join(self.bin, "pg_ctl"), "-D", self.data, "-m", mode, "-w",
                  "-t", "60", "stop")

    def destroy(self) -> None:
        with contextlib.suppress(ChaosError, subprocess.TimeoutExpired):
            self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)


class AofRedis:
    """A ``redis-server`` of our own with an append-only file synced on every
    write, so a restart keeps the stream."""

    def __init__(self) -> None:
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="imapsvc-chaos-redis-")
        self.url = f"redis://127.0.0.1:{self.port}"
        self.proc: Optional[subprocess.Popen[bytes]] = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "yes", "--appendfsync", "always", "--dir", self.dir,
             "--daemonize", "no", "--loglevel", "warning"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def answers(self) -> bool:
        try:
            with SyncRedis("127.0.0.1", self.port, timeout=1.0) as r:
                return bool(r.ping())
        except (OSError, RespError):
            return False

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def _descendants(root_pid: int) -> list[tuple[int, str]]:
    """``(pid, comm)`` of every live descendant of ``root_pid``."""
    children: dict[int, list[tuple[int, str]]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", encoding="utf-8", errors="replace") as f:
                stat = f.read()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        children.setdefault(ppid, []).append((int(name), comm))
    found, todo = [], [root_pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child[0])
    return found


def cut_dovecot_sessions(dovecot: Dovecot) -> int:
    """SIGKILL every IMAP session process of ``dovecot``, then restart its
    master (Dovecot 2.3's ``stop`` alone leaves live sessions for about 30 s).

    :return: how many session processes were killed.
    """
    master = dovecot._main.proc
    killed = 0
    if master is not None:
        for pid, comm in _descendants(master.pid):
            if comm == "imap":
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                    killed += 1
    dovecot.restart()
    return killed


# -- mail in ------------------------------------------------------------------------


class FolderAppender:
    """One IMAP connection that APPENDs to one folder, reconnecting (and
    retrying the message) while Dovecot is away. A retried APPEND may store a
    second copy; it carries the same Message-ID, so it must still be one event."""

    def __init__(self, dovecot: Dovecot, user: str, folder: str) -> None:
        self.dovecot = dovecot
        self.user = user
        self.folder = folder
        self.conn: Optional[imaplib.IMAP4_SSL] = None
        self.lock = threading.Lock()
        self.retries = 0

    def _connect(self) -> imaplib.IMAP4_SSL:
        ctx = ssl.create_default_context(cafile=self.dovecot.ca_file)
        conn = imaplib.IMAP4_SSL("localhost", self.dovecot.ports.imaps, ssl_context=ctx,
                                 timeout=10)
        conn.login(self.user, DEFAULT_PASSWORD)
        return conn

    def append(self, raw: bytes, give_up_after: float = 120.0) -> float:
        """:return: the wall-clock time the server confirmed the APPEND."""
        deadline = time.monotonic() + give_up_after
        with self.lock:
            while True:
                try:
                    if self.conn is None:
                        self.conn = self._connect()
                    typ, _ = self.conn.append(mail.encode_mailbox(self.folder), None, None, raw)
                    if typ == "OK":
                        return time.time()
                    raise imaplib.IMAP4.error(f"APPEND answered {typ}")
                except (OSError, imaplib.IMAP4.error, ssl.SSLError):
                    self.retries += 1
                    self.close()
                    if time.monotonic() > deadline:
                        raise
                    # A blocking pause in this worker thread, not on the reactor.
                    threading.Event().wait(0.2)

    def close(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.shutdown()


def seen_count(dovecot: Dovecot, user: str, folder: str) -> int:
    """Messages of ``folder`` carrying ``\\Seen``."""
    with mail.connect(user, DEFAULT_PASSWORD, dovecot) as conn:
        conn.select(mail.encode_mailbox(folder), readonly=True)
        typ, data = conn.uid("SEARCH", "SEEN")
        return len((data[0] or b"").split()) if typ == "OK" else -1


# -- the run ----------------------------------------------------------------------------


def schedule(plan: ChaosPlan, rng: random.Random) -> list[tuple[float, str]]:
    """``(seconds after the first append, action)``, each kind spread evenly
    over the append window with a little jitter, in time order."""
    kinds = [("kill", plan.replica_kills), ("dovecot", plan.dovecot_cuts),
             ("redis", plan.redis_restarts), ("postgres", plan.postgres_restarts)]
    actions = []
    window = plan.append_seconds
    for kind, count in kinds:
        for i in range(count):
            slot = window / count
            at = slot * i + slot * (0.25 + 0.5 * rng.random())
            actions.append((round(at, 2), kind))
    actions.sort()
    # The crash-like Postgres stop is the last Postgres action.
    pg_actions = [i for i, (_, kind) in enumerate(actions) if kind == "postgres"]
    for n, index in enumerate(pg_actions):
        at, _ = actions[index]
        mode = "immediate" if n == len(pg_actions) - 1 else "fast"
        actions[index] = (at, f"postgres:{mode}")
    return actions


def percentile(values: list[float], fraction: float) -> Optional[float]:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def count_events(entries: list[tuple[str, dict[str, str]]],
                 appended: dict[str, float]) -> dict[str, Any]:
    """The exact counts of a run from the stream and the appended Message-IDs
    (pure, so the counting itself is unit-tested)."""
    event_ids: dict[str, int] = {}
    ids_of_message: dict[str, set[str]] = {}
    first_seen: dict[str, float] = {}
    for entry_id, fields in entries:
        if fields.get("event_type") != RECEIVED:
            continue
        event_ids[fields["event_id"]] = event_ids.get(fields["event_id"], 0) + 1
        message_id = json.loads(fields["payload_json"])["emailData"]["id"]
        ids_of_message.setdefault(message_id, set()).add(fields["event_id"])
        at = int(entry_id.split("-")[0]) / 1000.0
        first_seen[message_id] = min(first_seen.get(message_id, at), at)
    missing = sorted(set(appended) - set(ids_of_message))
    latencies = [first_seen[m] - appended[m] for m in appended if m in first_seen]
    last_append = max(appended.values(), default=0.0)
    last_event = max(first_seen.values(), default=0.0)
    return {
        "appended": len(appended),
        "entries": sum(event_ids.values()),
        "distinct_event_ids": len(event_ids),
        "missing": len(missing),
        "missing_examples": missing[:5],
        "duplicates": sum(len(ids) - 1 for ids in ids_of_message.values()),
        "republished": sum(n - 1 for n in event_ids.values()),
        "unexpected": len(set(ids_of_message) - set(appended)),
        "latency_p50_s": percentile(latencies, 0.50),
        "latency_p99_s": percentile(latencies, 0.99),
        "latency_max_s": max(latencies, default=None),
        "last_event_after_last_append_s": round(last_event - last_append, 3)
        if appended and first_seen else None,
    }


class ChaosRun:
    """Sets up the private servers, runs one :class:`ChaosPlan`, counts."""

    def __init__(self, reactor: Any, plan: ChaosPlan, seed: Optional[int] = None,
                 log: Callable[[str], None] = lambda line: None) -> None:
        self.reactor = reactor
        self.plan = plan
        self.seed = seed if seed is not None else random.randrange(1 << 30)
        self.rng = random.Random(self.seed)
        self.log = log
        self.run_id = uuid.uuid4().hex[:8]
        self.pg: Optional[PrivatePostgres] = None
        self.redis: Optional[AofRedis] = None
        self.dovecot: Optional[Dovecot] = None
        self.replicas: list[Optional[ServiceProcess]] = [None, None]
        self.all_processes: list[ServiceProcess] = []
        self.generation = 0
        self.folders: list[tuple[str, str]] = []
        self.appenders: list[FolderAppender] = []
        self.appended: dict[str, float] = {}
        self.done: dict[str, int] = {}
        self.action_log: list[str] = []

    # -- set-up / tear-down ----------------------------------------------------

    def _set_up_blocking(self) -> None:
        self.pg = PrivatePostgres()
        self.pg.init()
        from imapsvc.store.migrate import apply_migrations

        apply_migrations(self.pg.url, out=open(os.devnull, "w"))  # noqa: SIM115
        self.redis = AofRedis()
        self.redis.start()
        self.dovecot = Dovecot()
        self.dovecot.start(wrong_certificate=False)
        tenant = str(uuid.uuid4())
        for extra in ("Support", "Sales"):
            user = self.dovecot.add_user(unique_user("chaos"))
            mail.create_folder(user, DEFAULT_PASSWORD, extra, self.dovecot)
            cursor = {}
            for folder in ("INBOX", extra):
                validity = mail.status(user, DEFAULT_PASSWORD, folder, self.dovecot)["UIDVALIDITY"]
                # last_uid 0: read the folder from UID 1, so no message appended
                # before the first connect falls outside the recent window.
                cursor[folder] = {"uid_validity": str(validity), "last_uid": "0"}
                self.folders.append((user, folder))
                self.appenders.append(FolderAppender(self.dovecot, user, folder))
            add_provider(self.pg.url, user, DEFAULT_PASSWORD, self.dovecot.ports.imaps,
                         tenant=tenant, folders=("INBOX", extra), cursor=cursor)

    def _note_appended(self, at: float, message_id: str) -> None:
        self.appended[message_id] = at

    def _seen_total(self) -> int:
        assert self.dovecot is not None
        return sum(seen_count(self.dovecot, u, f) for u, f in self.folders)

    def set_up(self) -> defer.Deferred[None]:
        def redis_answers(_: Any) -> Any:
            assert self.redis is not None
            return _wait_until(self.reactor, self.redis.answers, 20, "Redis")

        d = threads.deferToThread(self._set_up_blocking)
        d.addCallback(redis_answers)
        return d

    def tear_down(self) -> defer.Deferred[None]:
        def blocking() -> None:
            for proc in self.all_processes:
                proc.cleanup()
            for appender in self.appenders:
                appender.close()
            for server in (self.dovecot, self.redis, self.pg):
                if server is not None:
                    with contextlib.suppress(Exception):
                        server.cleanup() if isinstance(server, Dovecot) else server.destroy()

        return threads.deferToThread(blocking)

    # -- replicas -------------------------------------------------------------------

    def service_env(self) -> dict[str, str]:
        assert self.pg and self.redis and self.dovecot
        return {
            "DATABASE_URL": self.pg.url,
            "REDIS_URL": self.redis.url,
            "IMAP_EVENT_STREAM": STREAM,
            "IMAP_TLS_CA_FILE": self.dovecot.ca_file,
            "IMAP_PROVIDER_REFRESH_MS": "1000",
            "IMAP_LEASE_TTL_MS": str(self.plan.lease_ttl_ms),
            "IMAP_RECONNECT_BASE_MS": "500",
            "IMAP_RECONNECT_MAX_MS": "4000",
        }

    def start_replica(self, slot: int) -> None:
        self.generation += 1
        proc = ServiceProcess(self.service_env(), f"chaos-{self.run_id}-{slot}-{self.generation}")
        proc.start()
        self.replicas[slot] = proc
        self.all_processes.append(proc)

    # -- actions ----------------------------------------------------------------------

    @defer.inlineCallbacks
    def act(self, kind: str, slot_hint: int) -> Any:
        started = self.reactor.seconds()
        if kind == "kill":
            slot = slot_hint % len(self.replicas)
            proc = self.replicas[slot]
            if proc is not None:
                yield threads.deferToThread(proc.kill)
            yield task.deferLater(self.reactor, self.plan.replica_down_seconds, lambda: None)
            self.start_replica(slot)
        elif kind == "dovecot":
            assert self.dovecot is not None
            killed = yield threads.deferToThread(cut_dovecot_sessions, self.dovecot)
            kind = f"dovecot (killed {killed} sessions)"
        elif kind == "redis":
            assert self.redis is not None
            yield threads.deferToThread(self.redis.stop)
            self.redis.start()
            yield _wait_until(self.reactor, self.redis.answers, 30, "Redis to restart")
        elif kind.startswith("postgres:"):
            assert self.pg is not None
            mode = kind.split(":", 1)[1]
            yield threads.deferToThread(self.pg.stop, mode)
            yield threads.deferToThread(self.pg.start)
        base = kind.split(":")[0].split(" ")[0]
        self.done[base] = self.done.get(base, 0) + 1
        self.action_log.append(f"{kind} took {self.reactor.seconds() - started:.1f}s")
        self.log(f"chaos: {kind}")

    @defer.inlineCallbacks
    def chaos(self, t0: float) -> Any:
        kills = 0
        for at, kind in schedule(self.plan, self.rng):
            delay = t0 + at - self.reactor.seconds()
            if delay > 0:
                yield task.deferLater(self.reactor, delay, lambda: None)
            yield self.act(kind, kills)
            kills += kind == "kill"

    # -- mail ---------------------------------------------------------------------------

    @defer.inlineCallbacks
    def append_all(self, t0: float) -> Any:
        interval = self.plan.append_seconds / self.plan.messages
        pending = []
        for i in range(self.plan.messages):
            delay = t0 + i * interval - self.reactor.seconds()
            if delay > 0:
                yield task.deferLater(self.reactor, delay, lambda: None)
            message_id = f"<chaos-{self.run_id}-{i}@chaos.invalid>"
            raw = mail.make_message(subject=f"chaos {i}", message_id=message_id)
            appender = self.appenders[i % len(self.appenders)]
            d = threads.deferToThread(appender.append, raw)
            d.addCallback(self._note_appended, message_id)
            pending.append(d)
        yield defer.gatherResults(pending, consumeErrors=True)

    # -- counting ---------------------------------------------------------------------------

    def _stream(self) -> list[tuple[str, dict[str, str]]]:
        assert self.redis is not None
        with SyncRedis("127.0.0.1", self.redis.port, timeout=30) as r:
            return r.xrange(STREAM)

    def _unpublished(self) -> int:
        assert self.pg is not None
        return int(pg.execute(self.pg.url, "SELECT count(*) FROM imap_event_outbox"
                                           " WHERE published_at IS NULL")[0][0])

    def _settled(self) -> bool:
        try:
            figures = count_events(self._stream(), self.appended)
            return figures["missing"] == 0 and self._unpublished() == 0
        except Exception:  # a server still restarting: ask again
            return False

    @defer.inlineCallbacks
    def run(self) -> Any:
        """Run the plan; fires with the figures (a dict)."""
        yield self.set_up()
        try:
            started = self.reactor.seconds()
            for slot in range(len(self.replicas)):
                self.start_replica(slot)
            t0 = self.reactor.seconds() + 2.0
            appending = self.append_all(t0)
            chaos = self.chaos(t0)
            yield defer.gatherResults([appending, chaos], consumeErrors=True)
            appended_at = self.reactor.seconds()
            try:
                yield _wait_until(self.reactor, self._settled, self.plan.settle_seconds,
                                  "every message to be published", step=1.0)
                settled = True
            except ChaosError:
                settled = False
            settle_s = self.reactor.seconds() - appended_at
            entries = yield threads.deferToThread(self._stream)
            figures = count_events(entries, self.appended)
            seen = yield threads.deferToThread(self._seen_total)
            figures.update(
                seed=self.seed,
                plan=attr.asdict(self.plan),
                settled=settled,
                settle_s=round(settle_s, 1),
                duration_s=round(self.reactor.seconds() - started, 1),
                seen=seen,
                append_retries=sum(a.retries for a in self.appenders),
                actions=dict(self.done),
                action_log=self.action_log,
                unpublished=(yield threads.deferToThread(self._unpublished)),
            )
            return figures
        finally:
            yield self.tear_down()
