"""``python -m imapsvc migrate``: apply the numbered SQL files of ``schema/``.

Each file runs in its own transaction together with its row in
``imap_schema_migrations``, so a failed file leaves nothing half applied and
the next run retries it. A session advisory lock keeps two replicas that
start at the same moment from running the same file twice.

This is a command-line tool, so it uses psycopg2 synchronously.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path
from typing import Optional, Sequence, TextIO

import psycopg2

from imapsvc.store.pg_errors import connect_failure

#: Arbitrary constant for ``pg_advisory_lock``: "imapsvc migrate".
_LOCK_KEY = 0x1A9_5C_0001

_FILE_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")

#: Tables distributed by ``tenant`` when Citus is present, in an order that
#: satisfies the foreign key (a referenced table first).
TENANT_TABLES = (
    "email_providers",
    "imap_email_provider_config",
    "imap_message_ledger",
    "imap_event_outbox",
    "imap_secrets",
    "imap_oauth_states",
    "imap_folder_status",
    "imap_admin_requests",
    "imap_message_failures",
    "imap_provider_backfill",
    "imap_folder_backfill",
    "imap_provider_options",
    "imap_folder_modseq",
)

_BOOTSTRAP = """
CREATE TABLE IF NOT EXISTS imap_schema_migrations (
    version integer PRIMARY KEY,
    name text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""


class MigrationError(Exception):
    """The schema could not be brought up to date."""


def schema_dir() -> Path:
    """Where the migrations are: the checkout's ``schema/`` or, for an
    installed package, ``<prefix>/share/imapsvc/schema``."""
    candidates = [
        Path(__file__).resolve().parents[2] / "schema",
        Path(sys.prefix) / "share" / "imapsvc" / "schema",
    ]
    for candidate in candidates:
        if candidate.is_dir() and any(candidate.glob("*.sql")):
            return candidate
    raise MigrationError(
        "no schema directory found (looked in {})".format(", ".join(map(str, candidates)))
    )


def list_migrations(directory: Optional[Path] = None) -> list[tuple[int, str, Path]]:
    """``(version, file name, path)`` of every migration, in version order.

    :raises MigrationError: for a file that does not follow ``NNNN_name.sql``
        or a version used twice.
    """
    directory = schema_dir() if directory is None else directory
    found: dict[int, tuple[int, str, Path]] = {}
    for path in sorted(directory.glob("*.sql")):
        match = _FILE_NAME.match(path.name)
        if match is None:
            raise MigrationError(f"migration file name not NNNN_name.sql: {path.name}")
        version = int(match.group(1))
        if version in found:
            raise MigrationError(f"migration version {version} used twice")
        found[version] = (version, path.name, path)
    return [found[v] for v in sorted(found)]


def _connect(dsn: str):  # type: ignore[no-untyped-def]
    return psycopg2.connect(dsn, connect_timeout=10, application_name="imapsvc-migrate")


def _distribute_if_citus(conn) -> list[str]:  # type: ignore[no-untyped-def]
    """On Citus, distribute the tenant tables by ``tenant`` (those not yet
    distributed); elsewhere do nothing."""
    with conn, conn.cursor() as cur:
        cur.execute("SELECT to_regproc('create_distributed_table') IS NOT NULL")
        if not cur.fetchone()[0]:
            return []
        cur.execute("SELECT logicalrelid::regclass::text FROM pg_dist_partition")
        already = {row[0] for row in cur.fetchall()}
    done = []
    for table in TENANT_TABLES:
        if table in already:
            continue
        with conn, conn.cursor() as cur:
            cur.execute("SELECT create_distributed_table(%s, 'tenant')", (table,))
        done.append(table)
    return done


def apply_migrations(dsn: str, directory: Optional[Path] = None,
                     out: Optional[TextIO] = None) -> list[str]:
    """Apply every pending migration in order.

    :return: the file names applied by this call (empty when up to date).
    :raises psycopg2.OperationalError: the database cannot be reached.
    :raises MigrationError: a file is misnamed or failed (the message names it).
    """
    migrations = list_migrations(directory)
    conn = _connect(dsn)
    applied: list[str] = []
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("SELECT pg_advisory_lock(%s)", (_LOCK_KEY,))
        conn.autocommit = False
        with conn, conn.cursor() as cur:
            cur.execute(_BOOTSTRAP)
        with conn, conn.cursor() as cur:
            cur.execute("SELECT version FROM imap_schema_migrations")
            done = {row[0] for row in cur.fetchall()}
        for version, name, path in migrations:
            if version in done:
                continue
            sql = path.read_text(encoding="utf-8")
            try:
                with conn, conn.cursor() as cur:
                    # No parameters: psycopg2 leaves '%' in the file alone.
                    cur.execute(sql)
                    cur.execute(
                        "INSERT INTO imap_schema_migrations (version, name) VALUES (%s, %s)",
                        (version, name),
                    )
            except psycopg2.OperationalError:
                raise
            except psycopg2.Error as e:
                raise MigrationError(f"{name} failed: {e.pgerror or e}".strip()) from e
            applied.append(name)
            if out is not None:
                print(f"applied {name}", file=out)
        for table in _distribute_if_citus(conn):
            if out is not None:
                print(f"distributed {table} by tenant (Citus)", file=out)
    finally:
        conn.close()
    return applied


def main(argv: Optional[Sequence[str]] = None, out: TextIO = sys.stdout,
         err: TextIO = sys.stderr) -> int:
    """``imapsvc migrate [--database-url URL]``; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="imapsvc migrate",
        description="Apply pending SQL migrations to the imapsvc database.",
    )
    parser.add_argument(
        "--database-url",
        default=os.environ.get("DATABASE_URL"),
        help="PostgreSQL URL (default: $DATABASE_URL)",
    )
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    if not args.database_url:
        print("imapsvc migrate: no database: pass --database-url or set DATABASE_URL",
              file=err)
        return 2
    try:
        applied = apply_migrations(args.database_url, out=out)
    except psycopg2.OperationalError as e:
        print(f"imapsvc migrate: {connect_failure(e)}", file=err)
        return 1
    except MigrationError as e:
        print(f"imapsvc migrate: {e}", file=err)
        return 1
    if applied:
        print(f"{len(applied)} migration(s) applied", file=out)
    else:
        print("database schema is up to date: nothing to apply", file=out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
