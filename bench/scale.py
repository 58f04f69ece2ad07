"""``python -m bench.scale``: N folders idling in one replica, over TLS.

What it measures, in one run, printed as one JSON line on stdout (the last
line; everything else goes to stderr):

- ``start_to_idle_s``: from just before the service starts until all N
  folders are in IDLE (includes the start-up stagger window);
- ``rss_idle_mb`` (VmRSS after the idle window) and ``rss_per_folder_kb``
  (idle RSS minus the RSS before the service started, per folder);
- ``cpu_idle_pct``: user+system CPU of the process over ``--idle-seconds``
  while every folder idles, in % of one core;
- ``push_p50_ms`` / ``push_p95_ms``: APPEND tagged OK -> XADD acknowledged for
  ``--pushes`` probes appended to random folders ``--push-interval-ms`` apart
  (the probe and the timing of :mod:`bench.idle_latency`);
- the reconnect storm: the rig Dovecot is stopped and started again
  (``shutdown_clients = yes``: every session is killed);
  ``storm_to_idle_s`` is from the stop until every folder has reconnected
  and is in IDLE again, ``storm_max_lag_ms`` the largest reactor lag
  (:mod:`imapsvc.reactor_lag`) meanwhile, ``storm_error_lines`` /
  ``storm_warn_lines`` the service's log events at error/critical and at
  warning level meanwhile (``error_lines`` / ``warn_lines``: the whole run).

CPU and lag per phase, since wall-clock times are noisy on a shared machine:
``start_cpu_s`` / ``storm_cpu_s`` are this process's CPU seconds (all
threads) from the start (the restart) until all folders idle;
``storm_kill_cpu_s`` / ``storm_lost_s`` cover the restart until every folder
has seen its session end; ``*_stalls_100`` / ``*_stalls_250`` count reactor
lag samples over 100 / 250 ms and ``*_top_stalls`` lists the largest few as
``[seconds into the phase, lag ms]``. ``--storms K`` restarts Dovecot K times
(``storm_runs`` has each; the flat ``storm_*`` keys are the medians).
``BENCH_PYSPY=PREFIX`` records each phase with ``py-spy record -r 100
--nonblocking --threads -f raw`` into ``PREFIX-start.txt``,
``PREFIX-storm1-kill.txt`` (until every session has ended),
``PREFIX-storm1.txt`` (the reconnects), ... (py-spy on ``PATH`` or beside
the interpreter).

Set-up, not timed: a private rig Dovecot (``tests/rig/dovecot.py``) with
``service imap { client_limit = --client-limit; service_count = 0 }`` (0 =
one process per connection, which past ~128 idlers makes Dovecot fall back to
30 s polling), ``--providers`` users with N/providers empty folders each,
the scratch database ``imapsvc_bench`` (dropped and recreated) with one
provider per user in the bench tenant. The service runs in this process
with its production wiring (:class:`imapsvc.runtime.Runtime`: Postgres,
Redis, supervisor, one TLS connection per folder).

``IMAP_STARTUP_STAGGER_MS`` (default here: 5 ms per folder, at least 2 s)
spreads the start-up and the first reconnect after the storm.
"""

from __future__ import annotations

import argparse
import collections
import gc
import imaplib
import json
import os
import random
import resource
import shutil
import signal
import ssl
import statistics
import subprocess
import sys
import time
import uuid
from typing import Any, Optional

from twisted.logger import ILogObserver
from zope.interface import implementer

from bench.backlog import BENCH_TENANT, scratch_database, start_logging

PASSWORD = "benchpw"


def _err(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def rss_mb() -> float:
    """Current resident set size of this process (VmRSS), MiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024.0, 1)
    return 0.0


def trimmed_rss_mb() -> Optional[float]:
    """RSS after glibc's ``malloc_trim(0)`` (a diagnostic: how much of the
    RSS is freed heap not yet returned to the system)."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        ctypes.CDLL(name).malloc_trim(0)
    except (OSError, AttributeError):
        return None
    return rss_mb()


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


