"""``python -m bench.idle_latency``: APPEND-complete -> XADD-acknowledged
latency of the service while its folder sits in IDLE.

The counterpart of ``shared/bench/reference/idle_latency.js``, with the same
inputs (the ``IMAP_*``, ``REDIS_URL`` environment of the kit, ``DATABASE_URL``
as in :mod:`bench.backlog`), the same probe messages and the same output::

    {"samples": 50, "missing": 0, "p50_ms": .., "p95_ms": .., "min_ms": ..,
     "max_ms": .., "mean_ms": .., "interval_ms": 200, "peak_rss_mb": ..}

The service runs in-process with its production wiring
(:class:`imapsvc.runtime.Runtime`); its cursor starts at the folder's current
end, so only the probes are published. Once the folder is in IDLE, a second
connection (blocking ``imaplib`` in a thread) APPENDs ``--count`` messages
``--interval`` ms apart. Latency per message = the moment the relay's XADD for
it was acknowledged by Redis minus the moment the APPEND's tagged OK arrived,
both read from one clock (``time.time``, which is also the reactor's).
"""

from __future__ import annotations

import argparse
import imaplib
import json
import math
import os
import re
import ssl
import sys
import time
import uuid
from typing import Any, Optional

from bench.backlog import peak_rss_mb, prepare, read_env, start_logging

_PROBE = re.compile(r"<idle-([0-9a-f]+)-(\d+)@bench\.example>")


def probe(run_id: str, i: int) -> tuple[str, bytes]:
    """The reference's probe: a small multipart/alternative message."""
    mid = f"<idle-{run_id}-{i}@bench.example>"
    text = f"Latency probe {i} of run {run_id}.\r\n" + (
        "Lorem ipsum dolor sit amet, consectetur adipiscing elit.\r\n" * 20
    )
    html = (
        f"<html><body><p>Latency probe <b>{i}</b></p>"
        + "<p>Lorem ipsum dolor sit amet.</p>" * 20
        + "</body></html>"
    )
    b = f"b-{run_id}-{i}"
    date = time.strftime("%a, %d %b %Y %H:%M:%S +0000", time.gmtime())
    raw = "\r\n".join(
        [
            "From: Probe Sender <probe@example.com>",
            "To: Bench <bench@example.com>",
            f"Subject: =?utf-8?q?Latenz_Pr=C3=BCfung_{i}?=",
            f"Date: {date}",
            f"Message-ID: {mid}",
            "MIME-Version: 1.0",
            f'Content-Type: multipart/alternative; boundary="{b}"',
            "",
            f"--{b}",
            "Content-Type: text/plain; charset=utf-8",
            "",
            text,
            f"--{b}",
            "Content-Type: text/html; charset=utf-8",
            "",
            html,
            f"--{b}--",
            "",
        ]
    )
    return mid, raw.encode()


def percentile(ordered: list[float], p: float) -> Optional[float]:
    """Nearest-rank percentile (as the reference computes it)."""
    if not ordered:
        return None
    rank = max(1, math.ceil(p / 100.0 * len(ordered)))
    return ordered[rank - 1]


def imap_connect(env: dict[str, Any]) -> imaplib.IMAP4:
    ctx: Optional[ssl.SSLContext] = None
    if env["security"] != "plain":
        if env["insecure"]:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        else:
            ctx = ssl.create_default_context(cafile=env["cafile"] or None)
    if env["security"] == "tls":
        conn: imaplib.IMAP4 = imaplib.IMAP4_SSL(env["host"], env["port"], ssl_context=ctx)
    else:
        conn = imaplib.IMAP4(env["host"], env["port"])
        if env["security"] == "starttls":
            conn.starttls(ssl_context=ctx)
    conn.login(env["user"], env["password"])
    return conn


def quote(name: str) -> str:
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def folder_end(conn: imaplib.IMAP4, folder: str) -> dict[str, str]:
    """Create the folder if missing; a cursor at its current end."""
    conn.create(quote(folder))  # NO when it exists: fine
    typ, data = conn.status(quote(folder), "(UIDVALIDITY UIDNEXT)")
    if typ != "OK":
        raise SystemExit(f"STATUS {folder} failed")
    text = b" ".join(d for d in data if isinstance(d, bytes)).decode("ascii", "replace")
    validity = re.search(r"UIDVALIDITY (\d+)", text)
    uidnext = re.search(r"UIDNEXT (\d+)", text)
    if not (validity and uidnext):
        raise SystemExit("STATUS gave no UIDVALIDITY/UIDNEXT")
    return {"uid_validity": validity.group(1), "last_uid": str(int(uidnext.group(1)) - 1)}


