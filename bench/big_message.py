"""``python -m bench.big_message``: what one big message costs (issue 12, item 3).

Two single-message folders of the bench account are drained, each by a fresh
process through the production wiring (:mod:`bench.backlog`), at default
settings (attachments as metadata only):

- ``bench-big-25``: a message of about 25 MB whose bulk is one base64
  attachment (``--attachment-mb``, default 18 MB before encoding);
- ``bench-big-100``: a message of about 100 MB (``--huge-mb``, default 74 MB
  before encoding).

For each, the figure is the growth of the draining process's peak RSS from
just before the first IMAP connect to the end (``ru_maxrss``, so start-up is
left out), and what the message became: its ledger outcome and reason, the
``ingressSkipReasons`` of its event. The messages are generated and appended
by a separate process so their size never counts. Prints one JSON line::

    {"msg25": {"size": ..., "rss_growth_mb": ..., "outcome": ..., "reasons": [...]},
     "msg100": {...}}

Environment as :mod:`bench.backlog` (``IMAP_*``, ``REDIS_URL``,
``BENCH_STREAM``, ``DATABASE_URL``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from typing import Any, Optional

FOLDERS = {"msg25": "bench-big-25", "msg100": "bench-big-100"}


def build_message(attachment_bytes: int, label: str) -> bytes:
    """A text body and one base64 attachment of ``attachment_bytes`` (before
    encoding), built without holding more than the message itself."""
    import base64

    chunk = os.urandom(57 * 1024)  # 57 raw bytes make one 76-column base64 line
    line_block = b"\r\n".join(
        base64.b64encode(chunk[i:i + 57]) for i in range(0, len(chunk), 57)) + b"\r\n"
    blocks = max(1, attachment_bytes // len(chunk))
    head = (
        f"From: Big Sender <big@example.com>\r\nTo: support@example.com\r\n"
        f"Subject: {label}\r\nMessage-ID: <{label}-{os.urandom(4).hex()}@example.com>\r\n"
        "Date: Sat, 10 Jan 2026 12:00:00 +0000\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/mixed; boundary="b1"\r\n\r\n'
        "--b1\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
        f"The attachment of {label}.\r\n"
        "--b1\r\nContent-Type: application/octet-stream; name=\"big.bin\"\r\n"
        "Content-Disposition: attachment; filename=\"big.bin\"\r\n"
        "Content-Transfer-Encoding: base64\r\n\r\n"
    ).encode()
    return b"".join([head, line_block * blocks, b"--b1--\r\n"])


def load(env: dict[str, Any], attachment_mb: float, huge_mb: float) -> dict[str, int]:
    """Empty both folders and append one message to each; their sizes."""
    from bench.idle_latency import imap_connect, quote

    sizes = {}
    conn = imap_connect(env)
    try:
        for key, mb in (("msg25", attachment_mb), ("msg100", huge_mb)):
            folder = FOLDERS[key]
            conn.create(quote(folder))
            conn.select(quote(folder))
            conn.uid("STORE", "1:*", "+FLAGS.SILENT", r"(\Deleted)")
            conn.expunge()
            message = build_message(int(mb * 1024 * 1024), key)
            sizes[key] = len(message)
            typ, data = conn.append(quote(folder), "", None, message)
            if typ != "OK":
                raise SystemExit(f"APPEND to {folder} failed: {data!r}")
            del message
    finally:
        conn.logout()
    return sizes


def drain(folder: str) -> dict[str, Any]:
    """Drain ``folder`` in this process; the figure and what was recorded."""
    import resource

    import psycopg2

    import bench.backlog as backlog

    os.environ["IMAP_FOLDER"] = folder
    env = backlog.read_env()
    settings = backlog.prepare(env)
    messages, _seconds, _bytes = backlog.run(env, settings)
    start_kib = backlog.LAST_RUN.get("start_kib", 0)
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out: dict[str, Any] = {
        "messages": messages,
        "rss_growth_mb": round((peak_kib - start_kib) / 1024.0, 1),
        "peak_rss_mb": round(peak_kib / 1024.0, 1),
    }
    conn = psycopg2.connect(settings.database_url)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT outcome, reason FROM imap_message_ledger WHERE tenant = %s",
                        (backlog.BENCH_TENANT,))
            rows = cur.fetchall()
            out["outcome"], out["reason"] = rows[0] if rows else (None, None)
            cur.execute("SELECT payload FROM imap_event_outbox WHERE tenant = %s",
                        (backlog.BENCH_TENANT,))
            payloads = [json.loads(p) for (p,) in cur.fetchall() if p]
    finally:
        conn.close()
    if payloads:
        data = payloads[0]["emailData"]
        out["reasons"] = data.get("ingressSkipReasons", [])
        out["attachments"] = [
            {k: a.get(k) for k in ("name", "size")} for a in data.get("attachments", [])
        ]
    return out


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--attachment-mb", type=float, default=18.0)
    parser.add_argument("--huge-mb", type=float, default=74.0)
    parser.add_argument("--load-only", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--drain", metavar="FOLDER", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    from bench.backlog import read_env

    if args.load_only:
        print(json.dumps(load(read_env(), args.attachment_mb, args.huge_mb)))
        return 0
    if args.drain:
        print(json.dumps(drain(args.drain)))
        return 0
    me = [sys.executable, "-m", "bench.big_message"]
    loaded = subprocess.run(
        me + ["--load-only", "--attachment-mb", str(args.attachment_mb),
              "--huge-mb", str(args.huge_mb)],
        check=True, capture_output=True, text=True)
    sizes = json.loads(loaded.stdout.strip().splitlines()[-1])
    result = {}
    for key, folder in FOLDERS.items():
        ran = subprocess.run(me + ["--drain", folder], check=True, stdout=subprocess.PIPE,
                             text=True)
        result[key] = {"size": sizes[key], **json.loads(ran.stdout.strip().splitlines()[-1])}
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