class PhaseMeter:
    """CPU seconds and reactor lag of one phase (the start-up, one storm)."""

    def __init__(self) -> None:
        self.gc_max = 0.0
        self.start()
        gc.callbacks.append(self._gc)

    def _gc(self, phase: str, info: dict) -> None:
        """Times the cyclic collector's passes: a full pass over a heap of
        thousands of sessions is a reactor stall no profile names."""
        if phase == "start":
            self._gc_t0 = time.perf_counter()
            return
        took = time.perf_counter() - self._gc_t0
        generation = info.get("generation", 0)
        self.gc_seconds[generation] += took
        self.gc_runs[generation] += 1
        self.gc_max = max(self.gc_max, took)
        if generation == 2 and os.environ.get("BENCH_GC_LOG"):
            _err(f"gc gen2 {took * 1000:.1f} ms, {info.get('collected')} collected, "
                 f"{len(gc.get_objects())} tracked")

    def start(self) -> None:
        self.gc_seconds = [0.0, 0.0, 0.0]
        self.gc_runs = [0, 0, 0]
        self.gc_max = 0.0
        self.t0 = time.time()
        self.cpu0 = cpu_seconds()
        self.sys0 = resource.getrusage(resource.RUSAGE_SELF).ru_stime
        self.max_lag = 0.0
        self.over_100 = 0
        self.over_250 = 0
        self.stalls: list[tuple[float, float]] = []

    def record(self, lag: float) -> None:
        self.max_lag = max(self.max_lag, lag)
        if lag > 0.1:
            self.over_100 += 1
            # when the stall ended, seconds into the phase
            self.stalls.append((round(time.time() - self.t0, 2), round(lag * 1000, 1)))
        if lag > 0.25:
            self.over_250 += 1

    def cpu(self) -> float:
        return round(cpu_seconds() - self.cpu0, 2)

    def sys_cpu(self) -> float:
        """The kernel's share of :meth:`cpu` (sockets, TLS records, epoll)."""
        return round(resource.getrusage(resource.RUSAGE_SELF).ru_stime - self.sys0, 2)

    def figures(self, prefix: str) -> dict[str, Any]:
        top = sorted(self.stalls, key=lambda s: -s[1])[:5]
        return {
            f"{prefix}_max_lag_ms": round(self.max_lag * 1000, 1),
            f"{prefix}_stalls_100": self.over_100,
            f"{prefix}_stalls_250": self.over_250,
            f"{prefix}_top_stalls": [list(s) for s in top],
            f"{prefix}_gc_runs": list(self.gc_runs),
            f"{prefix}_gc_s": [round(x, 3) for x in self.gc_seconds],
            f"{prefix}_gc_max_ms": round(self.gc_max * 1000, 1),
        }


def count_store_calls(store: Any) -> collections.Counter[str]:
    """Count the calls of every public store operation (each is one or more
    database round trips)."""
    counts: collections.Counter[str] = collections.Counter()
    for name in dir(type(store)):
        if name.startswith("_") or not callable(getattr(store, name, None)):
            continue
        method = getattr(store, name)

        def counted(*args: Any, _name: str = name, _method: Any = method, **kwargs: Any) -> Any:
            counts[_name] += 1
            return _method(*args, **kwargs)

        setattr(store, name, counted)
    return counts


