"""``python -m bench.replicas``: two providers' backlogs, one replica vs two.

Set-up (not timed): a private rig Dovecot, two users with ``--messages``
generated messages each in folder ``backlog`` (the probe message of
:mod:`bench.idle_latency`, about 6 KB, unique Message-IDs), the scratch
database ``imapsvc_bench`` with one provider per user whose cursor starts
at ``last_uid = '0'`` (the whole folder drains).

Then, for each of ``--runs`` rounds, interleaved:

- ``one``: one ``twistd -n imapsvc`` replica serves both providers;
- ``two``: two replicas started together, each with ``IMAP_MAX_FOLDERS=1``,
  so each leases one provider (the other replica's live lease takes no room,
  :func:`imapsvc.core.capacity.fit_capacity`).

Each round resets the ledger, the outbox and the cursors. The drain time is
read from the database: from the first ledger row's ``created_at`` to the
last outbox row's ``published_at`` (process start-up and the connect are
outside, as in :mod:`bench.backlog`). The JSON line (last line of stdout)::

    {"messages": 2000, "one_msgs_per_s": [...], "two_msgs_per_s": [...],
     "one_median": .., "two_median": .., "speedup": ..,
     "one_wall_s": [...], "two_wall_s": [...], "one_cpu_s": [[..]], "two_cpu_s": [[.., ..]],
     "two_split": [[worker, provider], ...]}

``*_wall_s`` is from spawning the replicas until the database shows every
message published (start-up, discovery and the connect included);
``*_cpu_s`` the CPU seconds of each replica process by then.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
import uuid
from typing import Any, Optional

from bench.backlog import BENCH_TENANT, scratch_database

PASSWORD = "benchpw"
FOLDER = "backlog"


def _err(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def provider_id(i: int) -> str:
    return f"00000000-0000-4000-8000-0000000a{i:04x}"


def user_name(i: int) -> str:
    return f"replica-{i}@example.com"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def fill(dovecot: Any, users: int, messages: int) -> None:
    import imaplib
    import ssl

    from bench.idle_latency import probe

    ctx = ssl.create_default_context(cafile=dovecot.ca_file)
    for i in range(users):
        dovecot.add_user(user_name(i), PASSWORD)
        conn = imaplib.IMAP4_SSL("127.0.0.1", dovecot.ports.imaps, ssl_context=ctx)
        conn.login(user_name(i), PASSWORD)
        conn.create(FOLDER)
        run = uuid.uuid4().hex[:8]
        for n in range(messages):
            typ, _ = conn.append(FOLDER, None, None, probe(run, n)[1])
            if typ != "OK":
                raise SystemExit("APPEND failed")
        conn.logout()


def setup_database(dovecot: Any, users: int) -> tuple[str, str]:
    from imapsvc.model import ProviderConfig
    from imapsvc.sealed_secrets import SecretBox, generate_key, password_name
    from imapsvc.store.admin_postgres import PostgresAdmin
    from imapsvc.store.migrate import apply_migrations

    dsn = scratch_database()
    apply_migrations(dsn, out=sys.stderr)
    key = generate_key()
    box = SecretBox.from_setting(key)
    admin = PostgresAdmin(dsn)
    try:
        for i in range(users):
            pid = provider_id(i)
            admin.add_provider(
                ProviderConfig(
                    tenant=BENCH_TENANT, provider_id=pid, provider_name=f"replica {i}",
                    mailbox=user_name(i), host="127.0.0.1", port=dovecot.ports.imaps,
                    secure=True, auth_type="password", username=user_name(i),
                    folder_filters=(FOLDER,),
                )
            )
            name = password_name(pid)
            admin.put_secret(BENCH_TENANT, name, box.seal(BENCH_TENANT, name, PASSWORD.encode()))
    finally:
        admin.close()
    return dsn, key


def reset(dsn: str) -> None:
    """Forget what was drained: ledger, outbox, cursors, leases."""
    import psycopg2
    from psycopg2.extras import Json

    conn = psycopg2.connect(dsn)
    try:
        with conn, conn.cursor() as cur:
            cur.execute("DELETE FROM imap_event_outbox WHERE tenant = %s", (BENCH_TENANT,))
            cur.execute("DELETE FROM imap_message_ledger WHERE tenant = %s", (BENCH_TENANT,))
            cur.execute(
                "UPDATE imap_email_provider_config SET folder_state = %s,"
                " lease_owner = NULL, lease_expires_at = NULL WHERE tenant = %s",
                (Json({FOLDER: {"last_uid": "0"}}), BENCH_TENANT),
            )
    finally:
        conn.close()


def progress(dsn: str) -> tuple[int, int, Optional[float], list[tuple[str, str]]]:
    """(ledger rows, unpublished outbox rows, drain seconds, who leased what)."""
    import psycopg2

    conn = psycopg2.connect(dsn)
    try:
        with conn, conn.cursor() as cur:
            cur.execute("SELECT count(*) FILTER (WHERE outcome = 'published'), min(created_at)"
                        " FROM imap_message_ledger WHERE tenant = %s", (BENCH_TENANT,))
            ledger, first = cur.fetchone()
            cur.execute("SELECT count(*) FILTER (WHERE published_at IS NULL),"
                        " max(published_at) FROM imap_event_outbox WHERE tenant = %s",
                        (BENCH_TENANT,))
            unpublished, last = cur.fetchone()
            cur.execute("SELECT lease_owner, email_provider_id FROM imap_email_provider_config"
                        " WHERE tenant = %s ORDER BY email_provider_id", (BENCH_TENANT,))
            leases = [(str(o), str(p)) for o, p in cur.fetchall()]
    finally:
        conn.close()
    seconds = (last - first).total_seconds() if first is not None and last is not None else None
    return int(ledger), int(unpublished or 0), seconds, leases


def start_replica(env: dict[str, str], worker: str, max_folders: int) -> subprocess.Popen:
    twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
    e = dict(env, IMAPSVC_WORKER_ID=worker, IMAP_MAX_FOLDERS=str(max_folders),
             PORT=str(free_port()))
    log = open(f"/tmp/bench-replica-{worker}.log", "wb")
    return subprocess.Popen([twistd, "-n", "--pidfile=", "imapsvc"], env=e,
                            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a running process (Linux ``/proc``)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def round_(dsn: str, env: dict[str, str], mode: str, total: int,
           timeout: float) -> tuple[float, float, list[tuple[str, str]], list[float]]:
    """:return: drain seconds (database timestamps), wall seconds from the
    replicas' spawn (start-up included), who leased what, each replica's
    CPU seconds (start-up included)."""
    reset(dsn)
    t0 = time.time()
    if mode == "one":
        procs = [start_replica(env, "bench-one", 0)]
    else:
        procs = [start_replica(env, f"bench-two-{k}", 1) for k in range(2)]
    try:
        deadline = time.time() + timeout
        while True:
            ledger, unpublished, seconds, leases = progress(dsn)
            if ledger >= total and unpublished == 0 and seconds:
                return seconds, time.time() - t0, leases, [
                    round(cpu_seconds(p.pid), 2) for p in procs]
            if time.time() > deadline:
                raise SystemExit(f"{mode}: timed out at {ledger} of {total}")
            if any(p.poll() is not None for p in procs):
                raise SystemExit(f"{mode}: a replica exited (see /tmp/bench-replica-*.log)")
            time.sleep(0.1)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=1000, help="per provider")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--timeout", type=float, default=600.0)
    args = ap.parse_args(argv)

    from tests.rig.dovecot import Dovecot

    dovecot = Dovecot()
    dovecot.start(wrong_certificate=False)
    try:
        fill(dovecot, 2, args.messages)
        dsn, key = setup_database(dovecot, 2)
        env = dict(
            os.environ,
            DATABASE_URL=dsn,
            REDIS_URL=os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379",
            IMAP_EVENT_STREAM="bench:replicas",
            IMAPSVC_SECRET_KEY=key,
            IMAP_TLS_CA_FILE=dovecot.ca_file,
            IMAP_STARTUP_STAGGER_MS="0",
            IMAPSVC_TENANTS=BENCH_TENANT,
            IMAPSVC_PRIVATE_NETWORK_ALLOWLIST="127.0.0.1",
            IMAP_PROVIDER_REFRESH_MS="2000",
            IMAP_LEASE_TTL_MS="10000",
        )
        total = 2 * args.messages
        rates: dict[str, list[float]] = {"one": [], "two": []}
        walls: dict[str, list[float]] = {"one": [], "two": []}
        cpus: dict[str, list[list[float]]] = {"one": [], "two": []}
        split: list[tuple[str, str]] = []
        for r in range(args.runs):
            for mode in ("one", "two"):
                seconds, wall, leases, cpu = round_(dsn, env, mode, total, args.timeout)
                cpus[mode].append(cpu)
                rates[mode].append(round(total / seconds, 1))
                walls[mode].append(round(wall, 2))
                if mode == "two":
                    split = leases
                _err(f"run {r + 1} {mode}: {total} messages in {seconds:.2f}s, wall {wall:.2f}s, "
                     f"replica CPU {cpu} s, load {os.getloadavg()[0]:.1f} "
                     f"({rates[mode][-1]} msgs/s); leases {leases}")
    finally:
        dovecot.cleanup()
    one, two = statistics.median(rates["one"]), statistics.median(rates["two"])
    print(json.dumps({
        "messages": total,
        "one_msgs_per_s": rates["one"],
        "two_msgs_per_s": rates["two"],
        "one_median": one,
        "two_median": two,
        "speedup": round(two / one, 2) if one else None,
        "one_wall_s": walls["one"],
        "two_wall_s": walls["two"],
        "one_cpu_s": cpus["one"],
        "two_cpu_s": cpus["two"],
        "two_split": split,
    }), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