def time_publishes(runtime: Any, run_id: str, published: dict[int, float]) -> None:
    """Wrap the runtime's sink so each probe of ``run_id`` records, in
    ``published``, when its XADD was acknowledged (probe number -> time)."""
    publish = runtime.sink.publish

    def timed_publish(entries: Any) -> Any:
        entries = list(entries)
        d = publish(entries)

        def acked(result: Any) -> Any:
            now = time.time()
            for _event_id, fields in entries:
                m = _PROBE.search(fields.get("payload_json", ""))
                if m and m.group(1) == run_id:
                    published.setdefault(int(m.group(2)), now)
            return result

        return d.addCallback(acked)

    runtime.sink.publish = timed_publish


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--count", type=int, default=50)
    ap.add_argument("--interval", type=int, default=200, help="ms between APPENDs")
    ap.add_argument("--wait-ms", type=int, default=10000, help="wait for stragglers")
    ap.add_argument("--folder", default=None, help="default IMAP_FOLDER or bench-idle")
    ap.add_argument("--stream", default=None, help="default BENCH_STREAM or bench:idle")
    args = ap.parse_args(argv)
    env = read_env()
    env["folder"] = args.folder or os.environ.get("IMAP_FOLDER_IDLE") or "bench-idle"
    env["stream"] = args.stream or "bench:idle"

    appender = imap_connect(env)
    cursor = folder_end(appender, env["folder"])
    settings = prepare(env, cursor)
    run_id = uuid.uuid4().hex[:8]

    from twisted.internet import defer, reactor, threads

    from bench.backlog import _Watch, apply_parse_processes
    from imapsvc.runtime import Runtime

    start_logging()
    runtime = Runtime(settings, reactor)
    apply_parse_processes(runtime, settings)
    watch = _Watch(reactor)
    runtime.supervisor._make_folder = watch.wrap_make_folder(runtime.supervisor._make_folder)
    idling: defer.Deferred = defer.Deferred()

    def on_state(state: str) -> None:
        if state == "Idling" and not idling.called:
            idling.callback(None)

    watch.on_state = on_state
    appended: dict[int, float] = {}
    published: dict[int, float] = {}
    time_publishes(runtime, run_id, published)
    outcome: dict[str, Any] = {}

    def append_one(i: int) -> None:
        _, raw = probe(run_id, i)
        typ, _data = appender.append(quote(env["folder"]), None, None, raw)
        appended[i] = time.time()  # the tagged OK has just been read
        if typ != "OK":
            raise RuntimeError(f"APPEND {i} failed")

    def sleep(seconds: float) -> defer.Deferred:
        d: defer.Deferred = defer.Deferred()
        reactor.callLater(seconds, d.callback, None)
        return d

    @defer.inlineCallbacks
    def drive() -> Any:
        runtime.startService()
        yield idling.addTimeout(60, reactor)
        yield sleep(0.3)  # as the reference: let IDLE settle
        for i in range(args.count):
            yield threads.deferToThread(append_one, i)
            if i < args.count - 1:
                yield sleep(args.interval / 1000.0)
        deadline = time.time() + args.wait_ms / 1000.0
        while len(published) < args.count and time.time() < deadline:
            yield sleep(0.05)

    def finished(result: Any) -> None:
        if hasattr(result, "getTraceback"):
            outcome["error"] = result.getTraceback()
        d = defer.maybeDeferred(runtime.stopService)
        d.addBoth(lambda _: reactor.stop())

    reactor.callWhenRunning(lambda: drive().addBoth(finished))
    reactor.run()
    try:
        appender.logout()
    except Exception as e:  # the result stands without a clean LOGOUT
        print(f"appender logout: {e}", file=sys.stderr)
    if "error" in outcome:
        print(outcome["error"], file=sys.stderr)
        return 1
    lat = sorted((published[i] - appended[i]) * 1000.0 for i in appended if i in published)

    def r(v: Optional[float]) -> Optional[float]:
        return None if v is None else round(v, 1)

    print(
        json.dumps(
            {
                "samples": len(lat),
                "missing": len(appended) - len(lat),
                "p50_ms": r(percentile(lat, 50)),
                "p95_ms": r(percentile(lat, 95)),
                "min_ms": r(lat[0] if lat else None),
                "max_ms": r(lat[-1] if lat else None),
                "mean_ms": r(sum(lat) / len(lat) if lat else None),
                "interval_ms": args.interval,
                "peak_rss_mb": peak_rss_mb(),
            }
        ),
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