class Profiler:
    """``py-spy record`` of this process during one phase (``BENCH_PYSPY``)."""

    def __init__(self, prefix: Optional[str]) -> None:
        self.prefix = prefix
        self.proc: Optional[subprocess.Popen] = None
        here = os.path.join(os.path.dirname(sys.executable), "py-spy")
        self.exe = here if os.path.exists(here) else shutil.which("py-spy")

    def start(self, phase: str) -> None:
        if not self.prefix or not self.exe:
            return
        self.proc = subprocess.Popen(
            [self.exe, "record", "--pid", str(os.getpid()), "-r", "100", "--nonblocking",
             "--threads", "-f", "raw", "-o", f"{self.prefix}-{phase}.txt"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        proc.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def percentile(ordered: list[float], p: float) -> Optional[float]:
    from bench.idle_latency import percentile as nearest_rank

    return nearest_rank(ordered, p)


def provider_id(i: int) -> str:
    return f"00000000-0000-4000-8000-00000000{i:04x}"


def user_name(i: int) -> str:
    return f"scale-{i:03d}@example.com"


def folder_name(j: int) -> str:
    return f"f{j:04d}"


def setup_dovecot(args: argparse.Namespace, per_provider: int) -> Any:
    from tests.rig.dovecot import Dovecot

    dovecot = Dovecot(imap_client_limit=args.client_limit or None)
    dovecot.start(wrong_certificate=False)
    names = [folder_name(j) for j in range(per_provider)]
    for i in range(args.providers):
        dovecot.add_user(user_name(i), PASSWORD)
        # doveadm takes many names per call: a few commands, not thousands
        for k in range(0, len(names), 200):
            res = dovecot.doveadm("mailbox", "create", "-u", user_name(i), *names[k:k + 200])
            if res.returncode != 0:
                raise SystemExit(f"doveadm mailbox create: {res.stderr.decode(errors='replace')}")
    return dovecot


def setup_database(args: argparse.Namespace, dovecot: Any, per_provider: int,
                   stagger_ms: int) -> Any:
    """Scratch database, one provider per user, settings for the service."""
    from imapsvc.config import load_settings
    from imapsvc.model import ProviderConfig
    from imapsvc.sealed_secrets import SecretBox, generate_key, password_name
    from imapsvc.store.admin_postgres import PostgresAdmin
    from imapsvc.store.migrate import apply_migrations

    dsn = scratch_database("imapsvc_bench_scale")
    apply_migrations(dsn, out=sys.stderr)
    key = generate_key()
    box = SecretBox.from_setting(key)
    admin = PostgresAdmin(dsn)
    try:
        for i in range(args.providers):
            pid = provider_id(i)
            admin.add_provider(
                ProviderConfig(
                    tenant=BENCH_TENANT, provider_id=pid, provider_name=f"scale {i}",
                    mailbox=user_name(i), host="127.0.0.1", port=dovecot.ports.imaps,
                    secure=True, auth_type="password", username=user_name(i),
                    folder_filters=tuple(folder_name(j) for j in range(per_provider)),
                )
            )
            name = password_name(pid)
            admin.put_secret(BENCH_TENANT, name, box.seal(BENCH_TENANT, name, PASSWORD.encode()))
    finally:
        admin.close()
    overrides = {
        "DATABASE_URL": dsn,
        "REDIS_URL": os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379",
        "IMAP_EVENT_STREAM": "bench:scale",
        "IMAPSVC_SECRET_KEY": key,
        "IMAP_TLS_CA_FILE": dovecot.ca_file,
        "IMAP_STARTUP_STAGGER_MS": str(stagger_ms),
        "IMAPSVC_WORKER_ID": f"bench-scale-{os.getpid()}",
        "IMAPSVC_TENANTS": BENCH_TENANT,
        "IMAP_MAX_CONNECTIONS_PER_TENANT": str(args.folders),
        # the rig listens on loopback, which tenant hosts may not reach
        # unless allowed (imapsvc.egress)
        "IMAPSVC_PRIVATE_NETWORK_ALLOWLIST": "127.0.0.1",
    }
    return load_settings(os.environ, overrides)


class Appender:
    """Blocking imaplib connections (one per user, opened on first use),
    called from a thread."""

    def __init__(self, port: int, ca_file: str) -> None:
        self.port = port
        self.ctx = ssl.create_default_context(cafile=ca_file)
        self.conns: dict[int, imaplib.IMAP4_SSL] = {}

    def append(self, user: int, folder: str, raw: bytes) -> float:
        conn = self.conns.get(user)
        if conn is None:
            conn = imaplib.IMAP4_SSL("127.0.0.1", self.port, ssl_context=self.ctx)
            conn.login(user_name(user), PASSWORD)
            self.conns[user] = conn
        typ, _ = conn.append(folder, None, None, raw)
        done = time.time()  # the tagged OK has just been read
        if typ != "OK":
            raise RuntimeError(f"APPEND to {folder} failed")
        return done

    def close(self) -> None:
        for conn in self.conns.values():
            try:
                conn.logout()
            except Exception as e:  # the result stands without a clean LOGOUT
                _err(f"appender logout: {e}")


@implementer(ILogObserver)
class LogCounter:
    """Counts the service's log events by level (error = error + critical)."""

    def __init__(self) -> None:
        self.errors = 0
        self.warnings = 0
        self.samples: list[str] = []

    def __call__(self, event: dict) -> None:
        from twisted.logger import LogLevel, formatEvent

        level = event.get("log_level")
        if level in (LogLevel.error, LogLevel.critical) or event.get("isError"):
            self.errors += 1
            if len(self.samples) < 5:
                self.samples.append(formatEvent(event)[:300])
        elif level == LogLevel.warn:
            self.warnings += 1


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--folders", type=int, default=500)
    ap.add_argument("--providers", type=int, default=20)
    ap.add_argument("--client-limit", type=int, default=25,
                    help="Dovecot clients per imap process; 0: one process per connection")
    ap.add_argument("--settle", type=float, default=10.0, help="s after all idle, before CPU")
    ap.add_argument("--idle-seconds", type=float, default=60.0)
    ap.add_argument("--pushes", type=int, default=40)
    ap.add_argument("--push-interval-ms", type=int, default=250)
    ap.add_argument("--no-storm", action="store_true")
    ap.add_argument("--storms", type=int, default=1, help="Dovecot restarts, one after another")
    ap.add_argument("--storm-pause", type=float, default=5.0,
                    help="s between storms, after all idle")
    ap.add_argument("--timeout", type=float, default=600.0, help="per phase, s")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)
    if args.folders % args.providers:
        raise SystemExit("--folders must be a multiple of --providers")
    per_provider = args.folders // args.providers
    stagger_ms = int(os.environ.get("IMAP_STARTUP_STAGGER_MS") or max(2000, 5 * args.folders))

    t_setup = time.time()
    dovecot = setup_dovecot(args, per_provider)
    try:
        settings = setup_database(args, dovecot, per_provider, stagger_ms)
        _err(f"set-up took {time.time() - t_setup:.1f}s")
        result = run(args, settings, dovecot, per_provider, stagger_ms)
    finally:
        dovecot.cleanup()
    print(json.dumps(result), flush=True)
    return 0 if "error" not in result else 1


def run(args: argparse.Namespace, settings: Any, dovecot: Any, per_provider: int,
        stagger_ms: int) -> dict[str, Any]:
    from twisted.internet import defer, reactor, threads
    from twisted.logger import globalLogPublisher

    from bench.backlog import _Watch, apply_parse_processes
    from bench.idle_latency import probe, time_publishes
    from imapsvc.runtime import Runtime

    start_logging()
    if os.environ.get("BENCH_TRACEMALLOC"):
        # where the per-folder memory is (Python objects only; OpenSSL's
        # own allocations show as RSS beyond the traced total)
        import tracemalloc

        tracemalloc.start(int(os.environ["BENCH_TRACEMALLOC"]))
    counter = LogCounter()
    globalLogPublisher.addObserver(counter)
    rss_before = rss_mb()
    runtime = Runtime(settings, reactor)
    store_calls = count_store_calls(runtime.store)
    apply_parse_processes(runtime, settings)
    watch = _Watch(reactor)
    runtime.supervisor._make_folder = watch.wrap_make_folder(runtime.supervisor._make_folder)
    stats = runtime.lag_meter.stats
    phase = PhaseMeter()
    profiler = Profiler(os.environ.get("BENCH_PYSPY"))
    record = stats.record

    def record_and_track(lag: float) -> None:
        record(lag)
        phase.record(lag)

    stats.record = record_and_track  # type: ignore[method-assign]

    appended: dict[int, float] = {}
    published: dict[int, float] = {}
    run_id = uuid.uuid4().hex[:8]
    time_publishes(runtime, run_id, published)
    out: dict[str, Any] = {
        "folders": args.folders,
        "providers": args.providers,
        "dovecot_client_limit": args.client_limit,
        "stagger_ms": stagger_ms,
        "open_files_limit": runtime.open_files_limit,
        "folder_capacity": runtime.folder_capacity,
    }

    def sleep(seconds: float) -> defer.Deferred:
        d: defer.Deferred = defer.Deferred()
        reactor.callLater(seconds, d.callback, None)
        return d

    def idling() -> int:
        return sum(1 for f in watch.folders if f.state == "Idling")

    @defer.inlineCallbacks
    def wait_for(cond: Any, what: str) -> Any:
        deadline = time.time() + args.timeout
        while not cond():
            if time.time() > deadline:
                raise RuntimeError(f"timed out waiting for {what}: {idling()} idling")
            yield sleep(0.25)

    @defer.inlineCallbacks
    def storm(number: int) -> Any:
        """Restart Dovecot once; the figures of this storm."""
        before = {id(f): sum(f.reconnects.values()) for f in watch.folders}
        reasons0: collections.Counter[str] = collections.Counter()
        for f in watch.folders:
            reasons0.update(f.reconnects)
        errors0, warns0 = counter.errors, counter.warnings
        calls0 = collections.Counter(store_calls)
        res: dict[str, Any] = {}
        profiler.start(f"storm{number}-kill")
        garbage_census = bool(os.environ.get("BENCH_GC_GARBAGE"))
        if garbage_census:
            # What the lost sessions leave to the cyclic collector.
            gc.collect()
            gc.disable()
        phase.start()
        t1 = phase.t0
        restarted = threads.deferToThread(dovecot.restart)
        restarted.addCallback(lambda _: res.setdefault("restart_s", round(time.time() - t1, 2)))

        def all_lost() -> bool:
            if "lost_s" not in res and all(
                sum(f.reconnects.values()) > before[id(f)] for f in watch.folders
            ):
                res["lost_s"] = round(time.time() - t1, 2)
                res["kill_cpu_s"] = phase.cpu()
                profiler.stop()
                profiler.start(f"storm{number}")
            return "lost_s" in res

        def all_back() -> bool:
            all_lost()
            return "lost_s" in res and all(f.state == "Idling" for f in watch.folders)

        yield wait_for(all_back, "all folders idling again")
        res["to_idle_s"] = round(time.time() - t1, 1)
        res["cpu_s"] = phase.cpu()
        res["sys_cpu_s"] = phase.sys_cpu()
        profiler.stop()
        yield restarted
        res.update({k[len("storm_"):]: v for k, v in phase.figures("storm").items()})
        reasons: collections.Counter[str] = collections.Counter()
        for f in watch.folders:
            reasons.update(f.reconnects)
        reasons.subtract(reasons0)
        # why sessions ended: one "bye"/"connection_lost" each, plus one
        # per failed attempt (a refused connect while Dovecot was down)
        res["reconnect_reasons"] = {k: v for k, v in sorted(reasons.items()) if v}
        calls = collections.Counter(store_calls)
        calls.subtract(calls0)
        # store operations called from the restart until all idle
        res["store_calls"] = {k: v for k, v in sorted(calls.items()) if v}
        res["error_lines"] = counter.errors - errors0
        res["warn_lines"] = counter.warnings - warns0
        if garbage_census:
            gc.set_debug(gc.DEBUG_SAVEALL)
            gc.collect()
            kinds = collections.Counter(type(o).__qualname__ for o in gc.garbage)
            _err(f"cyclic garbage of the storm: {len(gc.garbage)} objects")
            for name, count in kinds.most_common(40):
                _err(f"garbage {count:>8} {name}")
            gc.garbage.clear()
            gc.set_debug(0)
            gc.enable()
        _err(f"storm {number}: all idle again after {res['to_idle_s']}s, "
             f"{res['cpu_s']} CPU s, max lag {res['max_lag_ms']} ms")
        return res

    @defer.inlineCallbacks
    def drive() -> Any:
        profiler.start("start")
        phase.start()
        t0 = phase.t0
        runtime.startService()
        yield wait_for(lambda: len(watch.folders) == args.folders and idling() == args.folders,
                       "all folders idling")
        out["start_to_idle_s"] = round(time.time() - t0, 1)
        out["start_cpu_s"] = phase.cpu()
        out["start_sys_cpu_s"] = phase.sys_cpu()
        out["start_store_calls"] = {k: v for k, v in sorted(store_calls.items()) if v}
        profiler.stop()
        out.update(phase.figures("start"))
        _err(f"all {args.folders} idling after {out['start_to_idle_s']}s, "
             f"{out['start_cpu_s']} CPU s")
        yield sleep(args.settle)
        c0, w0 = cpu_seconds(), time.time()
        yield sleep(args.idle_seconds)
        c1, w1 = cpu_seconds(), time.time()
        out["cpu_idle_pct"] = round(100.0 * (c1 - c0) / (w1 - w0), 2)
        out["rss_idle_mb"] = rss_mb()
        out["rss_before_mb"] = rss_before
        out["rss_per_folder_kb"] = round(
            (out["rss_idle_mb"] - rss_before) * 1024.0 / args.folders, 1
        )
        out["idle_max_lag_ms"] = round(stats.window_max() * 1000, 1)
        out["rss_after_malloc_trim_mb"] = trimmed_rss_mb()
        tracked = gc.get_objects()
        out["gc_tracked_objects"] = len(tracked)
        out["gc_tracked_per_folder"] = round(len(tracked) / args.folders, 1)
        if os.environ.get("BENCH_GC_TYPES"):
            kinds = collections.Counter(type(o).__qualname__ for o in tracked)
            for name, count in kinds.most_common(int(os.environ["BENCH_GC_TYPES"])):
                _err(f"gc-tracked {count:>9} {name}")
            funcs = collections.Counter(
                getattr(getattr(o, "__func__", o), "__qualname__", "?")
                for o in tracked if type(o).__name__ in ("function", "method"))
            for name, count in funcs.most_common(30):
                _err(f"gc-func {count:>9} {name}")
        if os.environ.get("BENCH_GC_TYPES"):
            sized = []
            for o in tracked:
                try:
                    sized.append((len(o), type(o).__qualname__, repr(o)[:120]))
                except Exception:
                    pass
            sized.sort(reverse=True)
            for n, name, text in sized[:25]:
                _err(f"gc-large {n:>9} {name} {text}")
            _err(f"gc-refs total {sum(len(gc.get_referents(o)) for o in tracked)}")
        del tracked
        _err(f"idle: {out['cpu_idle_pct']}% CPU, {out['rss_idle_mb']} MiB")
        if os.environ.get("BENCH_TRACEMALLOC"):
            import tracemalloc

            snap = tracemalloc.take_snapshot()
            traced = sum(s.size for s in snap.statistics("filename"))
            _err(f"tracemalloc: {traced / 1048576:.1f} MiB traced in Python objects")
            for stat in snap.statistics("traceback")[:25]:
                _err(f"{stat.size / 1024:9.1f} KiB {stat.count:7d} "
                     + " <- ".join(f"{f.filename.split('site-packages/')[-1]}:{f.lineno}"
                                   for f in stat.traceback[:4]))

        appender = Appender(dovecot.ports.imaps, dovecot.ca_file)
        rng = random.Random(args.seed)
        try:
            for i in range(args.pushes):
                user = rng.randrange(args.providers)
                folder = folder_name(rng.randrange(per_provider))
                _, raw = probe(run_id, i)
                appended[i] = yield threads.deferToThread(appender.append, user, folder, raw)
                yield sleep(args.push_interval_ms / 1000.0)
            deadline = time.time() + 15
            while len(published) < len(appended) and time.time() < deadline:
                yield sleep(0.05)
        finally:
            yield threads.deferToThread(appender.close)
        lat = sorted((published[i] - appended[i]) * 1000.0 for i in appended if i in published)
        out["push_samples"] = len(lat)
        out["push_missing"] = len(appended) - len(lat)
        p50, p95 = percentile(lat, 50), percentile(lat, 95)
        out["push_p50_ms"] = None if p50 is None else round(p50, 1)
        out["push_p95_ms"] = None if p95 is None else round(p95, 1)
        out["push_max_ms"] = round(lat[-1], 1) if lat else None
        _err(f"push p50 {out['push_p50_ms']} p95 {out['push_p95_ms']} ms")

        if not args.no_storm:
            runs = []
            for number in range(1, args.storms + 1):
                if number > 1:
                    yield sleep(args.storm_pause)
                runs.append((yield storm(number)))
            out["storm_runs"] = runs
            for key in runs[0]:
                values = [r[key] for r in runs]
                if all(isinstance(v, (int, float)) for v in values):
                    out[f"storm_{key}"] = statistics.median(values)
                else:
                    out[f"storm_{key}"] = values[0] if len(values) == 1 else values
        out["max_lag_ms"] = round(stats.max * 1000, 1)
        out["error_lines"] = counter.errors
        out["warn_lines"] = counter.warnings
        out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1)

    def finished(result: Any) -> None:
        if hasattr(result, "getTraceback"):
            out["error"] = result.getErrorMessage()
            _err(result.getTraceback())
        d = defer.maybeDeferred(runtime.stopService)
        d.addBoth(lambda _: reactor.stop())

    reactor.callWhenRunning(lambda: drive().addBoth(finished))
    reactor.run()
    if counter.samples:
        _err("error-level log lines (first 5):\n" + "\n".join(counter.samples))
    return out


if __name__ == "__main__":
    sys.exit(main())
